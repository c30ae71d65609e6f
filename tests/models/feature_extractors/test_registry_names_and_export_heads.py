"""Issue S: ``list_extractors()`` names every accepted name (the ``phikon`` alias and
``timm:<arch>`` included), and ``export-hf`` of a ``rlbench pretrain`` export of a
non-standard width reads ``num_heads`` from the checkpoint's ``arch`` record."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from rl_benchmarks.models import create_extractor
from rl_benchmarks.models.feature_extractors import REGISTRY, list_extractors
from rl_benchmarks.models.feature_extractors.encoders import ENCODERS
from rl_benchmarks.models.feature_extractors.hf import export_hf, recorded_num_heads
from rl_benchmarks.models.feature_extractors.ibot_vit import build_vit
from rl_benchmarks.pretraining.train import export_teacher


def test_list_extractors_names_aliases_and_timm():
    names = list_extractors()
    assert "phikon" in names and "timm:<arch>" in names
    assert set(REGISTRY) <= set(names) and len(names) == len(set(names))
    assert list_extractors(include_aliases=False, include_timm=False) == list(REGISTRY)
    assert "timm:<arch>" not in list_extractors(include_timm=False)
    # every listed name is one create_extractor accepts (the pattern with a real arch)
    for name in names:
        if name == "timm:<arch>":
            name = "timm:resnet18"
        if name == "<path/to/spec.yaml>" or name in ENCODERS:
            continue  # issue 18's encoders and spec files: test_encoders.py, test_encoders_weights.py
        kwargs = {"layers": (1, 1, 1, 1)} if name in ("ResNet50", "MoCoWideResNetCOAD",
                                                       "timm:resnet18") else {}
        if name.startswith(("iBOT", "Dino", "phikon")):
            kwargs = {"depth": 1}
        if name == "CTransPath":
            kwargs = {"depths": (1, 1, 1, 1), "img_size": 64, "window_size": 2}
        assert create_extractor(name, pretrained=False, **kwargs).feature_dim > 0, name


def test_unknown_name_lists_every_accepted_name():
    with pytest.raises(ValueError, match=r"unknown extractor 'Phikon2'; available: .*phikon.*"
                                         r"timm:<arch>"):
        create_extractor("Phikon2")


def _pretrain_export(tmp_path, embed_dim=48, heads=4, depth=2, arch=True):
    """A teacher export written by ``rlbench pretrain``'s own writer (``export_teacher``)."""
    torch.manual_seed(0)
    vit = build_vit(embed_dim=embed_dim, depth=depth, num_heads=heads, img_size=32)
    info = {"arch": "custom", "patch_size": 16, "img_size": 32, "embed_dim": embed_dim,
            "depth": depth, "num_heads": heads}
    path = tmp_path / "teacher_backbone.pth"
    export_teacher(SimpleNamespace(backbone=vit), info, path)
    if not arch:
        ckpt = torch.load(path, weights_only=True)
        del ckpt["arch"]
        torch.save(ckpt, path)
    return vit.eval(), path


def test_export_hf_reads_num_heads_from_the_arch_record(tmp_path):
    vit, path = _pretrain_export(tmp_path)  # width 48: no standard head count
    assert recorded_num_heads(path) == 4
    summary = export_hf(path, tmp_path / "hf", architecture="auto")
    assert summary["num_heads"] == 4
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["num_attention_heads"] == 4 and config["hidden_size"] == 48
    # independent check: the exported folder gives the pretrained ViT's CLS features (with
    # another head count the same weights give other features)
    hf = create_extractor("phikon_hf", weights_path=tmp_path / "hf")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(hf(x), vit(x), atol=1e-4, rtol=1e-4)
        other = build_vit(embed_dim=48, depth=2, num_heads=2, img_size=32).eval()
        other.load_state_dict(vit.state_dict())
        assert (other(x) - vit(x)).abs().max() > 1e-3


def test_export_hf_cli_of_a_pretrain_export(tmp_path, capsys):
    from rl_benchmarks.cli.main import main as rlbench

    _, path = _pretrain_export(tmp_path)
    assert rlbench(["export-hf", f"weights_path={path}", f"output_dir={tmp_path / 'hf'}"]) == 0
    assert "heads=4" in capsys.readouterr().out
    # an explicit num_heads still wins over the record
    assert rlbench(["export-hf", f"weights_path={path}", f"output_dir={tmp_path / 'hf2'}",
                    "num_heads=2"]) == 0
    assert "heads=2" in capsys.readouterr().out


def test_without_a_record_a_non_standard_width_still_asks_for_num_heads(tmp_path, capsys):
    from rl_benchmarks.cli.main import main as rlbench

    _, path = _pretrain_export(tmp_path, arch=False)
    assert recorded_num_heads(path) is None
    assert rlbench(["export-hf", f"weights_path={path}", f"output_dir={tmp_path / 'hf'}"]) == 2
    assert "pass num_heads=<heads>" in capsys.readouterr().err


def test_finetune_backbone_from_a_pretrain_export_needs_no_num_heads(tmp_path):
    from rl_benchmarks.evaluation.finetune import load_vit_backbone

    vit, path = _pretrain_export(tmp_path)
    backbone = load_vit_backbone(path)  # converted through export_hf, heads from the record
    assert backbone.config.num_attention_heads == 4
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(pixel_values=x).last_hidden_state[:, 0], vit(x),
                                   atol=1e-4, rtol=1e-4)
