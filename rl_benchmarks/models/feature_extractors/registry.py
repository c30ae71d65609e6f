"""Registry of extractors chosen by name: :func:`create_extractor`, :func:`list_extractors`
and :func:`extractor_from_config` (build one from a Hydra ``feature_extractor`` node)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rl_benchmarks.models.feature_extractors.core import Extractor
from rl_benchmarks.models.feature_extractors.encoders import ENCODERS, EncoderSpec, is_spec_path
from rl_benchmarks.models.feature_extractors.weights import WeightsError


@dataclass(frozen=True)
class ExtractorSpec:
    """What a registered name builds: documented output size, tile size and mpp."""

    name: str
    factory: Callable[..., Extractor]
    feature_dim: int
    tile_size: int
    mpp: float
    description: str
    #: a pretrained model whose weights give another width is an error (not for phikon_hf,
    #: whose folder defines the model)
    check_dim: bool = True


def _ibot(architecture: str, **fixed: Any) -> Callable[..., Extractor]:
    def factory(**kw: Any) -> Extractor:
        from rl_benchmarks.models.feature_extractors.ibot_vit import iBOTViT

        kw.setdefault("architecture", architecture)
        return iBOTViT(**{**fixed, **kw})

    return factory


def _dino(**kw: Any) -> Extractor:
    """HIPT's ViT-S/16 (DINO): the shape is read from the checkpoint, position embeddings
    are interpolated to 256-px tiles."""
    from rl_benchmarks.models.feature_extractors.ibot_vit import iBOTViT

    if kw.get("pretrained", True):
        kw.setdefault("architecture", "auto")
        kw.setdefault("num_heads", 6)
    else:
        kw.setdefault("architecture", "vit_small")
    kw.setdefault("tile_size", 256)
    return iBOTViT(**kw)


def _cnn(arch: str) -> Callable[..., Extractor]:
    def factory(**kw: Any) -> Extractor:
        from rl_benchmarks.models.feature_extractors.cnn import make_cnn_extractor

        return make_cnn_extractor(arch, **kw)

    return factory


def _ctranspath(**kw: Any) -> Extractor:
    from rl_benchmarks.models.feature_extractors.ctranspath import make_ctranspath

    return make_ctranspath(**kw)


def _phikon_hf(**kw: Any) -> Extractor:
    from rl_benchmarks.models.feature_extractors.hf import make_phikon_hf

    return make_phikon_hf(**kw)


def _encoder(spec: EncoderSpec) -> Callable[..., Extractor]:
    def factory(**kw: Any) -> Extractor:
        from rl_benchmarks.models.feature_extractors.encoder_build import make_encoder

        return make_encoder(spec, **kw)

    return factory


def _encoder_specs() -> list[ExtractorSpec]:
    """One registry entry per row of :data:`~rl_benchmarks.models.feature_extractors.encoders.ENCODERS`
    (the output option changes the size, so the size check is the builder's)."""
    return [ExtractorSpec(s.name, _encoder(s), s.feature_dim(), s.tile_size, s.mpp,
                          f"{s.arch} ({s.kind}), {s.output} output; weights: {s.weights_format}",
                          check_dim=False)
            for s in ENCODERS.values()]


REGISTRY: dict[str, ExtractorSpec] = {
    s.name: s for s in [
        ExtractorSpec("iBOTViTBasePANCAN", _ibot("vit_base_pancan"), 768, 224, 0.5,
                      "Phikon: iBOT ViT-B/16 on 40M TCGA pan-cancer tiles (default weights "
                      "<data_dir>/weights/ibot_vit_base_pancan.pth)"),
        ExtractorSpec("iBOTViTSmallCOAD", _ibot("vit_small"), 384, 224, 0.5,
                      "iBOT ViT-S/16 pre-trained on TCGA-COAD"),
        ExtractorSpec("iBOTViTBaseCOAD", _ibot("vit_base"), 768, 224, 0.5,
                      "iBOT ViT-B/16 pre-trained on TCGA-COAD"),
        ExtractorSpec("iBOTViTLargeCOAD", _ibot("vit_large"), 1024, 224, 0.5,
                      "iBOT ViT-L/16 pre-trained on TCGA-COAD"),
        ExtractorSpec("ResNet50", _cnn("resnet50"), 2048, 224, 0.5,
                      "ImageNet-supervised ResNet-50, global average pool"),
        ExtractorSpec("MoCoWideResNetCOAD", _cnn("wide_resnet50_2"), 2048, 224, 0.5,
                      "MoCo v2 Wide-ResNet-50-2 on TCGA-COAD, global average pool"),
        ExtractorSpec("DinoChenBRCA", _dino, 384, 256, 0.5,
                      "HIPT ViT-S/16 (DINO) on TCGA-BRCA, 256-px tiles"),
        ExtractorSpec("DinoChenPancancer", _dino, 384, 256, 0.5,
                      "HIPT ViT-S/16 (DINO) pan-cancer (vit256_small_dino.pth), 256-px tiles"),
        ExtractorSpec("CTransPath", _ctranspath, 768, 224, 1.0,
                      "Swin-T with convolutional stem (Wang et al. 2022), 1.0 mpp"),
        ExtractorSpec("phikon_hf", _phikon_hf, 768, 224, 0.5,
                      "owkin/phikon-format Hugging Face folder, loaded with transformers",
                      check_dim=False),
        *_encoder_specs(),
    ]
}
ALIASES: dict[str, str] = {"phikon": "iBOTViTBasePANCAN"}
#: Keyword arguments that change a model's shape (then the documented size is not checked).
_SHAPE_KEYS = {"embed_dim", "depth", "num_heads", "num_features", "depths", "layers"}


#: How :func:`list_extractors` shows the family of names ``timm:<architecture>``.
TIMM_PATTERN = "timm:<arch>"
#: How :func:`list_extractors` shows an encoder described by a YAML spec file.
SPEC_PATTERN = "<path/to/spec.yaml>"


def list_extractors(include_aliases: bool = True, include_timm: bool = True) -> list[str]:
    """Every name :func:`create_extractor` accepts: the registered names (today's encoders of
    :mod:`~rl_benchmarks.models.feature_extractors.encoders` among them), then the aliases
    (``phikon``) and the patterns ``timm:<arch>`` (any timm architecture, e.g.
    ``timm:vit_small_patch16_224``) and ``<path/to/spec.yaml>`` (an encoder spec file).
    ``include_aliases=False, include_timm=False`` gives the registered names only."""
    names = list(REGISTRY)
    if include_aliases:
        names += list(ALIASES)
    if include_timm:
        names += [TIMM_PATTERN, SPEC_PATTERN]
    return names


def resolve_name(name: str) -> str:
    """Canonical registry name of ``name`` (aliases resolved); ``timm:...`` and spec files
    (``*.yaml``) pass through."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"extractor name must be a non-empty string, got {name!r}")
    if name.startswith("timm:") or is_spec_path(name):
        return name
    name = ALIASES.get(name, name)
    if name not in REGISTRY:
        raise ValueError(f"unknown extractor {name!r}; available: "
                         f"{', '.join(list_extractors())}")
    return name


def create_extractor(
    name: str,
    weights_path: str | os.PathLike | None = None,
    device: Any = -1,
    precision: str = "fp32",
    pretrained: bool = True,
    inference_path: str = "auto",
    **kwargs: Any,
) -> Extractor:
    """Build the extractor ``name`` from local weights and place it on ``device``.

    ``pretrained=True`` (default) needs weights (``weights_path``, or the default file for
    iBOTViTBasePANCAN); ``pretrained=False`` gives random weights, recorded as
    "random-init". ``kwargs`` go to the builder (e.g. ``encoder="student"``, or
    ``depth=1, embed_dim=32`` for tiny test models). Several GPUs give a
    :class:`ParallelExtractor`. ``inference_path`` (``auto``, ``fast`` or ``plain``) picks the
    CPU inference path (:func:`~rl_benchmarks.models.feature_extractors.fast_inference.select_path`).
    """
    from rl_benchmarks.models.feature_extractors.fast_inference import check_mode

    mode = check_mode(inference_path)  # one line, before any weights are read
    extractor = _build(name, weights_path, precision, pretrained, kwargs)
    extractor.inference_path = mode  # before placing: a ParallelExtractor copies it
    return extractor.place(device)


def _build(name: str, weights_path: Any, precision: str, pretrained: bool,
           kwargs: dict[str, Any]) -> Extractor:
    """The extractor ``name`` with its weights, not yet placed on a device."""
    canonical = resolve_name(name)
    if weights_path in ("", "null", "None"):
        weights_path = None
    common = dict(weights_path=weights_path, pretrained=bool(pretrained), precision=precision)
    if canonical.startswith("timm:"):
        from rl_benchmarks.models.feature_extractors.timm_generic import make_timm_extractor

        return make_timm_extractor(canonical[len("timm:"):], name=canonical, **common, **kwargs)
    if is_spec_path(canonical):  # an encoder described by a YAML file (docs/encoders.md)
        from rl_benchmarks.models.feature_extractors.encoder_build import make_encoder
        from rl_benchmarks.models.feature_extractors.encoders import spec_from_yaml

        enc, default_weights = spec_from_yaml(canonical)
        common["weights_path"] = weights_path or default_weights
        return make_encoder(enc, **common, **kwargs)
    spec = REGISTRY[canonical]
    if pretrained and weights_path is None and canonical != "iBOTViTBasePANCAN":
        raise WeightsError(f"{canonical} is a pretrained model and needs weights_path=<local "
                           f"file{' or folder' if canonical == 'phikon_hf' else ''}>; nothing "
                           f"is downloaded. Use pretrained=False for random weights.")
    kwargs.setdefault("name", canonical)
    extractor = spec.factory(**common, **kwargs)
    if (pretrained and spec.check_dim and not (_SHAPE_KEYS & set(kwargs))
            and extractor.feature_dim != spec.feature_dim):
        raise WeightsError(f"{weights_path}: {canonical} should give {spec.feature_dim}-d features, "
                           f"these weights give {extractor.feature_dim}-d")
    return extractor


def extractor_from_config(node: Any, **overrides: Any) -> Extractor:
    """Build an extractor from a ``feature_extractor`` config node (``name``, ``weights_path``,
    ``pretrained``, any builder keyword); Hydra keys (``_target_`` …) are ignored and
    ``overrides`` (e.g. ``device=``, ``precision=``) win."""
    if node is None:
        raise ValueError("feature_extractor config is empty")
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(node):
            node = OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        pass
    if not isinstance(node, Mapping):
        raise ValueError(f"feature_extractor config must be a mapping, got {node!r}")
    params = {k: v for k, v in dict(node).items() if not str(k).startswith("_")}
    params.update(overrides)
    if "name" not in params or params["name"] in (None, "", "???"):
        raise ValueError("feature_extractor config needs a `name` key (one of "
                         f"{', '.join(list_extractors())})")
    return create_extractor(**params)
