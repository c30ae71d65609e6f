"""Issue S: ``iBOTViT(architecture="auto")`` takes the number of attention heads from an
explicit ``num_heads``, else from the checkpoint's ``arch`` record (``rlbench pretrain``
exports hold one), else from the standard head count of the width.

A state dict does not determine the head count (the same weights load with any divisor of
the width), so each test checks the features against an independently built timm ViT with
the expected head count, and that another head count would give other features.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rl_benchmarks.models.feature_extractors.ibot_vit import build_vit, iBOTViT
from rl_benchmarks.pretraining.train import export_teacher


def _pretrain_export(path, embed_dim: int, heads: int, arch: bool = True):
    """A tiny teacher export written by ``rlbench pretrain``'s own writer; ``arch=False``
    removes the ``arch`` record (a bare iBOT-format checkpoint)."""
    torch.manual_seed(0)
    vit = build_vit(embed_dim=embed_dim, depth=2, num_heads=heads, img_size=32).eval()
    info = {"arch": "custom", "patch_size": 16, "img_size": 32, "embed_dim": embed_dim,
            "depth": 2, "num_heads": heads}
    export_teacher(SimpleNamespace(backbone=vit), info, path)
    if not arch:
        ckpt = torch.load(path, weights_only=True)
        del ckpt["arch"]
        torch.save(ckpt, path)
    return vit


def _features(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _same_weights_other_heads(vit, heads: int):
    other = build_vit(embed_dim=vit.embed_dim, depth=2, num_heads=heads, img_size=32).eval()
    other.load_state_dict(vit.state_dict())
    return other


def test_auto_reads_num_heads_from_the_arch_record(tmp_path):
    path = tmp_path / "teacher_backbone.pth"
    vit = _pretrain_export(path, embed_dim=48, heads=4)  # 48: not a standard ViT width
    model = iBOTViT(architecture="auto", weights_path=path, tile_size=32)
    assert model.feature_dim == 48
    assert model.feature_extractor.blocks[0].attn.num_heads == 4
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_features(model, x), _features(vit, x), atol=1e-5, rtol=1e-5)
    # the head count matters: the same weights with 2 heads give other features
    other = _same_weights_other_heads(vit, 2)
    assert (_features(other, x) - _features(vit, x)).abs().max() > 1e-3


def test_explicit_num_heads_wins_over_the_record(tmp_path):
    path = tmp_path / "teacher_backbone.pth"
    vit = _pretrain_export(path, embed_dim=48, heads=4)
    model = iBOTViT(architecture="auto", weights_path=path, num_heads=2, tile_size=32)
    assert model.feature_extractor.blocks[0].attn.num_heads == 2
    x = torch.randn(2, 3, 32, 32)
    expected = _features(_same_weights_other_heads(vit, 2), x)
    torch.testing.assert_close(_features(model, x), expected, atol=1e-5, rtol=1e-5)


def test_without_record_a_standard_width_uses_the_standard_heads(tmp_path):
    path = tmp_path / "bare.pth"
    vit = _pretrain_export(path, embed_dim=192, heads=3, arch=False)  # ViT-Tiny: 3 heads
    model = iBOTViT(architecture="auto", weights_path=path, tile_size=32)
    assert model.feature_extractor.blocks[0].attn.num_heads == 3
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(_features(model, x), _features(vit, x), atol=1e-5, rtol=1e-5)


def test_without_record_a_nonstandard_width_asks_for_num_heads(tmp_path):
    path = tmp_path / "bare.pth"
    _pretrain_export(path, embed_dim=48, heads=4, arch=False)
    with pytest.raises(ValueError, match=r"bare\.pth: embed_dim=48 is not a standard ViT "
                                         r"width .*pass num_heads=<heads>"):
        iBOTViT(architecture="auto", weights_path=path)
