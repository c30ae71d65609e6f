"""Devices and numeric precision, parsed the way the reference's ``device`` key works.

``device`` values:

* ``-1`` or ``"cpu"``: the CPU;
* an int ``K`` (or ``"K"``, ``"cuda:K"``): GPU K;
* a list ``[0, 1]`` (or ``"[0,1]"``): several GPUs (the first one holds the inputs);
* ``None`` (or ``"null"``, ``"all"``): every visible GPU;
* ``"auto"``: GPU 0 when CUDA is present, else the CPU; ``"cuda"``: GPU 0.

As in the reference, an int, a list or None on a machine without CUDA means the CPU
(a warning says so). An explicit ``"cuda..."`` string without CUDA is an error.

Where one process trains on one device (the MIL trainer, iBOT pre-training),
:func:`resolve_torch_device` gives a single ``torch.device`` instead: there ``None`` means
the CPU, a GPU asked for on a machine without CUDA is an error (never a silent fallback),
and a bare ``"cuda"``/``"auto"`` takes the process's ``local_rank`` under ``torchrun``.

``precision`` is ``fp32`` (default), ``bf16`` or ``fp16``: the two last ones run the model
under ``torch.autocast``, except ViT extractors at bf16 on the CPU, which run a bf16-weight
copy (``rl_benchmarks.models.feature_extractors.fast_inference``); outputs are cast back to
float32 by the extractors.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

PRECISIONS = {
    "fp32": "fp32", "float32": "fp32", "32": "fp32", "full": "fp32",
    "bf16": "bf16", "bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "16": "fp16",
}
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class DeviceSpec:
    """A parsed ``device`` value: ``type`` is "cpu" or "cuda"; ``ids`` lists the GPUs."""

    type: str
    ids: tuple[int, ...] = ()

    @property
    def primary(self) -> torch.device:
        """The device that holds inputs and outputs (the first GPU, or the CPU)."""
        return torch.device("cpu") if self.type == "cpu" else torch.device("cuda", self.ids[0])

    @property
    def is_multi_gpu(self) -> bool:
        return self.type == "cuda" and len(self.ids) > 1

    def __str__(self) -> str:
        if self.type == "cpu":
            return "cpu"
        return ",".join(f"cuda:{i}" for i in self.ids)


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _fallback_cpu(value: Any) -> DeviceSpec:
    warnings.warn(f"device={value!r} asks for GPUs but CUDA is not available: using the CPU",
                  stacklevel=3)
    return DeviceSpec("cpu")


def _check_ids(ids: Sequence[int], value: Any) -> DeviceSpec:
    n = _cuda_count()
    bad = [i for i in ids if i < 0 or i >= n]
    if bad:
        raise ValueError(f"device={value!r}: GPU index {bad} out of range ({n} GPU(s) visible)")
    if len(set(ids)) != len(ids):
        raise ValueError(f"device={value!r}: a GPU is listed twice")
    return DeviceSpec("cuda", tuple(int(i) for i in ids))


def parse_device(device: Any = -1) -> DeviceSpec:
    """Parse a ``device`` value (see the module docstring) into a :class:`DeviceSpec`."""
    if isinstance(device, DeviceSpec):
        return device
    if isinstance(device, torch.device):
        device = str(device)
    if isinstance(device, bool):
        raise ValueError(f"device={device!r} is not a device; use -1 (CPU), K, [K, ...] or None")
    if device is None:
        n = _cuda_count()
        return DeviceSpec("cuda", tuple(range(n))) if n else DeviceSpec("cpu")
    if isinstance(device, int):
        if device == -1:
            return DeviceSpec("cpu")
        if device < -1:
            raise ValueError(f"device={device}: use -1 for the CPU or a GPU index >= 0")
        return _check_ids([device], device) if _cuda_count() else _fallback_cpu(device)
    if isinstance(device, str):
        text = device.strip().lower()
        if text in ("none", "null", "all", "~"):
            return parse_device(None)
        if text == "cpu":
            return DeviceSpec("cpu")
        if text == "auto":
            return DeviceSpec("cuda", (0,)) if _cuda_count() else DeviceSpec("cpu")
        if re.fullmatch(r"-?\d+", text):
            return parse_device(int(text))
        if re.fullmatch(r"\[\s*(-?\d+\s*(,\s*-?\d+\s*)*)?\]", text):
            return parse_device([int(t) for t in re.findall(r"-?\d+", text)])
        m = re.fullmatch(r"cuda(?::(\d+))?", text)
        if m:
            if not _cuda_count():
                raise ValueError(f"device={device!r} but CUDA is not available on this machine")
            return _check_ids([int(m.group(1) or 0)], device)
        raise ValueError(
            f"device={device!r} is not understood; use -1 or 'cpu', K or 'cuda:K', "
            f"[K1, K2], None (all GPUs) or 'auto'"
        )
    if isinstance(device, Sequence) or _is_listconfig(device):
        ids = list(device)
        if not ids:
            raise ValueError("device=[] lists no GPU; use -1 for the CPU")
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError(f"device={ids!r}: a list of devices must hold GPU indices (ints)")
        if ids == [-1]:
            return DeviceSpec("cpu")
        return _check_ids(ids, ids) if _cuda_count() else _fallback_cpu(ids)
    raise ValueError(f"device={device!r} ({type(device).__name__}) is not understood")


def resolve_torch_device(device: Any = "auto", local_rank: int | None = None) -> torch.device:
    """The one ``torch.device`` a single-device process runs on.

    ``"auto"``: CUDA when present, else the CPU; ``-1``, ``None`` or ``"cpu"``: the CPU; an
    int ``K`` (or ``"K"``, ``"cuda:K"``): GPU K; ``"cuda"``: the current GPU. A bare
    ``"cuda"``/``"auto"`` becomes ``cuda:<local_rank>`` when ``local_rank`` is given (each
    ``torchrun`` process on its own GPU). Asking for a GPU without CUDA, or for a GPU
    index that does not exist, is a ``ValueError`` that names the value.
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        device = str(device)
    if isinstance(device, bool) or not isinstance(device, (int, str)):
        raise ValueError(f"device={device!r} is not one device; use 'auto', -1 or 'cpu', "
                         f"K or 'cuda:K'")
    text = device.strip().lower() if isinstance(device, str) else str(device)
    if text in ("cpu", "-1"):
        return torch.device("cpu")
    if text in ("auto", "cuda"):
        if not _cuda_count():
            if text == "auto":
                return torch.device("cpu")
            raise ValueError(f"device={device!r} but CUDA is not available on this machine; "
                             f"use device=auto or device=cpu")
        if local_rank is None:
            return torch.device("cuda")
        return _check_ids([int(local_rank)], device).primary
    m = re.fullmatch(r"(?:cuda:)?(-?\d+)", text)
    if not m:
        raise ValueError(f"device={device!r} is not one device; use 'auto', -1 or 'cpu', "
                         f"K or 'cuda:K'")
    index = int(m.group(1))
    if index < 0:
        raise ValueError(f"device={device!r}: use -1 for the CPU or a GPU index >= 0")
    if not _cuda_count():
        raise ValueError(f"device={device!r} but CUDA is not available on this machine; "
                         f"use device=auto or device=cpu")
    return _check_ids([index], device).primary


def _is_listconfig(value: Any) -> bool:
    return type(value).__name__ == "ListConfig"


def parse_precision(precision: str | None) -> str:
    """Normalise a precision name to ``fp32``, ``bf16`` or ``fp16``."""
    if precision is None:
        return "fp32"
    key = str(precision).strip().lower()
    if key not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of fp32, bf16, fp16")
    return PRECISIONS[key]


def autocast(device: Any, precision: str) -> contextlib.AbstractContextManager:
    """An autocast context for ``precision`` on ``device`` (a null context for fp32)."""
    p = parse_precision(precision)
    if p == "fp32":
        return contextlib.nullcontext()
    dev_type = device.type if isinstance(device, (torch.device, DeviceSpec)) else (
        torch.device(device).type if isinstance(device, str) else parse_device(device).type)
    return torch.autocast(device_type=dev_type, dtype=_DTYPES[p])
