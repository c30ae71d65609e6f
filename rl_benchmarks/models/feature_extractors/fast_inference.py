"""Fast CPU inference for ViT extractors: bf16 weights, oneDNN-fused linears, bmm attention.

Why: on a CPU with bf16 matrix units (AVX512-BF16, AMX) ``torch.autocast`` leaves much of a
ViT's time outside the matrix units: weights are cast on every call, the CPU flash-attention
kernel runs far below the matmul rate, and bias adds, erf-GELU and residual adds are each a
separate pass over memory. :func:`build_fast_module` turns a network holding timm
``Block``\\ s (``VisionTransformer`` and any model built from its blocks: Phikon/iBOT ViTs,
``timm:vit_*``, the named timm encoders) into an inference-only copy that

* holds its weights in the run's dtype once (bf16: no per-call casts);
* runs attention as two batched matmuls (``torch.baddbmm``/``bmm``, the 1/sqrt(d) scale as
  the GEMM's alpha) with the softmax in between, which use the matrix units, instead of
  ``scaled_dot_product_attention``'s CPU flash kernel;
* fuses bias + exact erf-GELU into ``fc1``, and bias + residual add into ``proj`` and ``fc2``
  (oneDNN ``_linear_pointwise`` post-ops, the kernels inductor uses); LayerScale is folded into
  the weights of ``proj``/``fc2``.

Everything else (patch embedding, position embedding, LayerNorms, pooling) is the model's own
code, run on the converted weights. Blocks of another shape (gated attention, q/k norms,
SwiGLU MLPs …) keep their own code on the converted weights. The copy is for inference only.
In fp32 it gives the plain path's features within float rounding (tests: 1e-5).

:func:`select_path` decides which path an extractor runs; the choice is recorded in the
extraction's JSON record (``Extractor.record()["inference_path"]``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

#: Paths an :class:`~rl_benchmarks.models.feature_extractors.core.Extractor` can run.
PATH_PLAIN = "plain"            # the module as built, fp32
PATH_AUTOCAST = "autocast"      # the module as built, under torch.autocast (bf16/fp16)
PATH_FAST = "fast"              # build_fast_module copy (CPU; fp32 or bf16 weights)
MODES = ("auto", "fast", "plain")
"""The values of ``inference_path`` (:func:`select_path`)."""

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def onednn_fusions_available() -> bool:
    """Whether torch has the oneDNN fused linear ops (``mkldnn::_linear_pointwise``)."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
    except (AttributeError, RuntimeError):  # pragma: no cover - exotic builds
        return False


def cpu_has_bf16_units() -> bool:
    """Whether oneDNN can run bf16 matmuls natively here (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover
        return False


# ------------------------------------------------------------------------ linear helpers
def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, fused: bool) -> torch.Tensor:
    if fused:
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    return F.linear(x, w, b)


def _linear_gelu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, fused: bool) -> torch.Tensor:
    """``gelu(x @ w.T + b)`` with the exact erf GELU."""
    if fused:
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
    return F.gelu(F.linear(x, w, b))


def _linear_add(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, residual: torch.Tensor,
                fused: bool) -> torch.Tensor:
    """``residual + x @ w.T + b``."""
    if fused:
        return torch.ops.mkldnn._linear_pointwise(x, residual, w, b, "add")
    return residual + F.linear(x, w, b)


# ------------------------------------------------------------------------- block detection
def _timm_classes() -> dict[str, type]:
    try:
        from timm.layers import LayerScale as LayerScaleLayers
        from timm.layers import Mlp
        from timm.models.vision_transformer import Attention, Block, LayerScale
    except ImportError:  # pragma: no cover - timm is a dependency
        return {}
    return {"Block": Block, "Attention": Attention, "Mlp": Mlp,
            "LayerScale": (LayerScale, LayerScaleLayers)}


def _is_identity(m: Any) -> bool:
    return m is None or isinstance(m, nn.Identity)


def _fold_scale(weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A linear layer followed by LayerScale ``scale`` as one linear layer (in fp32): its
    rows and bias multiplied by the scale. Unchanged without a scale."""
    if scale is None:
        return weight, bias
    g = scale.float()
    return weight.float() * g[:, None], None if bias is None else bias.float() * g


def _layer_scale(m: nn.Module, classes: dict[str, Any]) -> torch.Tensor | None | bool:
    """gamma of a LayerScale, None for Identity, False for anything else."""
    if _is_identity(m):
        return None
    if isinstance(m, classes["LayerScale"]) and type(m).forward in {c.forward for c in classes["LayerScale"]}:
        return m.gamma.detach()
    return False


def _fusable_attention(attn: nn.Module, classes: dict[str, Any]) -> bool:
    a = classes["Attention"]
    return (type(attn) is a and getattr(attn, "gate", None) is None
            and _is_identity(getattr(attn, "q_norm", None)) and _is_identity(getattr(attn, "k_norm", None))
            and _is_identity(getattr(attn, "norm", None))
            and getattr(attn, "attn_dim", attn.num_heads * attn.head_dim) == attn.num_heads * attn.head_dim)


