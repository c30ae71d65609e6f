"""Reading pickled files a user hands over (the reference's run folders, its NCT-CRC label
dict, object-array ``.npy`` files of older versions) as plain data only: builtins, numpy
arrays and the OmegaConf nodes of a pickled ``DictConfig``. Any other global is refused, so
no code of the file runs."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RestrictedUnpickler", "UnsafePickleError", "load_legacy_pickle",
           "load_object_npy"]


class UnsafePickleError(ValueError):
    """A pickle asks for a global outside the plain-data allow-list."""


_ALLOWED_GLOBALS: dict[str, frozenset[str]] = {
    "builtins": frozenset({
        "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str",
        "bytes", "bytearray", "slice", "range",
    }),
    "collections": frozenset({"OrderedDict", "defaultdict"}),
    "_codecs": frozenset({"encode"}),  # how protocol 2 stores bytes
    "numpy": frozenset({"dtype", "ndarray"}),
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy._core.numeric": frozenset({"_frombuffer"}),
    "typing": frozenset({"Any"}),  # OmegaConf metadata (key/element types)
    "omegaconf.dictconfig": frozenset({"DictConfig"}),
    "omegaconf.listconfig": frozenset({"ListConfig"}),
    "omegaconf.base": frozenset({"ContainerMetadata", "Metadata"}),
    "omegaconf.nodes": frozenset({
        "AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode",
    }),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickle plain data only: builtins containers and scalars, numpy arrays, dtypes and
    scalars (the functions numpy's pickles call), ``collections.OrderedDict``/``defaultdict``
    and the OmegaConf nodes of a pickled ``DictConfig``. Any other global (a callable that
    could run code) raises :class:`UnsafePickleError` naming ``source`` and the global."""

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        mod = "builtins" if module == "__builtin__" else module
        if mod.startswith("numpy.core."):  # numpy 1.x spelling of numpy._core
            mod = "numpy._core." + mod[len("numpy.core."):]
        if name in _ALLOWED_GLOBALS.get(mod, ()):
            if mod.startswith("numpy._core.") and not hasattr(np, "_core"):
                mod = "numpy.core." + mod[len("numpy._core."):]  # numpy < 2
            return super().find_class(mod, name)
        raise UnsafePickleError(
            f"{self.source}: refused to unpickle the global {module}.{name} (pickled files "
            "are read as plain data only; this file may be crafted to run code)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused a persistent id in the pickle")


def load_legacy_pickle(path: str | os.PathLike) -> Any:
    """Read a reference-format pickle through :class:`RestrictedUnpickler`."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data), str(path)).load()
    except UnsafePickleError:
        raise
    except Exception as err:  # noqa: BLE001 - any other failure: an unreadable file
        raise ValueError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from None


def load_object_npy(path: str | os.PathLike) -> np.ndarray:
    """An object-array ``.npy`` (a pickle after the npy header), read through
    :class:`RestrictedUnpickler` (plain data only), never by numpy's own unpickling."""
    path = Path(path)
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        _shape, _fortran, dtype = read_header(f)
        if not dtype.hasobject:
            raise ValueError(f"{path}: not an object array")
        try:
            return np.asarray(RestrictedUnpickler(f, str(path)).load())
        except UnsafePickleError:
            raise
        except Exception as err:  # noqa: BLE001 - any other failure: an unreadable file
            raise ValueError(f"{path}: not a readable object array ({err})") from None
