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
  gated attention runs as one stacked ``baddbmm`` for both of its products and one fused
  elementwise gate and its score layer (:class:`_GatedScores`, see
  :func:`_fused_forward`).

* ``DSMIL``: the first layers of its two tile MLPs (equally wide, as in the reference), of
  all members, are one :class:`_SharedLinear` matmul, their activation one pass over its output; the rest of
  the tile MLPs and the attention run as the model itself (``vmap``), and the bag pooling
  of all members is one product over the shared features (no per-member copy of them);
* models with dropout (``HIPTMIL``; any model configured with dropout): the members run
  one after the other from the same generator state (:func:`_replay_forward`), so each
  gets the dropout masks of its separate run (the runs share seed and batch shapes); the
  first member's masks are recorded and handed to the others (:class:`_RandomCapture`);
  the draws of the plain path's DataLoader are replayed (:func:`_loader_draw`); on a batch
  without padding the math attention's ``_safe_softmax`` runs as the plain softmax (the
  same values: no row is all -inf; three passes over the attention logits fewer);
* ``TransMIL``: member by member (no work to share); its PPEG runs as one convolution
  with the three kernels summed
  (``PPEG.merge_kernels``: the same function, 49 instead of 83 taps); its output depends
  on the tile order, so with a dataset that shuffles at every read each read gets a fresh
  order here too (:func:`_batch`); with ``shuffle=False`` the orders are the plain path's;
* every batch is cut to its longest slide (what pad-collate gives the plain path);
* Adam is ``torch.optim.Adam`` itself, one param group per member over views of the stacked
  weights (fused where torch has the kernel; :class:`_StackedAdam`).

``precision="bf16"`` (opt-in) runs the tile-level matmuls in bfloat16 (ABMIL: the tile
layer forward and weight gradient and the attention/gate layers; Chowder: the no-autograd
scoring that chooses the selected tiles; DSMIL: its fused first layers, whose output stays
bfloat16, and the rest of the model under autocast; other models: their forward under
autocast, and attention with dropout with both products in bfloat16, see
:func:`_low_precision_attention`),
with float32 master weights, Adam state, losses and metrics. About twice the matmul rate
on CPUs with bf16 units, at the cost of bf16 rounding: the metrics agree with fp32 within
fold noise, not to the last digit; the default is float32.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from rl_benchmarks.trainers.torch_trainer import order_seed
from rl_benchmarks.utils.memory import keep_freed_memory
from rl_benchmarks.utils.seed import set_seed

SUPPORTED_MODELS = ("MeanPool", "Chowder", "ABMIL", "DSMIL", "HIPTMIL", "TransMIL")
# models whose output depends on the order of the tiles (TransMIL: the squaring copies the
# first tiles and PPEG convolves the tiles laid out on a grid in their order)
ORDER_DEPENDENT_MODELS = ("TransMIL",)


@dataclass
class Preloaded:
    """All slides of a dataset as one padded tensor (float32) with its mask and labels."""

    features: torch.Tensor  # (n, N, 3 + D)
    mask: torch.Tensor  # (n, N, 1) bool, True = padding
    labels: torch.Tensor  # (n, L)
    # True when every read of a slide gives its tiles in one fixed order (a dataset with
    # ``shuffle=False``); False when each read may shuffle them (the reference's datasets)
    fixed_order: bool = False
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
        return Preloaded(means, torch.zeros(len(self), 1, 1, dtype=torch.bool), self.labels,
                         self.fixed_order)


