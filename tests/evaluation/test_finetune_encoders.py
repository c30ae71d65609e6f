"""Issue 18: ``finetune`` with a registered encoder by name (timm ViT and transformers Dinov2
bodies), in linear and LoRA modes, on tiny random-init builds and generated tiles."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from testlib.encoders import write_colour_tiles

from rl_benchmarks.evaluation import finetune as ft
from rl_benchmarks.models.feature_extractors import create_extractor

#: Tiny builds of registered encoders (the registry's builder keywords).
TINY_TIMM = {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32}  # kaiko_vits16: patch 16
TINY_HF = {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 28}     # hibou_b: Dinov2 + registers


def _tiles(root, n_per_class=6):
    """Three colour classes with noise, written as an ImageFolder tree: its root."""
    write_colour_tiles(root, n_per_class=n_per_class)
    return root


def _random_weights(name, kwargs, path):
    """A 'downloaded' checkpoint of a tiny random encoder: a timm state dict (.safetensors)
    or a transformers folder, in the published layout the registry loads."""
    torch.manual_seed(1)
    ext = create_extractor(name, pretrained=False, **kwargs)
    inner = ext.feature_extractor.model
    if hasattr(inner, "save_pretrained"):
        inner.save_pretrained(str(path))
        return path
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in inner.state_dict().items()}, str(path / "model.safetensors"))
    return path / "model.safetensors"


def _run(args):
    from rl_benchmarks.cli.main import main

    return main(["finetune", *args])


@pytest.mark.slow  # first builds import timm and transformers (about 5 s on a busy machine)
def test_lora_targets_per_body():
    timm_ext = create_extractor("kaiko_vits16", pretrained=False, **TINY_TIMM)
    assert ft.encoder_lora_targets(timm_ext.feature_extractor) == ["attn.qkv"]
    assert ft.encoder_lora_targets(timm_ext.feature_extractor, proj=True) == ["attn.qkv", "attn.proj"]
    hf_ext = create_extractor("hibou_b", pretrained=False, **TINY_HF)
    targets = ft.encoder_lora_targets(hf_ext.feature_extractor)
    assert targets in (["q_proj", "v_proj"], ["query", "value"])
    with_proj = ft.encoder_lora_targets(hf_ext.feature_extractor, proj=True)
    assert with_proj[:2] == targets and with_proj[2] in ("attention.o_proj", "attention.output.dense")
    module_names = [n for n, _ in hf_ext.feature_extractor.named_modules()]
    assert any(n.endswith("." + with_proj[2]) for n in module_names)  # the name really exists
    cnn_like = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8, 4))
    with pytest.raises(ValueError, match="mode=lora needs a ViT body"):
        ft.encoder_lora_targets(cnn_like)


def test_timm_lora_trains_only_adapters_and_head_with_the_expected_count():
    ext = create_extractor("kaiko_vits16", pretrained=False, **TINY_TIMM)
    cfg = ft.FinetuneConfig(mode="lora", lora_r=4, lora_alpha=4, lora_proj=True)
    model = ft.build_encoder_model(ext, 3, cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    # LoRA on the fused qkv (A: r x d, B: 3d x r) and proj (A: r x d, B: d x r) of 2 blocks,
    # plus the head on the 32-d CLS features (kaiko: cls output).
    d, r, layers = 32, 4, 2
    expected = layers * (r * d + 3 * d * r + r * d + d * r) + d * 3 + 3
    assert ft.count_parameters(model)[0] == expected


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs", [("kaiko_vits16", TINY_TIMM), ("hibou_b", TINY_HF)])
def test_lora_run_keeps_base_weights_and_outputs_reload_to_the_same_logits(tmp_path, name, kwargs):
    weights = _random_weights(name, kwargs, tmp_path / "weights")
    data = _tiles(tmp_path / "tiles")
    out = tmp_path / "out"
    cfg = ft.FinetuneConfig(mode="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0, num_epochs=2,
                            batch_size=4, image_size=kwargs["img_size"], device="cpu",
                            learning_rate=1e-2, feature_extractor=name, max_steps_per_epoch=2)
    ext = ft.load_encoder(name, weights, pretrained=True, encoder_kwargs=kwargs)
    cfg.mean, cfg.std = ext.mean, ext.std
    base = {k: v.clone() for k, v in ext.feature_extractor.state_dict().items()}
    model = ft.build_encoder_model(ext, 3, cfg)
    frame = pd.DataFrame({"image_path": [str(p) for p in sorted(data.rglob("*.png"))]})
    frame["label"] = [["ADI", "STR", "TUM"].index(p.split("/")[-2]) for p in frame.image_path]
    splits = ft.split_frame(frame, (0.5, 0.25, 0.25), seed=0)
    model, result = ft.train(model, splits, cfg, progress=False)
    assert all(np.isfinite(result.train_loss))
    # Base weights are untouched (peft keeps them as base_layer); the adapters did move.
    params = dict(model.named_parameters())
    for key, before in base.items():
        parts = key.rsplit(".", 1)
        name_in = f"base_model.model.backbone.{key}"
        alt = f"base_model.model.backbone.{parts[0]}.base_layer.{parts[1]}"
        after = params.get(name_in, params.get(alt))
        if after is None:  # a buffer
            continue
        assert torch.equal(after.detach(), before), key
    assert any(float(p.detach().abs().sum()) > 0 for n, p in params.items() if "lora_B" in n)

    result.classes = ["ADI", "STR", "TUM"]
    ft.save_encoder_outputs(model, result, cfg, out, {"name": name, "output": None, "kwargs": kwargs})
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "classifier_head.safetensors").is_file()
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.bin"))
    x = torch.randn(3, 3, kwargs["img_size"], kwargs["img_size"])
    model.eval()
    with torch.no_grad():
        expected = model(x)
        reloaded = ft.load_encoder_classifier(out)  # merged weights through the registry
        torch.testing.assert_close(reloaded(x), expected, atol=1e-5, rtol=1e-4)
        fresh = ft.load_encoder(name, weights, pretrained=True, encoder_kwargs=kwargs)
        adapter = ft.load_encoder_adapter(fresh, 3, out / "adapter").eval()
        torch.testing.assert_close(adapter(x), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_cli_linear_then_lora_with_a_registered_encoder(tmp_path, capsys):
    data = _tiles(tmp_path / "tiles")
    common = [f"data={data}", "feature_extractor=kaiko_vits16", "pretrained=false", "image_size=32",
              *[f"+encoder_kwargs.{k}={v}" for k, v in TINY_TIMM.items()], "num_epochs=1",
              "batch_size=4", "num_workers=0", "device=cpu", "max_steps_per_epoch=2",
              "stain_jitter=0.05"]
    out_lin, out_lora = tmp_path / "lin", tmp_path / "lora"
    assert _run([*common, "mode=linear", f"output_dir={out_lin}"]) == 0
    assert _run([*common, "mode=lora", "lora_r=2", "lora_alpha=2", f"output_dir={out_lora}"]) == 0
    printed = capsys.readouterr().out
    assert "RANDOMLY INITIALISED" in printed and "encoder kaiko_vits16" in printed
    for out, mode in ((out_lin, "linear"), (out_lora, "lora")):
        record = json.loads((out / "results.json").read_text())
        assert record["encoder"]["name"] == "kaiko_vits16"
        assert record["encoder"]["record"]["weights"] == "random-init"
        assert record["config"]["mean"] == [0.5, 0.5, 0.5]  # kaiko's normalisation, not ImageNet's
        assert record["result"]["mode"] == mode and np.isfinite(record["result"]["train_loss"][0])
        merged = load_file(str(out / record["encoder"]["merged_weights"]))
        assert "blocks.0.attn.qkv.weight" in merged  # the timm layout the registry loads
        head = load_file(str(out / "classifier_head.safetensors"))
        assert tuple(head["weight"].shape) == (3, 32)
    assert record["encoder"]["lora_targets"] == ["attn.qkv"]
    assert (out_lora / "adapter" / "adapter_config.json").is_file()
    assert not (out_lin / "adapter").exists()


def test_cli_image_size_must_be_the_encoder_tile_size(tmp_path, capsys):
    data = _tiles(tmp_path / "tiles")
    code = _run([f"data={data}", "feature_extractor=kaiko_vits16", "pretrained=false", "image_size=64",
                 *[f"+encoder_kwargs.{k}={v}" for k, v in TINY_TIMM.items()], "num_workers=0",
                 f"output_dir={tmp_path / 'out'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "image_size=64 does not fit kaiko_vits16, whose tile size is 32: pass image_size=32" in err
    assert not (tmp_path / "out").exists()


def test_cli_unknown_encoder_is_a_one_line_error(tmp_path, capsys):
    data = _tiles(tmp_path / "tiles")
    code = _run([f"data={data}", "feature_extractor=not_a_model", "pretrained=false",
                 f"output_dir={tmp_path / 'out'}"])
    assert code == 2
    assert "unknown extractor 'not_a_model'" in capsys.readouterr().err
