"""Reading local weight files and loading them strictly, with errors that name the keys.

Nothing here downloads anything: every function takes a local path.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


class WeightsError(ValueError):
    """A weights file is missing, unreadable or does not fit the model."""


#: How to turn a file that needs full unpickling into one that does not.
CONVERT_HINT = "rlbench convert-weights input={path} output={out}"


def read_weights_file(path: str | os.PathLike) -> Any:
    """Load a ``.pth``/``.pt``/``.bin`` (torch) or ``.safetensors`` file on the CPU.

    Torch files are read with ``weights_only=True`` only (``argparse.Namespace`` allowed,
    as iBOT/DINO checkpoints store their arguments): a weights file is data a user hands
    over, and full unpickling would run any code it carries. A file the safe loader
    refuses raises :class:`WeightsError` naming the objects it holds (found by reading
    the pickle's opcodes, nothing executed) and the ``rlbench convert-weights`` command
    that rewrites it as plain tensors.
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
    except Exception as err:  # noqa: BLE001 - reported below, never retried unsafely
        first = err
    try:
        refused = unsafe_globals(path)
    except Exception:  # noqa: BLE001 - not a readable pickle: report the load error
        refused = []
    if refused:
        shown = ", ".join(refused[:8]) + (f", … ({len(refused)} in all)"
                                          if len(refused) > 8 else "")
        out = path.with_name(path.stem + ".converted.pth")
        raise WeightsError(
            f"{path}: holds non-tensor objects ({shown}) that are not loaded, since "
            f"unpickling them could run code; convert it once (no code of the file runs) with "
            f"`{CONVERT_HINT.format(path=path, out=out)}` and use the converted file"
        ) from first
    text = str(first).strip().splitlines()[0] if str(first).strip() else type(first).__name__
    raise WeightsError(f"{path}: cannot read weights file ({text})") from first


def _pickle_streams(path: Path) -> list[bytes]:
    """The pickle bytes of a torch file: the zip member ``*/data.pkl`` (torch >= 1.6),
    or the whole file for the legacy format (several pickles one after another)."""
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("data.pkl")]
            return [zf.read(n) for n in names]
    return [path.read_bytes()]


def pickle_globals(data: bytes, max_pickles: int = 8) -> list[str]:
    """``module.name`` of every GLOBAL / STACK_GLOBAL in ``data`` (consecutive pickles, at
    most ``max_pickles``), read with :func:`pickletools.genops`: nothing is executed.

    STACK_GLOBAL takes its two names from the stack; they are tracked through string
    opcodes and the memo (the way picklers write them)."""
    import io as _io
    import pickletools

    found: list[str] = []
    stream = _io.BytesIO(data)
    string_ops = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
                  "BINSTRING", "SHORT_BINSTRING"}
    for _ in range(max_pickles):
        if stream.tell() >= len(data):
            break
        strings: list[str | None] = []  # what the last pushes were (None: not a string)
        memo: dict[int, str | None] = {}
        try:
            for op, arg, _pos in pickletools.genops(stream):
                name = op.name
                if name == "GLOBAL":
                    found.append(str(arg).replace(" ", ".", 1))
                    strings.append(None)
                elif name == "STACK_GLOBAL":
                    mod, attr = (strings[-2], strings[-1]) if len(strings) >= 2 else (None, None)
                    found.append(f"{mod}.{attr}" if mod and attr else "<unknown STACK_GLOBAL>")
                    strings.append(None)
                elif name in string_ops:
                    strings.append(str(arg))
                elif name in ("BINGET", "LONG_BINGET", "GET"):
                    strings.append(memo.get(int(arg)))
                elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[int(arg)] = strings[-1] if strings else None
                elif name == "MEMOIZE":
                    memo[len(memo)] = strings[-1] if strings else None
                elif name not in ("PROTO", "FRAME", "STOP"):
                    strings.append(None)
        except Exception:  # noqa: BLE001 - trailing raw data (legacy format): done
            break
    return [_builtins_name(g) for g in found]


def _builtins_name(name: str) -> str:
    return "builtins." + name[len("__builtin__."):] if name.startswith("__builtin__.") else name


def unsafe_globals(path: str | os.PathLike) -> list[str]:
    """Sorted names of the objects in a torch file that ``torch.load(weights_only=True)``
    refuses (not in torch's allow-list, nor ``argparse.Namespace``), read statically."""
    from torch import _weights_only_unpickler as wou

    allowed = set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
    allowed.add("argparse.Namespace")
    names: set[str] = set()
    for data in _pickle_streams(Path(path)):
        names.update(pickle_globals(data))
    return sorted(n for n in names if n not in allowed)


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


