"""Tile feature extractors: a registry chosen by name, all built from local weights.

>>> ext = create_extractor("iBOTViTBasePANCAN", weights_path="ibot_vit_base_pancan.pth")
>>> feats = ext(torch.stack([ext.transform(tile) for tile in tiles]))   # (B, 768) float32
>>> uni = create_extractor("uni", weights_path="UNI/", precision="bf16")  # today's encoders: ENCODERS
"""

from rl_benchmarks.models.feature_extractors.core import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Extractor,
    ModuleExtractor,
    ParallelExtractor,
    prepare_module,
)
from rl_benchmarks.models.feature_extractors.encoders import ENCODERS, EncoderSpec
from rl_benchmarks.models.feature_extractors.ibot_vit import iBOTViT
from rl_benchmarks.models.feature_extractors.registry import (
    REGISTRY,
    create_extractor,
    extractor_from_config,
    list_extractors,
)
from rl_benchmarks.models.feature_extractors.weights import WeightsError

__all__ = [
    "ENCODERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "REGISTRY",
    "EncoderSpec",
    "Extractor",
    "ModuleExtractor",
    "ParallelExtractor",
    "WeightsError",
    "create_extractor",
    "extractor_from_config",
    "iBOTViT",
    "list_extractors",
    "prepare_module",
]
