"""``TorchTrainer``: the reference's trainer (Adam with L2-coupled weight decay, batch 16,
``drop_last`` in training, every metric computed on whole-epoch logits), seeded per run."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from rl_benchmarks.trainers.base_trainer import BaseTrainer
from rl_benchmarks.trainers.utils import slide_level_train_step, slide_level_val_step
from rl_benchmarks.utils.device import resolve_torch_device
from rl_benchmarks.utils.seed import derive_seed


def resolve_device(device: Any) -> torch.device:
    """The trainer's device, parsed by :func:`rl_benchmarks.utils.device.resolve_torch_device`
    (``"auto"``: CUDA when present; ``None``/``-1``/``"cpu"``: the CPU; K or ``"cuda:K"``: GPU K;
    a GPU without CUDA is a one-line ValueError)."""
    return resolve_torch_device(device)


class EpochPermutationSampler(Sampler[int]):
    """Yields a fresh permutation of ``range(n)`` at each epoch from its own generator.

    The same ``seed`` gives the same sequence of epochs, whatever else uses the global RNG;
    the fast ensemble trainer draws the very same permutations.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = int(n)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __iter__(self) -> Iterator[int]:
        yield from torch.randperm(self.n, generator=self.generator).tolist()

    def __len__(self) -> int:
        return self.n


def order_seed(seed: int) -> int:
    """Seed of the data-order generator of a run seeded with ``seed``."""
    return derive_seed(seed, "data-order") % (2**63 - 1)


def default_collator() -> Callable:
    """The package's ``pad_collate_fn`` (imported lazily)."""
    from rl_benchmarks.utils.features import pad_collate_fn

    return pad_collate_fn


class TorchTrainer(BaseTrainer):
    """Train a slide-level model with mini-batches of padded slides.

    ``metrics`` maps a name to ``f(labels, logits) -> float`` (numpy arrays). ``seed``
    (an extension) fixes the data order; the model's initialisation is fixed by seeding
    before the model is built (``NestedCrossValidation`` does both).
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        metrics: Mapping[str, Callable] | None,
        batch_size: int = 16,
        num_epochs: int = 10,
        learning_rate: float = 1.0e-3,
        weight_decay: float = 0.0,
        gc_step: int = 1,
        device: Any = "cpu",
        optimizer: Callable = torch.optim.Adam,
        train_step: Callable = slide_level_train_step,
        val_step: Callable = slide_level_val_step,
        collator: Callable | None = None,
        use_tqdm: bool = True,
        seed: int | None = None,
        num_workers: int = 0,
    ) -> None:
        if int(batch_size) < 1 or int(num_epochs) < 1 or int(gc_step) < 1:
            raise ValueError(
                f"batch_size={batch_size}, num_epochs={num_epochs} and gc_step={gc_step} "
                "must all be at least 1"
            )
        self.model = model
        self.criterion = criterion
        self.metrics = dict(metrics.items()) if metrics is not None else {}
        self.batch_size = int(batch_size)
        self.num_epochs = int(num_epochs)
        self.learning_rate = float(learning_rate)
        self.weight_decay = float(weight_decay)
        self.gc_step = int(gc_step)
        self.device = resolve_device(device)
        self.optimizer_fn = optimizer
        self.train_step = train_step
        self.val_step = val_step
        self.collator = collator
        self.use_tqdm = use_tqdm
        self.seed = seed
        self.num_workers = int(num_workers)
        self.optimizer: torch.optim.Optimizer | None = None
        self.val_outputs: tuple[np.ndarray, np.ndarray] | None = None

    # -- helpers -----------------------------------------------------------------
    def _collate(self) -> Callable:
        return self.collator if self.collator is not None else default_collator()

    def _loader(self, dataset: Dataset, train: bool, seed: int | None = None) -> DataLoader:
        if train:
            sampler = EpochPermutationSampler(len(dataset), order_seed(seed))
            return DataLoader(
                dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                collate_fn=self._collate(), num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
            )
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=False, drop_last=False,
            collate_fn=self._collate(), num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def compute_metrics(self, labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
        """Every metric on whole-epoch ``labels`` and ``logits``."""
        if len(labels) == 0:
            return {name: float("nan") for name in self.metrics}
        return {name: float(fn(labels, logits)) for name, fn in self.metrics.items()}

    # -- API -----------------------------------------------------------------------
    def train(
        self, train_set: Dataset, val_set: Dataset | None = None
    ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """Train for ``num_epochs``; after each epoch evaluate on ``val_set``.

        Returns ``(train_metrics, val_metrics)``: metric name (and ``"loss"``) -> one
        value per epoch.
        """
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, (1,)))
        self.model.to(self.device)
        self.optimizer = self.optimizer_fn(
            self.model.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        train_loader = self._loader(train_set, train=True, seed=seed)
        val_loader = self._loader(val_set, train=False) if val_set is not None else None
        train_metrics: dict[str, list[float]] = {k: [] for k in [*self.metrics, "loss"]}
        val_metrics: dict[str, list[float]] = {k: [] for k in [*self.metrics, "loss"]}
        epochs = range(self.num_epochs)
        bar = tqdm(epochs, desc="epochs", unit="epoch", leave=False) if self.use_tqdm else epochs
        for _ in bar:
            loss, logits, labels = self.train_step(
                self.model, train_loader, self.criterion, self.optimizer, self.device, self.gc_step
            )
            for k, v in {**self.compute_metrics(labels, logits), "loss": loss}.items():
                train_metrics[k].append(v)
            if val_loader is not None:
                vloss, vlogits, vlabels = self.val_step(
                    self.model, val_loader, self.criterion, self.device
                )
                self.val_outputs = (vlabels, vlogits)
                for k, v in {**self.compute_metrics(vlabels, vlogits), "loss": vloss}.items():
                    val_metrics[k].append(v)
                if self.use_tqdm:
                    bar.set_postfix({k: f"{v[-1]:.3f}" for k, v in val_metrics.items()})
        return train_metrics, val_metrics

    def predict(self, test_set: Dataset) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(labels, logits)`` of ``test_set`` in eval mode."""
        self.model.to(self.device)
        _, logits, labels = self.val_step(
            self.model, self._loader(test_set, train=False), self.criterion, self.device
        )
        return labels, logits

    def evaluate(self, test_set: Dataset) -> dict[str, float]:
        """Every metric on ``test_set``."""
        labels, logits = self.predict(test_set)
        return self.compute_metrics(labels, logits)
