"""Fast path of the nested CV: many members trained at once on preloaded features.

A *member* is one run of ``TorchTrainer`` (one grid point on one fold). Members that share
a fold and a run seed (the grid points of one inner fold) share their initialisation and
their data order, exactly as separate seeded ``TorchTrainer`` runs would, so their
mini-batches are identical: the model runs once per step for all of them through
``torch.func.vmap`` over stacked weights (one wide matmul instead of G small ones). Each
member keeps its own Adam state, learning rate and weight decay.

What is exact and what is not:

* same folds, seeds, initial weights, batches (``drop_last``), Adam update (the formula of
  ``torch.optim.Adam``, L2-coupled), per-epoch metrics on whole-epoch logits;
* ``MeanPool``: the masked tile mean does not depend on the weights, so it is computed
  once per slide and the model sees one "tile" per slide (identical up to float rounding);
* ``Chowder`` (one output): only the ``n_top + n_bottom`` selected tiles receive a
  gradient, so each training step scores all tiles without autograd, then runs the model
  with autograd on the selected tiles only (the same logits and the same gradients; the
  backward pass over the 1000 tiles disappears);
* features are preloaded once as one tensor instead of being re-read and re-permuted at
  every epoch; the models are permutation invariant, so only float rounding differs;
* ``ABMIL`` and one-output ``Chowder``: the members' first tile layer (768 -> 128 on every
  tile of the shared batch) is one matmul for all members, forward and weight gradient
  (:class:`_SharedLinear`; the features are frozen, so no input gradient), and ABMIL's
  gated attention runs as stacked ``bmm`` (see :func:`_fused_forward`).

``precision="bf16"`` (opt-in) runs the tile-level matmuls in bfloat16 (ABMIL: the tile
layer forward and weight gradient and the attention/gate layers; Chowder: the no-autograd
scoring that chooses the selected tiles; other models: their forward under autocast),
with float32 master weights, Adam state, losses and metrics. About twice the matmul rate
on CPUs with bf16 units, at the cost of bf16 rounding: the metrics agree with fp32 within
fold noise, not to the last digit; the default is float32.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from rl_benchmarks.trainers.torch_trainer import order_seed
from rl_benchmarks.utils.memory import keep_freed_memory
from rl_benchmarks.utils.seed import set_seed

SUPPORTED_MODELS = ("MeanPool", "Chowder", "ABMIL", "DSMIL")


@dataclass
class Preloaded:
    """All slides of a dataset as one padded tensor (float32) with its mask and labels."""

    features: torch.Tensor  # (n, N, 3 + D)
    mask: torch.Tensor  # (n, N, 1) bool, True = padding
    labels: torch.Tensor  # (n, L)
    _tiles: dict = field(default_factory=dict, repr=False, compare=False)

    def tiles(self, metadata_cols: int, dtype: torch.dtype | None) -> torch.Tensor:
        """The feature columns (n, N, D): a view in float32; a copy made once (and kept)
        in a lower precision such as bfloat16 (the fused tile layer reads it directly)."""
        view = self.features[..., metadata_cols:]
        if dtype is None or dtype == view.dtype:
            return view
        key = (metadata_cols, dtype)
        if key not in self._tiles:
            self._tiles[key] = view.to(dtype)
        return self._tiles[key]

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def slide_means(self) -> Preloaded:
        """Each slide reduced to one row: the mean of its non-padded tiles (for MeanPool)."""
        keep = (~self.mask).to(self.features.dtype).transpose(1, 2)  # (n, 1, N)
        total = torch.bmm(keep, self.features)  # (n, 1, F), no full-size temporary
        means = total / keep.sum(dim=2, keepdim=True).clamp_min(1.0)
        return Preloaded(means, torch.zeros(len(self), 1, 1, dtype=torch.bool), self.labels)


def preload(dataset: Any) -> Preloaded:
    """Materialise a dataset of ``(features (n_i, F), label)`` items once.

    Uses the dataset's own ``as_tensor()`` (``SlideClassificationDataset``: one fixed tile
    draw per slide, a clear MemoryError when it cannot fit) when it has one, otherwise
    reads every item once and pads with zeros.
    """
    for name in ("as_tensor",):
        method = getattr(dataset, name, None)
        if callable(method):
            out = method()
            if isinstance(out, Mapping):
                feats, mask, labels = out["features"], out["mask"], out["labels"]
            else:
                feats, mask, labels = out
            feats = torch.as_tensor(feats, dtype=torch.float32)
            mask = torch.as_tensor(mask, dtype=torch.bool)
            if mask.ndim == 2:
                mask = mask.unsqueeze(-1)
            labels = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
            return Preloaded(feats, mask, labels.reshape(len(feats), -1))
    items = [dataset[i] for i in range(len(dataset))]
    if not items:
        raise ValueError("cannot preload an empty dataset")
    n_max = max(int(x[0].shape[0]) for x in items)
    width = int(items[0][0].shape[1])
    feats = torch.zeros(len(items), n_max, width, dtype=torch.float32)
    mask = torch.ones(len(items), n_max, 1, dtype=torch.bool)
    labels = []
    for i, (x, y) in enumerate(items):
        x = torch.as_tensor(x, dtype=torch.float32)
        feats[i, : x.shape[0]] = x
        mask[i, : x.shape[0]] = False
        labels.append(torch.as_tensor(np.asarray(y, dtype=np.float32)).reshape(-1))
    return Preloaded(feats, mask, torch.stack(labels))


def _adam_settings(optimizer: Any) -> dict[str, Any] | None:
    """betas/eps of an ``Adam`` class or partial; None when the optimizer is something else."""
    func, kwargs = optimizer, {}
    if isinstance(optimizer, functools.partial):
        func, kwargs = optimizer.func, dict(optimizer.keywords)
    if func is not torch.optim.Adam:
        return None
    if kwargs.get("amsgrad") or kwargs.get("maximize") or kwargs.get("decoupled_weight_decay"):
        return None
    extra = set(kwargs) - {"betas", "eps", "lr", "weight_decay", "foreach", "fused", "capturable",
                           "differentiable", "amsgrad", "maximize", "decoupled_weight_decay"}
    if extra:
        return None
    betas = tuple(kwargs.get("betas", (0.9, 0.999)))
    return {"betas": (float(betas[0]), float(betas[1])), "eps": float(kwargs.get("eps", 1e-8))}


def unsupported_reason(trainer: Any) -> str | None:
    """Why the fast path cannot reproduce this ``TorchTrainer`` run (None when it can)."""
    from rl_benchmarks.trainers.torch_trainer import TorchTrainer
    from rl_benchmarks.trainers.utils import slide_level_train_step, slide_level_val_step

    if type(trainer) is not TorchTrainer:
        return f"trainer {type(trainer).__name__} is not TorchTrainer"
    name = type(trainer.model).__name__
    if name not in SUPPORTED_MODELS:
        return f"model {name} is not one of {SUPPORTED_MODELS}"
    if _adam_settings(trainer.optimizer_fn) is None:
        return "the optimizer is not plain torch.optim.Adam"
    if trainer.gc_step != 1:
        return "gc_step != 1"
    if _unwrap(trainer.train_step) is not slide_level_train_step or _unwrap(
        trainer.val_step
    ) is not slide_level_val_step:
        return "custom train_step/val_step"
    for module in trainer.model.modules():
        if isinstance(module, nn.Dropout) and module.p > 0:
            return "the model has dropout (members would not match separate runs)"
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return "the model has batch norm"
    return None


def _unwrap(fn: Any) -> Any:
    return fn.func if isinstance(fn, functools.partial) else fn


@dataclass
class MemberResult:
    """What one member produced: per-epoch metrics, final weights, last val outputs."""

    learning_rate: float
    weight_decay: float
    train_metrics: dict[str, list[float]] = field(default_factory=dict)
    val_metrics: dict[str, list[float]] = field(default_factory=dict)
    state_dict: dict[str, torch.Tensor] | None = None
    val_labels: np.ndarray | None = None
    val_logits: np.ndarray | None = None


class EnsembleTrainer:
    """Train G members (learning rate, weight decay pairs) sharing one init and data order.

    ``trainer_cfg`` is the Hydra config of a ``TorchTrainer`` (model, criterion, metrics,
    batch size, optimizer, device). ``train`` reproduces, for every member, what
    ``TorchTrainer(..., learning_rate=lr, weight_decay=wd, seed=seed).train`` computes when
    the model is built right after ``set_seed(seed)``.
    """

    def __init__(self, trainer_cfg: DictConfig, precision: str = "fp32") -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision={precision!r}: expected 'fp32' or 'bf16'")
        self.cfg = trainer_cfg
        self.precision = precision

    def _autocast(self, device: torch.device) -> Any:
        if self.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @keep_freed_memory()  # per-step temporaries are tens of MB: no page faults anew
    def train(
        self,
        data: Preloaded,
        train_idx: Sequence[int],
        val_idx: Sequence[int] | None,
        members: Sequence[tuple[float, float]],
        num_epochs: int,
        seed: int,
        keep_state: bool = False,
    ) -> list[MemberResult]:
        """Train every member for ``num_epochs``; evaluate ``val_idx`` after each epoch."""
        set_seed(seed)
        trainer = instantiate(self.cfg)  # builds the model exactly as the plain path does
        reason = unsupported_reason(trainer)
        if reason:
            raise ValueError(f"fast path unavailable: {reason}")
        device = trainer.device
        model: nn.Module = trainer.model.to(device)
        model.train()
        criterion, metrics = trainer.criterion, trainer.metrics
        adam = _adam_settings(trainer.optimizer_fn)
        batch_size = trainer.batch_size
        if type(model).__name__ == "MeanPool":
            data = data.slide_means()
        feats, mask, labels = (t.to(device) for t in (data.features, data.mask, data.labels))
        train_idx = torch.as_tensor(np.asarray(train_idx, dtype=np.int64))
        val_idx = None if val_idx is None else torch.as_tensor(np.asarray(val_idx, dtype=np.int64))

        g = len(members)
        params, buffers = stack_module_state([model] * g)
        params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        base = copy.deepcopy(model).to("meta")

        def one(p: dict, b: dict, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return functional_call(base, (p, b), (x, m))

        forward = vmap(one, in_dims=(0, 0, None, None))
        low = torch.bfloat16 if self.precision == "bf16" else None
        fused = _fused_forward(base, params, buffers, one, low, data, feats)
        train_forward = fused or self._train_forward(base, forward, params, buffers, one)
        autocast = contextlib.nullcontext if fused else functools.partial(self._autocast, device)
        lrs = torch.tensor([float(lr) for lr, _ in members], dtype=torch.float32, device=device)
        wds = torch.tensor([float(wd) for _, wd in members], dtype=torch.float32, device=device)
        opt = _StackedAdam(params, lrs, wds, **adam)

        results = [MemberResult(float(lr), float(wd)) for lr, wd in members]
        names = [*metrics, "loss"]
        for r in results:
            r.train_metrics = {k: [] for k in names}
            r.val_metrics = {k: [] for k in names}
        generator = torch.Generator().manual_seed(order_seed(seed))
        n_train = len(train_idx)
        n_batches = n_train // batch_size
        for _epoch in range(int(num_epochs)):
            perm = train_idx[torch.randperm(n_train, generator=generator)]
            losses = torch.zeros(g, max(n_batches, 1))
            epoch_logits, epoch_labels = [], []
            for b in range(n_batches):
                idx = perm[b * batch_size : (b + 1) * batch_size].to(device)
                # the fused forward gathers its own rows (one pass, maybe bf16)
                x, m, y = (idx if fused else feats[idx]), mask[idx], labels[idx]
                with autocast():
                    logits = train_forward(x, m)  # (G, B, C)
                member_losses = torch.stack(
                    [criterion(logits[i].float(), y) for i in range(g)]
                )
                grads = torch.autograd.grad(
                    member_losses.sum(), list(params.values()), allow_unused=True
                )
                opt.step(grads)
                losses[:, b] = member_losses.detach().cpu()
                epoch_logits.append(logits.detach().float().cpu())
                epoch_labels.append(y.cpu())
            if n_batches:
                tr_logits = torch.cat(epoch_logits, dim=1).numpy()
                tr_labels = torch.cat(epoch_labels).numpy()
            for i, r in enumerate(results):
                if n_batches:
                    for k, fn in metrics.items():
                        r.train_metrics[k].append(float(fn(tr_labels, tr_logits[i])))
                    r.train_metrics["loss"].append(float(losses[i].mean()))
                else:
                    for k in names:
                        r.train_metrics[k].append(float("nan"))
            if val_idx is not None and len(val_idx):
                v_labels, v_logits, v_loss = self._evaluate(
                    fused or forward, params, buffers, feats, mask, labels, val_idx, criterion,
                    batch_size, fused is not None,
                )
                for i, r in enumerate(results):
                    for k, fn in metrics.items():
                        r.val_metrics[k].append(float(fn(v_labels, v_logits[i])))
                    r.val_metrics["loss"].append(float(v_loss[i]))
                    r.val_labels, r.val_logits = v_labels, v_logits[i]
        if keep_state:
            for i, r in enumerate(results):
                r.state_dict = {k: v[i].detach().cpu().clone() for k, v in params.items()}
                r.state_dict.update({k: v[i].detach().cpu().clone() for k, v in buffers.items()})
        return results

    @staticmethod
    def _train_forward(
        base: nn.Module, forward: Callable, params: dict, buffers: dict, one: Callable
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The training forward: the model itself, or for one-output Chowder the
        two-phase "score everything without autograd, then train on the selection"."""

        def plain(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return forward(params, buffers, x, _no_padding(m))

        if type(base).__name__ != "Chowder" or int(getattr(base, "out_features", 0)) != 1:
            return plain
        n_top, n_bottom = int(base.n_top), int(base.n_bottom)
        k, meta = n_top + n_bottom, int(base.metadata_cols)
        prefix = "score_model."
        score_names = [n for n in params if n.startswith(prefix)]
        score_model = base.score_model
        selected = vmap(one, in_dims=(0, 0, 0, None))

        def scores_of(p: dict, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return functional_call(score_model, p, (x, m))

        score_all = vmap(scores_of, in_dims=(0, None, None))

        def two_phase(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            valid = (~m[..., 0]).sum(dim=1)
            if int(valid.min()) < k:  # the extreme layer would pick padding: run as is
                return plain(x, m)
            with torch.no_grad():
                sp = {n[len(prefix):]: params[n] for n in score_names}
                m_arg = _no_padding(m)
                s = score_all(sp, x[..., meta:], m_arg)[..., 0]  # (G, B, N)
                idx = _extreme_indices(s, m_arg, n_top, n_bottom)  # (G, B, k)
            rows = torch.arange(x.shape[0], device=x.device).view(1, -1, 1)
            x_sel = x[rows, idx]  # (G, B, k, F)
            return selected(params, buffers, x_sel, None)  # the selection has no padding

        return two_phase

    @torch.no_grad()
    def _evaluate(
        self,
        forward: Callable,
        params: dict,
        buffers: dict,
        feats: torch.Tensor,
        mask: torch.Tensor,
        labels: torch.Tensor,
        val_idx: torch.Tensor,
        criterion: nn.Module,
        batch_size: int,
        is_fused: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Eval-mode pass in batches of ``batch_size`` (the val loss is a mean of batch
        means, as in the plain path)."""
        outs, losses = [], []
        for start in range(0, len(val_idx), batch_size):
            idx = val_idx[start : start + batch_size].to(feats.device)
            if is_fused:  # (slide indices, mask) -> logits; its precision is built in
                logits = forward(idx, mask[idx]).float()
            else:
                with self._autocast(feats.device):
                    logits = forward(params, buffers, feats[idx], _no_padding(mask[idx])).float()
            y = labels[idx]
            losses.append(torch.stack([criterion(logits[i], y) for i in range(len(logits))]))
            outs.append(logits.float().cpu())
        v_logits = torch.cat(outs, dim=1).numpy()
        v_loss = torch.stack(losses, dim=1).mean(dim=1).cpu().numpy()
        return labels[val_idx.to(labels.device)].cpu().numpy(), v_logits, v_loss


class _SharedLinear(torch.autograd.Function):
    """``y[g] = x @ W[g].T + b[g]`` for G members sharing the input ``x`` (M, D).

    One (M, D) x (D, G*H) matmul forward and one (G*H, M) x (M, D) matmul for the weight
    gradient, instead of G narrow ones (vmap); ``x`` is a frozen input and gets no
    gradient. ``low`` (e.g. bfloat16) runs both matmuls in that dtype (weights, Adam state
    and everything after the layer stay float32). Returns (G, M, H).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                low: torch.dtype | None) -> torch.Tensor:
        g, h, d = weight.shape
        w = weight.reshape(g * h, d)
        if low is not None:
            x, w = x.to(low), w.to(low)
        y = (x @ w.t()).view(-1, g, h)
        # (M, G, H) -> contiguous float32 (G, M, H) in one pass (fast bmm next)
        out = torch.empty(g, y.shape[0], h, dtype=torch.float32, device=y.device)
        out.copy_(y.transpose(0, 1))
        if bias is not None:
            out += bias.unsqueeze(1)
        ctx.save_for_backward(x)
        ctx.shape, ctx.has_bias = (g, h, d), bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        (x,) = ctx.saved_tensors
        g, h, d = ctx.shape
        # (G, M, H) -> (M, G*H) in the matmul dtype, one pass
        grad2 = torch.empty(grad.shape[1], g * h, dtype=x.dtype, device=grad.device)
        grad2.view(-1, g, h).copy_(grad.transpose(0, 1))
        grad_w = (grad2.t() @ x).float().view(g, h, d)
        grad_b = grad.sum(1) if ctx.has_bias else None
        return None, grad_w, grad_b, None


def _fused_forward(
    base: nn.Module, params: dict, buffers: dict, one: Callable, low: torch.dtype | None,
    data: Preloaded, feats: torch.Tensor,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """``(slide indices, mask) -> (G, B, C)`` logits with the members' 768->H tile layer fused into
    one matmul (:class:`_SharedLinear`), for ABMIL (plain Linear tile embedding) and
    one-output Chowder (one hidden tile layer); None for other models or layouts.

    The rest of the model runs as itself (vmap over the members). Used for training and,
    under ``no_grad``, for evaluation. Chowder scores every tile without autograd, then
    runs the model with autograd on its ``n_top + n_bottom`` selected tiles (same logits,
    same gradients).
    """
    name = type(base).__name__
    meta = int(getattr(base, "metadata_cols", 0))
    if name not in ("ABMIL", "Chowder") or feats.device != data.features.device:
        return None
    tiles = data.tiles(meta, low)
    if name == "ABMIL":
        layers = base.tiles_emb.hidden_layers
        if len(layers) != 1 or type(layers[0]) is not nn.Linear:
            return None
        lin = "tiles_emb.hidden_layers.0."
        from rl_benchmarks.models.slide_models.utils.attention import GatedAttention

        if type(base.attention_layer) is not GatedAttention or buffers:
            return None
        temperature = float(base.attention_layer.temperature)
        a = "attention_layer."
        mlp = {n[len("mlp."):]: n for n in params if n.startswith("mlp.")}
        head = vmap(lambda p, v: functional_call(base.mlp, p, (v,)), in_dims=(0, 0))

        def abmil(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            xt = tiles[x]  # (B, N, D): one gather of the feature columns
            b, n = xt.shape[0], xt.shape[1]
            v = _SharedLinear.apply(xt.view(b * n, -1), params[lin + "weight"],
                                    params.get(lin + "bias"), low)
            g, d = v.shape[0], v.shape[-1]
            # GatedAttention, stacked over the members (bmm): tanh(att v) * sigmoid(gate v),
            # then w, softmax over the tiles, attention pooling; with ``low`` the two
            # tile-level d x d products run under autocast too
            ctx = (torch.autocast(x.device.type, dtype=low) if low is not None
                   else contextlib.nullcontext())
            with ctx:
                v_in = v if low is None else v.to(low)  # cast once for both products
                h = torch.tanh(_stacked_linear(params, a + "att.", v_in)) * torch.sigmoid(
                    _stacked_linear(params, a + "gate.", v_in)
                )
            logits = _stacked_linear(params, a + "w.", h.float()).view(g, b, n, 1)
            m_arg = _no_padding(m)
            if m_arg is not None:
                logits = logits.masked_fill(m_arg.unsqueeze(0), float("-inf"))
            weights = torch.softmax(logits / temperature, dim=2)  # (G, B, N, 1)
            pooled = torch.matmul(weights.transpose(2, 3), v.view(g, b, n, d)).squeeze(2)
            return head({k: params[full] for k, full in mlp.items()}, pooled)

        return abmil
    if name != "Chowder" or int(getattr(base, "out_features", 0)) != 1:
        return None
    from rl_benchmarks.models.slide_models.utils.tile_layers import MaskedLinear

    # the reference's flat tile MLP: [MaskedLinear, activation, Linear] (one hidden layer)
    layers = base.score_model.hidden_layers
    if (len(layers) != 3 or type(layers[0]) is not MaskedLinear
            or type(layers[2]) is not nn.Linear or buffers):
        return None
    act = layers[1]
    mask_value = float(layers[0].mask_value)
    n_top, n_bottom = int(base.n_top), int(base.n_bottom)
    k = n_top + n_bottom
    p1, p2 = "score_model.hidden_layers.0.", "score_model.hidden_layers.2."
    selected = vmap(one, in_dims=(0, 0, 0, None))
    whole = vmap(one, in_dims=(0, 0, None, None))

    def chowder(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        m_arg = _no_padding(m)
        if int((~m[..., 0]).sum(dim=1).min()) < k:  # the selection would reach padding
            return whole(params, buffers, feats[x], m_arg)
        with torch.no_grad():
            xt = tiles[x]  # (B, N, D): one gather of the feature columns
            b, n = xt.shape[0], xt.shape[1]
            # every member's tile scores from one (M, D) x (D, G*H) product and one
            # (M, G*H) x (G*H, G) block-diagonal product, in the tiles' dtype (the scores
            # only choose the tiles; the logits are recomputed on them in float32)
            w1, b1 = params[p1 + "weight"], params.get(p1 + "bias")  # (G, H, D), (G, H)
            g, hdim = w1.shape[0], w1.shape[1]
            w = w1.reshape(g * hdim, -1).to(xt.dtype).t()
            x2 = xt.view(b * n, -1)
            h = x2 @ w if b1 is None else torch.addmm(b1.reshape(-1).to(xt.dtype), x2, w)
            if m_arg is not None:
                h = h.masked_fill(m_arg.reshape(b * n, 1), mask_value)
            h = act(h)
            w2, b2 = params[p2 + "weight"], params.get(p2 + "bias")  # (G, 1, H), (G, 1)
            s = (h @ torch.block_diag(*w2.transpose(1, 2)).to(h.dtype)).float()  # (M, G)
            if b2 is not None:
                s = s + b2.reshape(1, g)
            s = s.t().reshape(g, b, n)
            idx = _extreme_indices(s, m_arg, n_top, n_bottom)  # (G, B, k)
        x_sel = feats[x.view(1, -1, 1), idx]  # (G, B, k, F)
        return selected(params, buffers, x_sel, None)  # the selection has no padding

    return chowder


def _extreme_indices(scores: torch.Tensor, mask: torch.Tensor | None, n_top: int,
                     n_bottom: int) -> torch.Tensor:
    """Indices (G, B, n_top + n_bottom) of each member's highest then lowest tile scores
    (G, B, N), never at padding (``mask`` (B, N, 1), True = padding): the tiles Chowder's
    extreme layer keeps."""
    s_top = s_bottom = scores
    if mask is not None:
        pad = mask[..., 0].unsqueeze(0)
        s_top = scores.masked_fill(pad, float("-inf"))
        s_bottom = scores.masked_fill(pad, float("inf"))
    top = s_top.topk(n_top, dim=-1).indices
    bottom = s_bottom.topk(n_bottom, dim=-1, largest=False).indices
    return torch.cat([top, bottom], dim=-1)


def _stacked_linear(params: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    """The members' ``Linear`` ``prefix`` on their own inputs: (G, M, i) -> (G, M, o)."""
    w, b = params[prefix + "weight"], params.get(prefix + "bias")
    if b is None:
        return torch.bmm(x, w.transpose(1, 2))
    return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))


def _no_padding(mask: torch.Tensor) -> torch.Tensor | None:
    """``None`` when a batch has no padding: the models then skip their masking work."""
    return None if not bool(mask.any()) else mask


class _StackedAdam:
    """``torch.optim.Adam`` (L2-coupled weight decay) over stacked member weights, with a
    learning rate and weight decay per member (first dimension)."""

    def __init__(
        self,
        params: dict[str, torch.Tensor],
        lrs: torch.Tensor,
        wds: torch.Tensor,
        betas: tuple[float, float],
        eps: float,
    ) -> None:
        self.params = list(params.values())
        self.lrs, self.wds = lrs, wds
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.steps = [0] * len(self.params)  # per parameter, as torch.optim.Adam counts
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor | None]) -> None:
        """One Adam step; a parameter without gradient (unused) is left untouched."""
        for i, (p, grad, m, v) in enumerate(zip(self.params, grads, self.exp_avg,
                                                 self.exp_avg_sq)):
            if grad is None:
                continue
            self.steps[i] += 1
            bc1 = 1 - self.beta1 ** self.steps[i]
            bc2_sqrt = math.sqrt(1 - self.beta2 ** self.steps[i])
            view = (-1,) + (1,) * (p.ndim - 1)
            grad = grad + p * self.wds.view(view)
            m.lerp_(grad, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            p.sub_((self.lrs.view(view) / bc1) * m / denom)