def _fusable_mlp(mlp: nn.Module, classes: dict[str, Any]) -> bool:
    return (type(mlp) is classes["Mlp"] and isinstance(mlp.act, nn.GELU) and mlp.act.approximate == "none"
            and _is_identity(getattr(mlp, "norm", None)) and isinstance(mlp.fc1, nn.Linear)
            and isinstance(mlp.fc2, nn.Linear))


def fusable_block(block: nn.Module) -> bool:
    """Whether ``block`` is a timm ViT ``Block`` that :class:`FastBlock` reproduces exactly:
    plain attention (no gate, q/k norm or attention norm), an erf-GELU ``Mlp`` (or any MLP,
    run as it is), LayerScale or none, and LayerNorm-like norms."""
    classes = _timm_classes()
    if not classes or type(block) is not classes["Block"]:
        return False
    if _layer_scale(block.ls1, classes) is False or _layer_scale(block.ls2, classes) is False:
        return False
    return _fusable_attention(block.attn, classes)


class FastBlock(nn.Module):
    """Inference-only twin of a timm ViT ``Block`` (see the module docstring).

    Weights are held in ``dtype`` (shared with ``block`` when it already has that dtype); the
    attention scale is the ``alpha`` of the score ``baddbmm``, and LayerScale is folded into
    ``proj``/``fc2`` (in float32, before the cast).
    """

    def __init__(self, block: nn.Module, dtype: torch.dtype, fused: bool,
                 residual_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.dtype = dtype
        self.residual_dtype = residual_dtype or dtype
        classes = _timm_classes()
        attn = block.attn
        self.num_heads = int(attn.num_heads)
        self.head_dim = int(attn.head_dim)
        self.fused = bool(fused)
        self.norm1 = copy.deepcopy(block.norm1).to(self.residual_dtype)
        self.norm2 = copy.deepcopy(block.norm2).to(self.residual_dtype)
        self.scale = float(attn.scale)

        with torch.no_grad():
            w_qkv = attn.qkv.weight
            b_qkv = attn.qkv.bias
            ls1 = _layer_scale(block.ls1, classes)
            w_proj, b_proj = _fold_scale(attn.proj.weight, attn.proj.bias, ls1)
            self.fuse_mlp = _fusable_mlp(block.mlp, classes)
            ls2 = _layer_scale(block.ls2, classes)
            if self.fuse_mlp:
                mlp = block.mlp
                w_fc2, b_fc2 = _fold_scale(mlp.fc2.weight, mlp.fc2.bias, ls2)
                self.w_fc1 = _buf(mlp.fc1.weight, dtype)
                self.b_fc1 = _buf(mlp.fc1.bias, dtype)
                self.w_fc2 = _buf(w_fc2, dtype)
                self.b_fc2 = _buf(b_fc2, dtype)
                self.mlp = None
                self.ls2 = None
            else:
                self.mlp = copy.deepcopy(block.mlp).to(dtype)
                self.ls2 = None if ls2 is None else _buf(ls2, dtype)
            self.w_qkv = _buf(w_qkv, dtype)
            self.b_qkv = _buf(b_qkv, dtype)
            self.w_proj = _buf(w_proj, dtype)
            self.b_proj = _buf(b_proj, dtype)

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention core: ``softmax(q k^T) v`` as two ``bmm``\\ s; (B,N,C)."""
        b, n, _ = h.shape
        hh, d = self.num_heads, self.head_dim
        qkv = _linear(h, self.w_qkv, self.b_qkv, self.fused)
        qkv = qkv.view(b, n, 3, hh, d).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d)
        q = qkv[0].reshape(b * hh, n, d)
        k = qkv[1].reshape(b * hh, n, d)
        v = qkv[2].reshape(b * hh, n, d)
        scores = torch.baddbmm(torch.empty((), dtype=q.dtype, device=q.device).expand(b * hh, n, n),
                               q, k.transpose(1, 2), beta=0.0, alpha=self.scale)
        probs = torch.softmax(scores, dim=-1)
        out = torch.bmm(probs, v)  # (B*H, N, d)
        return out.view(b, hh, n, d).transpose(1, 2).reshape(b, n, hh * d)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("FastBlock is for plain ViT inference: no attention mask")
        if self.residual_dtype != self.dtype:
            o = self.attention(self.norm1(x).to(self.dtype))
            x = x + _linear(o, self.w_proj, self.b_proj, self.fused)
            h = self.norm2(x).to(self.dtype)
            if self.mlp is None:
                return x + _linear(_linear_gelu(h, self.w_fc1, self.b_fc1, self.fused), self.w_fc2, self.b_fc2,
                                   self.fused)
            y = self.mlp(h)
            return x + (y if self.ls2 is None else y * self.ls2)
        x = _linear_add(self.attention(self.norm1(x)), self.w_proj, self.b_proj, x, self.fused)
        h = self.norm2(x)
        if self.mlp is None:
            return _linear_add(_linear_gelu(h, self.w_fc1, self.b_fc1, self.fused),
                               self.w_fc2, self.b_fc2, x, self.fused)
        y = self.mlp(h)
        return x + (y if self.ls2 is None else y * self.ls2)


def _buf(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``t`` in ``dtype`` as a frozen parameter (no copy when it already is)."""
    return None if t is None else nn.Parameter(t.detach().to(dtype).contiguous(), requires_grad=False)


def _replace_blocks(module: nn.Module, dtype: torch.dtype, fused: bool, residual_dtype: torch.dtype) -> int:
    count = 0
    for name, child in module.named_children():
        if fusable_block(child):
            setattr(module, name, FastBlock(child, dtype, fused, residual_dtype))
            count += 1
        else:
            count += _replace_blocks(child, dtype, fused, residual_dtype)
    return count


def count_fusable_blocks(module: nn.Module) -> int:
    """How many timm ViT blocks of ``module`` :class:`FastBlock` can replace."""
    return sum(1 for m in module.modules() if fusable_block(m))


def shares_weights_in_fp32(module: nn.Module) -> bool:
    """Whether the fp32 fast copy of ``module`` uses its own weight tensors throughout: no
    LayerScale (folded into new tensors) and an erf-GELU ``Mlp`` in every replaced block (any
    other MLP is copied as it is)."""
    classes = _timm_classes()
    return all(_layer_scale(m.ls1, classes) is None and _layer_scale(m.ls2, classes) is None
               and _fusable_mlp(m.mlp, classes)
               for m in module.modules() if fusable_block(m))


class FastModule(nn.Module):
    """The converted copy: casts the float32 input to ``dtype`` and runs the copied network."""

    def __init__(self, network: nn.Module, dtype: torch.dtype, blocks: int, fused: bool) -> None:
        super().__init__()
        self.network = network
        self.dtype = dtype
        self.blocks = blocks
        self.fused = fused

    def forward(self, x: torch.Tensor) -> Any:
        return self.network(x.to(self.dtype))


def build_fast_module(network: nn.Module, precision: str = "bf16", fused: bool | None = None,
                      residual_fp32: bool = False) -> FastModule:
    """An inference-only copy of ``network`` with its timm ViT blocks replaced by
    :class:`FastBlock` and every weight in ``precision``'s dtype (see the module docstring).

    ``network`` itself is left unchanged. ``fused`` (default: when available) uses oneDNN's
    fused linear ops. Raises ``ValueError`` when ``network`` holds no such block.
    """
    dtype = _DTYPES[precision]
    if fused is None:
        fused = onednn_fusions_available()
    n = count_fusable_blocks(network)
    if n == 0:
        raise ValueError(f"{type(network).__name__} holds no timm ViT block to run on the fast path")
    blocks = [m for m in network.modules() if fusable_block(m)]
    # Copy everything but the blocks (rebuilt below from the originals, without a deep copy).
    memo = {id(b): b for b in blocks}
    shell = copy.deepcopy(network, memo)
    with torch.no_grad():
        rdtype = torch.float32 if residual_fp32 else dtype
        replaced = _replace_blocks(shell, dtype, fused, rdtype)
        for mod in shell.modules():  # the rest (embeddings, final norm, heads) in the stream's dtype
            if isinstance(mod, FastBlock):
                continue
            for pname, p in list(mod.named_parameters(recurse=False)):
                if p.is_floating_point():
                    setattr(mod, pname, nn.Parameter(p.detach().to(rdtype), requires_grad=False))
            for bname, b in list(mod.named_buffers(recurse=False)):
                if b is not None and b.is_floating_point():
                    mod.register_buffer(bname, b.to(rdtype))
    shell.eval()
    shell.requires_grad_(False)
    return FastModule(shell, rdtype, replaced, fused)


def check_mode(mode: str) -> str:
    """``mode`` if it is an inference path mode (``auto``, ``fast``, ``plain``), else a one-line
    ``ValueError``."""
    if mode not in MODES:
        raise ValueError(f"inference_path={mode!r}: use auto, fast or plain")
    return mode


def select_path(network: nn.Module | None, precision: str, device: torch.device,
                mode: str = "auto") -> str:
    """The inference path for ``network`` at ``precision`` on ``device``.

    ``"fast"``: the fast path on the CPU, in fp32 and bf16, when the network holds timm ViT
    blocks, else the plain path (fp32) or autocast (bf16/fp16, GPUs). ``"auto"`` (default): the
    same, except in fp32 for networks whose fast copy would hold a second copy of some weights
    (LayerScale folded into the projections, SwiGLU MLPs; :func:`shares_weights_in_fp32`),
    which keep the plain path. ``"plain"`` never takes it. In fp32 the fast path equals the
    plain one within float rounding and runs nearer the matmul rate.
    """
    check_mode(mode)
    default = PATH_PLAIN if precision == "fp32" else PATH_AUTOCAST
    if mode == "plain" or network is None or device.type != "cpu" or precision == "fp16":
        return default
    if not count_fusable_blocks(network):
        return default
    if mode == "auto" and precision == "fp32" and not shares_weights_in_fp32(network):
        return default  # no second copy of the weights unless asked (mode="fast")
    return PATH_FAST
