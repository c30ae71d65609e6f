"""CTransPath: timm's Swin-T with a convolutional stem, 768-d average-pooled output, tiles
of 224 px at 1.0 mpp (Wang et al., 2022).

The stem's key names follow the published ``ctranspath.pth`` (``patch_embed.proj.{0,1,3,4,6}``
and ``patch_embed.norm``); old-timm Swin checkpoints (down-sampling at the end of a stage)
are converted with timm's own Swin filter.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from rl_benchmarks.models.feature_extractors.core import ModuleExtractor
from rl_benchmarks.models.feature_extractors.weights import (
    load_strict,
    read_weights_file,
    select_state_dict,
    strip_leading,
)


class ConvStem(nn.Module):
    """Two stride-2 3×3 conv-BN-ReLU layers and a 1×1 conv: a patch-4 embedding (NHWC out)."""

    def __init__(
        self,
        img_size: Any = 224,
        patch_size: Any = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer: Any = None,
        flatten: bool = False,
        output_fmt: str = "NHWC",
        strict_img_size: bool = True,
        **_: Any,
    ) -> None:
        super().__init__()
        size = img_size if isinstance(img_size, (tuple, list)) else (img_size, img_size)
        patch = patch_size if isinstance(patch_size, (tuple, list)) else (patch_size, patch_size)
        if tuple(patch) != (4, 4):
            raise ValueError(f"ConvStem embeds 4×4 patches, got patch_size={patch_size}")
        self.img_size = tuple(int(s) for s in size)
        self.patch_size = (4, 4)
        self.grid_size = (self.img_size[0] // 4, self.img_size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.output_fmt = output_fmt
        layers: list[nn.Module] = []
        c_in, c_out = in_chans, embed_dim // 8
        for _i in range(2):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in, c_out = c_out, c_out * 2
        layers.append(nn.Conv2d(c_in, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def set_input_size(self, img_size: Any = None, patch_size: Any = None) -> None:
        if img_size is not None:
            size = img_size if isinstance(img_size, (tuple, list)) else (img_size, img_size)
            self.img_size = tuple(int(s) for s in size)
            self.grid_size = (self.img_size[0] // 4, self.img_size[1] // 4)
            self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)                      # B, C, H/4, W/4
        x = x.permute(0, 2, 3, 1)             # NHWC, as timm's Swin expects
        return self.norm(x)


def build_ctranspath(**kwargs: Any) -> nn.Module:
    """Swin-T (patch 4, window 7, dims 96·2^i, depths 2-2-6-2) with :class:`ConvStem`."""
    from timm.models.swin_transformer import SwinTransformer

    args = dict(img_size=224, patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 6, 2),
                num_heads=(3, 6, 12, 24), num_classes=0, embed_layer=ConvStem)
    args.update(kwargs)
    return SwinTransformer(**args)


def load_ctranspath_state_dict(weights_path: str | os.PathLike, model: nn.Module) -> dict:
    """Read a CTransPath checkpoint (``{"model": ...}`` or flat) into timm's Swin layout."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    ckpt = read_weights_file(weights_path)
    state = select_state_dict(ckpt, ["model", "state_dict"], weights_path)
    state = strip_leading(state, ("module.", "model."))
    return checkpoint_filter_fn(state, model)


def make_ctranspath(
    *,
    name: str = "CTransPath",
    weights_path: str | os.PathLike | None,
    pretrained: bool,
    tile_size: int = 224,
    mpp: float = 1.0,
    precision: str = "fp32",
    **model_kwargs: Any,
) -> ModuleExtractor:
    network = build_ctranspath(**model_kwargs)
    if pretrained:
        state = load_ctranspath_state_dict(weights_path, network)
        load_strict(network, state, weights_path, ignore=(r"^head\.",))
    return ModuleExtractor(
        network, name=name, feature_dim=int(network.num_features), tile_size=tile_size,
        mpp=mpp, precision=precision, weights_path=weights_path if pretrained else None,
        pretrained=pretrained, extra={"architecture": "swin_tiny_convstem"},
    )
