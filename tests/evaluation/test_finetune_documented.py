"""Fine-tuning as documented (issue S): ``image_size`` is checked against the backbone before
any tile is read, and the ``load_adapter`` call docs/finetune.md shows reloads a run."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from testlib.encoders import write_colour_tiles

from rl_benchmarks.evaluation import finetune as ft

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=16)


def _tiny_hf_folder(path):
    """A pretrained-style owkin/phikon folder of a tiny ViT made for 32-px images."""
    torch.manual_seed(0)
    backbone = ft.load_vit_backbone(None, pretrained=False, vit_kwargs=TINY)
    backbone.save_pretrained(str(path))
    return path


CLASSES = ("c0", "c1", "c2")


def test_check_image_size_names_the_key_and_the_allowed_value():
    backbone = ft.load_vit_backbone(None, pretrained=False, vit_kwargs=TINY)
    ft.check_image_size(backbone, 32)
    with pytest.raises(ValueError, match=r"^finetune: image_size=64 does not fit the backbone.*"
                                         r"pass image_size=32$"):
        ft.check_image_size(backbone, 64)


def test_train_refuses_a_wrong_image_size_before_reading_a_tile():
    backbone = ft.load_vit_backbone(None, pretrained=False, vit_kwargs=TINY)
    cfg = ft.FinetuneConfig(mode="lora", lora_r=2, lora_alpha=2, image_size=64, num_epochs=1,
                            device="cpu")
    model = ft.build_model(backbone, 2, cfg)  # peft wraps it: the check must see through
    missing = pd.DataFrame({"image_path": ["/nonexistent/a.png"] * 2, "label": [0, 1]})
    with pytest.raises(ValueError, match="image_size=64 .* pass image_size=32"):
        ft.train(model, {"train": missing, "valid": missing, "test": missing}, cfg,
                 progress=False)


def test_cli_image_size_mismatch_is_one_line_and_writes_nothing(tmp_path, capsys):
    from rl_benchmarks.cli.main import main as rlbench

    hf = _tiny_hf_folder(tmp_path / "hf")
    frame = write_colour_tiles(tmp_path / "tiles", n_per_class=6, names=CLASSES)
    frame.to_csv(tmp_path / "tiles.csv", index=False)
    out = tmp_path / "out"
    code = rlbench(["finetune", f"data={tmp_path / 'tiles.csv'}", f"weights_path={hf}",
                    "image_size=64", "num_epochs=1", "batch_size=4", "num_workers=0",
                    f"output_dir={out}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "image_size=64" in err and "pass image_size=32" in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1
    assert not (out / "results.json").exists()


def test_docs_load_adapter_snippet_reloads_the_run(tmp_path, capsys):
    """The snippet of docs/finetune.md (in the lead's text: the backbone the run started from,
    the number of classes from results.json, the adapter folder) gives the trained model."""
    from rl_benchmarks.cli.main import main as rlbench

    hf = _tiny_hf_folder(tmp_path / "hf")
    frame = write_colour_tiles(tmp_path / "tiles", n_per_class=6, names=CLASSES)
    frame.to_csv(tmp_path / "tiles.csv", index=False)
    out = tmp_path / "ft_lora"
    assert rlbench(["finetune", f"data={tmp_path / 'tiles.csv'}", f"weights_path={hf}",
                    "image_size=32", "num_epochs=1", "batch_size=4", "num_workers=0",
                    "lora_r=4", "lora_alpha=4", "learning_rate=0.05", f"output_dir={out}"]) == 0
    capsys.readouterr()

    # --- as in docs/finetune.md ---
    from rl_benchmarks.evaluation.finetune import load_adapter, load_vit_backbone

    classes = json.loads((out / "results.json").read_text())["result"]["classes"]
    backbone = load_vit_backbone(hf)  # the weights_path the run started from
    model = load_adapter(backbone, n_classes=len(classes), adapter_dir=out / "adapter").eval()
    # --- end ---

    merged = ft.load_vit_backbone(out / "merged_hf")
    head = torch.load(out / "classifier_head.pt", weights_only=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = merged(pixel_values=x).last_hidden_state[:, 0] @ head["weight"].T + head["bias"]
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    assert classes == list(CLASSES)
