"""Build the encoders of :mod:`~rl_benchmarks.models.feature_extractors.encoders` and load
their weights from local files, strictly and directly in the requested precision.

* timm and CONCH v1.5 models are built on the ``meta`` device (no memory, no random init),
  then the weights are loaded with ``load_state_dict(assign=True)`` after each tensor has
  been cast to the run's dtype: a bf16 run never holds an fp32 copy of the model.
  ``.safetensors`` files are read tensor by tensor; torch files are memory-mapped.
* transformers folders are loaded by transformers itself (``from_pretrained`` with
  ``dtype=``), never by hand-mapping keys.
* Any missing, unexpected or mis-shaped key is a :class:`WeightsError` naming the keys and
  the registered model whose layout the file matches, if any.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rl_benchmarks.models.feature_extractors.core import ModuleExtractor
from rl_benchmarks.models.feature_extractors.encoders import ENCODERS, EncoderSpec
from rl_benchmarks.models.feature_extractors.weights import (
    WeightsError,
    _short,
    read_weights_file,
    select_state_dict,
)

logger = logging.getLogger("rlbench.encoders")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Wrappers tried, in order, around the state dict of a checkpoint.
WRAPPERS = ("teacher", "model", "state_dict", "model_state_dict", "module")
#: Leading prefixes removed from every key (repeatedly: ``module.backbone.x`` -> ``x``).
PREFIXES = ("module.", "backbone.", "model.", "encoder.")
#: Keys of a file that may be left over (training heads, DINOv2's mask token).
IGNORED = (r"^head\.", r"^dino_head\.", r"^ibot_head\.", r"^mask_token$")
#: Names of weight files inside a downloaded folder, in order of preference.
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model_vision.bin")
#: Keyword arguments of tests / users that map to transformers config names.
_HF_ALIASES = {"depth": "num_hidden_layers", "embed_dim": "hidden_size", "img_size": "image_size",
               "num_heads": "num_attention_heads"}


def _layer(value: Any) -> Any:
    """A timm layer given by name in a spec (``SwiGLUPacked``, ``SiLU``, ``GELU``...)."""
    if not isinstance(value, str):
        return value
    import timm.layers

    if hasattr(nn, value):
        return getattr(nn, value)
    if hasattr(timm.layers, value):
        return getattr(timm.layers, value)
    raise ValueError(f"unknown layer {value!r} (a torch.nn or timm.layers name)")


def timm_kwargs(spec: EncoderSpec, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``timm.create_model`` keyword arguments of ``spec`` (layers resolved), ``overrides`` win."""
    kw = {k: v for k, v in {**spec.kwargs, **dict(overrides or {})}.items() if k != "pooler"}
    for key in ("mlp_layer", "act_layer", "norm_layer"):
        if key in kw:
            kw[key] = _layer(kw[key])
    return kw


# ------------------------------------------------------------------------ modules
class AttentionalPooler(nn.Module):
    """CONCH v1.5's attentional pooler (CoCa): learned queries attend to the trunk's tokens.

    Keys ``query`` [Q, d], ``ln_k`` (context), ``ln_q`` (d), ``to_q`` [d, d], ``to_kv``
    [2d, context], ``to_out`` [d, d], no biases: the published file's layout."""

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.heads = n_head
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.ln_k(x)
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, t.shape[1], h, -1).transpose(1, 2)

        out = nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(out.transpose(1, 2).reshape(b, -1, q.shape[-1]))


class ConchV15Vision(nn.Module):
    """CONCH v1.5's vision encoder: ``trunk`` (timm ViT-L/16, all tokens after its norm)
    → ``attn_pool_contrast`` (first query) → ``ln_contrast``."""

    def __init__(self, trunk: nn.Module, d_model: int, n_head: int, n_queries: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.attn_pool_contrast = AttentionalPooler(d_model, int(trunk.embed_dim), n_head, n_queries)
        self.ln_contrast = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(x)
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])


def _param_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        return p.dtype
    return torch.float32


