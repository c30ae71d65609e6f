"""Issue 18: a random checkpoint laid out like each kind of published file loads through the
registry, and its features on real H&E tiles equal the independent build's (1e-5, fp32).

Kinds: timm SwiGLU + registers (UNI2-h folder), timm DINOv2 no_embed_class (H-optimus-0
safetensors), transformers Dinov2 / Dinov2WithRegisters folders (Phikon-v2, Hibou, Midnight
CLS⊕mean), Virchow2's CLS ⊕ mean, CONCH v1.5's pooler, GPFM's chunked teacher checkpoint.
Depth-1/2 builds keep them fast; widths are the published ones.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch
from testlib.encoders import PublishedConch, normalise, randomize, real_tiles
from timm.layers import SwiGLUPacked
from torch import nn

from rl_benchmarks.models.feature_extractors import create_extractor

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPT = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
HIBOU = ((0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816))


@pytest.fixture(scope="module")
def tiles(real_data):
    return real_tiles(real_data, 3)


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 2e-5, rtol: float = 1e-5) -> None:
    """Equal within float32 rounding. Measured on the 1536-wide UNI2-h build (features of sd 1,
    max 7): timm's own fp32 forward is 1.0e-5 from a float64 forward, the CPU's fp32 fast path
    (fused linears, bmm attention: another summation order) 1.4e-5."""
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def features(ext, tiles: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
    """The extractor's features of the tiles normalised directly with the published mean/std
    (which must equal the extractor's own normalisation), and that input."""
    x = normalise(tiles, *norm)
    close(ext.normalize_uint8(tiles), x, atol=1e-6, rtol=0)
    return ext(x), x


@pytest.mark.slow
def test_uni2h_timm_folder_swiglu_registers_and_bf16(tmp_path, tiles):
    kw = {"img_size": 224, "patch_size": 14, "depth": 1, "num_heads": 24, "embed_dim": 1536,
          "init_values": 1e-5, "mlp_ratio": 2.66667 * 2, "no_embed_class": True,
          "mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU, "reg_tokens": 8, "dynamic_img_size": True}
    ref = randomize(timm.create_model("vit_giant_patch14_224", num_classes=0, **kw))
    folder = tmp_path / "UNI2-h"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_giant_patch14_224",
                                                    "num_classes": 0}))
    torch.save(ref.state_dict(), folder / "pytorch_model.bin")
    ext = create_extractor("uni2_h", weights_path=folder, depth=1)
    got, x = features(ext, tiles, IMAGENET)
    with torch.no_grad():
        want = ref(x)
    close(got, want)
    assert ext.feature_dim == 1536 and ext.record()["key_match"]["matched"] == len(ref.state_dict())
    assert ext.record()["pretrained"] is True
    # bf16: every weight is loaded as bf16 (no fp32 copy is built), features stay close
    low = create_extractor("uni2_h", weights_path=folder, depth=1, precision="bf16")
    assert {p.dtype for p in low.parameters()} == {torch.bfloat16}
    got = low(x)
    assert got.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.99


@pytest.mark.slow
def test_h_optimus_dinov2_no_embed_class_safetensors(tmp_path, tiles):
    from safetensors.torch import save_file

    ref = randomize(timm.create_model("vit_giant_patch14_reg4_dinov2", num_classes=0, img_size=224,
                                      global_pool="token", init_values=1e-5, dynamic_img_size=True,
                                      depth=1))
    assert tuple(ref.pos_embed.shape) == (1, 256, 1536)  # no_embed_class at 224/14
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    ext = create_extractor("h_optimus_0", weights_path=path, depth=1)
    got, x = features(ext, tiles, HOPT)
    with torch.no_grad():
        close(got, ref(x))


@pytest.mark.slow
def test_virchow2_cls_and_mean_of_patch_tokens(tmp_path, tiles):
    ref = randomize(timm.create_model(
        "vit_huge_patch14_224", num_classes=0, img_size=224, init_values=1e-5, mlp_ratio=5.3375,
        global_pool="", dynamic_img_size=True, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU,
        reg_tokens=4, depth=1))
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    ext = create_extractor("virchow2", weights_path=tmp_path, depth=1)
    got, x = features(ext, tiles, IMAGENET)
    with torch.no_grad():
        tokens = ref(x)  # (B, 1 + 4 + 256, 1280)
    assert tokens.shape[1:] == (261, 1280)
    close(got, torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1))
    cls = create_extractor("virchow2", weights_path=tmp_path, depth=1, output="cls")
    close(cls(x), tokens[:, 0])
    assert (ext.feature_dim, cls.feature_dim) == (2560, 1280)


def test_conch_v15_pooler_from_the_vision_file(tmp_path, tiles):
    torch.manual_seed(0)
    ref = randomize(PublishedConch(depth=1, img_size=224))
    folder = tmp_path / "conchv1_5"
    folder.mkdir()
    torch.save(ref.state_dict(), folder / "pytorch_model_vision.bin")
    assert any(k.startswith("attn_pool_contrast.to_kv") for k in ref.state_dict())
    ext = create_extractor("conch_v1_5", weights_path=folder, depth=1, img_size=224)
    got, x = features(ext, tiles, IMAGENET)
    with torch.no_grad():
        close(got, ref(x))
    assert ext.feature_dim == 768 and ext.tile_size == 224
    from rl_benchmarks.utils.io import sha256_file

    rec = ext.record()  # the folder's weights file is the one named and hashed
    assert rec["weights"] == str(folder / "pytorch_model_vision.bin")
    assert rec["weights_sha256"] == sha256_file(folder / "pytorch_model_vision.bin")


