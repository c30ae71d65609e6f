"""Lazy re-exports for package ``__init__`` files: names resolve to their defining module
on first access, so importing a package stays cheap (no torch/openslide at import)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, mapping: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving ``name`` from ``mapping[name]`` (a module path;
    a path starting with "." is relative to ``package``)."""

    def __getattr__(name: str) -> Any:
        if name in mapping:
            target = mapping[name]
            module = importlib.import_module(target, package if target.startswith(".") else None)
            return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
