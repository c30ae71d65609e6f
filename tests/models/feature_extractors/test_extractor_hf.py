import json

import numpy as np
import pytest
import torch
from PIL import Image
from testlib.extractors import TINY, write_ibot_checkpoint

from rl_benchmarks.models import create_extractor, iBOTViT
from rl_benchmarks.models.feature_extractors import WeightsError
from rl_benchmarks.models.feature_extractors.hf import export_hf


@pytest.fixture(scope="module")
def exported(tmp_path_factory, ibot_ckpt):
    out = tmp_path_factory.mktemp("hf") / "phikon_tiny"
    summary = export_hf(ibot_ckpt.path, out, num_heads=TINY["num_heads"])
    return out, summary


def readme_snippet(folder, images):
    """The reference README's code for owkin/phikon, pointed at a local folder."""
    from transformers import AutoImageProcessor, ViTModel

    image_processor = AutoImageProcessor.from_pretrained(folder)
    model = ViTModel.from_pretrained(folder, add_pooling_layer=False)
    inputs = image_processor(images, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    return outputs.last_hidden_state[:, 0, :]


def _images(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            for _ in range(n)]


def test_export_writes_v4_layout_and_phikon_config(exported):
    from safetensors import safe_open

    out, summary = exported
    assert summary["verify_max_abs_diff"] <= 1e-4
    config = json.loads((out / "config.json").read_text())
    assert config["layer_norm_eps"] == 1e-6 and config["qkv_bias"] is True
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"],
            config["image_size"], config["patch_size"]) == ("vit", 32, 2, 32, 16)
    proc = json.loads((out / "preprocessor_config.json").read_text())
    assert proc["image_processor_type"] == "ViTImageProcessor"
    assert proc["image_mean"] == [0.485, 0.456, 0.406] and proc["size"]["height"] == 32
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "encoder.layer.1.attention.attention.query.weight" in keys
    assert "embeddings.patch_embeddings.projection.weight" in keys and "layernorm.bias" in keys
    assert not any(k.startswith("layers.") or "q_proj" in k for k in keys)


def test_readme_snippet_on_export_matches_ibotvit(exported, ibot_ckpt):
    out, _ = exported
    images = _images(3, 32)
    hf = readme_snippet(out, images)
    vit = iBOTViT("vit_base", weights_path=ibot_ckpt.path, img_size=32, **TINY)
    ours = vit(torch.stack([vit.transform(im) for im in images]))
    assert hf.shape == ours.shape == (3, 32)
    assert (hf - ours).abs().max().item() <= 1e-4
    student = iBOTViT("vit_base", weights_path=ibot_ckpt.path, encoder="student", img_size=32,
                      **TINY)
    assert (hf - student(torch.stack([vit.transform(im) for im in images]))).abs().max() > 1e-3


def test_phikon_hf_extractor_loads_the_folder(exported, ibot_ckpt):
    out, _ = exported
    ext = create_extractor("phikon_hf", weights_path=out)
    assert (ext.feature_dim, ext.tile_size, ext.mean) == (32, 32, (0.485, 0.456, 0.406))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ext(x), ibot_ckpt.teacher(x), atol=1e-4, rtol=1e-4)
    rec = ext.record()
    import hashlib

    assert rec["weights_sha256"] == hashlib.sha256(
        (out / "model.safetensors").read_bytes()).hexdigest()


def test_broken_hf_folders_are_clear_errors(exported, tmp_path):
    from safetensors.torch import load_file, save_file

    out, _ = exported
    with pytest.raises(WeightsError, match="does not exist"):
        create_extractor("phikon_hf", weights_path=tmp_path / "absent")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (broken / name).write_text((out / name).read_text())
    with pytest.raises(WeightsError, match="no model.safetensors"):
        create_extractor("phikon_hf", weights_path=broken)
    tensors = load_file(str(out / "model.safetensors"))
    del tensors["encoder.layer.0.output.dense.bias"]
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(WeightsError, match="missing"):
        create_extractor("phikon_hf", weights_path=broken)


def test_cli_export_hf(tmp_path, capsys):
    from rl_benchmarks.cli.main import main

    ckpt = write_ibot_checkpoint(tmp_path / "ck.pth", img_size=32)
    out = tmp_path / "exported"
    code = main(["export-hf", f"weights_path={ckpt.path}", f"output_dir={out}",
                 "encoder=student", "num_heads=2"])
    assert code == 0, capsys.readouterr().err
    assert "exported" in capsys.readouterr().out
    ext = create_extractor("phikon_hf", weights_path=out)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ext(x), ckpt.student(x), atol=1e-4, rtol=1e-4)
    assert main(["export-hf", f"output_dir={out}"]) == 2
    assert "weights_path is required" in capsys.readouterr().err
    assert main(["export-hf", f"weights_path={tmp_path}/none.pth", f"output_dir={out}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_real_tiles_readme_snippet_matches_ibotvit(real_data, tmp_path):
    """Real 224-px CRC tiles through the README snippet and through iBOTViT (tiny ViT/16)."""
    import pandas as pd

    root = real_data / "tiles" / "crc_he_9class"
    labels = pd.read_csv(root / "labels.csv")
    images = [Image.open(root / p).convert("RGB") for p in labels["path"].iloc[:4]]
    assert all(im.size == (224, 224) for im in images)
    ckpt = write_ibot_checkpoint(tmp_path / "ck224.pth", img_size=224)
    out = tmp_path / "hf224"
    export_hf(ckpt.path, out, num_heads=2)
    hf = readme_snippet(out, images)
    vit = iBOTViT("auto", weights_path=ckpt.path, num_heads=2)
    batch = torch.stack([vit.transform(im) for im in images])
    assert (hf - vit(batch)).abs().max().item() <= 1e-4
    # the batched uint8 path gives the same tensors as the per-tile PIL transform
    arr = torch.from_numpy(np.stack([np.asarray(im) for im in images]))
    assert torch.equal(vit.normalize_uint8(arr), batch)
