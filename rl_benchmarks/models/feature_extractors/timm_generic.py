"""``timm:<architecture>``: any timm model as an extractor, from local weights only.

The model is created with ``num_classes=0`` (pooled features). Weights are read from the
given file, passed through the architecture's own timm ``checkpoint_filter_fn`` when it has
one, and loaded strictly: only the classifier keys may be left over. Mean, std and tile size
default to timm's config for the architecture (``mean=``, ``std=``, ``tile_size=`` override).
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from typing import Any

from torch import nn

from rl_benchmarks.constants import IMAGENET_MEAN, IMAGENET_STD
from rl_benchmarks.models.feature_extractors.core import ModuleExtractor
from rl_benchmarks.models.feature_extractors.weights import (
    WeightsError,
    load_strict,
    read_weights_file,
    select_state_dict,
    strip_leading,
)


def _classifier_patterns(model: nn.Module) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ("head", "fc", "classifier")
    if isinstance(names, str):
        names = (names,)
    return [rf"^{re.escape(n)}\." for n in names] + [r"^head\.", r"^fc\."]


def _filter(state: dict, model: nn.Module) -> dict:
    module = sys.modules.get(type(model).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    if fn is None:
        return state
    try:
        params = inspect.signature(fn).parameters
        return fn(state, model) if len(params) >= 2 else fn(state)
    except Exception:  # noqa: BLE001 - a filter that does not apply: keep the keys as they are
        return state


def make_timm_extractor(
    arch: str,
    *,
    name: str | None = None,
    weights_path: str | os.PathLike | None,
    pretrained: bool,
    tile_size: int | None = None,
    mpp: float = 0.5,
    precision: str = "fp32",
    mean: Any = None,
    std: Any = None,
    **model_kwargs: Any,
) -> ModuleExtractor:
    """Build ``timm.create_model(arch, num_classes=0, **model_kwargs)`` and load its weights."""
    import timm

    if not arch:
        raise ValueError("timm:<architecture> needs an architecture name, e.g. timm:resnet18")
    if pretrained and weights_path is None:
        raise WeightsError(f"timm:{arch} needs weights_path=<local .pth/.safetensors> (nothing is "
                           f"downloaded), or pretrained=False for random weights")
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=0, **model_kwargs)
    except RuntimeError as err:
        raise ValueError(f"timm:{arch}: {err}") from err
    if pretrained:
        ckpt = read_weights_file(weights_path)
        state = select_state_dict(ckpt, ["state_dict", "model", "model_state_dict"], weights_path)
        state = strip_leading(state, ("module.", "model."))
        state = _filter(state, model)
        load_strict(model, state, weights_path, ignore=_classifier_patterns(model))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    img_size = model_kwargs.get("img_size")  # a built size beats the architecture's default
    img_size = img_size[-1] if isinstance(img_size, (tuple, list)) else img_size
    size = tile_size or int(img_size or (cfg.get("input_size") or (3, 224, 224))[-1])
    return ModuleExtractor(
        model, name=name or f"timm:{arch}", feature_dim=int(model.num_features), tile_size=size,
        mpp=mpp, mean=mean if mean is not None else cfg.get("mean", IMAGENET_MEAN),
        std=std if std is not None else cfg.get("std", IMAGENET_STD),
        precision=precision, weights_path=weights_path if pretrained else None,
        pretrained=pretrained, extra={"architecture": arch},
    )
