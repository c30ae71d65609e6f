"""``BaseTrainer``: the interface every trainer follows, plus state save/load.

The reference pickled the whole trainer; loading such a file runs whatever code it names.
Here :meth:`BaseTrainer.save` writes the state dicts of the trainer's modules and optimizers
with ``torch.save`` and :meth:`BaseTrainer.load` reads them back with
``torch.load(weights_only=True)`` into a trainer built from its configuration.
"""

from __future__ import annotations

import os
from typing import Any

from rl_benchmarks.utils.io import atomic_open


class _InstanceMethod:
    """An instance method whose call on the class explains what to do instead."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.__doc__ = fn.__doc__

    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            def on_class(*args: Any, **kwargs: Any) -> Any:
                raise TypeError(
                    f"{owner.__name__}.load is called on a trainer, not on the class: a trainer "
                    "file holds state dicts, not code; build the trainer from its configuration, "
                    "then call trainer.load(path)"
                )
            return on_class
        return self.fn.__get__(obj, owner)


def _stateful(value: Any) -> bool:
    return callable(getattr(value, "state_dict", None)) and callable(
        getattr(value, "load_state_dict", None)) and not isinstance(value, type)


class BaseTrainer:
    """A trainer trains a model on a train set and evaluates it on a val set."""

    def train(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``{attribute: its state dict}`` for every module/optimizer attribute (model,
        criterion, optimizer once built)."""
        return {name: value.state_dict() for name, value in vars(self).items()
                if _stateful(value)}

    def save(self, filepath: str | os.PathLike) -> None:
        """Write :meth:`state_dict` with ``torch.save`` (atomically) to ``filepath``."""
        import torch

        with atomic_open(filepath, "wb") as f:
            torch.save(self.state_dict(), f)

    @_InstanceMethod
    def load(self, filepath: str | os.PathLike) -> BaseTrainer:
        """Load a file written by :meth:`save` into this trainer (``weights_only=True``: no
        code runs); returns the trainer. An attribute absent here (e.g. an optimizer not
        built yet) is skipped; a key that names no attribute of this trainer is an error."""
        import torch

        try:
            state = torch.load(filepath, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a pickled trainer, a corrupt file, ...
            raise ValueError(f"{filepath}: not a trainer state file written by "
                             f"BaseTrainer.save ({type(err).__name__}: {err})") from None
        if not isinstance(state, dict):
            raise ValueError(f"{filepath}: expected {{attribute: state dict}}, got "
                             f"{type(state).__name__}")
        unknown = sorted(k for k in state if not hasattr(self, k))
        if unknown:
            raise ValueError(f"{filepath}: the trainer has no attribute(s) {unknown}")
        for name, sd in state.items():
            target = getattr(self, name)
            if target is None:
                continue
            if not _stateful(target):
                raise ValueError(f"{filepath}: the trainer's {name!r} takes no state dict")
            target.load_state_dict(sd)
        return self