@pytest.mark.slow
def test_gpfm_chunked_teacher_checkpoint(tmp_path, tiles):
    ref = randomize(timm.create_model("vit_large_patch14_dinov2", num_classes=0, img_size=224,
                                      patch_size=14, init_values=1e-5, qkv_bias=True,
                                      dynamic_img_size=True, depth=2))
    teacher = {}
    for k, v in ref.state_dict().items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i}.{k[len('blocks.'):]}"  # DINOv2 BlockChunk: chunk i holds block i (depth 2, 2 chunks)
        teacher[f"backbone.{k}"] = v
    teacher["backbone.mask_token"] = torch.zeros(1, 1024)
    teacher["dino_head.mlp.0.weight"] = torch.zeros(8, 1024)
    torch.save({"teacher": teacher, "iteration": 5}, tmp_path / "GPFM.pth")
    ext = create_extractor("gpfm", weights_path=tmp_path / "GPFM.pth", depth=2)
    got, x = features(ext, tiles, IMAGENET)
    with torch.no_grad():
        close(got, ref(x))
    assert ext.record()["key_match"]["ignored"] == ["dino_head.mlp.0.weight", "mask_token"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["phikon_v2", "hibou_b", "midnight"])
def test_transformers_folders_load_through_transformers(tmp_path, tiles, name):
    from safetensors import safe_open
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    torch.manual_seed(0)
    if name == "phikon_v2":
        ref = Dinov2Model(Dinov2Config(hidden_size=1024, num_hidden_layers=1, num_attention_heads=16,
                                       patch_size=16, image_size=224, layerscale_value=1e-5))
        norm = IMAGENET
    elif name == "hibou_b":
        ref = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
            hidden_size=768, num_hidden_layers=1, num_attention_heads=12, patch_size=14, image_size=224,
            use_swiglu_ffn=True, num_register_tokens=4))
        norm = HIBOU
    else:
        ref = Dinov2Model(Dinov2Config(hidden_size=1536, num_hidden_layers=1, num_attention_heads=24,
                                       patch_size=14, image_size=224, use_swiglu_ffn=True))
        norm = HALF
    randomize(ref)
    ref.save_pretrained(tmp_path / name)
    with safe_open(str(tmp_path / name / "model.safetensors"), "pt") as f:  # transformers-4 layout
        assert "encoder.layer.0.attention.attention.query.weight" in set(f.keys())
    ext = create_extractor(name, weights_path=tmp_path / name)
    got, x = features(ext, tiles, norm)
    with torch.no_grad():
        out = ref(pixel_values=x)
    h = out.last_hidden_state
    want = torch.cat([h[:, 0], h[:, 1:].mean(1)], -1) if name == "midnight" else out.pooler_output
    close(got, want)


@pytest.mark.slow
def test_hibou_custom_code_config_and_a_wrong_folder(tmp_path, tiles):
    """A folder whose config.json names the custom code (model_type dinov2 + auto_map) is read
    as Dinov2WithRegistersModel with its values (no code runs); another model's folder is an
    error naming the keys and the model it looks like."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from rl_benchmarks.models.feature_extractors import WeightsError
    from rl_benchmarks.models.feature_extractors.encoder_build import likely_hf

    torch.manual_seed(0)
    ref = randomize(Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=768, num_hidden_layers=1, num_attention_heads=12, patch_size=14, image_size=224,
        use_swiglu_ffn=True, num_register_tokens=4)))
    folder = tmp_path / "hibou-b"
    ref.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config |= {"model_type": "dinov2", "architectures": ["Dinov2Model"],
               "auto_map": {"AutoModel": "modeling_dinov2.Dinov2Model"}}
    (folder / "config.json").write_text(json.dumps(config))
    ext = create_extractor("hibou_b", weights_path=folder)
    got, x = features(ext, tiles, HIBOU)
    with torch.no_grad():
        close(got, ref(pixel_values=x).pooler_output)
    with pytest.raises(WeightsError, match=r"does not fit phikon_v2: unexpected keys: embeddings\.register_tokens"):
        create_extractor("phikon_v2", weights_path=folder)
    low = create_extractor("hibou_b", weights_path=folder, precision="bf16")  # loaded as bf16 directly
    assert {p.dtype for p in low.parameters()} == {torch.bfloat16}
    assert torch.nn.functional.cosine_similarity(low(x), got).min() > 0.99
    with pytest.raises(WeightsError, match="a 768-wide model, hibou_l is 1024 wide"):
        create_extractor("hibou_l", weights_path=folder)
    # a full-size folder's config names the model it looks like
    full = Dinov2WithRegistersConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     use_swiglu_ffn=True, num_register_tokens=4)
    assert likely_hf(full, exclude="phikon_v2") == "the folder looks like hibou_b"
