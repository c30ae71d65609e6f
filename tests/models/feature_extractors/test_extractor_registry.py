from pathlib import Path

import pytest
import torch

from rl_benchmarks.models import create_extractor
from rl_benchmarks.models.feature_extractors import (
    REGISTRY,
    WeightsError,
    extractor_from_config,
    list_extractors,
)

CONF = (Path(__file__).resolve().parents[3] / "rl_benchmarks" / "conf" / "extract_features"
        / "feature_extractor")
# Shrink the transformers (fewer blocks) so the test stays fast; widths are kept, so the
# output dimension is the documented one.
SMALL = {"iBOTViTBasePANCAN": {"depth": 1}, "iBOTViTSmallCOAD": {"depth": 1},
         "iBOTViTBaseCOAD": {"depth": 1}, "iBOTViTLargeCOAD": {"depth": 1},
         "DinoChenBRCA": {"depth": 1}, "DinoChenPancancer": {"depth": 1},
         "CTransPath": {"depths": (1, 1, 1, 1), "img_size": 64, "window_size": 2}, "phikon_hf": {"depth": 1},
         "ResNet50": {"layers": (1, 1, 1, 1)}, "MoCoWideResNetCOAD": {"layers": (1, 1, 1, 1)}}
DOC = {"iBOTViTBasePANCAN": (768, 224, 0.5), "iBOTViTSmallCOAD": (384, 224, 0.5),
       "iBOTViTBaseCOAD": (768, 224, 0.5), "iBOTViTLargeCOAD": (1024, 224, 0.5),
       "ResNet50": (2048, 224, 0.5), "MoCoWideResNetCOAD": (2048, 224, 0.5),
       "DinoChenBRCA": (384, 256, 0.5), "DinoChenPancancer": (384, 256, 0.5),
       "CTransPath": (768, 224, 1.0), "phikon_hf": (768, 224, 0.5)}


def test_registry_lists_the_documented_names():
    from rl_benchmarks.models.feature_extractors.encoders import ENCODERS

    # the encoders of issue 18 are tested in test_encoders*.py
    assert set(list_extractors(include_aliases=False, include_timm=False)) == set(DOC) | set(ENCODERS)
    assert "phikon" in list_extractors() and "timm:<arch>" in list_extractors()


@pytest.mark.parametrize("name", sorted(DOC))
def test_every_extractor_gives_its_documented_dimension(name):
    torch.manual_seed(0)
    ext = create_extractor(name, pretrained=False, **SMALL.get(name, {}))
    dim, tile, mpp = DOC[name]
    assert (ext.feature_dim, ext.tile_size, ext.mpp) == (dim, tile, mpp)
    assert (REGISTRY[name].feature_dim, REGISTRY[name].tile_size) == (dim, tile)
    # tiny input: CNNs take any size; transformers take their tile size (Swin fixed, ViT any)
    size = 64 if name in ("ResNet50", "MoCoWideResNetCOAD", "CTransPath") else (
        224 if name == "phikon_hf" else 32)
    out = ext(torch.randn(2, 3, size, size))
    assert out.shape == (2, dim) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert ext.record()["weights"] == "random-init"


def test_unknown_name_and_missing_weights_are_clear_errors():
    with pytest.raises(ValueError, match="unknown extractor 'ResNet51'.*ResNet50"):
        create_extractor("ResNet51")
    for name in ("ResNet50", "CTransPath", "DinoChenBRCA", "phikon_hf"):
        with pytest.raises(WeightsError, match=f"{name} .*needs weights_path.*pretrained=False"):
            create_extractor(name)
    with pytest.raises(WeightsError, match="timm:resnet18 needs weights_path"):
        create_extractor("timm:resnet18")


def test_resnet50_loads_a_torchvision_state_dict(tmp_path):
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(0)
    # torchvision's ResNet-50 class with one block per stage (same keys and widths, faster)
    tv = ResNet(Bottleneck, [1, 1, 1, 1]).eval()
    path = tmp_path / "resnet50.pth"
    torch.save(tv.state_dict(), path)  # fc.* included, as in torchvision's file
    ext = create_extractor("ResNet50", weights_path=path, layers=(1, 1, 1, 1))
    tv.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ext(x), tv(x), atol=1e-5, rtol=1e-5)
    sd = tv.state_dict()
    del sd["layer4.0.bn3.running_var"]
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"missing keys: layer4\.0\.bn3\.running_var"):
        create_extractor("ResNet50", weights_path=path, layers=(1, 1, 1, 1))


