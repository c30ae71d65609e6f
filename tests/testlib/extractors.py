"""Helpers of the feature-extractor tests: tiny random-init iBOT checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


@dataclass
class IbotCkpt:
    path: Path
    teacher: torch.nn.Module
    student: torch.nn.Module
    img_size: int


def make_vit(img_size: int, seed: int) -> torch.nn.Module:
    """A timm ViT built directly with timm (not through our helper) as the reference."""
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer(img_size=img_size, patch_size=16, num_classes=0, qkv_bias=True,
                             norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **TINY).eval()


def write_ibot_checkpoint(path: Path, img_size: int = 32) -> IbotCkpt:
    """``{"teacher": {"backbone.…", "head.…"}, "student": {"module.backbone.…", "module.head.…"}}``."""
    teacher, student = make_vit(img_size, 0), make_vit(img_size, 1)
    heads = {"head.mlp.0.weight": torch.randn(8, 32), "head.mlp.0.bias": torch.randn(8),
             "head.last_layer.weight_g": torch.randn(16, 1),
             "head.last_layer.weight_v": torch.randn(16, 8),
             "head.last_layer2.weight_g": torch.randn(16, 1),
             "head.last_layer2.weight_v": torch.randn(16, 8)}
    t = {f"backbone.{k}": v for k, v in teacher.state_dict().items()} | heads
    s = {f"module.backbone.{k}": v for k, v in student.state_dict().items()}
    s |= {f"module.{k}": v for k, v in heads.items()}
    s["module.backbone.masked_embed"] = torch.zeros(32)
    torch.save({"teacher": t, "student": s, "epoch": 1}, path)
    return IbotCkpt(path, teacher, student, img_size)