def preload(dataset: Any) -> Preloaded:
    """Materialise a dataset of ``(features (n_i, F), label)`` items once.

    Uses the dataset's own ``as_tensor()`` (``SlideClassificationDataset``: one fixed tile
    draw per slide, a clear MemoryError when it cannot fit) when it has one, otherwise
    reads every item once and pads with zeros. ``fixed_order`` is True only for a dataset
    that says it does not shuffle (``shuffle=False``).
    """
    fixed_order = getattr(dataset, "shuffle", None) is False
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
            return Preloaded(feats, mask, labels.reshape(len(feats), -1), fixed_order)
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
    return Preloaded(feats, mask, torch.stack(labels), fixed_order)


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
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return "the model has batch norm"
    return None


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` draws random numbers in training (dropout anywhere, including the
    attention dropout of ``nn.MultiheadAttention``, ``SelfAttention`` and TransMIL)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout) and module.p > 0:
            return True
        if isinstance(module, nn.MultiheadAttention) and module.dropout > 0:
            return True
        p = getattr(module, "attn_dropout", 0.0)  # SelfAttention keeps a probability
        if isinstance(p, (int, float)) and p > 0:
            return True
    return False


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


@contextlib.contextmanager
def _quiet_vmap() -> Iterator[None]:
    """vmap runs ops without a batching rule member by member, and warns each time: silence
    that one warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not yet implemented the batching rule")
        yield


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
    @_quiet_vmap()
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
        name = type(model).__name__
        if name == "MeanPool":
            data = data.slide_means()
        feats, mask, labels = (t.to(device) for t in (data.features, data.mask, data.labels))
        train_idx = torch.as_tensor(np.asarray(train_idx, dtype=np.int64))
        val_idx = None if val_idx is None else torch.as_tensor(np.asarray(val_idx, dtype=np.int64))

        g = len(members)
        params, buffers = stack_module_state([model] * g)
        params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        base = copy.deepcopy(model).to("meta")
        pos_enc = getattr(base, "pos_enc", None)
        if name == "TransMIL" and pos_enc is not None:
            pos_enc.merge_kernels = True  # same function, 49 instead of 83 taps (PPEG docs)

        def one(p: dict, b: dict, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return functional_call(base, (p, b), (x, m))

        forward = vmap(one, in_dims=(0, 0, None, None))
        low = torch.bfloat16 if self.precision == "bf16" else None
        # dropout: the members run one after the other on the very random numbers that
        # separate runs draw (see _replay_forward); no fused shortcut (they skip dropout)
        replay = has_dropout(model)
        # TransMIL member by member: under vmap the members' PPEG convolutions become one
        # grouped convolution, which oneDNN runs in bfloat16 no faster than in fp32 (one
        # convolution per member: 1.3x faster), and CPU flash attention has no vmap rule
        # (vmap loops over the members anyway); its FLOPs are per member, nothing to share
        loop = replay or name == "TransMIL"
        fused = None if replay else _fused_forward(base, params, buffers, one, low, data, feats)
        if loop:
            train_forward = _replay_forward(base, params, buffers, device, replay, low)
        else:
            train_forward = fused or self._train_forward(base, forward, params, buffers, one)
        autocast = contextlib.nullcontext if fused else functools.partial(self._autocast, device)
        # TransMIL's output depends on the tile order: when the dataset shuffles its tiles
        # at every read (the reference does), every read here gets a fresh order too
        reorder = None
        if name in ORDER_DEPENDENT_MODELS and not data.fixed_order:
            reorder = torch.Generator().manual_seed(order_seed(seed) ^ 0x5EED)
        opt = _StackedAdam(params, [lr for lr, _ in members], [wd for _, wd in members], **adam)

        results = [MemberResult(float(lr), float(wd)) for lr, wd in members]
        names = [*metrics, "loss"]
        for r in results:
            r.train_metrics = {k: [] for k in names}
            r.val_metrics = {k: [] for k in names}
        generator = torch.Generator().manual_seed(order_seed(seed))
        n_train = len(train_idx)
        n_batches = n_train // batch_size
        for _epoch in range(int(num_epochs)):
            _loader_draw()  # what iterating the plain path's DataLoader draws
            perm = train_idx[torch.randperm(n_train, generator=generator)]
            losses = torch.zeros(g, max(n_batches, 1))
            epoch_logits, epoch_labels = [], []
            for b in range(n_batches):
                idx = perm[b * batch_size : (b + 1) * batch_size].to(device)
                if fused:  # the fused forward gathers its own rows (one pass, maybe bf16)
                    x, m = idx, mask[idx]
                else:
                    x, m = _batch(feats, mask, idx, reorder)
                y = labels[idx]
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
            if val_idx is not None:
                _loader_draw()
            if val_idx is not None and len(val_idx):
                base.eval()
                try:
                    if loop:
                        eval_forward = _replay_forward(base, params, buffers, device, False)
                    elif fused:
                        eval_forward = fused
                    else:
                        def eval_forward(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
                            return forward(params, buffers, x, _no_padding(m))
                    v_labels, v_logits, v_loss = self._evaluate(
                        eval_forward, feats, mask, labels, val_idx, criterion, batch_size,
                        fused is not None, reorder,
                    )
                finally:
                    base.train()
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
        feats: torch.Tensor,
        mask: torch.Tensor,
        labels: torch.Tensor,
        val_idx: torch.Tensor,
        criterion: nn.Module,
        batch_size: int,
        is_fused: bool = False,
        reorder: torch.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Eval-mode pass in batches of ``batch_size`` (the val loss is a mean of batch
        means, as in the plain path). ``forward(x, mask) -> (G, B, C)`` takes the batch's
        slide indices when ``is_fused`` (its precision is built in), else its features."""
        outs, losses = [], []
        for start in range(0, len(val_idx), batch_size):
            idx = val_idx[start : start + batch_size].to(feats.device)
            if is_fused:
                logits = forward(idx, mask[idx]).float()
            else:
                x, m = _batch(feats, mask, idx, reorder)
                with self._autocast(feats.device):
                    logits = forward(x, m).float()
            y = labels[idx]
            losses.append(torch.stack([criterion(logits[i], y) for i in range(len(logits))]))
            outs.append(logits.float().cpu())
        v_logits = torch.cat(outs, dim=1).numpy()
        v_loss = torch.stack(losses, dim=1).mean(dim=1).cpu().numpy()
        return labels[val_idx.to(labels.device)].cpu().numpy(), v_logits, v_loss


def _loader_draw() -> None:
    """Draw what creating a DataLoader iterator draws from the global generator (its base
    seed): the plain path does it once per epoch for training and once for validation, so
    the random numbers of dropout stay those of separate runs."""
    torch.empty((), dtype=torch.int64).random_()


def _batch(feats: torch.Tensor, mask: torch.Tensor, idx: torch.Tensor,
           reorder: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``idx`` cut to the batch's longest slide (what pad-collate gives the plain
    path; shapes then match its shapes, and less padding means less work). With
    ``reorder``, each slide's real tiles come in a fresh random order (padding stays last)."""
    m = mask[idx]
    n = int((~m[..., 0]).sum(dim=1).max()) if len(idx) else 0
    x, m = feats[idx, : max(n, 1)], m[:, : max(n, 1)]
    if reorder is not None:
        keys = torch.rand(x.shape[0], x.shape[1], generator=reorder).to(x.device)
        keys = keys.masked_fill(m[..., 0], 2.0)  # padding sorts after the real tiles
        order = keys.argsort(dim=1)
        x = torch.gather(x, 1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return x, m


def _replay_forward(base: nn.Module, params: dict, buffers: dict, device: torch.device,
                    random: bool = True, low: torch.dtype | None = None,
                    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(x, mask) -> (G, B, C)``: the members one after the other, each from the same
    state of the random generators, so each draws the dropout masks that its separate run
    draws (separate runs share the seed and the batch shapes, hence every random number).
    The model runs as itself (no vmap: the same kernels as the plain path, whose random
    numbers vmap does not reproduce), with the plain path's mask (never ``None``).

    On the CPU in training, the first member's random tensors (dropout's ``bernoulli_``) are
    recorded and handed to the next members instead of being drawn again (the same values,
    without the cost of drawing them: about a quarter of HIPT-MIL's step). ``random=False``
    (a model without dropout, run member by member for speed) records nothing. With
    ``low`` (bfloat16, the forward under autocast), attention with dropout runs its products
    in ``low`` (:func:`_low_precision_attention`)."""
    g = len(next(iter(params.values())))
    cuda = device.type == "cuda"

    def replay(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state(device) if cuda else None
        capture = (_RandomCapture() if random and device.type == "cpu" and base.training
                   and g > 1 else None)
        if capture is not None:
            # no padding: no attention row is all -inf, so softmax = _safe_softmax
            capture.plain_softmax = not bool(m.any())
        outs, after = [], None
        # one unbind per weight, not G selects: the backward then stacks the members'
        # gradients once, where each select's backward zero-fills a full (G, ...) gradient
        # and the G of them are summed (at TransMIL's 4 x 49M weights, seconds per step)
        members = {k: v.unbind(0) for k, v in params.items()}
        members.update({k: v.unbind(0) for k, v in buffers.items()})
        for i in range(g):
            torch.set_rng_state(cpu_state)
            if cuda:
                torch.cuda.set_rng_state(cuda_state, device)
            tensors = {k: v[i] for k, v in members.items()}
            ctx = capture.member(i) if capture is not None else contextlib.nullcontext()
            with ctx, _low_precision_attention(low):
                outs.append(functional_call(base, tensors, (x, m)))
            if i == 0:
                after = torch.get_rng_state()
        if capture is not None:  # where the first member left the generator
            torch.set_rng_state(after)
        return torch.stack(outs)

    return replay


_SDPA = F.scaled_dot_product_attention


@contextlib.contextmanager
def _low_precision_attention(low: torch.dtype | None) -> Iterator[None]:
    """Within: ``scaled_dot_product_attention`` with dropout on ``low`` (bfloat16) inputs
    runs its two products in ``low`` (:func:`_attention_in`); other calls go through.

    With dropout, the CPU runs the math kernel, which computes bfloat16 inputs in float32
    (it upcasts them): HIPT-MIL's attention products under autocast ran at the float32
    rate. The softmax, the dropout draws (the same calls on the same float32 shape, hence
    the same masks) and their gradients stay float32. ``nn.MultiheadAttention`` calls
    ``F.scaled_dot_product_attention`` by its module name, which is swapped here (one
    thread: the training loop's); nothing changes without ``low``."""
    if low is None:
        yield
        return

    def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
             is_causal: bool = False, scale: float | None = None,
             enable_gqa: bool = False) -> torch.Tensor:
        if dropout_p > 0 and q.dtype == low and not is_causal and not enable_gqa:
            return _attention_in(low, q, k, v, attn_mask, dropout_p, scale)
        return _SDPA(q, k, v, attn_mask, dropout_p, is_causal, scale=scale,
                     enable_gqa=enable_gqa)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _SDPA


def _attention_in(dtype: torch.dtype, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  attn_mask: torch.Tensor | None, dropout_p: float,
                  scale: float | None = None) -> torch.Tensor:
    """``softmax(q k^T * scale + mask)`` with dropout, times ``v``: what the math kernel of
    ``scaled_dot_product_attention`` computes (a boolean mask keeps where True, a float
    mask is added; fully masked rows give 0), with both products in ``dtype`` and the
    softmax and dropout in float32 (the same dropout draws as the kernel's)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.matmul(q.to(dtype) * scale, k.to(dtype).transpose(-2, -1))
    if attn_mask is None:
        p = torch.softmax(s, -1, dtype=torch.float32)
    else:
        if attn_mask.dtype == torch.bool:
            s = s.float().masked_fill(~attn_mask, float("-inf"))
        else:
            s = torch.add(s, attn_mask)  # float32 (mixed-dtype add, one pass)
        p = _safe_softmax(s.float())
    if dropout_p > 0:
        p = F.dropout(p, dropout_p, training=True)
    return torch.matmul(p.to(dtype), v.to(dtype))


def _safe_softmax(s: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, 0 (not NaN) on rows that are all -inf."""
    if _SAFE_SOFTMAX is not None:
        return _SAFE_SOFTMAX(s, -1)
    p = torch.softmax(s, -1)
    return p.masked_fill(torch.isneginf(s).all(-1, keepdim=True), 0.0)


_SAFE_SOFTMAX = getattr(torch.ops.aten, "_safe_softmax", None)
_SAFE_SOFTMAX = None if _SAFE_SOFTMAX is None else _SAFE_SOFTMAX.default


class _RandomCapture:
    """Record the first member's random tensors, give them to the next members in order.

    Only ops whose whole result is the random draw are handed on (``bernoulli_``,
    ``bernoulli``, ``uniform_``, ``normal_``, ``rand``, ``randn``, ...). If the first member
    draws with any other random op, nothing is handed on (the members then draw everything
    themselves from the restored generator state, which is exact too)."""

    def __init__(self) -> None:
        self.records: list[torch.Tensor] = []
        self.usable = True
        # True when the batch has no padding: the math attention's ``_safe_softmax`` (a
        # softmax that gives 0 instead of NaN on rows that are all -inf, at the cost of three
        # extra passes over the (heads, N, N) logits) runs as the plain softmax, which is
        # the same function on rows with a finite entry (the same kernel, the same bits;
        # its backward is the same ``_softmax_backward_data``)
        self.plain_softmax = False

    @contextlib.contextmanager
    def member(self, i: int) -> Any:
        if i > 0 and not self.usable:
            yield
            return
        mode = _RandomMode(self, record=i == 0)
        with mode:
            yield
        if i > 0 and mode.pos != len(self.records):
            raise RuntimeError("dropout replay: the members drew different random tensors")


def _random_ops() -> tuple[set, set]:
    aten = torch.ops.aten
    inplace = {aten.bernoulli_.float, aten.bernoulli_.Tensor, aten.uniform_.default,
               aten.normal_.default}
    out_of_place = {aten.bernoulli.default, aten.bernoulli.p, aten.rand.default,
                    aten.randn.default, aten.rand_like.default, aten.randn_like.default}
    return inplace, out_of_place




class _RandomMode(TorchDispatchMode):
    """Dispatch mode of :class:`_RandomCapture` for one member."""

    def __init__(self, capture: _RandomCapture, record: bool) -> None:
        super().__init__()
        self.capture, self.record, self.pos = capture, record, 0
        self.inplace, self.out_of_place = _random_ops()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is _SAFE_SOFTMAX and self.capture.plain_softmax:
            x, dim = args[0], args[1]
            dtype = args[2] if len(args) > 2 else kwargs.get("dtype")
            if dtype is not None:
                x = x.to(dtype)
            return torch.ops.aten._softmax.default(x, dim, False)
        handled = func in self.inplace or func in self.out_of_place
        if not handled:
            if self.record and torch.Tag.nondeterministic_seeded in func.tags:
                self.capture.usable = False  # another random op: hand nothing on
            return func(*args, **kwargs)
        if self.record:
            out = func(*args, **kwargs)
            self.capture.records.append(out.detach().clone())
            return out
        saved = self.capture.records[self.pos]
        self.pos += 1
        if func in self.inplace:
            if args[0].shape != saved.shape:
                raise RuntimeError("dropout replay: the members drew different random tensors")
            return args[0].copy_(saved)
        return saved.clone()


class _SharedLinear(torch.autograd.Function):
    """``y[g] = x @ W[g].T + b[g]`` for G members sharing the input ``x`` (M, D).

    One (M, D) x (D, G*H) matmul forward and one (G*H, M) x (M, D) matmul for the weight
    gradient, instead of G narrow ones (vmap); ``x`` is a frozen input and gets no
    gradient. ``low`` (e.g. bfloat16) runs both matmuls in that dtype (weights, Adam state
    and everything after the layer stay float32). Returns (G, M, H) in ``low`` when set (its
    consumers run in ``low`` anyway: no cast pass, half the bytes; the bias is rounded to
    ``low`` too, and the sum rounded once), else in float32.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                low: torch.dtype | None) -> torch.Tensor:
        g, h, d = weight.shape
        w = weight.reshape(g * h, d)
        if low is not None:
            x, w = x.to(low), w.to(low)
        y = (x @ w.t()).view(-1, g, h)
        # (M, G, H) -> contiguous (G, M, H) with the bias added, in one pass (fast bmm
        # next), in the output's dtype; the bias too (a
        # float32 bias on a bfloat16 tensor runs a slower mixed-dtype loop: measured alone
        # at DSMIL's (8, 16000, 200), 206 against 84 CPU ms; the sum is still rounded once)
        dtype = low if low is not None else torch.float32
        out = torch.empty(g, y.shape[0], h, dtype=dtype, device=y.device)
        if bias is None:
            out.copy_(y.transpose(0, 1))
        else:
            torch.add(y.transpose(0, 1), bias.to(dtype).unsqueeze(1), out=out)
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
        # (a bfloat16 gradient is summed with float32 accumulation, without a float32 copy)
        grad_b = grad.sum(1).float() if ctx.has_bias else None
        return None, grad_w, grad_b, None


class _GatedScores(torch.autograd.Function):
    """ABMIL's gated-attention scores ``w(tanh(v Wa^T + ba) * sigmoid(v Wg^T + bg)) + bw`` for
    G members: one ``baddbmm`` (G, M, d) x (G, d, 2d) for both gate products (``w_cat`` =
    [Wa; Wg] (G, 2d, d), ``b_cat`` (G, 2d) or None), one in-place sigmoid pass over both
    halves with ``tanh(a) = 2 sigmoid(2a) - 1`` (the same function; float32 ``tanh`` costs
    several times a sigmoid on CPUs), then the score layer ``w_out`` (G, 1, d), ``b_out``
    (G, 1) or None. The gated hidden layer stays in ``v``'s dtype forward and backward (with
    bfloat16 ``v`` no float32 copy of it and no float32 (G, M, d) gradient; autograd's separate
    tanh, sigmoid, product and cast would each keep their own full-size tensors). Returns
    (G, M, 1) float32 scores (the bias added in float32); gradients for ``v``, ``w_cat``,
    ``b_cat``, ``w_out`` and ``b_out``.
    """

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, w_cat: torch.Tensor, b_cat: torch.Tensor | None,
                w_out: torch.Tensor, b_out: torch.Tensor | None) -> torch.Tensor:
        d = w_cat.shape[1] // 2
        wt = w_cat.transpose(1, 2)
        u = torch.bmm(v, wt) if b_cat is None else torch.baddbmm(b_cat.unsqueeze(1), v, wt)
        u[..., :d].mul_(2.0)  # exact (a power of two)
        u.sigmoid_()  # [sigmoid(2a) | sigmoid(g)]
        t = u[..., :d].mul(2.0).sub_(1.0)  # tanh(a), contiguous
        s_g = u[..., d:]
        h = t * s_g
        w_low = w_out.to(h.dtype)
        scores = torch.bmm(h, w_low.transpose(1, 2)).float()
        if b_out is not None:
            scores += b_out.unsqueeze(1)
        ctx.save_for_backward(v, w_cat, t, s_g, h, w_low)
        ctx.has_bias = b_cat is not None, b_out is not None
        return scores

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        v, w_cat, t, s_g, h, w_low = ctx.saved_tensors
        d = t.shape[-1]
        grad_s = grad.to(t.dtype)  # (G, M, 1)
        grad_w_out = torch.bmm(grad_s.transpose(1, 2), h).float()
        grad_b_out = grad.sum(1) if ctx.has_bias[1] else None
        grad_h = grad_s * w_low  # (G, M, 1) x (G, 1, d): the score layer's input gradient
        gu = torch.empty(*t.shape[:-1], 2 * d, dtype=t.dtype, device=t.device)
        aten = torch.ops.aten
        # d/da: grad_h * s_g * (1 - t^2); d/dg: grad_h * t * s_g * (1 - s_g)
        aten.tanh_backward.grad_input(grad_h * s_g, t, grad_input=gu[..., :d])
        aten.sigmoid_backward.grad_input(grad_h.mul_(t), s_g, grad_input=gu[..., d:])
        grad_v = torch.bmm(gu, w_cat) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(gu.transpose(1, 2), v) if ctx.needs_input_grad[1] else None
        grad_b = gu.sum(1) if ctx.has_bias[0] and ctx.needs_input_grad[2] else None
        return grad_v, grad_w, grad_b, grad_w_out, grad_b_out


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
    if name not in ("ABMIL", "Chowder", "DSMIL") or feats.device != data.features.device:
        return None
    if name == "DSMIL":
        return _fused_dsmil(base, params, buffers, low, data, meta)
    tiles = data.tiles(meta, low)
    if name == "ABMIL":
        layers = base.tiles_emb.hidden_layers
        if len(layers) != 1 or type(layers[0]) is not nn.Linear:
            return None
        lin = "tiles_emb.hidden_layers.0."
        from rl_benchmarks.models.slide_models.utils.attention import GatedAttention

        if type(base.attention_layer) is not GatedAttention or buffers:
            return None
        if ("attention_layer.att.bias" in params) != ("attention_layer.gate.bias" in params):
            return None
        temperature = float(base.attention_layer.temperature)
        a = "attention_layer."
        head = _member_head(base.mlp, params)

        def abmil(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            xt = tiles[x]  # (B, N, D): one gather of the feature columns
            b, n = xt.shape[0], xt.shape[1]
            # the tile embedding v (G, M, d): in ``low`` when set (the gate's products and
            # the pooling read it in ``low``; no float32 copy)
            v = _SharedLinear.apply(xt.view(b * n, -1), params[lin + "weight"],
                                    params.get(lin + "bias"), low)
            g, d = v.shape[0], v.shape[-1]
            # GatedAttention over the members: att and gate as one (G, M, d) x (G, d, 2d)
            # product, one fused elementwise gate and the score layer w
            # (:class:`_GatedScores`), in ``low`` when set; then softmax and pooling
            w_cat = torch.cat([params[a + "att.weight"], params[a + "gate.weight"]], dim=1)
            b_cat = (torch.cat([params[a + "att.bias"], params[a + "gate.bias"]], dim=1)
                     if a + "att.bias" in params else None)
            if low is not None:
                w_cat = w_cat.to(low)
                b_cat = None if b_cat is None else b_cat.to(low)
            logits = _GatedScores.apply(v, w_cat, b_cat, params[a + "w.weight"],
                                        params.get(a + "w.bias")).view(g, b, n, 1)
            m_arg = _no_padding(m)
            if m_arg is not None:
                logits = logits.masked_fill(m_arg.unsqueeze(0), float("-inf"))
            weights = torch.softmax(logits / temperature, dim=2)  # (G, B, N, 1)
            pooled = torch.matmul(weights.transpose(2, 3).to(v.dtype),
                                  v.view(g, b, n, d)).squeeze(2).float()
            return head(pooled)

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
            # no MaskedLinear fill here: _extreme_indices replaces the padded rows' scores
            # by -inf/+inf, so their values never choose a tile (a pass over (M, G*H) saved)
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


class _FromFirstLayers(nn.Module):
    """DSMIL's instance branch and bag attention from the outputs of its two first tile
    layers (for ``functional_call`` under ``vmap``: its parameters are the model's, prefixed
    ``m.``): (s_max (B, C), attention (B, N, C))."""

    def __init__(self, model: nn.Module, start: int = 1) -> None:
        super().__init__()
        self.m, self.start = model, start

    def forward(self, first_scores: torch.Tensor, first_queries: torch.Tensor,
                mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        _, s_max, attention = self.m.attention_from(None, mask, first_scores, first_queries,
                                                    self.start)
        return s_max, attention


def _fused_dsmil(
    base: nn.Module, params: dict, buffers: dict, low: torch.dtype | None, data: Preloaded,
    meta: int,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """DSMIL with the first layers of its two tile MLPs (``tiles_scores`` and
    ``tiles_queries``, 768 -> 200 each in the reference) of all members as **one**
    :class:`_SharedLinear` matmul, ``(B*N, D) x (D, G*400)`` (forward and weight gradient; no
    input gradient), in ``low`` when set; the rest runs as the model itself over the
    members (``vmap``), in float32. None when the layout differs (values MLP in use)."""
    from rl_benchmarks.models.slide_models.utils.tile_layers import MaskedLinear

    if getattr(base, "passing_values", True) or buffers:
        return None
    firsts = [base.tiles_scores.hidden_layers[0], base.tiles_queries.hidden_layers[0]]
    if any(not isinstance(layer, nn.Linear) for layer in firsts):
        return None
    # the activation after both first layers, applied here to both at once (one pass over
    # the contiguous (G, M, H1+H2) output instead of two over strided halves)
    acts = [base.tiles_scores.hidden_layers[1], base.tiles_queries.hidden_layers[1]]
    act = acts[0] if (type(acts[0]) is type(acts[1]) and type(acts[0]) in _ELEMENTWISE
                      and repr(acts[0]) == repr(acts[1])) else None
    start = 2 if act is not None else 1
    prefixes = ["tiles_scores.hidden_layers.0.", "tiles_queries.hidden_layers.0."]
    if any((p + "bias" in params) != (firsts[0].bias is not None) for p in prefixes):
        return None
    if firsts[0].out_features != firsts[1].out_features:
        return None  # the stacked layout needs equal widths (the reference's 200 and 200)
    fills = [float(layer.mask_value) if isinstance(layer, MaskedLinear) else None
             for layer in firsts]
    tiles_low = data.tiles(meta, low)
    wrapper = _FromFirstLayers(base, start)
    wrapped = {"m." + k: v for k, v in params.items()}  # the same tensors (updated in place)

    def rest(p: dict, hs: torch.Tensor, hq: torch.Tensor,
             m: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return functional_call(wrapper, p, (hs, hq, m))

    members = vmap(rest, in_dims=(0, 0, 0, None))
    head = _member_head(base.mlp, params)

    def pooled(hs: torch.Tensor, hq: torch.Tensor, x: torch.Tensor,
               m: torch.Tensor | None) -> torch.Tensor:
        """The members' logits (G, B, C): their attention (vmap), then the bag pooling of
        all members as one (B, G*C, n) x (B, n, D) product over the shared features (under
        vmap each member's pooling would read its own expanded copy of them)."""
        s_max, att = members(wrapped, hs, hq, m)  # (G, B, C), (G, B, n, C)
        g, b, n, c = att.shape
        a = att.permute(1, 0, 3, 2).reshape(b, g * c, n)
        bag = torch.matmul(a, x).view(b, g, c, -1).transpose(0, 1)  # (G, B, C, D)
        s_bag = head(bag).squeeze(-1)
        return base._combine(s_max, s_bag)

    def dsmil(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        n = max(int((~m[..., 0]).sum(dim=1).max()), 1)  # cut to the longest slide
        m = m[:, :n]
        xt = tiles_low[x, :n]  # (B, n, D), maybe bf16: one gather
        b = xt.shape[0]
        has_bias = prefixes[0] + "bias" in params
        # the members' weights stacked branch-major, (2G, H, D), so each branch's output
        # (G, B*n, H) is contiguous (no strided halves downstream)
        weight = torch.cat([params[p + "weight"] for p in prefixes], dim=0)
        bias = torch.cat([params[p + "bias"] for p in prefixes], dim=0) if has_bias else None
        # in ``low`` when set: the rest of the tile MLPs runs in it too
        h = _SharedLinear.apply(xt.reshape(b * n, -1), weight, bias, low)
        m_arg = _no_padding(m)
        h = h.view(2, h.shape[0] // 2, b, n, -1)
        if m_arg is not None and any(f is not None for f in fills):
            # MaskedLinear: padded rows -> its fill value, per branch (one pass over both
            # when they fill alike)
            if fills[0] is not None and fills[0] == fills[1]:
                h = h.masked_fill(m_arg, fills[0])
            else:
                h = torch.stack([h[i] if f is None else h[i].masked_fill(m_arg.unsqueeze(0), f)
                                 for i, f in enumerate(fills)])
        if act is not None:
            h = act(h)
        # unbind, not h[0] and h[1]: its backward stacks the two gradients in one pass
        # (two selects would each zero-fill a full-size gradient first)
        outs = h.unbind(0)
        x_raw = xt  # the bag pools the features (in ``low`` under autocast)
        if low is None:
            return pooled(outs[0], outs[1], x_raw, m_arg)
        # the tile MLPs' later layers and the pooling in ``low`` (autocast)
        with torch.autocast(x.device.type, dtype=low):
            return pooled(outs[0], outs[1], x_raw, m_arg).float()

    return dsmil


def _member_head(mlp: nn.Module, params: dict, prefix: str = "mlp.") -> Callable:
    """The members' head ``mlp`` (its parameters ``prefix*`` in the stacked ``params``) on
    their own inputs: (G, ...) -> (G, ...), one vmap over the members."""
    names = {n[len(prefix):]: n for n in params if n.startswith(prefix)}
    head = vmap(lambda p, v: functional_call(mlp, p, (v,)), in_dims=(0, 0))
    return lambda v: head({k: params[full] for k, full in names.items()}, v)


# parameter-free elementwise activations that may run once over several members' layers
_ELEMENTWISE = (nn.Sigmoid, nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU)


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


def _no_padding(mask: torch.Tensor) -> torch.Tensor | None:
    """``None`` when a batch has no padding: the models then skip their masking work."""
    return None if not bool(mask.any()) else mask


class _StackedAdam:
    """``torch.optim.Adam`` (L2-coupled weight decay) over stacked member weights, with a
    learning rate and weight decay per member (first dimension).

    One param group per member holds views of its slices of the stacked weights, so the
    update is torch's own, in place. Where torch has it (2.4 and later on the CPU), the fused
    kernel runs: one pass over each weight, its gradient and its two moments, instead of
    about ten (at TransMIL's 4 x 49M weights a step took 3.5 s as separate tensor ops, about
    twice the 4 separate runs' default Adam; fused, a tenth of theirs). Its rounding differs
    from the default Adam's in a few ulps (measured: 0.09 % of the weights after 3 steps, by
    at most 2.4e-7; as separate ops 0.28 %)."""

    def __init__(
        self,
        params: dict[str, torch.Tensor],
        lrs: Sequence[float],
        wds: Sequence[float],
        betas: tuple[float, float],
        eps: float,
    ) -> None:
        stacked = [p.detach() for p in params.values()]
        self.views = [[p[i] for p in stacked] for i in range(len(lrs))]
        groups = [{"params": views, "lr": float(lr), "weight_decay": float(wd)}
                  for views, lr, wd in zip(self.views, lrs, wds)]
        # the fused kernel walks weights and gradients as flat memory: contiguous only
        fused = all(v.is_contiguous() for views in self.views for v in views)
        try:
            self.optimizer = torch.optim.Adam(groups, betas=betas, eps=eps, fused=fused or None)
        except RuntimeError:  # no fused kernel for this device in this torch
            self.optimizer = torch.optim.Adam(groups, betas=betas, eps=eps)

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor | None]) -> None:
        """One Adam step; a parameter without gradient (unused) is left untouched."""
        # (a gradient of vmap can be strided or expanded: the fused kernel would misread it)
        for k, grad in enumerate(grads):
            for i, views in enumerate(self.views):
                views[k].grad = None if grad is None else grad[i].contiguous()
        self.optimizer.step()