class TokenFeatures(nn.Module):
    """A timm ViT (or CONCH) → features by the output rule: ``cls`` (token 0 after the final
    norm), ``cls+mean`` (CLS ⊕ mean of the patch tokens, prefix/register tokens skipped) or
    ``pooler`` (the module's own forward). Inputs are cast to the weights' dtype."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(_param_dtype(self.model))
        if self.output == "pooler":
            return self.model(x)
        tokens = self.model.forward_features(x)
        cls = tokens[:, 0]
        if self.output == "cls":
            return cls
        prefix = int(getattr(self.model, "num_prefix_tokens", 1))
        return torch.cat([cls, tokens[:, prefix:].mean(dim=1)], dim=-1)


class HFTokenFeatures(nn.Module):
    """A transformers Dinov2 / ViT model → ``cls`` (``last_hidden_state[:, 0]``, after the
    final LayerNorm, = ``pooler_output`` of Dinov2) or ``cls+mean`` (registers skipped)."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        self.model = model
        self.output = output
        self.prefix = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=x.to(_param_dtype(self.model))).last_hidden_state
        cls = hidden[:, 0]
        if self.output == "cls":
            return cls
        return torch.cat([cls, hidden[:, self.prefix:].mean(dim=1)], dim=-1)


# ------------------------------------------------------------------------- builds
def build_module(spec: EncoderSpec, overrides: Mapping[str, Any] | None = None,
                 device: str | torch.device = "cpu") -> nn.Module:
    """The network of a timm or CONCH ``spec`` (random weights; ``device="meta"``: no memory)."""
    import timm

    if spec.kind not in ("timm", "conch"):
        raise ValueError(f"{spec.name}: build_module builds timm/CONCH specs, not {spec.kind}")
    kw = timm_kwargs(spec, overrides)
    with torch.device(device):
        try:
            net = timm.create_model(spec.arch, pretrained=False, num_classes=0, **kw)
        except (RuntimeError, TypeError, AssertionError) as err:
            raise ValueError(f"{spec.name}: timm cannot build {spec.arch} with {kw} ({err})") from err
        if spec.kind == "conch":
            pool = {**spec.kwargs.get("pooler", {}), **dict((overrides or {}).get("pooler") or {})}
            net = ConchV15Vision(net, int(pool.get("d_model", 768)), int(pool.get("n_head", 8)),
                                 int(pool.get("n_queries", 1)))
    return net


def hf_config(spec: EncoderSpec, overrides: Mapping[str, Any] | None = None) -> Any:
    """The transformers config of an ``hf`` spec (``depth``/``img_size``... aliases accepted)."""
    from transformers import AutoConfig

    values = dict(spec.kwargs)
    for k, v in dict(overrides or {}).items():
        values[_HF_ALIASES.get(k, k)] = v
    try:
        return AutoConfig.for_model(spec.arch, **values)
    except (ValueError, KeyError) as err:
        raise ValueError(f"{spec.name}: transformers has no model_type {spec.arch!r} ({err})") from err


def build_hf(spec: EncoderSpec, overrides: Mapping[str, Any] | None = None,
             device: str | torch.device = "cpu") -> nn.Module:
    """A random transformers model of an ``hf`` spec."""
    from transformers import AutoModel

    with torch.device(device):
        return AutoModel.from_config(hf_config(spec, overrides))


def count_parameters(spec: EncoderSpec, overrides: Mapping[str, Any] | None = None) -> int:
    """Parameter count of ``spec``'s architecture, from a meta-device build (no memory)."""
    net = build_hf(spec, overrides, "meta") if spec.kind == "hf" else build_module(spec, overrides, "meta")
    return sum(p.numel() for p in net.parameters())


