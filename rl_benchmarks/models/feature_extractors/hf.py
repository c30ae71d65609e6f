"""Hugging Face interop for Phikon: load an ``owkin/phikon``-format folder with transformers,
and export an iBOT checkpoint as such a folder.

The folder holds ``config.json`` (ViT, LayerNorm eps 1e-6, qkv bias), the image-processor
config (``ViTImageProcessor``, ImageNet mean/std) and the weights in the transformers-4 key
layout (``encoder.layer.N.attention.attention.query…``), the layout of the published
owkin/phikon files; transformers 5 renames those keys itself when it loads them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rl_benchmarks.constants import IMAGENET_MEAN, IMAGENET_STD
from rl_benchmarks.models.feature_extractors.core import ModuleExtractor
from rl_benchmarks.models.feature_extractors.ibot_vit import recorded_num_heads  # noqa: F401 - re-exported
from rl_benchmarks.models.feature_extractors.weights import WeightsError, _short


class ExportCheckError(WeightsError):
    """The exported folder's features differ from the checkpoint's (a failed export, not
    bad input: ``rlbench export-hf`` exits 1 on it)."""


#: Weights a folder may hold that ``ViTModel(add_pooling_layer=False)`` does not use.
_OPTIONAL_HF_KEYS = ("pooler.",)


class HFViTFeatures(nn.Module):
    """``ViTModel`` → CLS token of ``last_hidden_state`` (the README snippet's features)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path}: cannot read JSON ({err})") from err


def check_hf_folder(folder: str | os.PathLike) -> Path:
    """Return ``folder`` as a Path after checking it holds config.json and weights."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise WeightsError(f"Hugging Face folder {folder} does not exist (nothing is downloaded: "
                           f"give a local folder in the owkin/phikon format)")
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{folder}: no config.json (not a Hugging Face model folder)")
    if not any((folder / n).is_file() for n in ("model.safetensors", "pytorch_model.bin",
                                               "model.safetensors.index.json")):
        raise WeightsError(f"{folder}: no model.safetensors or pytorch_model.bin")
    return folder


def load_hf_vit(folder: str | os.PathLike) -> nn.Module:
    """``ViTModel.from_pretrained(folder, add_pooling_layer=False)`` from local files only;
    a missing, unexpected (other than the pooler) or mis-shaped weight is an error."""
    from transformers import ViTModel
    from transformers.utils import logging as hf_logging

    folder = check_hf_folder(folder)
    config = _read_json(folder / "config.json")
    if config.get("model_type") not in (None, "vit"):
        raise WeightsError(f"{folder}/config.json: model_type {config.get('model_type')!r} "
                           f"is not 'vit'")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the loading info below is checked instead
    try:
        model, info = ViTModel.from_pretrained(
            str(folder), add_pooling_layer=False, local_files_only=True,
            output_loading_info=True, dtype=torch.float32,
        )
    except Exception as err:
        report = _mismatch_report(folder, config)
        if report:
            raise WeightsError(f"{folder}: config.json does not match the weights: {report}"
                               ) from err
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{folder}: transformers cannot load it ({text})") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = list(info.get("missing_keys") or [])
    unexpected = [k for k in info.get("unexpected_keys") or []
                  if not any(k.startswith(p) or f".{p}" in k for p in _OPTIONAL_HF_KEYS)]
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or unexpected or mismatched:
        report = _mismatch_report(folder, config) or (
            f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}, "
            f"mismatched {mismatched[:4]}")
        raise WeightsError(f"{folder}: weights do not fit ViTModel: {report}")
    return model.eval()


def file_tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a HF folder's weights, read without building the
    model (safetensors headers; ``pytorch_model.bin`` through the safe loader)."""
    from safetensors import safe_open

    from rl_benchmarks.models.feature_extractors.weights import read_weights_file

    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    elif index.is_file():
        files = sorted({folder / f for f in _read_json(index).get("weight_map", {}).values()})
    else:
        state = read_weights_file(folder / "pytorch_model.bin")
        return {str(k): tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def expected_v4_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the weights of ``ViTModel(add_pooling_layer=False)`` in the
    transformers-4 layout (the owkin/phikon files' layout) for a ``config.json``."""
    h = int(config.get("hidden_size", 768))
    inter = int(config.get("intermediate_size", 4 * h))
    patch = int(config.get("patch_size", 16))
    size = int(config.get("image_size", 224))
    chans = int(config.get("num_channels", 3))
    n_pos = (size // patch) ** 2 + 1
    out: dict[str, tuple[int, ...]] = {
        "embeddings.cls_token": (1, 1, h),
        "embeddings.position_embeddings": (1, n_pos, h),
        "embeddings.patch_embeddings.projection.weight": (h, chans, patch, patch),
        "embeddings.patch_embeddings.projection.bias": (h,),
        "layernorm.weight": (h,), "layernorm.bias": (h,),
    }
    bias = bool(config.get("qkv_bias", True))
    for i in range(int(config.get("num_hidden_layers", 12))):
        b = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            out[f"{b}attention.attention.{name}.weight"] = (h, h)
            if bias:
                out[f"{b}attention.attention.{name}.bias"] = (h,)
        out |= {
            f"{b}attention.output.dense.weight": (h, h), f"{b}attention.output.dense.bias": (h,),
            f"{b}layernorm_before.weight": (h,), f"{b}layernorm_before.bias": (h,),
            f"{b}layernorm_after.weight": (h,), f"{b}layernorm_after.bias": (h,),
            f"{b}intermediate.dense.weight": (inter, h), f"{b}intermediate.dense.bias": (inter,),
            f"{b}output.dense.weight": (h, inter), f"{b}output.dense.bias": (h,),
        }
    return out


def _mismatch_report(folder: Path, config: dict) -> str:
    """What differs between ``config.json`` and the tensors of ``folder`` (missing,
    unexpected and mis-shaped keys with their shapes), or "" when nothing does or the
    folder's layout is not the transformers-4 one this can check."""
    try:
        found = file_tensor_shapes(folder)
    except Exception:  # noqa: BLE001 - the caller reports transformers' error instead
        return ""
    found = {k[len("vit."):] if k.startswith("vit.") else k: v for k, v in found.items()}
    found = {k: v for k, v in found.items() if not k.startswith(_OPTIONAL_HF_KEYS)}
    if not any(k.startswith("encoder.layer.") for k in found):
        return ""
    want = expected_v4_shapes(config)
    missing = sorted(k for k in want if k not in found)
    unexpected = sorted(k for k in found if k not in want)
    shapes = [f"{k} {found[k]} in the file vs {want[k]} from config.json"
              for k in sorted(want) if k in found and tuple(found[k]) != want[k]]
    parts = []
    if shapes:
        parts.append(f"mismatched shapes: {_short(shapes, 4)}")
    if missing:
        parts.append(f"missing keys: {_short([f'{k} {want[k]}' for k in missing])}")
    if unexpected:
        parts.append(f"unexpected keys: {_short([f'{k} {found[k]}' for k in unexpected])}")
    return "; ".join(parts)


def make_phikon_hf(
    *,
    name: str = "phikon_hf",
    weights_path: str | os.PathLike | None,
    pretrained: bool = True,
    precision: str = "fp32",
    mpp: float = 0.5,
    tile_size: int | None = None,
    **config_overrides: Any,
) -> ModuleExtractor:
    """Extractor from an owkin/phikon-format folder (``weights_path``). With
    ``pretrained=False`` a random ViT-B/16 (or ``config_overrides``) is built instead."""
    from transformers import ViTConfig, ViTModel

    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if pretrained:
        if weights_path is None:
            raise WeightsError(f"{name} needs weights_path=<folder with config.json and "
                               f"model.safetensors> (e.g. from `rlbench export-hf`), or "
                               f"pretrained=False for random weights")
        model = load_hf_vit(weights_path)
        proc = Path(weights_path) / "preprocessor_config.json"
        if proc.is_file():
            p = _read_json(proc)
            mean = tuple(p.get("image_mean", mean))
            std = tuple(p.get("image_std", std))
    else:
        cfg = hf_vit_config(**{"embed_dim": 768, "depth": 12, "num_heads": 12,
                               "patch_size": 16, "img_size": 224, **config_overrides})
        cfg.pop("architectures", None)
        model = ViTModel(ViTConfig(**cfg), add_pooling_layer=False).eval()
    config = model.config
    return ModuleExtractor(
        HFViTFeatures(model), name=name, feature_dim=int(config.hidden_size),
        tile_size=int(tile_size or config.image_size), mpp=mpp, mean=mean, std=std,
        precision=precision, weights_path=weights_path if pretrained else None,
        pretrained=pretrained, extra={"architecture": "hf_vit"},
    )


# ------------------------------------------------------------------------- export
def hf_vit_config(embed_dim: int, depth: int, num_heads: int, patch_size: int = 16,
                  img_size: int = 224, mlp_ratio: float = 4.0) -> dict[str, Any]:
    """``config.json`` content of an owkin/phikon-style ViT (eps 1e-6, qkv bias)."""
    return {
        "architectures": ["ViTModel"],
        "model_type": "vit",
        "hidden_size": int(embed_dim),
        "num_hidden_layers": int(depth),
        "num_attention_heads": int(num_heads),
        "intermediate_size": int(round(embed_dim * mlp_ratio)),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,
        "image_size": int(img_size),
        "patch_size": int(patch_size),
        "num_channels": 3,
        "qkv_bias": True,
        "encoder_stride": int(patch_size),
        "torch_dtype": "float32",
    }


def hf_preprocessor_config(img_size: int = 224, mean: Any = IMAGENET_MEAN,
                           std: Any = IMAGENET_STD) -> dict[str, Any]:
    """``preprocessor_config.json`` of a ``ViTImageProcessor`` (resize to ``img_size``,
    rescale 1/255, ImageNet normalisation)."""
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": int(img_size), "width": int(img_size)},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [float(m) for m in mean],
        "image_std": [float(s) for s in std],
    }


def timm_vit_to_hf_v4(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a timm/iBOT ViT state dict to the transformers-4 ``ViTModel`` layout."""
    out: dict[str, torch.Tensor] = {
        "embeddings.cls_token": state_dict["cls_token"],
        "embeddings.position_embeddings": state_dict["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state_dict["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state_dict["patch_embed.proj.bias"],
        "layernorm.weight": state_dict["norm.weight"],
        "layernorm.bias": state_dict["norm.bias"],
    }
    depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    for i in range(depth):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for wb in ("weight", "bias"):
            q, k, v = state_dict[f"{b}attn.qkv.{wb}"].chunk(3, dim=0)
            out[f"{h}attention.attention.query.{wb}"] = q
            out[f"{h}attention.attention.key.{wb}"] = k
            out[f"{h}attention.attention.value.{wb}"] = v
            out[f"{h}attention.output.dense.{wb}"] = state_dict[f"{b}attn.proj.{wb}"]
            out[f"{h}layernorm_before.{wb}"] = state_dict[f"{b}norm1.{wb}"]
            out[f"{h}layernorm_after.{wb}"] = state_dict[f"{b}norm2.{wb}"]
            out[f"{h}intermediate.dense.{wb}"] = state_dict[f"{b}mlp.fc1.{wb}"]
            out[f"{h}output.dense.{wb}"] = state_dict[f"{b}mlp.fc2.{wb}"]
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in out.items()}


def export_hf(
    weights_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    encoder: str = "teacher",
    architecture: str = "auto",
    verify: bool = True,
    atol: float = 1e-4,
    **vit_kwargs: Any,
) -> dict[str, Any]:
    """Write an owkin/phikon-format folder from an iBOT checkpoint; return a summary.

    The ViT is first loaded strictly with :class:`iBOTViT` (so a bad checkpoint fails with
    the offending keys); with ``architecture="auto"`` and no ``num_heads``, the heads come
    from the checkpoint's ``arch`` record when it has one (:func:`recorded_num_heads`).
    With ``verify``, the folder is loaded back with transformers and its CLS features are
    compared with iBOTViT's on random tiles (max abs diff ≤ ``atol``; else
    :class:`ExportCheckError`). ``num_heads=None`` is the same as not giving it. The
    summary returned is also written as ``rlbench_export.json`` in the folder.
    """
    from safetensors.torch import save as st_save

    from rl_benchmarks.models.feature_extractors.ibot_vit import iBOTViT
    from rl_benchmarks.utils.io import atomic_open, sha256_file, write_json

    if vit_kwargs.get("num_heads") is None:  # not given (None: the same)
        vit_kwargs.pop("num_heads", None)
    if architecture == "auto" and "num_heads" not in vit_kwargs:
        heads = recorded_num_heads(weights_path)
        if heads is not None:  # e.g. a `rlbench pretrain` export of a non-standard width
            vit_kwargs["num_heads"] = heads
    vit = iBOTViT(architecture=architecture, encoder=encoder, weights_path=weights_path,
                  **vit_kwargs)
    net = vit.feature_extractor
    img = int(net.patch_embed.img_size[0])
    patch = int(net.patch_embed.patch_size[0])
    depth = len(net.blocks)
    heads = int(net.blocks[0].attn.num_heads)
    mlp_ratio = net.blocks[0].mlp.fc1.out_features / net.embed_dim
    out = Path(output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    tensors = timm_vit_to_hf_v4(net.state_dict())
    with atomic_open(out / "model.safetensors", "wb") as f:
        f.write(st_save(tensors, metadata={"format": "pt"}))
    write_json(out / "config.json", hf_vit_config(net.embed_dim, depth, heads, patch, img,
                                                  mlp_ratio))
    write_json(out / "preprocessor_config.json", hf_preprocessor_config(img, vit.mean, vit.std))
    summary: dict[str, Any] = {
        "source": str(weights_path), "source_sha256": sha256_file(weights_path),
        "encoder": encoder, "embed_dim": int(net.embed_dim), "depth": depth, "num_heads": heads,
        "patch_size": patch, "image_size": img, "output_dir": str(out),
    }
    if verify:
        hf = make_phikon_hf(weights_path=out)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, img, img, generator=gen)
        diff = float((hf(x) - vit(x)).abs().max())
        summary["verify_max_abs_diff"] = diff
        if not diff <= atol:
            raise ExportCheckError(f"export check failed: HF features differ from iBOTViT "
                                   f"by {diff:.3g} (> {atol}) for {out}")
    write_json(out / "rlbench_export.json", summary)
    return summary


#: Another name of :func:`export_hf` (used by the fine-tuning code).
export_ibot_to_hf = export_hf
