"""Nested cross-validation (docs/protocol.md#nested-cross-validation), seeded, with the reference's defects fixed.

Protocol: for each outer fold, every grid point is trained on every inner fold; the
inner-CV *mean* validation curve (``cindex`` if present, else ``auc``) picks the best
epoch e* (0-based) of each grid point; the best grid point is retrained on the whole outer
train part for **e*+1** epochs (the reference used e*) and the outer test metric is the
value at the last epoch.

Fixed on purpose: ``stratified`` is forwarded to the splits; ``n_repeats_inner > 1`` works;
every run is seeded (``seed``; inner runs by (outer repeat, outer fold, inner repeat, inner
fold), shared by the grid points so they are compared on the same init and data order);
the selected hyper-parameters are recorded per outer fold (``selected_params``); fold
errors (missing class, too few patients) are raised before any training.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import Subset
from tqdm.auto import tqdm

from rl_benchmarks.trainers.ensemble_trainer import EnsembleTrainer, preload, unsupported_reason
from rl_benchmarks.utils.seed import derive_seed, set_seed
from rl_benchmarks.val_schemes.utils import (
    generate_permutations,
    root_dataset,
    split_cv,
    update_trainer_cfg,
)

logger = logging.getLogger("rl_benchmarks.cv")

_HP_KEYS = ("learning_rate", "weight_decay")


def _seed(*parts: Any) -> int:
    return derive_seed(*parts) % (2**31 - 1)


class NestedCrossValidation:
    """Nested CV of a trainer config (a Hydra ``TorchTrainer`` config with its model).

    ``fast=True`` (an extension) trains the grid points of each inner fold as one batched
    ensemble on features preloaded once (same protocol, same seeds; see
    ``rl_benchmarks.trainers.ensemble_trainer``); it falls back to the plain path, with a
    log line, for models or optimizers it cannot reproduce. Other additions: ``seed``;
    ``selection_metric`` (default ``cindex`` if present, else ``auc``); ``precision``
    ("fp32", or "bf16": the fast path's tile-level matmuls in bfloat16, float32 weights
    and optimizer state; not bit-identical to fp32); ``outer_folds`` (run only these outer
    folds, 0-based: benchmarks, debugging); ``n_splits_inner=0`` = plain k-fold CV with one
    hyper-parameter point trained for ``num_epochs`` (no inner selection).

    After :meth:`run`: ``selected_params`` (per outer fold: the chosen point, epochs, inner
    score, every grid point's score), ``predictions`` (test indices, labels, logits),
    ``fold_state_dicts`` and ``used_fast_path``.
    """

    def __init__(
        self,
        trainer_cfg: DictConfig | Mapping,
        grid_search_params: Mapping[str, Any] | None = None,
        n_repeats_outer: int = 1,
        n_splits_outer: int = 5,
        n_repeats_inner: int = 1,
        n_splits_inner: int = 5,
        stratified: bool = True,
        split_mode: str = "patient_split",
        seed: int = 0,
        fast: bool = True,
        selection_metric: str | None = None,
        precision: str = "fp32",
        outer_folds: list[int] | None = None,
    ) -> None:
        self.trainer_cfg = (
            trainer_cfg if isinstance(trainer_cfg, DictConfig) else OmegaConf.create(trainer_cfg)
        )
        if isinstance(grid_search_params, DictConfig):
            grid_search_params = OmegaConf.to_container(grid_search_params, resolve=True)
        self.grid_search_params = dict(grid_search_params or {})
        self.n_repeats_outer = int(n_repeats_outer)
        self.n_splits_outer = int(n_splits_outer)
        self.n_repeats_inner = int(n_repeats_inner)
        self.n_splits_inner = int(n_splits_inner)
        self.stratified = bool(stratified)
        self.split_mode = split_mode
        self.seed = int(seed)
        self.fast = bool(fast)
        self.selection_metric = selection_metric
        self.precision = precision
        # run only these outer folds (0-based, in plan order): for benchmarks and debugging
        self.outer_folds = None if outer_folds is None else [int(i) for i in outer_folds]
        self.selected_params: dict[str, dict[str, Any]] = {}
        self.predictions: dict[str, dict[str, np.ndarray]] = {}
        self.fold_state_dicts: dict[str, dict] = {}
        self.used_fast_path: bool | None = None

    # ------------------------------------------------------------------------------
    def _metric_names(self) -> list[str]:
        metrics = self.trainer_cfg.get("metrics") or {}
        return list(metrics.keys())

    def _selection(self) -> str:
        names = self._metric_names()
        if self.selection_metric:
            if self.selection_metric not in names:
                raise ValueError(
                    f"selection_metric={self.selection_metric!r} is not among the trainer "
                    f"metrics {names}"
                )
            return self.selection_metric
        for name in ("cindex", "auc"):
            if name in names:
                return name
        raise ValueError(f"trainer_cfg.metrics {names} holds neither 'cindex' nor 'auc'")

    def _plan(self, dataset: Any) -> list[dict[str, Any]]:
        """All outer and inner folds, computed (and checked) before any training."""
        # split_cv returns positions in the dataset it is given; every fold below is a
        # Subset of the root dataset with absolute indices (the trainers and the fast path
        # index the root)
        root, base = root_dataset(dataset)
        plan = []
        for r in range(self.n_repeats_outer):
            outer = split_cv(dataset, self.n_splits_outer, self.stratified, self.split_mode,
                             random_state=r)
            for s, (tv_pos, te_pos) in enumerate(outer):
                tv_abs, te_abs = base[tv_pos], base[te_pos]
                train_val, test = Subset(root, tv_abs.tolist()), Subset(root, te_abs.tolist())
                inner = []
                for ri in range(self.n_repeats_inner if self.n_splits_inner else 0):
                    try:
                        folds = split_cv(train_val, self.n_splits_inner, self.stratified,
                                         self.split_mode, random_state=ri)
                    except ValueError as err:
                        raise ValueError(f"inner CV of outer fold {s + 1}: {err}") from None
                    # inner positions are positions in train_val: map them to the root
                    inner += [(ri, k, Subset(root, tv_abs[tr].tolist()),
                               Subset(root, tv_abs[va].tolist()))
                              for k, (tr, va) in enumerate(folds)]
                plan.append({"r": r, "s": s, "train_val": train_val, "test": test,
                             "inner": inner})
        return plan

    def _check_batch_size(self, plan: list[dict[str, Any]]) -> None:
        """Training drops the last incomplete batch (reference protocol): a training set
        smaller than the batch size would never take a step. Say so before any training,
        with the largest batch size that keeps every training set at one batch or more
        (the smallest training set's size) and the key that sets it."""
        key = "task.validation_scheme.trainer_cfg.batch_size"
        batch_size = int(self.trainer_cfg.get("batch_size", 16))
        grid_sizes = self.grid_search_params.get("batch_size")
        if grid_sizes is not None:  # a grid over batch sizes: its largest one must fit
            values = grid_sizes if isinstance(grid_sizes, (list, tuple)) else [grid_sizes]
            batch_size = max(int(v) for v in values)
            key = "task.validation_scheme.grid_search_params.batch_size"
        sizes = [(len(f["train_val"]), f"outer fold {f['s'] + 1}") for f in plan]
        sizes += [(len(tr), f"an inner fold of outer fold {f['s'] + 1}")
                  for f in plan for (_, _, tr, _) in f["inner"]]
        if sizes:
            n, where = min(sizes, key=lambda t: t[0])
            if n < batch_size:
                raise ValueError(
                    f"the training set of {where} has {n} slides, fewer than batch_size="
                    f"{batch_size}: with drop_last (the reference protocol) no training step "
                    f"would run; the largest batch size that keeps the protocol valid here is "
                    f"{n}: " + (f"pass {key}={n} (or a smaller value)" if key.endswith(
                        "trainer_cfg.batch_size") else f"keep every value of {key} at most {n}")
                )

    def _fast_reason(self) -> str | None:
        set_seed(self.seed)
        try:
            probe = instantiate(self.trainer_cfg)
        except Exception as err:  # noqa: BLE001 - reported to the user, plain path runs
            return f"could not build the trainer ({err})"
        return unsupported_reason(probe)

    # ------------------------------------------------------------------------------
    def run(self, dataset: Any) -> tuple[dict[str, dict[str, list]], dict[str, dict[str, list]]]:
        """Run the nested CV; returns ``(cv_train_val_metrics, cv_test_metrics)``:
        metric -> ``"repeat_{r}_split_{s}"`` -> per-epoch values of the retrained model."""
        root, _ = root_dataset(dataset)
        with open_dict(self.trainer_cfg):
            self.trainer_cfg.model.in_features = int(root.n_features)
            self.trainer_cfg.model.out_features = int(root.n_labels)
        selection = self._selection()
        plan = self._plan(dataset)
        if self.outer_folds is not None:
            plan = [fold for i, fold in enumerate(plan) if i in set(self.outer_folds)]
        self._check_batch_size(plan)
        grid = generate_permutations(self.grid_search_params)
        if self.n_splits_inner == 0 and len(grid) > 1:
            raise ValueError(
                f"n_splits_inner=0 (plain k-fold CV, no inner selection) takes one "
                f"hyper-parameter point, but grid_search_params has {len(grid)}"
            )
        use_fast = False
        if self.fast:
            reason = self._fast_reason()
            use_fast = reason is None
            if reason:
                logger.info("fast path unavailable (%s): using the plain path", reason)
        data = None
        if use_fast:
            try:
                data = preload(root)
            except MemoryError as err:
                logger.warning("fast path unavailable (%s): using the plain path", err)
                use_fast = False
        self.used_fast_path = use_fast

        n_inner = len(plan[0]["inner"]) if plan else 0
        total = len(plan) * (len(grid) * n_inner + 1)
        bar = tqdm(total=total, desc="nested CV runs", unit="run")
        cv_train, cv_test = {}, {}
        for fold in plan:
            key = f"repeat_{fold['r'] + 1}_split_{fold['s'] + 1}"
            if fold["inner"]:
                curves = self._inner(fold, grid, data, bar)
                best = self._select(grid, curves, selection)
            else:  # plain k-fold CV: the given point, trained for num_epochs
                epochs = int(update_trainer_cfg(self.trainer_cfg, grid[0]).num_epochs)
                best = {"grid_index": 0, "best_epoch": epochs - 1, "num_epochs": epochs,
                        "score": float("nan"), "score_std": float("nan"), "grid_scores": []}
            params = {**grid[best["grid_index"]]}
            logger.info(
                "%s: selected %s, %d epochs (inner mean %s %.4f)", key,
                {k: params[k] for k in params}, best["num_epochs"], selection, best["score"],
            )
            train_m, test_m = self._retrain(fold, params, best["num_epochs"], data, key)
            bar.update(1)
            self.selected_params[key] = {
                **{k: self.trainer_cfg.get(k) for k in _HP_KEYS},
                **params,
                "num_epochs": best["num_epochs"],
                "best_epoch": best["best_epoch"],
                "inner_score": best["score"],
                "inner_score_std": best["score_std"],
                "selection_metric": selection,
                "grid_scores": best["grid_scores"],
            }
            for name, values in train_m.items():
                cv_train.setdefault(name, {})[key] = values
            for name, values in test_m.items():
                cv_test.setdefault(name, {})[key] = values
        bar.close()
        for name, folds in cv_test.items():
            last = np.array([v[-1] if len(v) else np.nan for v in folds.values()], dtype=float)
            logger.info("test %s: %.4f (%.4f)", name, np.nanmean(last), np.nanstd(last))
        return cv_train, cv_test

    def _inner(self, fold: dict, grid: list[dict], data: Any, bar: Any) -> list[list[dict]]:
        """Validation curves: ``curves[grid_index]`` = one val-metric dict per inner run."""
        curves: list[list[dict]] = [[] for _ in grid]
        for ri, k, tr, va in fold["inner"]:
            seed = _seed(self.seed, "inner", fold["r"], fold["s"], ri, k)
            if data is not None:
                groups: dict[str, list[int]] = {}
                for gi, params in enumerate(grid):
                    struct = {p: v for p, v in params.items() if p not in _HP_KEYS}
                    groups.setdefault(repr(sorted(struct.items())), []).append(gi)
                for members in groups.values():
                    struct = {p: v for p, v in grid[members[0]].items() if p not in _HP_KEYS}
                    cfg = update_trainer_cfg(self.trainer_cfg, struct)
                    hps = [self._hp(cfg, grid[gi]) for gi in members]
                    results = EnsembleTrainer(cfg, self.precision).train(
                        data, tr.indices, va.indices, hps, int(cfg.num_epochs), seed
                    )
                    for gi, res in zip(members, results):
                        curves[gi].append(res.val_metrics)
                    bar.update(len(members))
            else:
                for gi, params in enumerate(grid):
                    trainer = self._trainer(update_trainer_cfg(self.trainer_cfg, params), seed)
                    _, val_metrics = trainer.train(tr, va)
                    curves[gi].append(val_metrics)
                    bar.update(1)
        return curves

    @staticmethod
    def _hp(cfg: DictConfig, params: Mapping[str, Any]) -> tuple[float, float]:
        return (float(params.get("learning_rate", cfg.learning_rate)),
                float(params.get("weight_decay", cfg.weight_decay)))

    @staticmethod
    def _trainer(cfg: DictConfig, seed: int) -> Any:
        set_seed(seed)
        trainer = instantiate(cfg)
        trainer.seed = seed
        if hasattr(trainer, "use_tqdm"):
            trainer.use_tqdm = False
        return trainer

    def _select(self, grid: list[dict], curves: list[list[dict]], selection: str) -> dict:
        """Best epoch of each grid point on the inner mean curve, then the best point."""
        scores, epochs, stds = [], [], []
        for runs in curves:
            mat = np.array([run[selection] for run in runs], dtype=float)  # (runs, epochs)
            mean = mat.mean(axis=0) if mat.size else np.array([np.nan])
            if np.all(np.isnan(mean)):
                e_star, score = len(mean) - 1, -np.inf
            else:
                e_star = int(np.nanargmax(mean))
                score = float(mean[e_star])
            col = mat[:, e_star] if mat.size else np.array([np.nan])
            stds.append(float(np.std(col, ddof=1)) if len(col) > 1 else float("nan"))
            scores.append(score)
            epochs.append(e_star)
        best = int(np.argmax(scores))
        return {
            "grid_index": best,
            "best_epoch": epochs[best],
            "num_epochs": epochs[best] + 1,
            "score": scores[best],
            "score_std": stds[best],
            "grid_scores": [
                {**grid[i], "score": scores[i], "score_std": stds[i], "num_epochs": epochs[i] + 1}
                for i in range(len(grid))
            ],
        }

    def _retrain(
        self, fold: dict, params: dict, num_epochs: int, data: Any, key: str
    ) -> tuple[dict[str, list], dict[str, list]]:
        """Retrain the selected config on the outer train part, test every epoch."""
        seed = _seed(self.seed, "outer", fold["r"], fold["s"])
        cfg = update_trainer_cfg(self.trainer_cfg, {**params, "num_epochs": num_epochs})
        test_idx = np.asarray(fold["test"].indices, dtype=np.int64)
        if data is not None:
            (res,) = EnsembleTrainer(cfg, self.precision).train(
                data, fold["train_val"].indices, test_idx, [self._hp(cfg, params)],
                num_epochs, seed, keep_state=True,
            )
            train_m, test_m = res.train_metrics, res.val_metrics
            labels, logits, state = res.val_labels, res.val_logits, res.state_dict
        else:
            trainer = self._trainer(cfg, seed)
            train_m, test_m = trainer.train(fold["train_val"], fold["test"])
            labels, logits = trainer.val_outputs
            state = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
        self.predictions[key] = {"indices": test_idx, "labels": labels, "logits": logits}
        self.fold_state_dicts[key] = state
        return train_m, test_m
