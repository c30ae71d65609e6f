"""The six MIL models: parameter counts, shapes, mask handling, invariances, tile scores,
reference computations and the registry."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rl_benchmarks.models import ABMIL, DSMIL, HIPTMIL, Chowder, MeanPool, TransMIL
from rl_benchmarks.models.slide_models import (
    REFERENCE_MODEL_KWARGS,
    SLIDE_MODELS,
    create_slide_model,
)

D = 16  # tiny feature width for speed

# Small configurations of every model (hidden layers on, so masking paths are exercised).
SMALL_KWARGS = {
    "mean_pool": {},
    "mean_pool_hidden": {"hidden": [6], "activation": "relu"},
    "chowder": {"n_top": 2, "n_bottom": 2, "tiles_mlp_hidden": [8], "mlp_hidden": [8, 4]},
    "abmil": {"d_model_attention": 8, "mlp_hidden": [8, 4], "mlp_activation": "torch.nn.ReLU"},
    "dsmil": {
        "tiles_scores_mlp_hidden": [8],
        "tiles_queries_mlp_hidden": [8],
        "mlp_hidden": [8],
        "d_tiles_queries": 4,
    },
    "dsmil_values": {"passing_values": True, "d_tiles_values": 5, "mlp_hidden": [4]},
    "hipt_mil": {},
    "trans_mil": {},
    "trans_mil_depthwise": {"ppeg": "depthwise", "kw_cor": {"num_heads": 4}},
    "trans_mil_nystrom": {
        "kw_cor": {"attention_type": "nystrom", "num_landmarks": 4, "num_heads": 2},
        "kw_agg": {"attention_type": "nystrom", "num_landmarks": 4, "num_heads": 2},
    },
    "trans_mil_proj": {"proj_dim": 8, "position_encoding": None},
}
TILE_SCORING = {"chowder", "abmil", "dsmil", "dsmil_values", "hipt_mil", "trans_mil"}
PERMUTATION_INVARIANT = {
    "mean_pool",
    "mean_pool_hidden",
    "chowder",
    "abmil",
    "dsmil",
    "dsmil_values",
    "hipt_mil",
}


def build(config: str, out_features: int = 1, in_features: int = D, seed: int = 0):
    torch.manual_seed(seed)
    name = next(key for key in SLIDE_MODELS if config.startswith(key))
    model = create_slide_model(name, in_features, out_features, **SMALL_KWARGS[config])
    return model.eval()


def padded_batch(sizes, n_max=None, seed=0, garbage=True):
    """Features (B, N, 3 + D), mask (B, N, 1) with padding filled by random garbage."""
    g = torch.Generator().manual_seed(seed)
    n_max = n_max or max(sizes)
    feats = torch.randn(len(sizes), n_max, 3 + D, generator=g)
    mask = torch.zeros(len(sizes), n_max, 1, dtype=torch.bool)
    for i, n in enumerate(sizes):
        mask[i, n:] = True
    if not garbage:
        feats = feats.masked_fill(mask, 0.0)
    return feats, mask


@pytest.fixture(autouse=True)
def _quiet_extreme_layer():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ExtremeLayer")
        yield


# --------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize(
    "name,expected",
    [
        ("mean_pool", 769),
        ("chowder", 109_570),
        ("abmil", 156_418),
        ("dsmil", 549_742),
        ("hipt_mil", 705_410),
        ("trans_mil", 53_683_969),
    ],
)
def test_parameter_counts_match_reference_checksums(name, expected):
    with torch.device("meta"):
        model = create_slide_model(name, 768, 1, **REFERENCE_MODEL_KWARGS[name])
    assert sum(p.numel() for p in model.parameters()) == expected


def test_tutorial_chowder_and_depthwise_ppeg_counts():
    with torch.device("meta"):
        chowder = Chowder(768, 1, n_top=5, n_bottom=5, mlp_hidden=[200, 100])
        full = TransMIL(768)
        depthwise = TransMIL(768, ppeg="depthwise")
    assert sum(p.numel() for p in chowder.parameters()) == 23_170
    n_full = sum(p.numel() for p in full.pos_enc.parameters())
    n_dw = sum(p.numel() for p in depthwise.pos_enc.parameters())
    assert n_full == 768 * 768 * (49 + 25 + 9) + 3 * 768
    assert n_dw == 768 * (49 + 25 + 9) + 3 * 768
    assert depthwise.pos_enc.kind == "depthwise" and full.pos_enc.kind == "full"


def test_hipt_count_trainable_parts():
    with torch.device("meta"):
        counts = HIPTMIL(768, 1).count_trainable()
    assert counts["total"] == 705_410
    assert counts["global_phi"] == 768 * 192 + 192
    assert sum(v for k, v in counts.items() if k != "total") == counts["total"]


# --------------------------------------------------------------------- shapes and masks
@pytest.mark.parametrize("config", sorted(SMALL_KWARGS))
@pytest.mark.parametrize("out_features", [1, 3])
def test_shape_and_padding_invariance(config, out_features):
    """Each slide's logits in a padded batch (garbage padding) equal its logits alone."""
    model = build(config, out_features)
    sizes = [7, 3, 12, 1, 5]
    feats, mask = padded_batch(sizes, n_max=14)
    with torch.no_grad():
        out = model(feats, mask)
        alone = torch.cat([model(feats[i : i + 1, :n]) for i, n in enumerate(sizes)])
        out_again = model(feats, mask)
    assert out.shape == (len(sizes), out_features)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, alone, rtol=1e-5, atol=1e-5)
    assert torch.equal(out, out_again)  # eval mode is deterministic
    # The slides do differ: the invariance is not that of a constant model.
    assert out[:, 0].std() > 1e-6


