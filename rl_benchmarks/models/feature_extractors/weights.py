"""Reading local weight files and loading them strictly, with errors that name the keys.

Nothing here downloads anything: every function takes a local path.
"""

from __future__ import annotations

import argparse
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


class WeightsError(ValueError):
    """A weights file is missing, unreadable or does not fit the model."""


def read_weights_file(path: str | os.PathLike) -> Any:
    """Load a ``.pth``/``.pt``/``.bin`` (torch) or ``.safetensors`` file on the CPU.

    Torch files are read with ``weights_only=True`` (``argparse.Namespace`` allowed, as
    iBOT/DINO checkpoints store their arguments); a file that needs full unpickling is
    read again without that restriction, with a warning, since the user named it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise WeightsError(f"{path}: cannot read safetensors file ({err})") from err
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - retried below, then reported
        first = err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise WeightsError(f"{path}: cannot read weights file ({first})") from err
    warnings.warn(f"{path}: loaded with full unpickling (it holds non-tensor objects)",
                  stacklevel=2)
    return obj


def is_state_dict(obj: Any) -> bool:
    """True for a non-empty mapping of names to tensors."""
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def select_state_dict(ckpt: Any, keys: Iterable[str], path: str | os.PathLike) -> dict:
    """Return the first sub-dict of ``ckpt`` named in ``keys``, or ``ckpt`` if it is already
    a flat state dict; otherwise an error listing what the file holds."""
    keys = list(keys)
    if isinstance(ckpt, Mapping):
        for key in keys:
            if key in ckpt and isinstance(ckpt[key], Mapping):
                sub = ckpt[key]
                if is_state_dict(sub):
                    return dict(sub)
                # e.g. {"state_dict": {"model": ...}}: one more level
                for v in sub.values():
                    if is_state_dict(v):
                        return dict(v)
        if is_state_dict(ckpt):
            return dict(ckpt)
        top = sorted(map(str, ckpt))[:12]
        raise WeightsError(f"{path}: no state dict under {keys} (top-level keys: {top})")
    raise WeightsError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")


def strip_prefixes(state_dict: Mapping[str, torch.Tensor],
                   substrings: Iterable[str] = ("module.", "backbone.")) -> dict:
    """Remove each substring from every key (a plain replace, as the reference does)."""
    out = {}
    for k, v in state_dict.items():
        for s in substrings:
            k = k.replace(s, "")
        out[k] = v
    return out


def strip_leading(state_dict: Mapping[str, torch.Tensor], prefixes: Iterable[str]) -> dict:
    """Remove the first matching leading prefix of every key."""
    prefixes = list(prefixes)
    out = {}
    for k, v in state_dict.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return out


def _short(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", … ({len(keys)} in all)" if len(keys) > n else "")


def load_strict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str | os.PathLike,
    ignore: Iterable[str] = (),
) -> list[str]:
    """Load ``state_dict`` into ``model``; keys matching a regex of ``ignore`` may be left
    over. Any other unexpected or missing key, or a shape mismatch, raises
    :class:`WeightsError` naming the keys and ``source``. Returns the ignored keys."""
    patterns = [re.compile(p) for p in ignore]
    target = model.state_dict()
    ignored = sorted(k for k in state_dict if k not in target
                     and any(p.search(k) for p in patterns))
    unexpected = sorted(k for k in state_dict if k not in target and k not in ignored)
    missing = sorted(k for k in target if k not in state_dict)
    shapes = sorted(f"{k} {tuple(state_dict[k].shape)} vs model {tuple(target[k].shape)}"
                    for k in state_dict if k in target
                    and tuple(state_dict[k].shape) != tuple(target[k].shape))
    problems = []
    if missing:
        problems.append(f"missing keys: {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch: {_short(shapes, 4)}")
    if problems:
        raise WeightsError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state_dict.items() if k in target}, strict=True)
    return ignored