# ------------------------------------------------------------------------ reading
def weights_file(path: str | os.PathLike) -> Path:
    """The weights file of ``path``: the file itself, or the weights inside a downloaded
    folder (model.safetensors, pytorch_model.bin, pytorch_model_vision.bin, or the one
    .safetensors/.bin/.pth there)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise WeightsError(f"weights {path} do not exist (nothing is downloaded: point "
                           f"weights_path at the file or folder you obtained)")
    for name in FOLDER_FILES:
        if (path / name).is_file():
            return path / name
    found = sorted(p for ext in ("*.safetensors", "*.bin", "*.pth", "*.pt", "*.torch")
                   for p in path.glob(ext))
    if len(found) == 1:
        return found[0]
    raise WeightsError(f"{path}: no weights file inside (looked for {', '.join(FOLDER_FILES)}"
                       + (f"; several candidates: {[p.name for p in found]}" if found else "") + ")")


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
              "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(file: Path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file one tensor at a time with plain file reads (no memory
    map, so the resident memory is the cast tensors plus one tensor being read)."""
    import struct

    out: dict[str, torch.Tensor] = {}
    try:
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
            start = 8 + size
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                begin, end = info["data_offsets"]
                f.seek(start + begin)
                buf = bytearray(end - begin)
                if f.readinto(buf) != len(buf):
                    raise ValueError(f"tensor {key} is truncated")
                src = _ST_DTYPES[info["dtype"]]
                t = (torch.frombuffer(buf, dtype=src) if buf else torch.empty(0, dtype=src))
                t = t.reshape(info["shape"])
                out[key] = _cast(t, dtype)
                del buf, t
    except (OSError, ValueError, KeyError, struct.error, json.JSONDecodeError) as err:
        raise WeightsError(f"{file}: cannot read safetensors file ({err})") from err
    return out


def read_state(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The state dict in the weights at ``path`` (file or folder), floating tensors cast to
    ``dtype`` one at a time: ``.safetensors`` tensor by tensor (plain reads), torch files memory-mapped
    (``weights_only=True``), so no full fp32 copy is held for a bf16 run."""
    file = weights_file(path)
    if file.suffix == ".safetensors":
        return read_safetensors(file, dtype)
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - legacy format / refused objects: the full reader explains
        ckpt = read_weights_file(file)
    state = select_state_dict(ckpt, WRAPPERS, file)
    del ckpt
    return {k: _cast(state.pop(k), dtype) for k in list(state)}


def normalize_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo the wrappers seen in the wild: leading ``module.``/``backbone.``/``model.``/
    ``encoder.`` prefixes, GPFM's chunked ``blocks.{chunk}.{i}``, and DINOv2's original
    names (``register_tokens`` → ``reg_token``, SwiGLU ``w12``/``w3`` → ``fc1``/``fc2``)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in PREFIXES:
                if key.startswith(p) and not key.startswith("encoder.layer."):
                    key, changed = key[len(p):], True
        key = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)
        if key == "register_tokens":
            key = "reg_token"
        key = re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", key)
        key = re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", key)
        out[key] = value
    return out


# ---------------------------------------------------------------- matching / checks
@cache
def expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the state dict of registered timm/CONCH encoder ``name`` (meta build)."""
    net = build_module(ENCODERS[name], device="meta")
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def likely_models(shapes: Mapping[str, tuple[int, ...]], exclude: str | None = None) -> str:
    """Which registered timm/CONCH encoders a file's keys and shapes match: "looks like X"
    (every key and shape equal), else the closest one with the share of matching tensors."""
    shapes = {k: tuple(v) for k, v in shapes.items() if not any(re.search(p, k) for p in IGNORED)}
    exact: list[str] = []
    scores: dict[str, float] = {}
    token = shapes.get("cls_token") or shapes.get("trunk.cls_token")
    width = int(token[-1]) if token else None
    for name, spec in ENCODERS.items():
        if spec.kind == "hf":
            continue
        spec_width = int(spec.kwargs.get("embed_dim", spec.width)) if spec.kind == "conch" else spec.width
        if width is not None and spec_width != width:
            continue  # another width: cannot match (and is not built)
        want = expected_shapes(name)
        same = sum(1 for k, s in shapes.items() if want.get(k) == s)
        if same == len(want) == len(shapes):
            exact.append(name)
        scores[name] = same / max(len(want), len(shapes), 1)
    exact = [n for n in exact if n != exclude]
    if exact:
        return f"the file looks like {' / '.join(exact)} (every key and shape matches)"
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in shapes):
        return ("the file has transformers key names: give the transformers folder of a "
                "transformers encoder (phikon_v2, hibou_b, hibou_l, midnight)")
    best_score = max(scores.values(), default=0.0)
    if best_score >= 0.5:
        best = [n for n, s in scores.items() if s == best_score]
        return f"closest registered model: {' / '.join(best)} ({best_score:.0%} of the tensors match)"
    return "it matches no registered encoder"


