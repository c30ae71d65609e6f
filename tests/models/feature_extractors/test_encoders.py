"""Issue 18: every named encoder has the published architecture.

For each name the parameter count equals the spec's computed count (docs/encoders.md), and
the state dict's key names and shapes equal those of an independent build of the published
constructor written here (timm.create_model / transformers configs / CONCH's pooler). Full
architectures are built on the meta device (no memory); output sizes use depth=1 builds.
"""

from __future__ import annotations

import pytest
import torch
from testlib.encoders import PublishedConch, published_hf, published_timm
from torch import nn

from rl_benchmarks.models.feature_extractors import REGISTRY, create_extractor
from rl_benchmarks.models.feature_extractors.encoder_build import build_hf, build_module
from rl_benchmarks.models.feature_extractors.encoders import ENCODERS

# The spec's table (../shared/spec/encoders.md): computed parameter count, dimension, input.
SPEC = {
    "phikon_v2": (303_351_808, 1024, 224), "uni": (303_350_784, 1024, 224),
    "uni2_h": (681_394_176, 1536, 224), "virchow": (631_229_184, 2560, 224),
    "virchow2": (631_239_424, 2560, 224), "h_optimus_0": (1_134_774_272, 1536, 224),
    "h_optimus_1": (1_134_774_272, 1536, 224), "prov_gigapath": (1_134_953_984, 1536, 224),
    "hibou_b": (85_741_056, 768, 224), "hibou_l": (303_659_264, 1024, 224),
    "midnight": (1_134_771_200, 3072, 224), "kaiko_vits16": (21_665_664, 384, 224),
    "kaiko_vits8": (21_670_272, 384, 224), "kaiko_vitb16": (85_798_656, 768, 224),
    "kaiko_vitb8": (85_807_872, 768, 224), "kaiko_vitl14": (303_230_976, 1024, 224),
    "lunit_vits16": (21_665_664, 384, 224), "lunit_vits8": (21_670_272, 384, 224),
    "gpfm": (303_227_904, 1024, 224), "mstar": (303_350_784, 1024, 224),
    "conch_v1_5": (306_711_296, 768, 448),
}


def independent(name: str) -> nn.Module:
    import timm

    if ENCODERS[name].kind == "hf":
        return published_hf(name)
    with torch.device("meta"):
        if name == "conch_v1_5":
            return PublishedConch()
        arch, kw = published_timm(name)
        return timm.create_model(arch, pretrained=False, **{"num_classes": 0, **kw})


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_every_spec_name_is_registered():
    assert set(ENCODERS) == set(SPEC)
    assert set(SPEC) <= set(REGISTRY)


#: the ViT-H/g builds (over 600M parameters) take seconds even on the meta device
FULL = [pytest.param(n, marks=pytest.mark.slow) if SPEC[n][0] > 600_000_000 else n for n in sorted(SPEC)]


@pytest.mark.parametrize("name", FULL)
def test_full_architecture_count_and_keys_match_the_published_constructor(name):
    spec = ENCODERS[name]
    ours = build_hf(spec, device="meta") if spec.kind == "hf" else build_module(spec, device="meta")
    params, dim, size = SPEC[name]
    assert sum(p.numel() for p in ours.parameters()) == params
    assert shapes(ours) == shapes(independent(name))
    assert (spec.feature_dim(), spec.tile_size) == (dim, size)
    assert (REGISTRY[name].feature_dim, REGISTRY[name].tile_size) == (dim, size)


@pytest.mark.parametrize("name", sorted(SPEC))
def test_random_build_gives_the_documented_output_size(name):
    torch.manual_seed(0)
    small = {"depth": 1, "img_size": 32 if name in ("conch_v1_5",) else 28 if "14" in ENCODERS[name].arch
             or ENCODERS[name].kwargs.get("patch_size") == 14 else 32}
    if name == "prov_gigapath":
        small["img_size"] = 32
    ext = create_extractor(name, pretrained=False, **small)
    out = ext(torch.randn(2, 3, small["img_size"], small["img_size"]))
    assert out.shape == (2, SPEC[name][1]) and ext.feature_dim == SPEC[name][1]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    rec = ext.record()
    assert rec["weights"] == "random-init" and rec["pretrained"] is False
    assert "RANDOM WEIGHTS" in rec["random_init"]
    assert ext.mean == tuple(ENCODERS[name].mean) and ext.mpp == 0.5


@pytest.mark.slow
def test_output_option_where_sources_disagree():
    for name, cls_dim in (("virchow", 1280), ("virchow2", 1280), ("midnight", 1536)):
        small = {"depth": 1, "img_size": 28}
        assert create_extractor(name, pretrained=False, **small).feature_dim == 2 * cls_dim
        ext = create_extractor(name, pretrained=False, output="cls", **small)
        assert ext.feature_dim == cls_dim and ext(torch.randn(1, 3, 28, 28)).shape == (1, cls_dim)
    with pytest.raises(ValueError, match="output='cls\\+mean' is not offered"):
        create_extractor("uni", pretrained=False, output="cls+mean", depth=1)


def test_pretrained_encoder_needs_local_weights():
    from rl_benchmarks.models.feature_extractors import WeightsError

    with pytest.raises(WeightsError, match="uni .*needs weights_path.*pretrained=False"):
        create_extractor("uni")
