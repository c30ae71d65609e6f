"""The CPU fast path of ViT extractors (bf16 weights, bmm attention, oneDNN-fused linears).

References are timm's own forward (fp32) on the same weights; the fast path must equal it in
fp32 and stay within cosine 0.9999 in bf16 on real tiles.
"""

from __future__ import annotations

import copy
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from rl_benchmarks.models import ParallelExtractor, create_extractor
from rl_benchmarks.models.feature_extractors import fast_inference as fi
from rl_benchmarks.models.feature_extractors.core import ModuleExtractor


def _vit(seed: int = 0, **kw) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=0,
                qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    args.update(kw)
    model = VisionTransformer(**args).eval()
    with torch.no_grad():  # non-trivial norms, biases and layer scales
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or name.endswith("gamma"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def _x(n: int = 3, size: int = 32) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 3, size, size)


VARIANTS = {
    "plain": {},
    "layerscale": {"init_values": 0.5},
    "no-qkv-bias+registers": {"qkv_bias": False, "reg_tokens": 2, "no_embed_class": True},
    "swiglu-mlp": {"mlp_layer": "swiglu"},
}


def _build(variant: str) -> nn.Module:
    kw = dict(VARIANTS[variant])
    if kw.get("mlp_layer") == "swiglu":
        from timm.layers import SwiGLUPacked

        kw.update(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, mlp_ratio=2 * 4.0)
    return _vit(**kw)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fp32_fast_path_equals_timm(variant, fused):
    if fused and not fi.onednn_fusions_available():
        pytest.skip("torch built without oneDNN")
    model = _build(variant)
    x = _x()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = fi.build_fast_module(model, "fp32", fused=fused)
    assert fast.blocks == 2 and all(isinstance(b, fi.FastBlock) for b in fast.network.blocks)
    with torch.no_grad():
        ref = model(x)
        out = fast(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # the original network is untouched: same class of blocks, same weights, fp32
    assert all(type(b).__name__ == "Block" for b in model.blocks)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bf16_fast_module_holds_bf16_weights_and_is_close():
    model = _vit(init_values=0.5)
    fast = fi.build_fast_module(model, "bf16")
    assert {p.dtype for p in fast.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with torch.no_grad():
        ref, out = model(_x()), fast(_x()).float()
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=1)
    assert cos.min() > 0.999 and not torch.equal(out, ref)


def test_unsupported_blocks_are_left_alone():
    # q/k norms are not reproduced by FastBlock: no block is fusable, no fast path
    model = _vit(qk_norm=True)
    assert fi.count_fusable_blocks(model) == 0
    with pytest.raises(ValueError, match="no timm ViT block"):
        fi.build_fast_module(model, "bf16")
    ext = ModuleExtractor(model, name="qknorm", feature_dim=48, precision="bf16")
    assert ext.record()["inference_path"] == "autocast"


def test_extractor_paths_and_record():
    ext = create_extractor("iBOTViTBasePANCAN", pretrained=False, embed_dim=32, depth=1,
                           num_heads=2, img_size=32, tile_size=32)
    x = _x(2)
    assert ext.record()["inference_path"] == "fast"  # fp32 default on the CPU: the fast path
    fast32 = ext(x)
    assert ext._fast_cache is not None and ext._fast_cache[1].dtype == torch.float32
    ext.inference_path = "plain"
    assert ext.record()["inference_path"] == "plain"  # the module as built
    ref = ext(x)
    torch.testing.assert_close(fast32, ref, atol=1e-5, rtol=1e-5)
    ext.inference_path = "auto"
    ext.precision = "bf16"
    rec = ext.record()
    assert rec["inference_path"] == "fast" and "bf16 weights" in rec["inference_detail"]
    low = ext(x)
    assert ext._fast_cache is not None  # the fast copy really ran
    assert torch.nn.functional.cosine_similarity(low, ref, dim=1).min() > 0.999
    ext.fast_residual_fp32 = True  # the more exact variant: a new copy, recorded
    rec32 = ext.record()
    assert rec32["inference_path"] == "fast" and "fp32 residual stream" in rec32["inference_detail"]
    assert torch.nn.functional.cosine_similarity(ext(x), ref, dim=1).min() > 0.999
    assert ext._fast_cache[1].dtype == torch.float32  # the residual stream's dtype
    ext.fast_residual_fp32 = False
    ext.inference_path = "plain"
    assert ext.record()["inference_path"] == "autocast"
    ext.precision, ext.inference_path = "fp32", "fast"
    assert ext.record()["inference_path"] == "fast"
    torch.testing.assert_close(ext(x), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="inference_path='turbo'"):
        ext.inference_path = "turbo"
        ext.record()


def test_fast_copy_follows_weight_changes():
    ext = ModuleExtractor(_vit(seed=0), name="v", feature_dim=48, precision="fp32", inference_path="fast")
    x = _x(2)
    first = ext(x)
    other = _vit(seed=5)
    ext.feature_extractor.load_state_dict(other.state_dict())
    with torch.no_grad():
        expected = other(x)
    torch.testing.assert_close(ext(x), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first, expected)


def test_non_vit_extractor_keeps_autocast():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    ext = ModuleExtractor(net, name="cnn", feature_dim=4, precision="bf16")
    assert ext.record()["inference_path"] == "autocast"
    assert ext(_x(2)).shape == (2, 4)


def test_parallel_extractor_on_cpu_takes_the_fast_path():
    base = ModuleExtractor(_vit(), name="v", feature_dim=48, precision="bf16")
    par = ParallelExtractor(base, gpu=-1)
    rec = par.record()
    assert rec["inference_path"] == "fast" and rec["device"] == "cpu"
    with torch.no_grad():
        ref = base.feature_extractor(_x(2))
    cos = torch.nn.functional.cosine_similarity(par(_x(2)), ref, dim=1)
    assert cos.min() > 0.999


def _real_tiles(root, n: int) -> torch.Tensor:
    from PIL import Image

    files = sorted((root / "tiles" / "crc_he_9class").rglob("*.png"))[:n]
    assert len(files) == n
    return torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))