def key_report(model_shapes: Mapping[str, tuple[int, ...]],
               file_shapes: Mapping[str, tuple[int, ...]]) -> tuple[list[str], list[str], list[str], list[str]]:
    """(missing, unexpected, mis-shaped, ignored) keys of a file against a model."""
    ignored = sorted(k for k in file_shapes if k not in model_shapes
                     and any(re.search(p, k) for p in IGNORED))
    unexpected = sorted(k for k in file_shapes if k not in model_shapes and k not in ignored)
    missing = sorted(k for k in model_shapes if k not in file_shapes)
    shapes = sorted(f"{k} {tuple(file_shapes[k])} in the file vs {tuple(model_shapes[k])}"
                    for k in file_shapes if k in model_shapes
                    and tuple(file_shapes[k]) != tuple(model_shapes[k]))
    return missing, unexpected, shapes, ignored


def _pos_hint(spec: EncoderSpec, net: nn.Module, file_shapes: Mapping[str, tuple[int, ...]]) -> str:
    """``pass img_size=S`` when only pos_embed differs (the file was trained at another size)."""
    trunk = getattr(net, "trunk", net)
    key = "trunk.pos_embed" if spec.kind == "conch" else "pos_embed"
    if key not in file_shapes or not hasattr(trunk, "patch_embed"):
        return ""
    n = int(file_shapes[key][1])
    if not getattr(trunk, "no_embed_class", False):
        n -= int(getattr(trunk, "num_prefix_tokens", 1))
    side = math.isqrt(max(n, 0))
    if side * side != n:
        return ""
    return f" (the file's pos_embed is for {side * int(trunk.patch_embed.patch_size[0])}-px " \
           f"inputs: pass img_size={side * int(trunk.patch_embed.patch_size[0])})"


def load_module_weights(spec: EncoderSpec, net: nn.Module, state: Mapping[str, torch.Tensor],
                        source: str | os.PathLike) -> dict[str, Any]:
    """Load ``state`` strictly into ``net`` (a meta or real build): errors name the keys and
    the likely model; returns the key-match report."""
    target = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    file_shapes = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected, shapes, ignored = key_report(target, file_shapes)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short(unexpected)}")
        if shapes:
            hint = _pos_hint(spec, net, file_shapes) if any(
                s.startswith(("pos_embed ", "trunk.pos_embed ")) for s in shapes) else ""
            parts.append(f"shape mismatch: {_short(shapes, 4)}{hint}")
        raise WeightsError(f"{source} does not fit {spec.name}: " + "; ".join(parts) + "; "
                           + likely_models(file_shapes, exclude=spec.name))
    net.load_state_dict({k: v for k, v in state.items() if k in target}, strict=True, assign=True)
    left = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    if left:
        raise WeightsError(f"{source}: {spec.name} has tensors the file does not set: {_short(left)}")
    return {"matched": len(target), "ignored": ignored}


# ------------------------------------------------------------------ transformers
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path}: cannot read JSON ({err})") from err


