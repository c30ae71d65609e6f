"""iBOT ViT extractors (Phikon = ``iBOTViT("vit_base_pancan")``), built on timm's ViT.

timm's ``VisionTransformer`` has the reference's structure and key names (``cls_token``,
``pos_embed``, ``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,
mlp.fc2}``, ``norm``). With ``num_classes=0`` and ``global_pool="token"`` its forward
returns the CLS token after the final LayerNorm, i.e. the reference's
``get_intermediate_layers(x, n=1)[:, 0]`` and HF ``last_hidden_state[:, 0]``.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rl_benchmarks.constants import IMAGENET_MEAN, IMAGENET_STD
from rl_benchmarks.models.feature_extractors.core import Extractor
from rl_benchmarks.models.feature_extractors.weights import (
    WeightsError,
    load_strict,
    read_weights_file,
    select_state_dict,
    strip_prefixes,
)

#: ViT shapes (patch 16, MLP ratio 4, qkv bias, LayerNorm eps 1e-6).
VIT_ARCHS: dict[str, dict[str, int]] = {
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}
VIT_ARCHS["vit_base_pancan"] = VIT_ARCHS["vit_base"]

#: Keys of the iBOT/DINO projection heads (and the MIM mask token) that are not part of
#: the backbone: the only keys a checkpoint may hold beyond the ViT.
IBOT_HEAD_KEYS = (r"^head\.mlp\.", r"^head\.last_layer2?\.", r"^head\.last_norm2?\.",
                  r"^masked_embed$")

DEFAULT_WEIGHTS = {"vit_base_pancan": "ibot_vit_base_pancan.pth"}


def build_vit(
    embed_dim: int = 768,
    depth: int = 12,
    num_heads: int = 12,
    patch_size: int = 16,
    img_size: int = 224,
    mlp_ratio: float = 4.0,
    dynamic_img_size: bool = True,
    weight_init: str = "",
    **kwargs: Any,
) -> nn.Module:
    """A timm ViT with the reference's settings: qkv bias, LayerNorm eps 1e-6, CLS-token
    output after the final norm, no head, no dropout. ``dynamic_img_size`` interpolates the
    position embedding for inputs other than ``img_size`` (as the reference does)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
        num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, num_classes=0,
        global_pool="token", class_token=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        dynamic_img_size=dynamic_img_size, weight_init=weight_init, **kwargs,
    )


