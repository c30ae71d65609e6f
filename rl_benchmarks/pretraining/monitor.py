"""Collapse monitor: cheap diagnostics of an iBOT run computed from the training data only.

Self-distillation can collapse in two ways (DINO, Caron et al. 2021, section 5.3):

* **uniform collapse**: the teacher's output is (near) uniform over the prototypes for
  every image; both the per-image entropy and the entropy of the batch-mean output are
  high (close to ``log K``). Centering alone drives a run there.
* **one-hot collapse**: every image maps to the same prototype; both entropies are low.

A healthy teacher has a low per-image entropy (confident) but a high entropy of the mean
output (different images use different prototypes).

The backbone can also collapse independently of the head: its [CLS] features become
(nearly) the same for every tile. That is measured on L2-normalised features by the mean
per-dimension standard deviation across tiles (0 for a constant feature; about
``1/sqrt(D)`` for features spread evenly on the sphere) and by the effective rank
(Roy & Vetterli 2007: exp of the entropy of the normalised singular values of the
centred feature matrix).

Everything here uses fixed centre crops of *training* tiles, never labelled test data, so
settings chosen from these figures are not tuned on the evaluation set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from rl_benchmarks.constants import IMAGENET_MEAN, IMAGENET_STD
from rl_benchmarks.pretraining.ibot import vit_tokens

#: Columns :func:`collapse_stats` returns (and the training log gains when monitoring).
MONITOR_KEYS = ("feat_std", "feat_rank", "bottleneck_rank", "h_image", "h_mean")


def centre_crops(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """(N, 3, size, size) ImageNet-normalised centre crops (the short side resized first)."""
    tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                    T.CenterCrop(size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return torch.stack([tf(im.convert("RGB")) for im in images])


def effective_rank(x: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of the row-centred matrix ``x``
    (between 1 for rank-1 data and min(N, D) for isotropic data)."""
    x = x.double() - x.double().mean(0, keepdim=True)
    s = torch.linalg.svdvals(x)
    if float(s.sum()) <= 0:
        return 1.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats along the last dimension."""
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


@torch.no_grad()
def collapse_stats(net: torch.nn.Module, crops: torch.Tensor, center: torch.Tensor | None = None,
                   temp: float = 0.04, batch: int = 32) -> dict[str, float]:
    """Collapse diagnostics of an :class:`~rl_benchmarks.pretraining.ibot.iBOTNet` (the
    teacher) on ``crops`` (N, 3, H, W):

    * ``feat_std``: mean over dimensions of the std across images of the L2-normalised
      backbone [CLS] features; ``feat_rank``: their effective rank;
    * ``bottleneck_rank``: effective rank of the head's L2-normalised bottleneck;
    * ``h_image``: mean per-image entropy of ``softmax((out - center) / temp)`` (nats);
    * ``h_mean``: entropy of the mean of those distributions over the images.
    """
    was_training = net.training
    net.eval()
    try:
        feats, bottle, probs = [], [], []
        for x in crops.split(batch):
            cls = vit_tokens(net.backbone, x)[:, 0].float()
            z = net.head._bottleneck(cls)
            logits = net.head.last_layer(z).float()
            if center is not None:
                logits = logits - center.reshape(1, -1).to(logits)
            feats.append(cls)
            bottle.append(z.float())
            probs.append(F.softmax(logits / temp, dim=-1))
        f = F.normalize(torch.cat(feats), dim=-1)
        p = torch.cat(probs)
        return {"feat_std": float(f.std(0).mean()), "feat_rank": effective_rank(f),
                "bottleneck_rank": effective_rank(torch.cat(bottle)),
                "h_image": float(entropy(p).mean()), "h_mean": float(entropy(p.mean(0)))}
    finally:
        net.train(was_training)


def monitor_images(tiles, n: int = 64, seed: int = 0) -> list[Image.Image]:
    """``n`` training tiles picked at fixed, evenly spread random positions."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(tiles), size=min(n, len(tiles)), replace=False))
    return [tiles[int(i)] for i in idx]