def load_hf_folder(spec: EncoderSpec, folder: str | os.PathLike, dtype: torch.dtype,
                   overrides: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load a transformers folder as ``spec.arch`` with transformers (``dtype`` directly).

    A folder whose config names another model_type (e.g. Hibou's custom Dinov2 code) is read
    with the spec's config class built from its config.json values; nothing of the folder's
    code runs. Missing (except ``embeddings.mask_token``), unexpected or mis-shaped weights
    are an error naming them."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise WeightsError(f"{spec.name} is a transformers model: weights_path must be its folder "
                           f"(config.json + model.safetensors), got {folder}")
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{folder}: no config.json (not a transformers model folder)")
    weights_file(folder)
    raw = _read_json(folder / "config.json")
    if "architecture" in raw and "model_type" not in raw:
        raise WeightsError(f"{folder}: a timm folder (architecture {raw.get('architecture')!r}), "
                           f"not a transformers one; {spec.name} needs the transformers folder")
    values = {k: v for k, v in raw.items()
              if k not in ("model_type", "architectures", "auto_map", "transformers_version")}
    for k, v in dict(overrides or {}).items():
        values[_HF_ALIASES.get(k, k)] = v
    config = AutoConfig.for_model(spec.arch, **values)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModel.from_pretrained(
            str(folder), config=config, local_files_only=True, output_loading_info=True,
            dtype=dtype, trust_remote_code=False)
    except Exception as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{folder}: transformers cannot load it as {spec.name} ({text})") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [k for k in info.get("missing_keys") or [] if not k.endswith("mask_token")]
    unexpected = list(info.get("unexpected_keys") or [])
    mismatched = [str(m) for m in info.get("mismatched_keys") or []]
    if missing or unexpected or mismatched:
        parts = [f"{label}: {_short(sorted(map(str, keys)))}" for label, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected),
                  ("shape mismatch", mismatched)) if keys]
        raise WeightsError(f"{folder} does not fit {spec.name}: " + "; ".join(parts) + "; "
                           + likely_hf(config, exclude=spec.name))
    width = int(getattr(config, "hidden_size", 0) or 0)
    if spec.width and width != spec.width and "hidden_size" not in values_overridden(overrides):
        raise WeightsError(f"{folder}: a {width}-wide model, {spec.name} is {spec.width} wide; "
                           + likely_hf(config, exclude=spec.name))
    return model.eval(), {"matched": sum(1 for _ in model.state_dict()), "ignored": [],
                          "model_type": raw.get("model_type")}


def values_overridden(overrides: Mapping[str, Any] | None) -> set[str]:
    """transformers config names set by ``overrides`` (aliases such as ``embed_dim`` mapped)."""
    return {_HF_ALIASES.get(k, k) for k in dict(overrides or {})}


