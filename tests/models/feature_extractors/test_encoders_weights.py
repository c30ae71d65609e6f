"""Issue 18: strict loading of encoder weights (errors naming the keys and the likely model),
wrappers and prefixes, the input-size hint, YAML encoder specs and the Hydra nodes
(``rlbench encoders``: tests/cli/test_encoders.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from testlib.encoders import kaiko_s16_checkpoint, randomize

from rl_benchmarks.models.feature_extractors import WeightsError, create_extractor, extractor_from_config
from rl_benchmarks.models.feature_extractors.encoders import ENCODERS

CONF = (Path(__file__).resolve().parents[3] / "rl_benchmarks" / "conf" / "extract_features"
        / "feature_extractor")


@pytest.fixture(scope="module")
def kaiko_s16(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A full-size ViT-S/16 (kaiko / Lunit layout) with random weights, as a plain .pth."""
    return kaiko_s16_checkpoint(tmp_path_factory.mktemp("kaiko"))


@pytest.mark.slow
def test_wrong_model_names_the_keys_and_the_likely_model(kaiko_s16, tmp_path):
    path, ref = kaiko_s16
    with pytest.raises(WeightsError) as err:
        create_extractor("lunit_vits8", weights_path=path)
    text = str(err.value)
    assert "does not fit lunit_vits8" in text and "patch_embed.proj.weight (384, 3, 16, 16)" in text
    assert "looks like kaiko_vits16 / lunit_vits16" in text
    with pytest.raises(WeightsError, match=r"does not fit uni: .*shape mismatch.*looks like kaiko_vits16"):
        create_extractor("uni", weights_path=path)
    state = ref.state_dict()
    del state["norm.weight"]
    state["extra.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match=r"missing keys: norm\.weight; unexpected keys: extra\.bias; "
                                           r"closest registered model: kaiko_vits16 / lunit_vits16 \(99%"):
        create_extractor("kaiko_vits16", weights_path=tmp_path / "broken.pth")


@pytest.mark.slow
def test_wrappers_and_prefixes_and_no_random_fallback(kaiko_s16, tmp_path):
    path, ref = kaiko_s16
    x = torch.randn(2, 3, 224, 224)
    want = ref(x)
    for i, wrap in enumerate([lambda sd: {"model": sd}, lambda sd: {"state_dict": sd},
                              lambda sd: {"teacher": {f"backbone.{k}": v for k, v in sd.items()}},
                              lambda sd: {f"module.{k}": v for k, v in sd.items()}]):
        torch.save(wrap(ref.state_dict()), tmp_path / f"w{i}.pth")
        ext = create_extractor("kaiko_vits16", weights_path=tmp_path / f"w{i}.pth")
        torch.testing.assert_close(ext(x), want, atol=1e-5, rtol=0)
    with pytest.raises(WeightsError, match="do not exist"):
        create_extractor("kaiko_vits16", weights_path=tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="no weights file inside"):
        create_extractor("kaiko_vits16", weights_path=tmp_path / "empty_dir_that_is_made",
                         **({} if (tmp_path / "empty_dir_that_is_made").mkdir() else {}))


def test_a_file_made_for_another_input_size_gets_the_img_size_hint(tmp_path):
    ref = randomize(timm.create_model("vit_small_patch16_224", num_classes=0, img_size=112))
    torch.save(ref.state_dict(), tmp_path / "s112.pth")
    with pytest.raises(WeightsError, match=r"pos_embed .*pass img_size=112"):
        create_extractor("kaiko_vits16", weights_path=tmp_path / "s112.pth")
    ext = create_extractor("kaiko_vits16", weights_path=tmp_path / "s112.pth", img_size=112)
    x = torch.randn(1, 3, 112, 112)
    assert ext.tile_size == 112
    torch.testing.assert_close(ext(x), ref(x), atol=1e-5, rtol=0)


def test_transformers_encoder_needs_its_folder(kaiko_s16, tmp_path):
    path, _ = kaiko_s16
    with pytest.raises(WeightsError, match="phikon_v2 is a transformers model: weights_path must be its folder"):
        create_extractor("phikon_v2", weights_path=path)
    (tmp_path / "config.json").write_text('{"architecture": "vit_small_patch16_224"}')
    torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="a timm folder"):
        create_extractor("hibou_b", weights_path=tmp_path)


SPEC_YAML = """\
# kaiko ViT-S/16 written as a spec (docs/encoders.md)
name: my_kaiko_s16
timm: vit_small_patch16_224
kwargs: {dynamic_img_size: true}
output: cls
mean: [0.5, 0.5, 0.5]
std: [0.5, 0.5, 0.5]
tile_size: 224
mpp: 0.5
weights_path: vits16.pth
"""


@pytest.mark.slow
def test_yaml_spec_encoder_equals_the_registered_one(kaiko_s16):
    path, ref = kaiko_s16
    spec = path.parent / "my_kaiko.yaml"
    spec.write_text(SPEC_YAML)
    mine = create_extractor(str(spec))  # weights_path from the spec, relative to it
    named = create_extractor("kaiko_vits16", weights_path=path)
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(mine(x), named(x), atol=0, rtol=0)
    torch.testing.assert_close(mine(x), ref(x), atol=1e-5, rtol=0)
    assert (mine.name, mine.feature_dim, mine.mean, mine.tile_size) == ("my_kaiko_s16", 384, (0.5,) * 3, 224)
    assert mine.record()["spec_file"] == str(spec)
    node = {"_target_": "x", "name": str(spec), "weights_path": None, "pretrained": True}
    torch.testing.assert_close(extractor_from_config(node)(x), mine(x), atol=0, rtol=0)
    bad = path.parent / "bad.yaml"
    bad.write_text("timm: vit_small_patch16_224\ncolour: red\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown keys \['colour'\]"):
        create_extractor(str(bad), pretrained=False)


def test_every_encoder_has_a_hydra_node_and_composes_in_extract_slides(kaiko_s16):
    import yaml

    from rl_benchmarks.cli.main import compose_checked

    for name, spec in ENCODERS.items():
        node = yaml.safe_load((CONF / f"{name}.yaml").read_text())
        assert node["name"] == name and node["weights_path"] is None and node["pretrained"] is True
        assert node.get("output", spec.output if len(spec.outputs) > 1 else None) == (
            spec.output if len(spec.outputs) > 1 else None)
    path, ref = kaiko_s16
    cfg = compose_checked("extract-slides", ["feature_extractor=kaiko_vits16",
                                             f"feature_extractor.weights_path={path}"])
    ext = extractor_from_config(cfg.feature_extractor)
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(ext(x), ref(x), atol=1e-5, rtol=0)
    cfg = compose_checked("extract-tiles", ["feature_extractor=virchow", "feature_extractor.output=cls"])
    assert (cfg.feature_extractor.name, cfg.feature_extractor.output) == ("virchow", "cls")
    cfg = compose_checked("extract-slides", ["feature_extractor=encoder_spec",
                                             f"feature_extractor.name={path.parent / 'my_kaiko.yaml'}"])
    assert cfg.feature_extractor.name.endswith("my_kaiko.yaml")
