"""Building blocks: MLP, MaskedLinear, TilesMLP, ExtremeLayer, attention layers, Nystrom."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from rl_benchmarks.models.slide_models.utils import (
    MLP,
    ExtremeLayer,
    GatedAttention,
    MaskedLinear,
    NystromAttention,
    SelfAttention,
    TilesMLP,
    _moore_penrose_iter_pinv,
    resolve_activation,
)


def test_mlp_structure_and_count():
    mlp = MLP(10, 2, hidden=[6, 4], dropout=[0.1, 0.2], activation=nn.ReLU(), bias=False)
    assert len(mlp) == 3
    assert isinstance(mlp[0][1], nn.ReLU) and mlp[0][2].p == 0.1 and mlp[1][2].p == 0.2
    assert mlp[0][0].bias is None and mlp[2].bias is not None  # final layer keeps its bias
    assert sum(p.numel() for p in mlp.parameters()) == 10 * 6 + 6 * 4 + 4 * 2 + 2
    assert mlp(torch.zeros(3, 10)).shape == (3, 2)


@pytest.mark.parametrize(
    "spec,cls",
    [
        ("relu", nn.ReLU),
        ("torch.nn.Sigmoid", nn.Sigmoid),
        (nn.Tanh, nn.Tanh),
        (nn.GELU(), nn.GELU),
    ],
)
def test_resolve_activation(spec, cls):
    assert isinstance(resolve_activation(spec), cls)


def test_masked_linear_fills_padded_rows():
    layer = MaskedLinear(4, 3, mask_value="-inf")
    x = torch.randn(2, 5, 4)
    mask = torch.zeros(2, 5, 1, dtype=torch.bool)
    mask[0, 3:] = True
    out = layer(x, mask)
    assert torch.isneginf(out[0, 3:]).all()
    torch.testing.assert_close(out[1], x[1] @ layer.weight.T + layer.bias)


def test_tiles_mlp_padding_is_zero_after_sigmoid():
    mlp = TilesMLP(4, 2, hidden=[3])
    x = torch.randn(1, 5, 4)
    mask = torch.tensor([[False, False, True, False, True]])[..., None]
    hidden = torch.sigmoid(mlp.hidden_layers[0](x, mask))
    assert torch.equal(hidden[0, [2, 4]], torch.zeros(2, 3))
    out = mlp(x, mask)
    torch.testing.assert_close(out[0, 2], mlp.hidden_layers[2].bias)  # 0 hidden -> bias


def test_extreme_layer_matches_numpy_sort():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 9, 2)).astype(np.float32)
    values, indices = ExtremeLayer(n_top=3, n_bottom=2, return_indices=True)(torch.from_numpy(x))
    for b in range(3):
        for c in range(2):
            ordered = np.sort(x[b, :, c])
            expected = np.concatenate([ordered[::-1][:3], ordered[:2]])
            np.testing.assert_allclose(values[b, :, c].numpy(), expected)
            np.testing.assert_allclose(x[b, indices[b, :, c].numpy(), c], expected)


def test_extreme_layer_mask_and_short_slides():
    layer = ExtremeLayer(n_top=3, n_bottom=3, return_indices=True)
    x = torch.tensor([[[5.0], [-1.0], [100.0], [-100.0]]])
    mask = torch.tensor([[[False], [False], [True], [True]]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values, indices = layer(x, mask)
        short, _ = layer(x[:, :2])  # fewer tiles than n_top: same as padding them
    assert any("ExtremeLayer" in str(w.message) for w in caught)
    assert values[0, :, 0].tolist() == [5.0, -1.0, 0.0, -1.0, 5.0, 0.0]
    assert indices[0, :, 0].tolist() == [0, 1, -1, 1, 0, -1]
    torch.testing.assert_close(short, values)
    with pytest.raises(ValueError, match="n_top"):
        ExtremeLayer(n_top=0, n_bottom=0)


def test_gated_attention_matches_manual_computation():
    torch.manual_seed(0)
    layer = GatedAttention(d_model=6, temperature=2.0)
    v = torch.randn(2, 5, 6)
    mask = torch.zeros(2, 5, 1, dtype=torch.bool)
    mask[1, 3:] = True
    pooled, weights = layer(v, mask)
    for b, n in ((0, 5), (1, 3)):
        h = torch.tanh(layer.att(v[b, :n])) * torch.sigmoid(layer.gate(v[b, :n]))
        w = torch.softmax(layer.w(h)[:, 0] / 2.0, dim=0)
        torch.testing.assert_close(weights[b, :n, 0], w)
        torch.testing.assert_close(pooled[b], (w[:, None] * v[b, :n]).sum(0))
    assert torch.equal(weights[1, 3:], torch.zeros(2, 1))


def test_self_attention_matches_torch_multihead_attention():
    """Same weights in torch.nn.MultiheadAttention (an independent implementation)."""
    torch.manual_seed(0)
    attn = SelfAttention(8, num_heads=2).eval()
    ref = nn.MultiheadAttention(8, 2, bias=True, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(attn.qkv.weight)
        ref.in_proj_bias.zero_()
        ref.out_proj.weight.copy_(attn.proj.weight)
        ref.out_proj.bias.copy_(attn.proj.bias)
    x = torch.randn(2, 6, 8)
    mask = torch.zeros(2, 6, 1, dtype=torch.bool)
    mask[0, 4:] = True
    with torch.no_grad():
        expected, expected_w = ref(x, x, x, key_padding_mask=mask[..., 0])
        fast = attn(x, mask)
        slow, weights = attn(x, mask, return_attention=True)
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(slow, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights.mean(1), expected_w, rtol=1e-5, atol=1e-6)


def test_moore_penrose_iterations_converge_to_pinv():
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(2, 3, 5, 5, dtype=torch.float64), dim=-1)
    approx = _moore_penrose_iter_pinv(a, iters=30)
    torch.testing.assert_close(approx, torch.linalg.pinv(a), rtol=1e-6, atol=1e-8)


def test_nystrom_is_exact_attention_when_every_token_is_a_landmark():
    """With m = n landmarks (groups of one) and a converged pseudo-inverse, Nystrom
    attention is softmax attention exactly: an independent check of the formula."""
    torch.manual_seed(0)
    layer = NystromAttention(
        8, dim_head=4, heads=2, num_landmarks=6, pinv_iterations=40, residual=False
    ).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    q, k, v = layer.to_qkv(x).chunk(3, dim=-1)
    q, k, v = (t.reshape(2, 6, 2, 4).transpose(1, 2) for t in (q, k, v))
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
    expected = layer.to_out((attn @ v).transpose(1, 2).reshape(2, 6, 8))
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("n,m", [(10, 4), (8, 4), (3, 4), (37, 8)])
def test_nystrom_matches_the_nystrom_attention_package(n, m):
    pkg = pytest.importorskip("nystrom_attention")
    torch.manual_seed(n)
    ref = pkg.NystromAttention(dim=16, dim_head=8, heads=2, num_landmarks=m).eval()
    ours = NystromAttention(dim=16, dim_head=8, heads=2, num_landmarks=m).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, n, 16)
    with torch.no_grad():
        expected = torch.cat([ref(x[i : i + 1]) for i in range(3)])  # one slide at a time
        got = ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_nystrom_padding_invariance():
    torch.manual_seed(0)
    layer = NystromAttention(16, dim_head=8, heads=2, num_landmarks=4).eval()
    sizes = [9, 3, 12]
    x = torch.randn(3, 12, 16)
    mask = torch.zeros(3, 12, 1, dtype=torch.bool)
    for i, n in enumerate(sizes):
        mask[i, n:] = True
    with torch.no_grad():
        out = layer(x, mask)
        for i, n in enumerate(sizes):
            torch.testing.assert_close(out[i, :n], layer(x[i : i + 1, :n])[0], atol=1e-6, rtol=1e-5)
