"""iBOT building blocks: ViT backbones (timm), projection heads, the iBOT loss with
teacher centering and sharpening, the EMA teacher update and the training schedules.

Why these pieces: iBOT (Zhou et al., ICLR 2022) trains a student ViT to match an EMA
teacher on two objectives, [CLS] self-distillation across views and masked patch-token
prediction (MIM) within a view. Phikon is an iBOT ViT-B/16 trained this way on TCGA tiles.

Key names follow the iBOT checkpoint format so that a teacher saved here loads in
``rl_benchmarks.models.iBOTViT``: ``backbone.<timm ViT keys>`` and ``head.mlp.{0,2,4}``,
``head.last_layer{,2}.weight_{g,v}``. The student backbone carries one extra parameter,
``masked_embed`` (the learned [MASK] token), which the teacher never has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ArchSpec:
    """Width, depth and heads of a ViT (patch size and image size are chosen separately)."""

    embed_dim: int
    depth: int
    num_heads: int


#: ViT sizes by name; ``vit_test`` is a 2-block toy for tests and smoke runs.
ARCHS: dict[str, ArchSpec] = {
    "vit_test": ArchSpec(embed_dim=32, depth=2, num_heads=2),
    "vit_tiny": ArchSpec(embed_dim=192, depth=12, num_heads=3),
    "vit_small": ArchSpec(embed_dim=384, depth=12, num_heads=6),
    "vit_base": ArchSpec(embed_dim=768, depth=12, num_heads=12),
    "vit_large": ArchSpec(embed_dim=1024, depth=24, num_heads=16),
}


def build_vit(
    arch: str,
    patch_size: int = 16,
    img_size: int = 224,
    drop_path_rate: float = 0.0,
    masked_im_modeling: bool = False,
) -> nn.Module:
    """The extractors' timm ViT (:func:`rl_benchmarks.models.feature_extractors.ibot_vit.
    build_vit`: qkv bias, LayerNorm eps 1e-6, no head, any crop size) at size ``arch``, so
    that a teacher saved here loads in ``iBOTViT`` by construction.

    ``masked_im_modeling`` adds the learned ``masked_embed`` token (student only).
    """
    from rl_benchmarks.models.feature_extractors.ibot_vit import build_vit as extractor_vit

    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is unknown; expected one of {sorted(ARCHS)}")
    if img_size % patch_size:
        raise ValueError(f"img_size={img_size} is not a multiple of patch_size={patch_size}")
    spec = ARCHS[arch]
    vit = extractor_vit(embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.num_heads,
                        patch_size=patch_size, img_size=img_size, drop_path_rate=drop_path_rate)
    if masked_im_modeling:
        vit.masked_embed = nn.Parameter(torch.zeros(1, spec.embed_dim))
    return vit


def vit_tokens(vit: nn.Module, images: torch.Tensor, masks: torch.Tensor | None = None):
    """All output tokens (B, 1+P, D) of ``vit``; where ``masks`` (B, h, w) is True the patch
    embedding is replaced by the [MASK] token before position embeddings are added."""
    x = vit.patch_embed(images)  # (B, h, w, D) since dynamic_img_size=True
    if masks is not None:
        if not hasattr(vit, "masked_embed"):
            raise ValueError("masks given to a backbone without masked_embed (a teacher?)")
        if masks.shape != x.shape[:3]:
            raise ValueError(f"mask shape {tuple(masks.shape)} != patch grid {tuple(x.shape[:3])}")
        x = torch.where(masks.unsqueeze(-1), vit.masked_embed.to(x.dtype).view(1, 1, 1, -1), x)
    x = vit._pos_embed(x)
    x = vit.patch_drop(x)
    x = vit.norm_pre(x)
    x = vit.blocks(x)
    return vit.norm(x)


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation, ``W = g * V / ||V||`` (rows).

    Parameters are named ``weight_g`` (out, 1) and ``weight_v`` (out, in) as in iBOT/DINO
    checkpoints. ``g`` starts at 1 and is frozen when ``norm_last_layer`` (iBOT default),
    which keeps the output layer on the unit sphere and stabilises training.
    """

    def __init__(self, in_dim: int, out_dim: int, norm_last_layer: bool = True):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm_last_layer)

    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight())


class iBOTHead(nn.Module):  # noqa: N801 (the reference's naming)
    """Projection head: MLP (GELU) to a bottleneck, L2-normalisation, then a weight-normed
    last layer; patch tokens use ``last_layer2`` unless ``shared_head``."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 8192,
        patch_out_dim: int = 8192,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        shared_head: bool = False,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"head.nlayers must be >= 1, got {nlayers}")
        if shared_head and out_dim != patch_out_dim:
            raise ValueError(
                f"head.shared_head=true needs out_dim == patch_out_dim, got {out_dim} and "
                f"{patch_out_dim}"
            )
        if nlayers == 1:
            layers: list[nn.Module] = [nn.Linear(in_dim, bottleneck_dim)]
        else:
            layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, norm_last_layer)
        if not shared_head:
            self.last_layer2 = WeightNormLinear(bottleneck_dim, patch_out_dim, norm_last_layer)

    def _bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=-1)

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self._bottleneck(x))

    def forward_patch(self, x: torch.Tensor) -> torch.Tensor:
        layer = getattr(self, "last_layer2", self.last_layer)
        return layer(self._bottleneck(x))


class iBOTNet(nn.Module):  # noqa: N801
    """Backbone + head. ``forward`` returns the head outputs of the [CLS] tokens of all
    crops (global crops first) and of the patch tokens of the global crops."""

    def __init__(self, backbone: nn.Module, head: iBOTHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(
        self,
        global_crops: torch.Tensor,
        masks: torch.Tensor | None = None,
        local_crops: torch.Tensor | None = None,
        return_backbone_cls: bool = False,
    ):
        """``(cls_out, patch_out)``, plus the backbone [CLS] tokens of the global crops
        when ``return_backbone_cls`` (for the optional KoLeo term)."""
        tokens = vit_tokens(self.backbone, global_crops, masks)
        cls = tokens[:, 0]
        if local_crops is not None and local_crops.numel():
            cls = torch.cat([cls, vit_tokens(self.backbone, local_crops)[:, 0]])
        out = (self.head.forward_cls(cls), self.head.forward_patch(tokens[:, 1:]))
        return (*out, tokens[:, 0]) if return_backbone_cls else out


def build_ibot_pair(cfg_model: dict, cfg_head: dict) -> tuple[iBOTNet, iBOTNet]:
    """Student (with drop-path and [MASK] token) and teacher initialised from the student;
    the teacher has no gradients and changes only through :func:`ema_update`."""
    arch = cfg_model["arch"]
    common = dict(patch_size=int(cfg_model["patch_size"]), img_size=int(cfg_model["img_size"]))
    embed_dim = ARCHS[arch].embed_dim if arch in ARCHS else 0
    head_kwargs = dict(
        out_dim=int(cfg_head["out_dim"]),
        patch_out_dim=int(cfg_head["patch_out_dim"]),
        hidden_dim=int(cfg_head["hidden_dim"]),
        bottleneck_dim=int(cfg_head["bottleneck_dim"]),
        nlayers=int(cfg_head["nlayers"]),
        shared_head=bool(cfg_head["shared_head"]),
        norm_last_layer=bool(cfg_head["norm_last_layer"]),
    )
    student = iBOTNet(
        build_vit(arch, drop_path_rate=float(cfg_model["drop_path_rate"]),
                  masked_im_modeling=True, **common),
        iBOTHead(embed_dim, **head_kwargs),
    )
    teacher = iBOTNet(build_vit(arch, **common), iBOTHead(embed_dim, **head_kwargs))
    state = {k: v for k, v in student.state_dict().items() if k != "backbone.masked_embed"}
    teacher.load_state_dict(state, strict=True)
    teacher.requires_grad_(False)
    return student, teacher


def ema_pairs(student: nn.Module, teacher: nn.Module):
    """Matching (student, teacher) parameter lists, by name (the [MASK] token has no
    teacher counterpart)."""
    s_params = dict(student.named_parameters())
    pairs = [(s_params[name], p) for name, p in teacher.named_parameters()]
    return [s for s, _ in pairs], [t for _, t in pairs]


@torch.no_grad()
def ema_update(student_params, teacher_params, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, in place."""
    torch._foreach_lerp_(teacher_params, [s.detach() for s in student_params], 1.0 - momentum)


class iBOTLoss(nn.Module):  # noqa: N801
    """[CLS] self-distillation across views + masked patch-token distillation within a
    view, with teacher centering (separate centers for [CLS] and patches) and sharpening.

    * The student sees ``n_global + n_local`` crops; the teacher only the global ones.
    * CLS: every (teacher view q, student view v != q) pair contributes
      ``-sum softmax((t_q - c)/T_t) * log_softmax(s_v / T_s)``, averaged over pairs.
    * Patches: for v == q, the same cross-entropy per patch, averaged over the masked
      patches of each image (images without a mask contribute 0), then over images.
    * Teacher temperatures warm up linearly from ``warmup_*`` over the first
      ``warmup_teacher_temp_epochs`` epochs (too sharp a teacher early on collapses).
    * Also returned, for monitoring only: ``cls_kl`` and ``patch_kl``, the unweighted
      cross-entropies minus the teacher's entropy (the KL part; the entropy part rises
      as the teacher temperature warms up, so the raw loss can rise while the student
      gets closer to the teacher).
    """

    def __init__(
        self,
        out_dim: int,
        patch_out_dim: int,
        n_global: int,
        n_local: int,
        epochs: int,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        teacher_patch_temp: float = 0.07,
        warmup_teacher_patch_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 30,
        center_momentum: float = 0.9,
        center_momentum2: float = 0.9,
        lambda_cls: float = 1.0,
        lambda_patch: float = 1.0,
    ):
        super().__init__()
        self.n_global, self.n_local = n_global, n_local
        self.student_temp = student_temp
        self.center_momentum, self.center_momentum2 = center_momentum, center_momentum2
        self.lambda_cls, self.lambda_patch = lambda_cls, lambda_patch
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center2", torch.zeros(1, 1, patch_out_dim))
        self.teacher_temps = warmup_then_constant(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, epochs
        )
        self.teacher_patch_temps = warmup_then_constant(
            warmup_teacher_patch_temp, teacher_patch_temp, warmup_teacher_temp_epochs, epochs
        )

    def forward(
        self,
        student_cls: torch.Tensor,
        student_patch: torch.Tensor,
        teacher_cls: torch.Tensor,
        teacher_patch: torch.Tensor,
        masks: torch.Tensor,
        epoch: int,
    ) -> dict[str, torch.Tensor]:
        """Shapes: student_cls ((n_global+n_local)*B, K), student_patch (n_global*B, P, Kp),
        teacher_cls (n_global*B, K), teacher_patch (n_global*B, P, Kp), masks
        (n_global*B, P) bool. Crops are stacked crop-major (all images of crop 0 first)."""
        ep = min(epoch, len(self.teacher_temps) - 1)
        t_temp, t_ptemp = float(self.teacher_temps[ep]), float(self.teacher_patch_temps[ep])
        n_views = self.n_global + self.n_local
        s_cls = (student_cls.float() / self.student_temp).chunk(n_views)
        s_patch = (student_patch.float() / self.student_temp).chunk(self.n_global)
        t_cls = F.softmax((teacher_cls.float() - self.center) / t_temp, dim=-1).chunk(self.n_global)
        t_patch = F.softmax((teacher_patch.float() - self.center2) / t_ptemp, dim=-1).chunk(
            self.n_global
        )
        m = masks.flatten(1).float().chunk(self.n_global)

        with torch.no_grad():  # teacher entropies: cross-entropy = entropy + KL divergence
            h_cls = [-(t * torch.log(t.clamp_min(1e-30))).sum(-1) for t in t_cls]
            h_patch = [-(t * torch.log(t.clamp_min(1e-30))).sum(-1) for t in t_patch]
        cls_terms, patch_terms, cls_kl, patch_kl = [], [], [], []
        for q in range(self.n_global):
            for v in range(n_views):
                if v == q:
                    ce = torch.sum(-t_patch[q] * F.log_softmax(s_patch[v], dim=-1), dim=-1)
                    denom = m[v].sum(-1).clamp(min=1.0)
                    per_image = (ce * m[v]).sum(-1) / denom
                    patch_terms.append(per_image.mean())
                    ent = (h_patch[q] * m[v]).sum(-1) / denom
                    patch_kl.append((per_image.detach() - ent).mean())
                else:
                    ce = torch.sum(-t_cls[q] * F.log_softmax(s_cls[v], dim=-1), dim=-1)
                    cls_terms.append(ce.mean())
                    cls_kl.append((ce.detach() - h_cls[q]).mean())
        zero = student_cls.new_zeros((), dtype=torch.float32)

        def mean(terms: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(terms).mean() if terms else zero

        cls_loss = self.lambda_cls * mean(cls_terms)
        patch_loss = self.lambda_patch * mean(patch_terms)
        return {"loss": cls_loss + patch_loss, "cls": cls_loss, "patch": patch_loss,
                "cls_kl": mean(cls_kl), "patch_kl": mean(patch_kl)}

    @torch.no_grad()
    def update_center(self, teacher_cls: torch.Tensor, teacher_patch: torch.Tensor) -> None:
        """EMA of the teacher outputs' batch mean (over all ranks), one per output type."""
        cls_sum = teacher_cls.float().sum(dim=0, keepdim=True)
        patch_sum = teacher_patch.float().mean(dim=1).sum(dim=0, keepdim=True).unsqueeze(1)
        count = torch.tensor([float(teacher_cls.shape[0])], device=cls_sum.device)
        if dist.is_available() and dist.is_initialized():
            for t in (cls_sum, patch_sum, count):
                dist.all_reduce(t)
        self.center.mul_(self.center_momentum).add_(cls_sum / count, alpha=1 - self.center_momentum)
        self.center2.mul_(self.center_momentum2).add_(
            patch_sum / count, alpha=1 - self.center_momentum2
        )


def koleo_loss(x: torch.Tensor, n_chunks: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo regulariser (Sablayrolles et al. 2019; DINOv2, the recipe of Phikon-v2):
    ``-mean log(distance to the nearest neighbour)`` of the L2-normalised rows, computed
    within each of ``n_chunks`` equal chunks (one per global crop) and averaged. It is
    lowest when the features spread evenly over the sphere, so it opposes the collapse of
    the backbone features onto a few directions. Not part of iBOT (off by default)."""
    terms = []
    for chunk in x.float().chunk(n_chunks):
        if chunk.shape[0] < 2:
            continue
        z = F.normalize(chunk, dim=-1, eps=eps)
        with torch.no_grad():
            sim = z @ z.T
            sim.fill_diagonal_(-2.0)
            nn_idx = sim.argmax(dim=1)
        dist = (z - z[nn_idx]).norm(dim=-1)
        terms.append(-torch.log(dist + eps).mean())
    return torch.stack(terms).mean() if terms else x.new_zeros((), dtype=torch.float32)


def cosine_schedule(
    base: float,
    final: float,
    total_iters: int,
    warmup_iters: int = 0,
    start_warmup: float = 0.0,
) -> np.ndarray:
    """Per-iteration values: linear warm-up from ``start_warmup`` to ``base`` over
    ``warmup_iters``, then a half cosine from ``base`` to ``final``."""
    warmup_iters = max(0, min(int(warmup_iters), int(total_iters)))
    warm = np.linspace(start_warmup, base, warmup_iters, endpoint=False)
    n = int(total_iters) - warmup_iters
    steps = np.arange(n)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(n, 1)))
    return np.concatenate([warm, cos]).astype(np.float64)


def warmup_then_constant(start: float, end: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """Per-epoch values: linear from ``start`` to ``end`` over ``warmup_epochs``, then
    ``end`` (the teacher-temperature schedule)."""
    warmup_epochs = max(0, min(int(warmup_epochs), int(epochs)))
    return np.concatenate(
        [np.linspace(start, end, warmup_epochs), np.full(max(int(epochs) - warmup_epochs, 1), end)]
    )


def param_groups(model: nn.Module) -> list[dict]:
    """AdamW groups: weight decay on weight matrices, none on biases and norm parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def clip_gradients(model: nn.Module, clip: float) -> torch.Tensor:
    """Clip each parameter's gradient norm to ``clip`` separately (as DINO/iBOT do);
    returns the norms before clipping."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch._foreach_norm(grads)
    coefs = [(clip / (n + 1e-6)).clamp(max=1.0) for n in norms]
    torch._foreach_mul_(grads, coefs)
    return torch.stack(norms)


def cancel_last_layer_grads(model: nn.Module) -> None:
    """Drop the gradients of the head's last layers (they stay frozen in the first epoch,
    which iBOT/DINO found to avoid early collapse)."""
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None
