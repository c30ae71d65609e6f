"""Today's pathology tile encoders as data: one :class:`EncoderSpec` per published model.

Each row gives how the model is built (a timm constructor with its exact keyword arguments,
a transformers class, or CONCH v1.5's trunk + attentional pooler), its output rule, feature
dimension, input size, normalisation, mpp, the parameter count computed from a random build,
the weights format users download and a licence note. The facts come from the model cards
and peer toolkits (TRIDENT, kaiko-ai/eva, STAMP); see docs/encoders.md. Building and
loading live in :mod:`rl_benchmarks.models.feature_extractors.encoder_build`.

A YAML file with the same fields (:func:`spec_from_yaml`) describes an encoder without code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rl_benchmarks.constants import IMAGENET_MEAN, IMAGENET_STD

HOPT_MEAN = (0.707223, 0.578729, 0.703617)
HOPT_STD = (0.211883, 0.230117, 0.177517)
HALF = (0.5, 0.5, 0.5)
HIBOU_MEAN = (0.7068, 0.5755, 0.722)
HIBOU_STD = (0.195, 0.2316, 0.1816)
LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)

#: The three kinds of build.
KINDS = ("timm", "hf", "conch")
#: Output rules: the CLS token (after the final norm), CLS ⊕ mean of the patch tokens
#: (registers skipped), or CONCH's attentional pooler.
OUTPUTS = ("cls", "cls+mean", "pooler")

#: Licence notes: only what the spec's sources state; anything else says to check the card.
NC = "non-commercial / gated: check the model card"
CCNC = "CC-BY-NC-ND-4.0, gated"


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one encoder and what it expects (see the module docstring)."""

    name: str
    kind: str                      # timm | hf | conch
    arch: str                      # timm name, or the transformers model_type (dinov2, ...)
    kwargs: dict[str, Any]         # timm kwargs (num_classes=0 added) or transformers config
    width: int                     # token width (the CLS feature size)
    output: str = "cls"            # default output rule (the model card's recommendation)
    outputs: tuple[str, ...] = ("cls",)  # output rules offered
    tile_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mpp: float = 0.5
    params: int | None = None      # computed parameter count (random build, num_classes=0)
    source: str = ""               # where users get the weights
    weights_format: str = ""       # the files to point weights_path at
    licence: str = NC
    notes: str = ""                # disagreements between sources, UNCONFIRMED facts
    extra: dict[str, Any] = field(default_factory=dict)

    def feature_dim(self, output: str | None = None) -> int:
        """Feature size for ``output`` (default: the spec's)."""
        out = output or self.output
        return 2 * self.width if out == "cls+mean" else self.width

    def with_output(self, output: str | None) -> EncoderSpec:
        """This spec with another output rule (checked against :attr:`outputs`)."""
        if output in (None, "", self.output):
            return self
        if output not in self.outputs:
            raise ValueError(f"{self.name}: output={output!r} is not offered (one of "
                             f"{', '.join(self.outputs)})")
        return replace(self, output=output)


def _vit_l16_uni() -> dict[str, Any]:
    return {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True}