def likely_hf(config: Any, exclude: str | None = None) -> str:
    """The transformers encoders whose width, depth and registers equal ``config``'s."""
    def sig(c: Mapping[str, Any]) -> tuple:
        return (c.get("hidden_size"), c.get("num_hidden_layers"),
                int(c.get("num_register_tokens", 0) or 0), bool(c.get("use_swiglu_ffn", False)))

    have = sig(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    names = [n for n, s in ENCODERS.items() if s.kind == "hf" and n != exclude and sig(s.kwargs) == have]
    return (f"the folder looks like {' / '.join(names)}" if names
            else "its config matches no registered transformers encoder")


# ----------------------------------------------------------------------- extractor
def make_encoder(
    spec: EncoderSpec,
    *,
    name: str | None = None,
    weights_path: str | os.PathLike | None = None,
    pretrained: bool = True,
    precision: str = "fp32",
    output: str | None = None,
    mean: Any = None,
    std: Any = None,
    tile_size: int | None = None,
    mpp: float | None = None,
    **overrides: Any,
) -> ModuleExtractor:
    """An extractor of ``spec``: its architecture (``overrides``, e.g. ``depth=1``, change it),
    output rule (``output=cls|cls+mean`` where offered), mean/std, tile size and mpp.

    ``pretrained=True`` loads ``weights_path`` strictly in ``precision``'s dtype;
    ``pretrained=False`` builds random weights and says so in the log and the record."""
    from rl_benchmarks.utils.device import parse_precision

    precision = parse_precision(precision)
    dtype = DTYPES[precision]
    spec = spec.with_output(output)
    name = name or spec.name
    report: dict[str, Any] = {}
    if pretrained:
        if weights_path in (None, ""):
            raise WeightsError(f"{name} is a pretrained model and needs weights_path=<{spec.weights_format}> "
                               f"(nothing is downloaded), or pretrained=False for random weights")
        if spec.kind == "hf":
            model, report = load_hf_folder(spec, weights_path, dtype, overrides)
        else:
            net = build_module(spec, overrides, device="meta")
            state = normalize_keys(read_state(weights_path, dtype))
            report = load_module_weights(spec, net, state, weights_path)
            del state
            model = net
    else:
        logger.warning("%s: RANDOM WEIGHTS (pretrained=False): features are meaningless", name)
        model = build_hf(spec, overrides) if spec.kind == "hf" else build_module(spec, overrides)
        model = model.to(dtype)
    model.eval()
    wrapper: nn.Module = HFTokenFeatures(model, spec.output) if spec.kind == "hf" \
        else TokenFeatures(model, spec.output)
    width = int(model.config.hidden_size) if spec.kind == "hf" else (
        int(model.ln_contrast.normalized_shape[0]) if spec.kind == "conch" else int(model.num_features))
    dim = 2 * width if spec.output == "cls+mean" else width
    size = tile_size or (int(overrides["img_size"]) if "img_size" in overrides else spec.tile_size)
    extra = {"architecture": spec.arch, "encoder": spec.name, "output": spec.output,
             "weights_dtype": str(dtype).replace("torch.", "")}
    if spec.extra.get("spec_file"):
        extra["spec_file"] = spec.extra["spec_file"]
    if pretrained:
        extra["key_match"] = {"matched": report.get("matched"), "ignored": report.get("ignored", [])}
    else:
        extra["random_init"] = "RANDOM WEIGHTS (pretrained=false): not a pretrained encoder"
    return ModuleExtractor(
        wrapper, name=name, feature_dim=dim, tile_size=int(size),
        mpp=float(mpp if mpp is not None else spec.mpp),
        mean=mean if mean is not None else spec.mean, std=std if std is not None else spec.std,
        precision=precision, weights_path=_recorded_path(spec, weights_path) if pretrained else None,
        pretrained=pretrained, extra=extra)


def _recorded_path(spec: EncoderSpec, weights_path: str | os.PathLike) -> str:
    """The path the record names (and hashes): the weights file itself for timm/CONCH folders
    (e.g. CONCH v1.5's pytorch_model_vision.bin), the folder for transformers models."""
    return str(weights_path) if spec.kind == "hf" else str(weights_file(weights_path))


def check_weights(name_or_spec: str | EncoderSpec, weights_path: str | os.PathLike,
                  precision: str = "fp32", output: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Load ``weights_path`` as an encoder and run two random tiles: a report with ``ok``,
    ``feature_dim``, ``expected_dim``, the key-match counts and the error (when not ok)."""
    from rl_benchmarks.models.feature_extractors.encoders import spec_from_yaml

    if isinstance(name_or_spec, EncoderSpec):
        spec = name_or_spec
    elif str(name_or_spec) in ENCODERS:
        spec = ENCODERS[str(name_or_spec)]
    else:
        spec = spec_from_yaml(name_or_spec)[0]
    spec = spec.with_output(output)
    result: dict[str, Any] = {"name": spec.name, "weights_path": str(weights_path), "ok": False,
                              "expected_dim": spec.feature_dim() if spec.width else None}
    try:
        ext = make_encoder(spec, weights_path=weights_path, precision=precision, **overrides)
        gen = torch.Generator().manual_seed(0)
        tiles = torch.randint(0, 256, (2, ext.tile_size, ext.tile_size, 3), dtype=torch.uint8,
                              generator=gen)
        feats = ext(ext.normalize_uint8(tiles))
    except (WeightsError, ValueError) as err:
        result["error"] = str(err)
        return result
    result.update(feature_dim=int(feats.shape[1]), key_match=ext.extra.get("key_match"),
                  finite=bool(torch.isfinite(feats).all()))
    dim_ok = result["expected_dim"] in (None, result["feature_dim"])
    result["ok"] = bool(result["finite"] and dim_ok and feats.shape[0] == 2)
    if not dim_ok:
        result["error"] = f"features are {result['feature_dim']}-d, {spec.name} gives {result['expected_dim']}-d"
    elif not result["finite"]:
        result["error"] = "features of random tiles are not finite"
    return result