def test_moco_checkpoint_keeps_the_query_encoder(tmp_path):
    import timm

    torch.manual_seed(0)
    small = {"layers": (1, 1, 1, 1)}
    q = timm.create_model("wide_resnet50_2", num_classes=0, **small).eval()
    state = {f"module.encoder_q.{n}": v for n, v in q.state_dict().items()}
    state |= {f"module.encoder_k.{n}": v + 1 for n, v in q.state_dict().items()}
    state |= {"module.encoder_q.fc.0.weight": torch.zeros(4, 2048), "module.queue": torch.zeros(4)}
    path = tmp_path / "moco.pth.tar"
    torch.save({"state_dict": state, "epoch": 200, "arch": "wide_resnet50_2"}, path)
    ext = create_extractor("MoCoWideResNetCOAD", weights_path=path, **small)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ext(x), q(x), atol=1e-5, rtol=1e-5)
    assert ext.feature_dim == 2048


def test_ctranspath_loads_an_old_timm_swin_checkpoint(tmp_path):
    from rl_benchmarks.models.feature_extractors.ctranspath import build_ctranspath

    torch.manual_seed(0)
    small = {"depths": (1, 1, 1, 1), "img_size": 64, "window_size": 2}
    ref = build_ctranspath(**small).eval()
    old = {}
    for key, value in ref.state_dict().items():
        if ".downsample." in key:  # old timm: down-sampling at the end of the previous stage
            stage = int(key.split(".")[1])
            key = key.replace(f"layers.{stage}.", f"layers.{stage - 1}.", 1)
        old[key] = value
    old["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(4, 4, dtype=torch.long)
    path = tmp_path / "ctranspath.pth"
    torch.save({"model": old}, path)
    ext = create_extractor("CTransPath", weights_path=path, **small)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ext(x), ref(x), atol=1e-5, rtol=1e-5)
    assert (ext.mpp, ext.feature_dim) == (1.0, 768)


def test_dino_chen_reads_a_hipt_checkpoint_and_takes_256px_tiles(tmp_path):
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    # HIPT's vit256: ViT-S/16 trained at 224 (pos_embed 1+14*14), run on 256-px tiles
    vits = VisionTransformer(img_size=224, patch_size=16, embed_dim=384, depth=1, num_heads=6,
                             num_classes=0, dynamic_img_size=True,
                             norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    path = tmp_path / "vit256_small_dino.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in vits.state_dict().items()}
                | {"head.mlp.0.weight": torch.zeros(2, 384)}}, path)
    ext = create_extractor("DinoChenPancancer", weights_path=path)
    assert (ext.feature_dim, ext.tile_size) == (384, 256)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(ext(x), vits(x), atol=1e-5, rtol=1e-5)


def test_timm_generic_from_local_file(tmp_path):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path / "r18.pth"
    torch.save(model.state_dict(), path)
    ext = create_extractor("timm:resnet18", weights_path=path)
    model.reset_classifier(0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ext(x), model(x), atol=1e-5, rtol=1e-5)
    assert ext.name == "timm:resnet18" and ext.feature_dim == 512 and ext.tile_size == 224
    sd = model.state_dict()
    sd["bogus.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"unexpected keys: bogus\.weight"):
        create_extractor("timm:resnet18", weights_path=path)


def test_every_hydra_node_names_a_registered_extractor():
    import yaml

    files = sorted(CONF.glob("*.yaml"))
    names = {f.stem for f in files}
    assert set(DOC) | {"phikon", "timm"} <= names
    for f in files:
        node = yaml.safe_load(f.read_text())
        assert "weights_path" in node and node["weights_path"] is None, f
        assert "name" in node and "_target_" in node, f
        if node["name"] != "???":
            assert node["name"] in list_extractors(True), f
    ref = yaml.safe_load((CONF / "iBOTViTBasePANCAN.yaml").read_text())
    assert ref["_target_"] == "rl_benchmarks.models.iBOTViT"
    assert (ref["architecture"], ref["encoder"]) == ("vit_base_pancan", "teacher")


def test_build_from_hydra_group_node_both_ways():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
        cfg = compose(config_name="feature_extractor/ResNet50")
        cfg_vit = compose(config_name="feature_extractor/iBOTViTBasePANCAN",
                          overrides=["feature_extractor.pretrained=false",
                                     "+feature_extractor.depth=1"])
        cfg_timm = compose(config_name="feature_extractor/timm")
    node = cfg.feature_extractor
    with pytest.raises(WeightsError, match="ResNet50 .*needs weights_path"):
        extractor_from_config(node)
    ext = extractor_from_config(node, pretrained=False, precision="bf16")
    assert ext.name == "ResNet50" and ext.precision == "bf16" and ext.feature_dim == 2048
    vit_a = extractor_from_config(cfg_vit.feature_extractor)
    vit_b = instantiate(cfg_vit.feature_extractor)  # the reference's way: _target_ iBOTViT
    assert vit_a.name == vit_b.name == "iBOTViTBasePANCAN" and vit_b.feature_dim == 768
    with pytest.raises(ValueError, match="needs a `name` key"):
        extractor_from_config(cfg_timm.feature_extractor)