_VIRCHOW = {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "",
            "dynamic_img_size": True, "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}
_HOPT = {"img_size": 224, "global_pool": "token", "init_values": 1e-5, "dynamic_img_size": True}

_SPECS: list[EncoderSpec] = [
    EncoderSpec(
        "phikon_v2", "hf", "dinov2",
        {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "patch_size": 16,
         "image_size": 224, "mlp_ratio": 4, "layerscale_value": 1e-5, "layer_norm_eps": 1e-6},
        1024, params=303_351_808, source="owkin/phikon-v2",
        weights_format="transformers folder (config.json + model.safetensors)",
        licence="Owkin non-commercial", notes="published 307M vs computed 303M: sources disagree"),
    EncoderSpec("uni", "timm", "vit_large_patch16_224", _vit_l16_uni(), 1024,
                params=303_350_784, source="MahmoodLab/UNI",
                weights_format="timm: pytorch_model.bin (or its folder)", licence=CCNC),
    EncoderSpec(
        "uni2_h", "timm", "vit_giant_patch14_224",
        {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "embed_dim": 1536,
         "init_values": 1e-5, "mlp_ratio": 2.66667 * 2, "no_embed_class": True,
         "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU", "reg_tokens": 8, "dynamic_img_size": True},
        1536, params=681_394_176, source="MahmoodLab/UNI2-h",
        weights_format="timm: pytorch_model.bin (or its folder)", licence=CCNC),
    EncoderSpec(
        "virchow", "timm", "vit_huge_patch14_224", dict(_VIRCHOW), 1280, output="cls+mean",
        outputs=("cls+mean", "cls"), params=631_229_184, source="paige-ai/Virchow",
        weights_format="timm folder (config.json + pytorch_model.bin)", licence="Apache-2.0",
        notes="CLS ⊕ mean of patch tokens = 2560 (model card, TRIDENT); STAMP and eva use CLS "
              "only (1280): output=cls"),
    EncoderSpec(
        "virchow2", "timm", "vit_huge_patch14_224", {**_VIRCHOW, "reg_tokens": 4}, 1280,
        output="cls+mean", outputs=("cls+mean", "cls"), params=631_239_424,
        source="paige-ai/Virchow2", weights_format="timm folder (config.json + pytorch_model.bin)",
        licence=NC,
        notes="CLS ⊕ mean of patch tokens (4 registers skipped) = 2560; CLS only = 1280; "
              "trained at 0.25-2.0 mpp"),
    EncoderSpec("h_optimus_0", "timm", "vit_giant_patch14_reg4_dinov2", dict(_HOPT), 1536,
                mean=HOPT_MEAN, std=HOPT_STD, params=1_134_774_272, source="bioptimus/H-optimus-0",
                weights_format="timm folder (config.json + pytorch_model.bin)",
                licence="Apache-2.0",
                notes="img_size=224 must be passed: the config has none and timm defaults to 518"),
    EncoderSpec("h_optimus_1", "timm", "vit_giant_patch14_reg4_dinov2", dict(_HOPT), 1536,
                mean=HOPT_MEAN, std=HOPT_STD, params=1_134_774_272, source="bioptimus/H-optimus-1",
                weights_format="timm folder (config.json + pytorch_model.bin)",
                licence=NC,
                notes="STAMP builds it with dynamic_img_size=False (same weights)"),
    EncoderSpec(
        "prov_gigapath", "timm", "vit_giant_patch14_dinov2",
        {"img_size": 224, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
         "mlp_ratio": 5.33334},
        1536, params=1_134_953_984, source="prov-gigapath/prov-gigapath",
        weights_format="timm folder (config.json + pytorch_model.bin)", licence="Apache-2.0",
        notes="published preprocessing: resize 256, centre crop 224, bicubic"),
    EncoderSpec(
        "hibou_b", "hf", "dinov2_with_registers",
        {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "patch_size": 14,
         "image_size": 224, "use_swiglu_ffn": True, "num_register_tokens": 4,
         "layerscale_value": 1e-5, "layer_norm_eps": 1e-6},
        768, mean=HIBOU_MEAN, std=HIBOU_STD, params=85_741_056, source="histai/hibou-b",
        weights_format="transformers folder (custom Dinov2 code; loaded as Dinov2WithRegistersModel)",
        licence=NC,
        notes="the custom code's key names are UNCONFIRMED; bicubic resize to 224"),
    EncoderSpec(
        "hibou_l", "hf", "dinov2_with_registers",
        {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "patch_size": 14,
         "image_size": 224, "use_swiglu_ffn": True, "num_register_tokens": 4,
         "layerscale_value": 1e-5, "layer_norm_eps": 1e-6},
        1024, mean=HIBOU_MEAN, std=HIBOU_STD, params=303_659_264, source="histai/hibou-L",
        weights_format="transformers folder (custom Dinov2 code; loaded as Dinov2WithRegistersModel)",
        licence=NC,
        notes="the custom code's key names are UNCONFIRMED; bicubic resize to 224"),
    EncoderSpec(
        "midnight", "hf", "dinov2",
        {"hidden_size": 1536, "num_hidden_layers": 40, "num_attention_heads": 24, "patch_size": 14,
         "image_size": 224, "use_swiglu_ffn": True, "mlp_ratio": 4, "layerscale_value": 1e-5,
         "layer_norm_eps": 1e-6},
        1536, output="cls+mean", outputs=("cls+mean", "cls"), mean=HALF, std=HALF,
        params=1_134_771_200, source="kaiko-ai/midnight",
        weights_format="transformers folder (config.json + model.safetensors)", licence=NC,
        notes="exact config UNCONFIRMED (read from the folder's config.json); README: CLS ⊕ mean "
              "= 3072, eva/TRIDENT: CLS = 1536"),
    *[EncoderSpec(f"kaiko_{short}", "timm", arch,
                  {"dynamic_img_size": True, **({"img_size": 224} if "dinov2" in arch else {})},
                  width, mean=HALF, std=HALF, params=params,
                  source="kaiko-ai towards_large_pathology_fms release",
                  weights_format="single .pth (timm keys)", licence="Kaiko non-commercial",
                  notes="mpp UNCONFIRMED (TRIDENT: 20x = 0.5)"
                        + ("; TRIDENT builds it at img_size=518 (pass img_size=518 if the file's "
                           "pos_embed has 1369 positions)" if short == "vitl14" else ""))
      for short, arch, width, params in [
          ("vits16", "vit_small_patch16_224", 384, 21_665_664),
          ("vits8", "vit_small_patch8_224", 384, 21_670_272),
          ("vitb16", "vit_base_patch16_224", 768, 85_798_656),
          ("vitb8", "vit_base_patch8_224", 768, 85_807_872),
          ("vitl14", "vit_large_patch14_reg4_dinov2", 1024, 303_230_976)]],
    *[EncoderSpec(f"lunit_vits{p}", "timm", f"vit_small_patch{p}_224", {"img_size": 224}, 384,
                  mean=LUNIT_MEAN, std=LUNIT_STD, params=params,
                  source=f"Lunit release dino_vit_small_patch{p}_ep200.torch",
                  weights_format="single .torch file (timm keys)", licence="Lunit non-commercial")
      for p, params in [(16, 21_665_664), (8, 21_670_272)]],
    EncoderSpec(
        "gpfm", "timm", "vit_large_patch14_dinov2",
        {"img_size": 224, "patch_size": 14, "init_values": 1e-5, "qkv_bias": True,
         "dynamic_img_size": True},
        1024, params=303_227_904, source="GPFM.pth (GitHub release) or its Hugging Face copy",
        weights_format="GPFM.pth ({'teacher': ...}, backbone. prefix, chunked blocks) or timm file",
        licence=NC, notes="published preprocessing: resize 224, bicubic"),
    EncoderSpec("mstar", "timm", "vit_large_patch16_224", _vit_l16_uni(), 1024,
                params=303_350_784, source="Wangyh/mSTAR",
                weights_format="timm: pytorch_model.bin (or its folder)"),
    EncoderSpec(
        "conch_v1_5", "conch", "vit_large_patch16_224",
        {"img_size": 448, "patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16,
         "qkv_bias": True, "init_values": 1.0, "dynamic_img_size": True,
         "pooler": {"d_model": 768, "n_head": 8, "n_queries": 1}},
        768, output="pooler", outputs=("pooler",), tile_size=448, params=306_711_296,
        source="MahmoodLab/conchv1_5",
        weights_format="pytorch_model_vision.bin (keys trunk.*, attn_pool_contrast.*, ln_contrast.*)",
        licence=CCNC, notes="512-px tiles at 20x resized to 448 in the published pipeline"),
]

#: The registered encoders by name.
ENCODERS: dict[str, EncoderSpec] = {s.name: s for s in _SPECS}


def memory_bytes(spec: EncoderSpec, precision: str = "fp32") -> int | None:
    """Bytes of the weights in ``precision`` (4 per parameter in fp32, 2 in bf16/fp16)."""
    if spec.params is None:
        return None
    return spec.params * (4 if precision == "fp32" else 2)


# ----------------------------------------------------------------------- YAML specs
#: Keys of an encoder spec YAML file and what they mean (docs/encoders.md).
SPEC_KEYS = {
    "name": "name recorded in features.json (default: the file name)",
    "timm": "timm architecture name (a timm build), e.g. vit_small_patch16_224",
    "kwargs": "keyword arguments of timm.create_model (strings SwiGLUPacked, SiLU, GELU for layers)",
    "transformers": "model_type of a transformers folder: dinov2 | dinov2_with_registers | vit",
    "config": "transformers config values for pretrained=false builds",
    "output": "cls | cls+mean",
    "width": "token width (read from the model when not given)",
    "mean": "three normalisation means", "std": "three normalisation stds",
    "tile_size": "input side in px", "mpp": "µm per pixel of the tiles",
    "weights_path": "default weights file or folder (the command's weights_path wins)",
    "notes": "free text shown by rlbench encoders",
}


def is_spec_path(name: Any) -> bool:
    """True when ``name`` names an encoder spec file (``*.yaml`` / ``*.yml``)."""
    return isinstance(name, (str, os.PathLike)) and str(name).lower().endswith((".yaml", ".yml"))


def spec_from_yaml(path: str | os.PathLike) -> tuple[EncoderSpec, str | None]:
    """Read an encoder spec YAML file; returns the spec and its default ``weights_path``.

    Either ``timm: <arch>`` (+ ``kwargs``) or ``transformers: <model_type>`` (+ ``config``
    for random builds); ``output``, ``mean``, ``std``, ``tile_size``, ``mpp`` as in the table.
    Any other key, or a missing required one, is an error naming the file."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"encoder spec {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the encoder spec ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: an encoder spec is a mapping of {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown} (allowed: {', '.join(SPEC_KEYS)})")
    if ("timm" in data) == ("transformers" in data):
        raise ValueError(f"{path}: give exactly one of timm: <arch> or transformers: <model_type>")
    output = str(data.get("output", "cls"))
    if output not in ("cls", "cls+mean"):
        raise ValueError(f"{path}: output={output!r} is not cls or cls+mean")

    def triple(key: str, default: tuple[float, ...]) -> tuple[float, float, float]:
        value = data.get(key, default)
        try:
            out = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            out = ()
        if len(out) != 3:
            raise ValueError(f"{path}: {key} needs three numbers, got {value!r}")
        return out  # type: ignore[return-value]

    kind = "timm" if "timm" in data else "hf"
    kwargs = dict(data.get("kwargs" if kind == "timm" else "config") or {})
    if not isinstance(kwargs, dict):
        raise ValueError(f"{path}: {'kwargs' if kind == 'timm' else 'config'} must be a mapping")
    try:
        tile = int(data.get("tile_size", kwargs.get("img_size", kwargs.get("image_size", 224))))
        mpp = float(data.get("mpp", 0.5))
        width = int(data.get("width", 0))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err
    spec = EncoderSpec(
        name=str(data.get("name") or path.stem), kind=kind,
        arch=str(data["timm"] if kind == "timm" else data["transformers"]), kwargs=kwargs,
        width=width, output=output, outputs=("cls", "cls+mean"), tile_size=tile,
        mean=triple("mean", IMAGENET_MEAN), std=triple("std", IMAGENET_STD), mpp=mpp,
        source=str(path), weights_format="as the spec's build", licence="(user spec)",
        notes=str(data.get("notes", "")), extra={"spec_file": str(path)})
    weights = data.get("weights_path")
    if weights is not None:
        weights = str((path.parent / str(weights)).expanduser()) if not Path(
            str(weights)).expanduser().is_absolute() else str(Path(str(weights)).expanduser())
    return spec, weights


def encoder_table() -> str:
    """The table ``rlbench encoders`` prints: one row per registered encoder."""
    head = ("name", "kind", "output", "dim", "tile", "mpp", "params", "fp32", "bf16",
            "weights (weights_path=)", "licence")
    rows = [head]
    for s in ENCODERS.values():
        gb = [f"{memory_bytes(s, p) / 1e9:.2f} GB" if s.params else "?" for p in ("fp32", "bf16")]
        out = s.output + ("" if len(s.outputs) == 1 else f" (or {'/'.join(o for o in s.outputs if o != s.output)})")
        rows.append((s.name, s.kind, out, str(s.feature_dim()), str(s.tile_size), f"{s.mpp:g}",
                     f"{s.params:,}" if s.params else "?", *gb, s.weights_format, s.licence))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append("Nothing is downloaded: point weights_path at the file or folder you obtained (most of "
                 "these weights are gated; check each licence). Check a file with "
                 "`rlbench encoders check=<name> weights_path=<path>`; your own encoder: "
                 "feature_extractor=encoder_spec feature_extractor.name=<spec.yaml> (docs/encoders.md).")
    return "\n".join(lines)
