"""``BaseTrainer``: the interface every trainer follows, plus pickle save/load."""

from __future__ import annotations

import os
from typing import Any

from rl_benchmarks.utils.io import load_pickle, save_pickle


class BaseTrainer:
    """A trainer trains a model on a train set and evaluates it on a val set."""

    def train(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def save(self, filepath: str | os.PathLike) -> None:
        """Pickle the whole trainer (atomically) to ``filepath``."""
        save_pickle(filepath, self)

    @classmethod
    def load(cls, filepath: str | os.PathLike) -> BaseTrainer:
        """Load a trainer pickled by :meth:`save`."""
        obj = load_pickle(filepath)
        if not isinstance(obj, BaseTrainer):
            raise TypeError(f"{filepath}: does not hold a trainer but a {type(obj).__name__}")
        return obj