def _bf16_cosine_on_real_tiles(real_data, shape: dict, n: int) -> torch.Tensor:
    torch.manual_seed(0)
    ext = create_extractor("iBOTViTBasePANCAN", pretrained=False, **shape)
    x = ext.normalize_uint8(_real_tiles(real_data, n))
    ext.inference_path = "plain"  # the reference: timm's own forward in fp32
    ref = ext(x)
    ext.inference_path = "auto"
    assert ext.record()["inference_path"] == "fast"  # fp32 default on the CPU
    torch.testing.assert_close(ext(x), ref, atol=1e-4, rtol=1e-4)
    ext.precision = "bf16"
    assert ext.record()["inference_path"] == "fast"
    low = ext(x)
    return torch.nn.functional.cosine_similarity(low, ref, dim=1)


def test_bf16_fast_path_cosine_on_real_tiles_vit_small(real_data):
    # ViT-S/16 shape (12 blocks), random init: the same depth of bf16 rounding as Phikon
    cos = _bf16_cosine_on_real_tiles(real_data, {"embed_dim": 384, "num_heads": 6}, 4)
    assert cos.min() >= 0.9999


@pytest.mark.slow
def test_bf16_fast_path_cosine_on_real_tiles_vit_base(real_data):
    # Phikon's exact shape (ViT-B/16), random init: no Phikon weights are available offline
    cos = _bf16_cosine_on_real_tiles(real_data, {}, 16)
    assert cos.min() >= 0.9999


@pytest.mark.parametrize("residual_fp32", [False, True])
def test_network_loaded_in_bf16(residual_fp32):
    # the encoder loader builds bf16 runs directly in bf16: the fast copy must accept that
    model = _vit(init_values=0.5)
    ref_fp32 = model(_x()).detach()
    low = copy.deepcopy(model).to(torch.bfloat16)
    fast = fi.build_fast_module(low, "bf16", residual_fp32=residual_fp32)
    with torch.no_grad():
        out = fast(_x()).float()
    assert torch.nn.functional.cosine_similarity(out, ref_fp32, dim=1).min() > 0.999
    assert {p.dtype for p in low.parameters()} == {torch.bfloat16}  # the source is unchanged


def test_create_extractor_takes_the_inference_path():
    ext = create_extractor("iBOTViTBasePANCAN", pretrained=False, embed_dim=32, depth=1,
                           num_heads=2, img_size=32, tile_size=32, inference_path="plain")
    assert ext.inference_path == "plain" and ext.record()["inference_path"] == "plain"
    with pytest.raises(ValueError, match="inference_path='turbo'"):
        create_extractor("iBOTViTBasePANCAN", pretrained=False, embed_dim=32, depth=1,
                         num_heads=2, img_size=32, tile_size=32, inference_path="turbo")


def test_inference_path_is_set_before_placing(monkeypatch):
    """create_extractor sets the path before ``place``, so the ParallelExtractor that
    ``place`` makes for several GPUs (which copies its module's path) has it too."""
    from rl_benchmarks.models import Extractor

    seen = []
    real_place = Extractor.place
    monkeypatch.setattr(Extractor, "place", lambda self, device=-1: seen.append(
        self.inference_path) or real_place(self, device))
    create_extractor("iBOTViTBasePANCAN", pretrained=False, embed_dim=32, depth=1,
                     num_heads=2, img_size=32, tile_size=32, inference_path="plain")
    assert seen == ["plain"]
    base = ModuleExtractor(_vit(), name="v", feature_dim=48, inference_path="plain")
    assert ParallelExtractor(base, gpu=-1).inference_path == "plain"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fp32_auto_takes_the_fast_path_only_without_a_weight_copy(variant):
    """fp32, ``auto``: the fast path where its copy uses the module's own weight tensors (all
    four linears of every block), the plain path where it would copy some (LayerScale folded,
    SwiGLU MLP); ``fast`` takes it anyway."""
    model = _build(variant)
    fast = fi.build_fast_module(model, "fp32")
    own = {p.data_ptr() for p in model.parameters()}
    weights = [getattr(m, n) for m in fast.modules() if isinstance(m, fi.FastBlock)
               for n in ("w_qkv", "w_proj", "w_fc1", "w_fc2") if getattr(m, n, None) is not None]
    shared = bool(weights) and all(w.data_ptr() in own for w in weights) and all(
        m.mlp is None for m in fast.modules() if isinstance(m, fi.FastBlock))
    assert shared == (variant in ("plain", "no-qkv-bias+registers"))
    cpu = torch.device("cpu")
    assert fi.select_path(model, "fp32", cpu, "auto") == (fi.PATH_FAST if shared else fi.PATH_PLAIN)
    assert fi.select_path(model, "fp32", cpu, "fast") == fi.PATH_FAST
    assert fi.select_path(model, "bf16", cpu, "auto") == fi.PATH_FAST


def test_fp32_fast_path_error_is_float_rounding():
    # against a float64 forward of the same weights, the fast fp32 path is no further off than
    # timm's own fp32 forward (both are float32 rounding; a wrong kernel would be far off)
    model = _vit(init_values=0.5)
    x = _x(4)
    with torch.no_grad():
        r64 = copy.deepcopy(model).double()(x.double())
        plain = (model(x).double() - r64).abs().max().item()
        fast = (fi.build_fast_module(model, "fp32")(x).double() - r64).abs().max().item()
    assert fast <= 4 * plain + 1e-6