@pytest.mark.parametrize("config", sorted(SMALL_KWARGS))
def test_padding_anywhere_equals_removing_the_padded_tiles(config):
    """Padding in the middle of a slide counts as absent (tile order of the rest kept)."""
    model = build(config, 2)
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 9, 3 + D, generator=g)
    mask = torch.zeros(2, 9, 1, dtype=torch.bool)
    mask[0, [1, 4, 5]] = True
    mask[1, [0, 8]] = True
    with torch.no_grad():
        out = model(feats, mask)
        alone = torch.cat([model(feats[i : i + 1, ~mask[i, :, 0]]) for i in range(2)])
    torch.testing.assert_close(out, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", sorted(SMALL_KWARGS))
def test_mask_none_equals_all_false_mask(config):
    model = build(config)
    feats, _ = padded_batch([6, 6, 6])
    mask = torch.zeros(3, 6, 1, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(model(feats, None), model(feats, mask))


@pytest.mark.parametrize("config", sorted(PERMUTATION_INVARIANT))
def test_permutation_invariance(config):
    model = build(config, 2)
    feats, mask = padded_batch([8, 5])
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(
            model(feats, mask), model(feats[:, perm], mask[:, perm]), rtol=1e-5, atol=1e-5
        )


def test_transmil_depends_on_tile_order():
    """PPEG makes TransMIL order dependent (a check that the position encoding is active)."""
    model = build("trans_mil")
    with torch.no_grad():
        model.cls_token.normal_()
    feats, _ = padded_batch([9])
    perm = torch.arange(8, -1, -1)
    with torch.no_grad():
        assert not torch.allclose(model(feats), model(feats[:, perm]), atol=1e-6)


def test_metadata_columns_are_ignored_and_configurable():
    feats, mask = padded_batch([5, 4])
    shifted = feats.clone()
    shifted[..., :3] += 100.0
    for config in ("chowder", "abmil", "trans_mil", "hipt_mil"):
        model = build(config)
        with torch.no_grad():
            torch.testing.assert_close(model(feats, mask), model(shifted, mask))
    torch.manual_seed(0)
    no_meta = MeanPool(D, 1, metadata_cols=0)
    torch.manual_seed(0)
    meta = MeanPool(D, 1)
    with torch.no_grad():
        torch.testing.assert_close(no_meta(feats[..., 3:], mask), meta(feats, mask))


def test_chowder_with_fewer_tiles_than_n_top():
    model = Chowder(D, 1, n_top=5, n_bottom=5).eval()
    feats, mask = padded_batch([3, 12])
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model(feats, mask)
        alone = model(feats[:1, :3])
    assert any("ExtremeLayer" in str(w.message) for w in caught)
    torch.testing.assert_close(out[:1], alone)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "config",
    ["mean_pool", "chowder", "abmil", "dsmil", "hipt_mil", "trans_mil", "trans_mil_nystrom"],
)
def test_backward_with_padding_gives_finite_gradients_and_learns(config):
    """A few Adam steps on a planted signal lower the loss; gradients stay finite."""
    model = build(config).train()
    sizes = [6, 4, 9, 3, 7, 5, 8, 2]
    feats, mask = padded_batch(sizes, seed=5)
    labels = torch.tensor([[1.0], [0.0], [1.0], [0.0], [1.0], [0.0], [1.0], [0.0]])
    feats[..., 3] += 2.0 * labels  # planted signal in every tile of positive slides
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    torch.manual_seed(0)
    for _ in range(12):
        loss = F.binary_cross_entropy_with_logits(model(feats, mask), labels)
        opt.zero_grad()
        loss.backward()
        for p in model.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < losses[0]


# --------------------------------------------------------------------- tile scores
@pytest.mark.parametrize("config", sorted(TILE_SCORING))
def test_tile_scores_shape_nan_padding_and_padding_invariance(config):
    model = build(config, 2)
    sizes = [6, 3, 9]
    feats, mask = padded_batch(sizes)
    with torch.no_grad():
        scores = model.tile_scores(feats, mask)
        alone = [model.tile_scores(feats[i : i + 1, :n]) for i, n in enumerate(sizes)]
    assert scores.shape == (3, 9)
    assert torch.equal(torch.isnan(scores), mask[..., 0])
    for i, n in enumerate(sizes):
        torch.testing.assert_close(scores[i, :n], alone[i][0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config", ["abmil", "hipt_mil"])
def test_attention_scores_sum_to_one(config):
    model = build(config)
    feats, mask = padded_batch([6, 3, 9])
    with torch.no_grad():
        scores = model.tile_scores(feats, mask)
    torch.testing.assert_close(torch.nansum(scores, dim=1), torch.ones(3))


def test_transmil_tile_scores_count_duplicated_tiles_once_each_copy():
    """CLS attention over the tiles plus over itself sums to one."""
    model = build("trans_mil")
    feats, mask = padded_batch([5, 10])
    with torch.no_grad():
        scores = model.tile_scores(feats, mask)
        h, layout = model._encode(feats, mask)
        _, attn = model.agg.forward_with_attention(h, layout.pad)
    cls_self = attn[:, :, 0, 0].mean(1)
    torch.testing.assert_close(torch.nansum(scores, 1) + cls_self, torch.ones(2))


def test_nystrom_transmil_tile_scores_not_available():
    model = build("trans_mil_nystrom")
    feats, mask = padded_batch([5])
    with pytest.raises(NotImplementedError, match="original"):
        model.tile_scores(feats, mask)


# --------------------------------------------------------------------- reference computations
def _mlp64(mlp, x, act):
    """float64 MLP: hidden Sequential(Linear, act, ...) blocks then a Linear."""
    for layer in mlp:
        if isinstance(layer, torch.nn.Sequential):
            lin = layer[0]
            x = act(x @ lin.weight.double().T + lin.bias.double())
        else:
            x = x @ layer.weight.double().T + layer.bias.double()
    return x


def test_abmil_matches_float64_reference():
    model = build("abmil")
    feats, _ = padded_batch([7])
    x = feats[0, :, 3:].double()
    emb = model.tiles_emb.hidden_layers[0]
    v = x @ emb.weight.double().T + emb.bias.double()
    att, gate, w = model.attention_layer.att, model.attention_layer.gate, model.attention_layer.w
    h = torch.tanh(v @ att.weight.double().T + att.bias.double())
    u = torch.sigmoid(v @ gate.weight.double().T + gate.bias.double())
    logits = (h * u) @ w.weight.double().T + w.bias.double()
    a = torch.softmax(logits[:, 0], dim=0)
    pooled = (a[:, None] * v).sum(0)
    expected = _mlp64(model.mlp, pooled[None], torch.relu)
    with torch.no_grad():
        got = model(feats)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_dsmil_multiclass_matches_float64_reference():
    model = build("dsmil", 3)
    feats, _ = padded_batch([6])
    x = feats[0, :, 3:].double()

    def tiles_mlp(m, z):
        hidden, last = m.hidden_layers[0], m.hidden_layers[2]
        z = torch.sigmoid(z @ hidden.weight.double().T + hidden.bias.double())
        return z @ last.weight.double().T + last.bias.double()

    scores = tiles_mlp(model.tiles_scores, x)  # (N, C)
    queries = tiles_mlp(model.tiles_queries, x)  # (N, dq)
    expected = []
    for c in range(3):
        top = int(torch.argmax(scores[:, c]))
        a = torch.softmax(queries @ queries[top], dim=0)
        bag = (a[:, None] * x).sum(0)
        s_bag = _mlp64(model.mlp, bag[None], torch.sigmoid)[0, 0]
        expected.append(0.5 * (scores[top, c] + s_bag))
    with torch.no_grad():
        got = model(feats)
    assert got.shape == (1, 3)
    torch.testing.assert_close(got[0].double(), torch.stack(expected), rtol=1e-5, atol=1e-6)


def test_chowder_matches_sorted_tile_scores():
    model = build("chowder", 2)
    feats, _ = padded_batch([9])
    with torch.no_grad():
        got = model(feats)
        for c in range(2):
            s = model.tile_scores(feats, None, class_index=c)[0]
            ordered = torch.sort(s, descending=True).values
            extremes = torch.cat([ordered[:2], torch.flip(ordered, [0])[:2]])
            torch.testing.assert_close(got[0, c], model.mlp(extremes[None])[0, 0])


def _ref_block(block, x):
    """float64 pre-norm block with plain multi-head attention (no mask)."""
    ln = block.norm1
    y = F.layer_norm(x, (x.shape[-1],), ln.weight.double(), ln.bias.double(), ln.eps)
    attn = block.attn
    n, d = y.shape
    qkv = (y @ attn.qkv.weight.double().T).reshape(n, 3, attn.num_heads, attn.head_dim)
    q, k, v = (qkv[:, i].transpose(0, 1) for i in range(3))  # (h, n, hd)
    w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(attn.head_dim), dim=-1)
    out = (w @ v).transpose(0, 1).reshape(n, d)
    return x + out @ attn.proj.weight.double().T + attn.proj.bias.double()


@pytest.mark.parametrize("n_tiles", [1, 5, 9, 11])
@pytest.mark.parametrize("config", ["trans_mil", "trans_mil_depthwise"])
def test_transmil_matches_float64_reference(config, n_tiles):
    """Squaring by copying the first tokens, CLS, block, PPEG on the grid, block, head."""
    model = build(config)
    with torch.no_grad():
        model.cls_token.normal_()
    feats, _ = padded_batch([n_tiles])
    x = feats[0, :, 3:].double()
    side = math.ceil(math.sqrt(n_tiles))
    x = torch.cat([x, x[: side * side - n_tiles]])
    h = torch.cat([model.cls_token[0].double(), x])
    h = _ref_block(model.cor, h)
    grid = h[1:].T.reshape(1, D, side, side)
    ppeg = model.pos_enc
    out = grid
    for conv in (ppeg.group_conv3, ppeg.group_conv2, ppeg.group_conv1):
        out = out + F.conv2d(
            grid,
            conv.weight.double(),
            conv.bias.double(),
            padding=conv.padding,
            groups=conv.groups,
        )
    h = torch.cat([h[:1], out.reshape(D, -1).T])
    h = _ref_block(model.agg, h)
    cls = F.layer_norm(h[0], (D,), model.norm.weight.double(), model.norm.bias.double())
    expected = cls @ model.head.weight.double().T + model.head.bias.double()
    with torch.no_grad():
        got = model(feats)
    torch.testing.assert_close(got[0].double(), expected, rtol=1e-5, atol=1e-6)


def test_hipt_batch_matches_unbatched_reference_sequence():
    """The batched, masked HIPT-MIL equals the reference's unbatched (N, 192) transformer."""
    model = build("hipt_mil")
    feats, mask = padded_batch([4, 7])
    with torch.no_grad():
        batched = model(feats, mask)
        x = feats[1, :, 3:]
        h = model.global_phi(x)
        for layer in model.global_transformer.layers:  # unbatched: (S, E)
            h = layer(h)
        a = model.gat(h)
        pooled = (torch.softmax(a, dim=0) * h).sum(0)
        expected = model.classifier(model.global_rho(pooled))
    torch.testing.assert_close(batched[1], expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------- batched ensembles
@pytest.mark.parametrize("config", ["mean_pool_hidden", "chowder", "abmil", "dsmil"])
def test_vmap_over_stacked_weights_matches_separate_models(config):
    """The trainer may train several models as one torch.func ensemble: it must give the
    outputs of the separate models."""
    from torch.func import functional_call, stack_module_state, vmap

    models = [build(config, 2, seed=s) for s in range(3)]
    params, buffers = stack_module_state(models)
    base = build(config, 2).to("meta")
    feats, mask = padded_batch([6, 3, 8])

    def run(p, b, x, m):
        return functional_call(base, (p, b), (x, m))

    with torch.no_grad():
        stacked = vmap(run, in_dims=(0, 0, None, None))(params, buffers, feats, mask)
        separate = torch.stack([m(feats, mask) for m in models])
    torch.testing.assert_close(stacked, separate, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------- registry, bad input
def test_registry_names_and_aliases():
    assert set(SLIDE_MODELS) == {
        "mean_pool",
        "chowder",
        "abmil",
        "dsmil",
        "hipt_mil",
        "trans_mil",
    }
    assert isinstance(create_slide_model("MeanPool", D, 1), MeanPool)
    assert isinstance(create_slide_model("TransMIL", D, 1), TransMIL)
    assert isinstance(create_slide_model("abmil", D, 2), ABMIL)
    assert isinstance(create_slide_model("dsmil", D, 2), DSMIL)
    with pytest.raises(ValueError, match="unknown slide model 'gcn'"):
        create_slide_model("gcn", D, 1)


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="n_top"):
        Chowder(D, 1)
    with pytest.raises(ValueError, match="dropout has 1 values"):
        MeanPool(D, 1, hidden=[4, 4], dropout=[0.1])
    with pytest.raises(ValueError, match="unknown kw_cor keys"):
        TransMIL(D, kw_cor={"heads": 2})
    with pytest.raises(ValueError, match="ppeg"):
        TransMIL(D, ppeg="separable")
    with pytest.raises(ValueError, match="attention_type"):
        TransMIL(D, kw_agg={"attention_type": "linear"})
    with pytest.raises(ValueError, match="out_logits"):
        DSMIL(D, out_logits="min")
    with pytest.raises(ValueError, match="activation"):
        ABMIL(D, mlp_hidden=[4], mlp_activation="swishy")
    with pytest.raises(ValueError, match=r"features must be \(batch, tiles"):
        MeanPool(D, 1)(torch.zeros(5, 3 + D))
    with pytest.warns(DeprecationWarning, match="n_extreme"):
        model = Chowder(D, 1, n_extreme=3)
    assert model.n_top == model.n_bottom == 3


def test_dsmil_out_logits_branches():
    model = build("dsmil", 2)
    feats, mask = padded_batch([5, 7])
    with torch.no_grad():
        mean = model(feats, mask)
        model.out_logits = "max"
        s_max = model(feats, mask)
        model.out_logits = "bag"
        s_bag = model(feats, mask)
    torch.testing.assert_close(mean, 0.5 * (s_max + s_bag))
    assert np.isfinite(s_bag.numpy()).all()


@pytest.mark.parametrize(
    "config", ["mean_pool", "chowder", "abmil", "dsmil", "hipt_mil", "trans_mil"]
)
def test_mask_shapes_accepted_and_rejected(config):
    model = build(config)
    feats, mask = padded_batch([4, 6])
    with torch.no_grad():
        torch.testing.assert_close(model(feats, mask[..., 0]), model(feats, mask))
        torch.testing.assert_close(model(feats, mask.long()), model(feats, mask))
    with pytest.raises(ValueError, match=r"mask must be \(batch, tiles, 1\)"):
        model(feats, mask[:, :5])
