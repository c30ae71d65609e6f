"""CNN extractors: ``ResNet50`` (ImageNet) and ``MoCoWideResNetCOAD`` (MoCo v2 WRN-50-2).

Bodies come from timm (its ResNet keys equal torchvision's), with the classifier removed:
the output is the 2048-d global average pool.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from rl_benchmarks.models.feature_extractors.core import ModuleExtractor
from rl_benchmarks.models.feature_extractors.weights import (
    load_strict,
    read_weights_file,
    select_state_dict,
    strip_leading,
)

#: Classifier / projection-head keys a CNN checkpoint may hold beyond the body.
CNN_HEAD_KEYS = (r"^fc\.", r"^head\.", r"^classifier\.")


def build_cnn(arch: str, **kwargs: Any) -> nn.Module:
    """A timm CNN without classifier (``num_classes=0``): forward gives pooled features."""
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)


def load_cnn_state_dict(weights_path: str | os.PathLike) -> dict:
    """A CNN body state dict from a torchvision/timm file or a MoCo v2 checkpoint.

    MoCo checkpoints keep the query encoder (``module.encoder_q.``); the key encoder,
    the queue and other entries are dropped. ``module.`` and ``model.`` prefixes go.
    """
    ckpt = read_weights_file(weights_path)
    state = select_state_dict(ckpt, ["state_dict", "model", "model_state_dict"], weights_path)
    for prefix in ("module.encoder_q.", "encoder_q.", "module.base_encoder.", "base_encoder."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    return strip_leading(state, ("module.", "model."))


def make_cnn_extractor(
    arch: str,
    *,
    name: str,
    weights_path: str | os.PathLike | None,
    pretrained: bool,
    tile_size: int = 224,
    mpp: float = 0.5,
    precision: str = "fp32",
    mean: Any = None,
    std: Any = None,
    **model_kwargs: Any,
) -> ModuleExtractor:
    """Build a timm CNN body and load its weights strictly (classifier keys ignored)."""
    network = build_cnn(arch, **model_kwargs)
    if pretrained:
        load_strict(network, load_cnn_state_dict(weights_path), weights_path, ignore=CNN_HEAD_KEYS)
    meta: dict[str, Any] = {}
    if mean is not None:
        meta["mean"] = mean
    if std is not None:
        meta["std"] = std
    return ModuleExtractor(
        network, name=name, feature_dim=int(network.num_features), tile_size=tile_size,
        mpp=mpp, precision=precision, weights_path=weights_path if pretrained else None,
        pretrained=pretrained, extra={"architecture": arch}, **meta,
    )