# ------------------------------------------------------------------------- convert
class InertObject:
    """Stands in for a class or function a checkpoint names that the safe loader refuses
    (a pickled ``nn.Module``, a custom config object, ...): it records its arguments and
    pickled state and does nothing else, so none of the file's code runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def load_inert(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` of ``path`` in which every global the safe loader
    refuses is an :class:`InertObject` subclass of the same name. Tensors come back as
    tensors; nothing in the file is executed. Torch's own block-list (``os``, ``sys``, ...)
    still applies: a checkpoint naming those is refused."""
    path = Path(path)
    stand_ins = [(type(name.rpartition(".")[2], (InertObject,), {}), name)
                 for name in unsafe_globals(path)]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = str(err).strip().splitlines()
        cause = next((line for line in text if "GLOBAL" in line), text[0] if text else "")
        raise WeightsError(f"{path}: cannot be converted ({cause.strip()})") from err


def _module_state(state: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The state dict of a pickled ``nn.Module`` read as :class:`InertObject` s (its
    ``_parameters``, persistent ``_buffers`` and ``_modules``, as ``state_dict()`` gives)."""
    out: dict[str, Any] = {}
    transient = set(state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if isinstance(value, torch.Tensor) and name not in transient:
                out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, InertObject) and isinstance(child.state, Mapping):
            out.update(_module_state(child.state, f"{prefix}{name}."))
    return out


def tensors_only(obj: Any, where: str = "") -> dict[str, Any]:
    """The tensors of a checkpoint object, keeping its nesting of dicts (``teacher``,
    ``student``, ``state_dict``, ...): a pickled ``nn.Module`` becomes its state dict, any
    other value (arguments, optimiser step, custom objects) is dropped."""
    if isinstance(obj, InertObject) and isinstance(obj.state, Mapping) and "_modules" in obj.state:
        obj = _module_state(obj.state)
    if not isinstance(obj, Mapping):
        raise WeightsError(f"checkpoint{where or ''} is a {type(obj).__name__}, not a dict of "
                           f"tensors")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, InertObject) and isinstance(value.state, Mapping) \
                and "_modules" in value.state:
            value = _module_state(value.state)
        if isinstance(value, torch.Tensor):
            out[str(key)] = value.detach().cpu().contiguous().clone()
        elif isinstance(value, Mapping):
            sub = tensors_only(value, f"{where}[{key!r}]")
            if sub:
                out[str(key)] = sub
    return out


def convert_weights_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    key: str | None = None,
) -> dict[str, Any]:
    """Rewrite a torch checkpoint that the safe loader refuses as plain tensors.

    The input is read by :func:`load_inert` (torch's ``weights_only`` unpickler, with inert
    stand-ins for the objects it refuses), so no code of the file runs. The output
    (``.pth``/``.pt``/``.bin``: the nested dicts
    of tensors, loadable with ``weights_only=True``; ``.safetensors``: one flat state dict,
    ``key`` naming the sub-dict to keep when there are several) is written atomically and
    read back with the safe loader before this returns a summary.
    """
    from rl_benchmarks.utils.io import atomic_open, sha256_file

    src, dst = Path(input_path).expanduser(), Path(output_path).expanduser()
    if not src.is_file():
        raise WeightsError(f"weights file {src} does not exist")
    if dst.suffix not in (".pth", ".pt", ".bin", ".safetensors"):
        raise WeightsError(f"output {dst}: expected a .pth, .pt, .bin or .safetensors name")
    if dst.resolve() == src.resolve():
        raise WeightsError(f"output {dst} is the input file: give another name")
    tensors = tensors_only(load_inert(src))
    if key:
        if not isinstance(tensors.get(key), Mapping):
            raise WeightsError(f"{src}: no dict of tensors under key {key!r} (keys with "
                               f"tensors: {sorted(tensors)[:12]})")
        tensors = tensors[key]
    if not tensors:
        raise WeightsError(f"{src}: holds no tensors")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.suffix == ".safetensors":
        from safetensors.torch import save as st_save

        nested = sorted(k for k, v in tensors.items() if isinstance(v, Mapping))
        if nested:
            raise WeightsError(f"{src}: a .safetensors file holds one flat state dict, and this "
                               f"checkpoint has the sub-dicts {nested[:12]}: pass key=<one of "
                               f"them>, or write a .pth")
        with atomic_open(dst, "wb") as f:
            f.write(st_save(tensors, metadata={"format": "pt"}))
    else:
        with atomic_open(dst, "wb") as f:
            torch.save(tensors, f)
    read_weights_file(dst)  # the safe loader reads it back
    return {"input": str(src), "input_sha256": sha256_file(src), "output": str(dst),
            "output_sha256": sha256_file(dst), "key": key, "n_tensors": _count(tensors)}


def _count(tree: Mapping[str, Any]) -> int:
    return sum(_count(v) if isinstance(v, Mapping) else 1 for v in tree.values())
