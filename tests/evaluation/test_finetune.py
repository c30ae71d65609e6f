"""LoRA fine-tuning on a tiny random ViT and generated tiles."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from testlib.encoders import write_colour_tiles

from rl_benchmarks.evaluation import finetune as ft

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=16)


def _tiny_backbone(seed: int = 0):
    torch.manual_seed(seed)
    return ft.load_vit_backbone(None, pretrained=False, vit_kwargs=TINY)


def test_only_lora_and_head_are_trainable_and_count_matches_formula():
    cfg = ft.FinetuneConfig(mode="lora", lora_r=4, lora_alpha=4)
    model = ft.build_model(_tiny_backbone(), n_classes=3, cfg=cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(("lora_" in n) or ("classifier" in n) for n in trainable)
    assert any("q_proj" in n or "query" in n for n in trainable)
    assert any("v_proj" in n or "value" in n for n in trainable)
    assert not any("k_proj" in n or ".key." in n for n in trainable)
    n_trainable, n_total = ft.count_parameters(model)
    assert n_trainable == ft.expected_lora_trainable(hidden=32, n_layers=2, r=4, n_classes=3)
    assert 0 < n_trainable < n_total


def test_linear_mode_trains_only_the_head():
    model = ft.build_model(_tiny_backbone(), 3, ft.FinetuneConfig(mode="linear"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}


def test_lora_loss_goes_down():
    cfg = ft.FinetuneConfig(mode="lora", lora_r=4, lora_alpha=4, lora_dropout=0.0)
    model = ft.build_model(_tiny_backbone(), 3, cfg)
    torch.manual_seed(0)
    x = torch.randn(12, 3, 32, 32)
    y = torch.arange(12) % 3
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_merged_equals_unmerged_and_adapter_reloads(tmp_path):
    import copy

    cfg = ft.FinetuneConfig(mode="lora", lora_r=4, lora_alpha=8)
    model = ft.build_model(_tiny_backbone(), 3, cfg)
    # Make the adapters non-trivial (B is zero-initialised).
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        merged = copy.deepcopy(model).merge_and_unload()
        merged.eval()
        torch.testing.assert_close(merged(x), out, atol=1e-5, rtol=1e-5)
    model.save_pretrained(str(tmp_path / "adapter"))
    reloaded = ft.load_adapter(_tiny_backbone(), 3, tmp_path / "adapter")
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), out, atol=1e-6, rtol=1e-6)


def test_cli_end_to_end_on_image_folder(tmp_path):
    from transformers import ViTModel

    from rl_benchmarks.cli.main import run

    frame = write_colour_tiles(tmp_path / "tiles")
    frame.to_csv(tmp_path / "tiles.csv", index=False)
    out = tmp_path / "out"
    code = run("finetune", [
        f"data={tmp_path / 'tiles.csv'}", "pretrained=false", "vit.hidden_size=32",
        "vit.num_hidden_layers=2", "vit.num_attention_heads=2", "image_size=32",
        "num_epochs=2", "batch_size=8", "num_workers=0", "lora_r=4", "lora_alpha=4",
        f"output_dir={out}",
    ])
    assert code == 0
    record = json.loads((out / "results.json").read_text())
    res = record["result"]
    assert res["classes"] == ["ADI", "STR", "TUM"]
    assert set(res["test_metrics"]) == {"accuracy", "balanced_accuracy", "f1_macro"}
    assert len(res["val_accuracy"]) == 2 and 0 <= res["best_epoch"] < 2
    assert (out / "adapter" / "adapter_config.json").is_file()
    merged = ViTModel.from_pretrained(str(out / "merged_hf"), add_pooling_layer=False)
    assert merged.config.layer_norm_eps == 1e-6
    # The merged backbone is a feature extractor: same CLS features as the HF model.
    from rl_benchmarks.models.feature_extractors import create_extractor

    extractor = create_extractor("phikon_hf", weights_path=out / "merged_hf")
    assert extractor.feature_dim == 32
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = merged(pixel_values=x).last_hidden_state[:, 0]
    torch.testing.assert_close(extractor(x), expected, atol=1e-5, rtol=1e-5)


def test_pretrained_without_weights_is_an_error():
    with pytest.raises(ValueError, match="weights_path is required"):
        ft.load_vit_backbone(None, pretrained=True)


@pytest.mark.real_data
def test_crc_tiles_finetune_one_epoch(real_data, tmp_path):
    labels = pd.read_csv(real_data / "tiles" / "crc_he_9class" / "labels.csv")
    frame = pd.DataFrame({
        "image_path": [str(real_data / "tiles" / "crc_he_9class" / p) for p in labels["path"]],
        "label": labels["label"],
    })
    frame = frame.assign(label=frame.label.astype("category").cat.codes.astype(int))
    splits = ft.split_frame(frame, (0.5, 0.25, 0.25), seed=0)
    cfg = ft.FinetuneConfig(mode="lora", lora_r=4, lora_alpha=4, num_epochs=1, batch_size=16,
                            image_size=32)
    model = ft.build_model(_tiny_backbone(), frame.label.nunique(), cfg)
    _, result = ft.train(model, splits, cfg, progress=False)
    assert len(result.val_accuracy) == 1
    assert 0.0 <= result.test_metrics["accuracy"] <= 1.0
    assert np.isfinite(result.train_loss[0])


def test_backbone_from_an_ibot_checkpoint(tmp_path):
    """An iBOT .pth goes through the HF exporter (which checks features to 1e-4)."""
    from rl_benchmarks.models.feature_extractors.ibot_vit import build_vit

    torch.manual_seed(0)
    vit = build_vit(embed_dim=64, depth=2, num_heads=2)
    ckpt = tmp_path / "ibot.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in vit.state_dict().items()}}, ckpt)
    with pytest.raises(ValueError, match="num_heads"):  # 64 is no standard width
        ft.load_vit_backbone(ckpt)
    backbone = ft.load_vit_backbone(ckpt, num_heads=2)
    assert backbone.config.num_attention_heads == 2
    assert backbone.config.hidden_size == 64 and backbone.config.num_hidden_layers == 2
    x = torch.randn(1, 3, 224, 224)
    vit.eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(pixel_values=x).last_hidden_state[:, 0],
                                   vit(x), atol=1e-4, rtol=1e-4)


def test_image_folder_class_names_and_codes(tmp_path):
    from omegaconf import OmegaConf

    from rl_benchmarks.evaluation.finetune import load_tile_frame

    write_colour_tiles(tmp_path / "tiles", n_per_class=2)
    frame, classes = load_tile_frame(OmegaConf.create({"data": str(tmp_path / "tiles")}))
    assert classes == ["ADI", "STR", "TUM"]
    for name, code in zip(frame["class_name"], frame["label"]):
        assert classes[code] == name


def _tile_splits(root, n_per_class=6):
    frame = write_colour_tiles(root, n_per_class=n_per_class)
    frame = frame.assign(label=frame.label.astype("category").cat.codes.astype(int))
    return ft.split_frame(frame, (0.5, 0.25, 0.25), seed=0)


def test_merged_hf_folder_gives_the_trained_adapter_models_features(tmp_path):
    """finetune's merged_hf/ (loaded as the phikon_hf extractor) = the trained LoRA model's
    backbone on the same tiles (fp32, max abs diff <= 1e-5), and its classifier_head.pt
    on those features = the trained model's logits."""
    import copy

    from rl_benchmarks.models.feature_extractors import create_extractor

    splits = _tile_splits(tmp_path / "tiles")
    cfg = ft.FinetuneConfig(mode="lora", lora_r=4, lora_alpha=8, lora_dropout=0.1,
                            learning_rate=5e-2, batch_size=4, num_epochs=2, image_size=32,
                            num_workers=0, device="cpu", precision="fp32")
    base = _tiny_backbone()
    untouched = copy.deepcopy(base)
    model = ft.build_model(base, 3, cfg)
    model, result = ft.train(model, splits, cfg, progress=False)
    out = ft.save_outputs(model, result, cfg, tmp_path / "out")

    tiles = ft.TileImageDataset(splits["test"], ft.make_transforms(32, train=False))
    x = torch.stack([tiles[i][0] for i in range(len(tiles))])
    model.eval()
    untouched.eval()
    with torch.no_grad():
        trained = model.base_model.model.backbone(pixel_values=x).last_hidden_state[:, 0]
        before = untouched(pixel_values=x).last_hidden_state[:, 0]
        logits = model(x)
    # The adapters changed the features: the comparison below can fail.
    assert (trained - before).abs().max() > 1e-3

    extractor = create_extractor("phikon_hf", weights_path=out / "merged_hf")
    with torch.no_grad():
        merged = extractor(x)
    assert merged.dtype == torch.float32
    assert float((merged - trained).abs().max()) <= 1e-5

    head = torch.nn.Linear(32, 3)
    head.load_state_dict(torch.load(out / "classifier_head.pt", weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(head(merged), logits, atol=1e-5, rtol=0)

    # The saved adapter on a fresh copy of the base backbone gives the same features too.
    reloaded = ft.load_adapter(copy.deepcopy(untouched), 3, out / "adapter")
    reloaded.eval()
    with torch.no_grad():
        again = reloaded.base_model.model.backbone(pixel_values=x).last_hidden_state[:, 0]
    assert float((again - trained).abs().max()) <= 1e-5


@pytest.mark.parametrize("mode", ["lora", "linear"])
def test_weights_after_training_are_those_of_the_best_epoch(tmp_path, monkeypatch, mode):
    """Validation accuracies are scripted to peak at epoch index 1 of 4; the weights used
    for the test split (and returned) must be those recorded right after that epoch."""
    splits = _tile_splits(tmp_path / "tiles")
    cfg = ft.FinetuneConfig(mode=mode, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                            learning_rate=5e-2, batch_size=4, num_epochs=4, image_size=32,
                            num_workers=0, device="cpu", precision="fp32", augment=False)
    model = ft.build_model(_tiny_backbone(), 3, cfg)

    snapshots = []  # full state dict at every predict() call: 4 validations, then the test
    real_predict, real_metrics = ft.predict, ft.classification_metrics
    scripted = [0.25, 0.75, 0.5, 0.75]  # a later tie does not replace the best epoch

    def recording_predict(m, loader, device, precision="fp32"):
        snapshots.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return real_predict(m, loader, device, precision)

    def scripted_metrics(labels, logits):
        metrics = real_metrics(labels, logits)
        if scripted:
            metrics["accuracy"] = scripted.pop(0)
        return metrics

    monkeypatch.setattr(ft, "predict", recording_predict)
    monkeypatch.setattr(ft, "classification_metrics", scripted_metrics)
    model, result = ft.train(model, splits, cfg, progress=False)

    assert result.best_epoch == 1 and result.val_accuracy == [0.25, 0.75, 0.5, 0.75]
    assert len(snapshots) == 5
    epoch_states, test_state = snapshots[:4], snapshots[4]
    final = model.state_dict()

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    # Training moved the weights after the best epoch: the check below can fail.
    assert not same(epoch_states[1], epoch_states[3])
    assert same(test_state, epoch_states[1])
    assert same({k: v for k, v in final.items()}, epoch_states[1])


def _split_cfg(**values):
    from omegaconf import OmegaConf

    base = {"max_train_tiles": None, "seed": 0, "split_fractions": [0.5, 0.25, 0.25]}
    return OmegaConf.create(base | values)


def test_make_splits_given_split_without_valid_draws_half_of_train():
    """A frame with train/test only (NCT-CRC): the validation part is half of the (capped)
    training part, drawn with the seed; the test part is kept as it is."""
    frame = pd.DataFrame({"image_path": [f"t{i}.png" for i in range(14)],
                          "label": [i % 2 for i in range(14)],
                          "split": ["train"] * 10 + ["test"] * 4})
    splits = ft.make_splits(frame, _split_cfg(max_train_tiles=8))
    assert (len(splits["train"]), len(splits["valid"]), len(splits["test"])) == (4, 4, 4)
    assert list(splits["test"].index) == list(range(10, 14))
    drawn = set(splits["train"].index) | set(splits["valid"].index)
    assert len(drawn) == 8 and drawn <= set(range(10))
    again = ft.make_splits(frame, _split_cfg(max_train_tiles=8))
    assert list(again["train"].index) == list(splits["train"].index)  # seeded


def test_make_splits_without_split_column_and_empty_parts():
    frame = pd.DataFrame({"image_path": [f"t{i}.png" for i in range(12)],
                          "label": [i % 3 for i in range(12)]})
    splits = ft.make_splits(frame, _split_cfg())
    assert sorted(len(p) for p in splits.values()) == [3, 3, 6]
    assert sorted(i for p in splits.values() for i in p.index) == list(range(12))
    given = frame.assign(split=["train"] * 8 + ["valid"] * 4)  # no test part
    with pytest.raises(ValueError, match="^finetune: the test split is empty$"):
        ft.make_splits(given, _split_cfg())


def test_run_calls_on_start_before_training_and_returns_the_result(tmp_path, monkeypatch):
    """ft.run: tiles -> splits -> model -> on_start -> train -> outputs; the result carries
    the class names and the output folder (training itself is stubbed here)."""
    from rl_benchmarks.cli.main import compose

    write_colour_tiles(tmp_path / "tiles", n_per_class=8)
    cfg = compose("finetune", [f"data={tmp_path / 'tiles'}", "pretrained=false",
                               "vit.hidden_size=32", "vit.num_hidden_layers=2",
                               "vit.num_attention_heads=2", "image_size=32", "num_workers=0",
                               "mode=linear", f"output_dir={tmp_path / 'out'}"])
    events = []

    def fake_train(model, splits, run_cfg):
        events.append("train")
        return model, ft.FinetuneResult(mode=run_cfg.mode, n_trainable=1, n_total=2,
                                        trainable_percent=50.0, best_epoch=0,
                                        test_metrics={"accuracy": 1.0})

    monkeypatch.setattr(ft, "train", fake_train)
    result = ft.run(cfg, on_start=lambda run_cfg, classes, splits: events.append(
        (run_cfg.mode, classes, sum(len(p) for p in splits.values()))))
    assert events == [("linear", ["ADI", "STR", "TUM"], 24), "train"]
    assert result.classes == ["ADI", "STR", "TUM"] and result.output_dir == str(tmp_path / "out")
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert record["result"]["classes"] == ["ADI", "STR", "TUM"]
    assert record["pretrained"] is False and record["hydra_config"]["mode"] == "linear"
