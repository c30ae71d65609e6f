"""Helpers of the encoder tests (issue 18): the published constructors written out
independently of the registry (timm kwargs, transformers configs, CONCH v1.5's pooler),
real tiles, and random perturbation of every weight."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


def published_timm(name: str) -> tuple[str, dict]:
    """The published constructors, written out as the model cards / TRIDENT give them."""
    from timm.layers import SwiGLUPacked

    uni = {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True}
    virchow = {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "",
               "dynamic_img_size": True, "mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}
    hopt = {"img_size": 224, "global_pool": "token", "init_values": 1e-5, "dynamic_img_size": True}
    return {
        "uni": ("vit_large_patch16_224", uni),
        "mstar": ("vit_large_patch16_224", uni),
        "uni2_h": ("vit_giant_patch14_224", {
            "img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
            "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "num_classes": 0, "no_embed_class": True,
            "mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU, "reg_tokens": 8,
            "dynamic_img_size": True}),
        "virchow": ("vit_huge_patch14_224", virchow),
        "virchow2": ("vit_huge_patch14_224", {**virchow, "reg_tokens": 4}),
        "h_optimus_0": ("vit_giant_patch14_reg4_dinov2", hopt),
        "h_optimus_1": ("vit_giant_patch14_reg4_dinov2", hopt),
        "prov_gigapath": ("vit_giant_patch14_dinov2", {
            "img_size": 224, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
            "mlp_ratio": 5.33334}),
        "kaiko_vits16": ("vit_small_patch16_224", {"dynamic_img_size": True}),
        "kaiko_vits8": ("vit_small_patch8_224", {"dynamic_img_size": True}),
        "kaiko_vitb16": ("vit_base_patch16_224", {"dynamic_img_size": True}),
        "kaiko_vitb8": ("vit_base_patch8_224", {"dynamic_img_size": True}),
        "kaiko_vitl14": ("vit_large_patch14_reg4_dinov2", {"dynamic_img_size": True, "img_size": 224}),
        "lunit_vits16": ("vit_small_patch16_224", {}),
        "lunit_vits8": ("vit_small_patch8_224", {}),
        "gpfm": ("vit_large_patch14_dinov2", {"img_size": 224, "patch_size": 14, "init_values": 1e-5,
                                               "qkv_bias": True, "dynamic_img_size": True}),
    }[name]


def published_hf(name: str) -> nn.Module:
    """transformers builds of the published folders' configs (meta device)."""
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    with torch.device("meta"):
        if name == "phikon_v2":
            return Dinov2Model(Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                            patch_size=16, image_size=224))
        if name == "midnight":
            return Dinov2Model(Dinov2Config(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24,
                                            patch_size=14, image_size=224, use_swiglu_ffn=True))
        width, depth, heads = {"hibou_b": (768, 12, 12), "hibou_l": (1024, 24, 16)}[name]
        return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
            hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, patch_size=14,
            image_size=224, use_swiglu_ffn=True, num_register_tokens=4))


class PublishedPooler(nn.Module):
    """CONCH v1.5's AttentionalPooler as published (einsum form, CoCa)."""

    def __init__(self, d_model: int = 768, context_dim: int = 1024, n_head: int = 8, n_queries: int = 1):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.scale, self.heads = (d_model // n_head) ** -0.5, n_head
        self.ln_k, self.ln_q = nn.LayerNorm(context_dim), nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, d_model * 2, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h = x.shape[0], self.heads
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, t.shape[1], h, -1).permute(0, 2, 1, 3) for t in (q, k, v))
        attn = torch.einsum("bhid,bhjd->bhij", q * self.scale, k)
        attn = (attn - attn.amax(dim=-1, keepdim=True)).softmax(dim=-1)
        out = torch.einsum("bhij,bhjd->bhid", attn, v).permute(0, 2, 1, 3).reshape(b, -1, h * q.shape[-1])
        return self.to_out(out)


class PublishedConch(nn.Module):
    """trunk (ViT-L/16 at 448, init_values 1.0) → attn_pool_contrast[:, 0] → ln_contrast."""

    def __init__(self, **trunk_overrides) -> None:
        import timm

        super().__init__()
        kw = {"img_size": 448, "patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16,
              "mlp_ratio": 4.0, "qkv_bias": True, "init_values": 1.0, **trunk_overrides}
        self.trunk = timm.create_model("vit_large_patch16_224", num_classes=0, **kw)
        self.attn_pool_contrast = PublishedPooler(768, 1024)
        self.ln_contrast = nn.LayerNorm(768)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_contrast(self.attn_pool_contrast(self.trunk.forward_features(x))[:, 0])


def real_tiles(root: Path, n: int = 3) -> torch.Tensor:
    """``n`` real 224-px H&E tiles (crc_he_9class: TUM, NORM, ADI...) as uint8 (n, 224, 224, 3)."""
    from PIL import Image

    folder = root / "tiles" / "crc_he_9class"
    files = [sorted((folder / c).iterdir())[0] for c in ("TUM", "NORM", "ADI", "LYM")[:n]]
    return torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))


def normalise(tiles: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (B,H,W,3) → float32 (B,3,H,W), ``(x/255 - mean) / std`` computed directly."""
    x = tiles.permute(0, 3, 1, 2).to(torch.float64) / 255.0
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    return ((x - m) / s).to(torch.float32)


def randomize(model: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    """Add noise to every weight, so each tensor of a checkpoint changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def kaiko_s16_checkpoint(folder: Path) -> tuple[Path, nn.Module]:
    """A full-size ViT-S/16 (kaiko / Lunit layout) with seeded random weights, saved as a
    plain ``.pth`` state dict in ``folder``: (its path, the model)."""
    import timm

    torch.manual_seed(0)
    ref = randomize(timm.create_model("vit_small_patch16_224", num_classes=0, dynamic_img_size=True))
    path = Path(folder) / "vits16.pth"
    torch.save(ref.state_dict(), path)
    return path, ref


def write_colour_tiles(root: Path, n_per_class: int = 8, size: int = 40, seed: int = 0,
                       names: tuple[str, str, str] = ("STR", "TUM", "ADI")):
    """Three colour classes (pink, purple, white-ish; named ``names``, by default STR, TUM,
    ADI) with noise, written as an ImageFolder tree under ``root``; returns the
    (image_path, label) frame."""
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = dict(zip(names, [(230, 150, 190), (110, 60, 150), (245, 245, 240)], strict=True))
    rows = []
    for name, colour in colours.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = np.clip(np.array(colour) + rng.normal(0, 12, (size, size, 3)), 0, 255)
            path = root / name / f"{name}-{i}.png"
            Image.fromarray(img.astype(np.uint8)).save(path)
            rows.append({"image_path": str(path), "label": name})
    return pd.DataFrame(rows)