def infer_vit_shape(state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    """Read embed_dim, depth, patch_size, img_size and mlp_ratio from a ViT state dict."""
    try:
        embed_dim = int(state_dict["cls_token"].shape[-1])
        patch = state_dict["patch_embed.proj.weight"].shape
        n_pos = int(state_dict["pos_embed"].shape[1]) - 1
        hidden = int(state_dict["blocks.0.mlp.fc1.weight"].shape[0])
    except KeyError as err:
        raise WeightsError(f"not a ViT state dict: key {err} is missing") from err
    depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    grid = int(round(n_pos ** 0.5))
    if grid * grid != n_pos:
        raise WeightsError(f"pos_embed holds {n_pos} patches, not a square grid")
    return {"embed_dim": embed_dim, "depth": depth, "patch_size": int(patch[-1]),
            "img_size": grid * int(patch[-1]), "mlp_ratio": hidden / embed_dim}


def load_ibot_state_dict(weights_path: str | os.PathLike, encoder: str = "teacher") -> dict:
    """The ViT state dict of an iBOT/DINO checkpoint: ``ckpt[encoder]`` with ``module.`` and
    ``backbone.`` removed from every key. A flat state dict is accepted as it is."""
    if encoder not in ("teacher", "student"):
        raise ValueError(f"encoder={encoder!r}: use 'teacher' or 'student'")
    ckpt = read_weights_file(weights_path)
    if isinstance(ckpt, dict) and encoder not in ckpt and not _is_flat(ckpt):
        raise WeightsError(f"{weights_path}: no {encoder!r} entry in the checkpoint "
                           f"(top-level keys: {sorted(map(str, ckpt))[:12]})")
    state = select_state_dict(ckpt, [encoder], weights_path)
    return strip_prefixes(state, ("module.", "backbone."))


def _is_flat(ckpt: dict) -> bool:
    return all(isinstance(v, torch.Tensor) for v in ckpt.values())


def load_vit_weights(model: nn.Module, state_dict: dict, source: str | os.PathLike) -> list[str]:
    """Strictly load a ViT state dict, ignoring only the known iBOT/DINO head keys."""
    return load_strict(model, state_dict, source, ignore=IBOT_HEAD_KEYS)


def default_weights_path(architecture: str) -> Path | None:
    """``<data_dir>/weights/<file>`` for architectures with released weights, else None."""
    filename = DEFAULT_WEIGHTS.get(architecture)
    if filename is None:
        return None
    from rl_benchmarks.paths import data_dir

    try:
        return data_dir() / "weights" / filename
    except ValueError:
        return None


#: Heads of the standard ViT widths (Tiny, Small, Base, Large, Huge, giant2). A state dict
#: does not record the head count, and a wrong one still loads, so other widths must say it.
STANDARD_NUM_HEADS = {spec["embed_dim"]: spec["num_heads"] for spec in VIT_ARCHS.values()} | {
    192: 3, 1280: 16, 1536: 24}  # ViT-Tiny, ViT-Huge, ViT-giant2


def standard_num_heads(embed_dim: int, weights_path: Any = None) -> int:
    """Heads of a standard ViT width; a clear error for other widths (pass num_heads)."""
    if embed_dim not in STANDARD_NUM_HEADS:
        raise ValueError(
            f"{weights_path or 'weights'}: embed_dim={embed_dim} is not a standard ViT width "
            f"({sorted(STANDARD_NUM_HEADS)}), and the weights do not record the number of "
            "attention heads: pass num_heads=<heads>"
        )
    return STANDARD_NUM_HEADS[embed_dim]


def recorded_num_heads(weights_path: str | os.PathLike) -> int | None:
    """``num_heads`` of a checkpoint's ``arch`` record (``rlbench pretrain`` writes
    ``{"teacher": ..., "arch": {"num_heads": ...}}``), else None. A state dict alone does
    not say how many attention heads its ViT has; this record does."""
    import argparse

    path = Path(weights_path).expanduser()
    if path.suffix == ".safetensors" or not path.is_file():
        return None
    try:  # memory-mapped: only the small record is read, not every tensor
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable here: the weights loader reports it
        return None
    arch = ckpt.get("arch") if isinstance(ckpt, dict) else None
    heads = arch.get("num_heads") if isinstance(arch, dict) else None
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        return None
    return heads


def auto_num_heads(embed_dim: int, weights_path: str | os.PathLike,
                   num_heads: int | None = None) -> int:
    """Heads of an ``architecture="auto"`` ViT: ``num_heads`` when given, else the
    checkpoint's ``arch`` record (``rlbench pretrain`` exports hold one, for any width),
    else the standard head count of ``embed_dim`` (an error for other widths)."""
    if num_heads is not None:
        return int(num_heads)
    recorded = recorded_num_heads(weights_path)
    if recorded is not None:
        return recorded
    return standard_num_heads(embed_dim, weights_path)


class iBOTViT(Extractor):  # noqa: N801 - the reference's name
    """iBOT ViT extractor with the reference's signature.

    ``architecture``: ``vit_base_pancan`` (Phikon), ``vit_small``, ``vit_base``,
    ``vit_large``, or ``auto`` (shape read from the checkpoint; heads from ``num_heads``,
    else the checkpoint's ``arch`` record, else the standard count). ``encoder``: ``teacher``
    (default) or ``student``. ``weights_path`` defaults to
    ``<data_dir>/weights/ibot_vit_base_pancan.pth`` for ``vit_base_pancan``; random
    weights need ``pretrained=False``. Extra keyword arguments (``embed_dim``, ``depth``,
    ``num_heads``, ``img_size`` …) override the timm ViT shape, e.g. for tiny test models.
    """

    def __init__(
        self,
        architecture: str = "vit_base_pancan",
        encoder: str = "teacher",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        weights_path: str | os.PathLike | None = None,
        *,
        pretrained: bool = True,
        name: str | None = None,
        precision: str = "fp32",
        tile_size: int = 224,
        mpp: float = 0.5,
        **vit_kwargs: Any,
    ) -> None:
        if architecture not in VIT_ARCHS and architecture != "auto":
            raise ValueError(f"architecture={architecture!r} is not one of "
                             f"{sorted(VIT_ARCHS) + ['auto']}")
        if encoder not in ("teacher", "student"):
            raise ValueError(f"encoder={encoder!r}: use 'teacher' or 'student'")
        state = None
        if pretrained:
            if weights_path is None:
                weights_path = default_weights_path(architecture)
                if weights_path is None or not Path(weights_path).is_file():
                    where = f" (looked for {weights_path})" if weights_path else ""
                    raise WeightsError(
                        f"{name or 'iBOTViT'}({architecture}) needs weights: pass weights_path="
                        f"<iBOT .pth>{where}, or pretrained=False for random weights")
            state = load_ibot_state_dict(weights_path, encoder)
        shape: dict[str, Any]
        if architecture == "auto":
            if state is None:
                raise ValueError("architecture='auto' reads the shape from the weights: "
                                 "it needs pretrained=True and a weights_path")
            shape = infer_vit_shape(state)
            shape["num_heads"] = auto_num_heads(shape["embed_dim"], weights_path,
                                                vit_kwargs.pop("num_heads", None))
        else:
            shape = dict(VIT_ARCHS[architecture])
        shape.update(vit_kwargs)
        network = build_vit(**shape, weight_init="skip" if state is not None else "")
        super().__init__(
            name=name or ("iBOTViTBasePANCAN" if architecture == "vit_base_pancan" else "iBOTViT"),
            feature_dim=int(network.num_features), tile_size=tile_size, mpp=mpp,
            mean=mean, std=std, precision=precision,
            weights_path=weights_path if pretrained else None, pretrained=pretrained,
            extra={"architecture": architecture, "encoder": encoder},
        )
        if state is not None:
            load_vit_weights(network, state, weights_path)
        self.feature_extractor = network
        self.architecture = architecture
        self.encoder = encoder
        self.eval()
        self.requires_grad_(False)
