"""Checkpoints move both ways between the reference code and this package.

For each of the six MIL models, a state dict spelled out here with the reference's key
names (from the reference's module layout) loads strictly, and the model's logits equal a
float64 forward written independently below from the state-dict tensors alone. A state
dict with the names this package wrote before it adopted the reference's loads too, with
one warning, and gives the same logits.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rl_benchmarks.models import ABMIL, DSMIL, HIPTMIL, Chowder, MeanPool, TransMIL

B, N = 2, 6  # two slides, the second one padded to N tiles
N_REAL = (6, 4)
OUT = 2


# ------------------------------------------------------------------------ configurations
def _meanpool() -> nn.Module:
    return MeanPool(4, OUT, hidden=[3], activation="relu")


def _chowder() -> nn.Module:
    return Chowder(4, OUT, n_top=2, n_bottom=1, tiles_mlp_hidden=[3], mlp_hidden=[4])


def _abmil() -> nn.Module:
    return ABMIL(4, OUT, d_model_attention=3, temperature=2.0, tiles_mlp_hidden=[5],
                 mlp_hidden=[4], mlp_activation="torch.nn.ReLU")


def _dsmil(passing_values: bool) -> nn.Module:
    return DSMIL(4, OUT, d_tiles_values=2, d_tiles_queries=3, passing_values=passing_values,
                 tiles_scores_mlp_hidden=[5], tiles_queries_mlp_hidden=[5, 3],
                 mlp_hidden=[4])


def _hiptmil() -> nn.Module:
    return HIPTMIL(4, OUT)


def _transmil() -> nn.Module:
    return TransMIL(8, out_features=OUT)


def _ffn(prefix: str, d_in: int, d_out: int) -> dict[str, tuple[int, ...]]:
    return {prefix + "weight": (d_out, d_in), prefix + "bias": (d_out,)}


# The reference's key names and shapes, written out.
REFERENCE_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "meanpool": {**_ffn("mlp.0.0.", 4, 3), **_ffn("mlp.1.", 3, OUT)},
    "chowder": {
        **_ffn("score_model.hidden_layers.0.", 4, 3),  # MaskedLinear
        **_ffn("score_model.hidden_layers.2.", 3, OUT),  # after the Sigmoid at index 1
        **_ffn("mlp.0.0.", 3, 4),
        **_ffn("mlp.1.", 4, 1),
    },
    "abmil": {
        **_ffn("tiles_emb.hidden_layers.0.", 4, 5),
        **_ffn("tiles_emb.hidden_layers.2.", 5, 3),
        **_ffn("attention_layer.att.", 3, 3),
        **_ffn("attention_layer.gate.", 3, 3),
        **_ffn("attention_layer.w.", 3, 1),
        **_ffn("mlp.0.0.", 3, 4),
        **_ffn("mlp.1.", 4, OUT),
    },
    "hiptmil": {
        **_ffn("global_phi.0.", 4, 192),
        **{
            k: v
            for i in range(2)
            for k, v in {
                f"global_transformer.layers.{i}.self_attn.in_proj_weight": (576, 192),
                f"global_transformer.layers.{i}.self_attn.in_proj_bias": (576,),
                **_ffn(f"global_transformer.layers.{i}.self_attn.out_proj.", 192, 192),
                **_ffn(f"global_transformer.layers.{i}.linear1.", 192, 192),
                **_ffn(f"global_transformer.layers.{i}.linear2.", 192, 192),
                f"global_transformer.layers.{i}.norm1.weight": (192,),
                f"global_transformer.layers.{i}.norm1.bias": (192,),
                f"global_transformer.layers.{i}.norm2.weight": (192,),
                f"global_transformer.layers.{i}.norm2.bias": (192,),
            }.items()
        },
        **_ffn("gat.attention_a.0.", 192, 192),
        **_ffn("gat.attention_b.0.", 192, 192),
        **_ffn("gat.attention_c.", 192, 1),
        **_ffn("global_rho.0.", 192, 192),
        **_ffn("classifier.", 192, OUT),
    },
    "transmil": {
        "cls_token": (1, 1, 8),
        **{
            k: v
            for blk in ("cor", "agg")
            for k, v in {
                f"{blk}.norm1.weight": (8,),
                f"{blk}.norm1.bias": (8,),
                f"{blk}.attn.qkv.weight": (24, 8),
                **_ffn(f"{blk}.attn.proj.", 8, 8),
            }.items()
        },
        "pos_enc.group_conv1.weight": (8, 8, 3, 3),
        "pos_enc.group_conv1.bias": (8,),
        "pos_enc.group_conv2.weight": (8, 8, 5, 5),
        "pos_enc.group_conv2.bias": (8,),
        "pos_enc.group_conv3.weight": (8, 8, 7, 7),
        "pos_enc.group_conv3.bias": (8,),
        "norm.weight": (8,),
        "norm.bias": (8,),
        **_ffn("head.", 8, OUT),
    },
}
for _pv in (False, True):
    REFERENCE_SHAPES[f"dsmil_values={_pv}"] = {
        **_ffn("tiles_scores.hidden_layers.0.", 4, 5),
        **_ffn("tiles_scores.hidden_layers.2.", 5, OUT),
        **_ffn("tiles_values.hidden_layers.0.", 4, 2),
        **_ffn("tiles_queries.hidden_layers.0.", 4, 5),
        **_ffn("tiles_queries.hidden_layers.2.", 5, 3),
        **_ffn("tiles_queries.hidden_layers.4.", 3, 3),
        **_ffn("mlp.0.0.", 2 if _pv else 4, 4),
        **_ffn("mlp.1.", 4, 1),
    }

# The names this package wrote before (reference name -> old name), where they differ:
# nested tile-MLP blocks ``hidden_layers.{i}.0`` with the last Linear at ``{n_hidden}``,
# and the module renames of the issue.
_OLD_TILES_MLP = {"hidden_layers.0.": "hidden_layers.0.0.", "hidden_layers.2.": "hidden_layers.1."}
_OLD_TILES_MLP_2 = {
    "hidden_layers.0.": "hidden_layers.0.0.",
    "hidden_layers.2.": "hidden_layers.1.0.",
    "hidden_layers.4.": "hidden_layers.2.",
}
OLD_PREFIXES: dict[str, dict[str, str]] = {
    "meanpool": {},
    "chowder": {"score_model." + k: "score_model." + v for k, v in _OLD_TILES_MLP.items()},
    "abmil": {"tiles_emb." + k: "tiles_emb." + v for k, v in _OLD_TILES_MLP.items()},
    "hiptmil": {"gat.": "global_attn_pool."},
    "transmil": {
        "cor.norm1.": "layer1.norm.",
        "cor.attn.": "layer1.attn.",
        "agg.norm1.": "layer2.norm.",
        "agg.attn.": "layer2.attn.",
        "pos_enc.group_conv1.": "pos_layer.proj2.",
        "pos_enc.group_conv2.": "pos_layer.proj1.",
        "pos_enc.group_conv3.": "pos_layer.proj.",
    },
}
for _pv in (False, True):
    OLD_PREFIXES[f"dsmil_values={_pv}"] = {
        **{"tiles_scores." + k: "score_model." + v for k, v in _OLD_TILES_MLP.items()},
        "tiles_values.hidden_layers.0.": "tiles_values_mlp.hidden_layers.0.",
        **{"tiles_queries." + k: "tiles_queries_mlp." + v for k, v in _OLD_TILES_MLP_2.items()},
    }

BUILDERS = {
    "meanpool": _meanpool,
    "chowder": _chowder,
    "abmil": _abmil,
    "dsmil_values=False": lambda: _dsmil(False),
    "dsmil_values=True": lambda: _dsmil(True),
    "hiptmil": _hiptmil,
    "transmil": _transmil,
}
CONFIGS = sorted(BUILDERS)


def reference_state_dict(config: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float64 tensors under the reference's names (LayerNorm scales near 1)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in REFERENCE_SHAPES[config].items():
        t = torch.randn(shape, generator=g, dtype=torch.float64) * 0.5
        if "norm" in key and key.endswith("weight"):
            t = 1.0 + 0.1 * t
        sd[key] = t
    return sd


def old_state_dict(config: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` under this package's old names."""
    out = {}
    for key, value in sd.items():
        old = key
        for new_prefix, old_prefix in OLD_PREFIXES[config].items():
            if key.startswith(new_prefix):
                old = old_prefix + key[len(new_prefix) :]
                break
        out[old] = value
    return out


def batch(width: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 features (B, N, 3 + width) and mask; slide 2 is padded with garbage."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, N, 3 + width, generator=g, dtype=torch.float64)
    mask = torch.zeros(B, N, 1, dtype=torch.bool)
    for i, n in enumerate(N_REAL):
        mask[i, n:] = True
    return feats, mask


# ------------------------------------------------------------------------ float64 forwards
def lin(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    return x @ sd[prefix + "weight"].T + sd[prefix + "bias"]


def ref_meanpool(sd: dict, x: torch.Tensor) -> torch.Tensor:
    return lin(sd, "mlp.1.", torch.relu(lin(sd, "mlp.0.0.", x.mean(0))))


def ref_chowder(sd: dict, x: torch.Tensor) -> torch.Tensor:
    s = lin(sd, "score_model.hidden_layers.2.",
            torch.sigmoid(lin(sd, "score_model.hidden_layers.0.", x)))  # (n, C)
    out = []
    for c in range(OUT):
        ordered = torch.sort(s[:, c], descending=True).values
        z = torch.cat([ordered[:2], ordered.flip(0)[:1]])  # top 2 desc, bottom 1 asc
        out.append(lin(sd, "mlp.1.", torch.sigmoid(lin(sd, "mlp.0.0.", z)))[0])
    return torch.stack(out)


def ref_abmil(sd: dict, x: torch.Tensor) -> torch.Tensor:
    v = torch.sigmoid(lin(sd, "tiles_emb.hidden_layers.0.", x))
    v = lin(sd, "tiles_emb.hidden_layers.2.", v)
    h = torch.tanh(lin(sd, "attention_layer.att.", v))
    u = torch.sigmoid(lin(sd, "attention_layer.gate.", v))
    a = torch.softmax(lin(sd, "attention_layer.w.", h * u)[:, 0] / 2.0, dim=0)
    return lin(sd, "mlp.1.", torch.relu(lin(sd, "mlp.0.0.", a @ v)))


def ref_dsmil(sd: dict, x: torch.Tensor, passing_values: bool) -> torch.Tensor:
    s = lin(sd, "tiles_scores.hidden_layers.2.",
            torch.sigmoid(lin(sd, "tiles_scores.hidden_layers.0.", x)))
    q = torch.sigmoid(lin(sd, "tiles_queries.hidden_layers.0.", x))
    q = torch.sigmoid(lin(sd, "tiles_queries.hidden_layers.2.", q))
    q = lin(sd, "tiles_queries.hidden_layers.4.", q)
    v = lin(sd, "tiles_values.hidden_layers.0.", x) if passing_values else x
    out = []
    for c in range(OUT):
        top = int(torch.argmax(s[:, c]))
        a = torch.softmax(q @ q[top], dim=0)
        s_bag = lin(sd, "mlp.1.", torch.sigmoid(lin(sd, "mlp.0.0.", a @ v)))[0]
        out.append(0.5 * (s[top, c] + s_bag))
    return torch.stack(out)


def _mha(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Scaled dot-product attention of (n, d) inputs split into ``heads`` heads."""
    n, d = q.shape
    hd = d // heads
    out = []
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        w = torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(hd), dim=-1)
        out.append(w @ v[:, sl])
    return torch.cat(out, dim=1)


def _ln(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), sd[prefix + "weight"], sd[prefix + "bias"], 1e-5)


def ref_hiptmil(sd: dict, x: torch.Tensor) -> torch.Tensor:
    h = torch.relu(lin(sd, "global_phi.0.", x))
    for i in range(2):
        p = f"global_transformer.layers.{i}."
        qkv = h @ sd[p + "self_attn.in_proj_weight"].T + sd[p + "self_attn.in_proj_bias"]
        q, k, v = qkv.split(192, dim=1)
        h = _ln(sd, p + "norm1.", h + lin(sd, p + "self_attn.out_proj.", _mha(q, k, v, 3)))
        ff = lin(sd, p + "linear2.", torch.relu(lin(sd, p + "linear1.", h)))
        h = _ln(sd, p + "norm2.", h + ff)
    a = torch.tanh(lin(sd, "gat.attention_a.0.", h))
    b = torch.sigmoid(lin(sd, "gat.attention_b.0.", h))
    w = torch.softmax(lin(sd, "gat.attention_c.", a * b)[:, 0], dim=0)
    return lin(sd, "classifier.", torch.relu(lin(sd, "global_rho.0.", w @ h)))


def ref_transmil(sd: dict, x: torch.Tensor) -> torch.Tensor:
    n, d = x.shape
    side = math.ceil(math.sqrt(n))
    h = torch.cat([sd["cls_token"][0], x, x[: side * side - n]])

    def block(prefix: str, t: torch.Tensor) -> torch.Tensor:
        y = _ln(sd, prefix + "norm1.", t)
        q, k, v = (y @ sd[prefix + "attn.qkv.weight"].T).split(d, dim=1)
        return t + lin(sd, prefix + "attn.proj.", _mha(q, k, v, 8))

    h = block("cor.", h)
    grid = h[1:].T.reshape(1, d, side, side)
    pe = grid.clone()
    for i, size in ((1, 3), (2, 5), (3, 7)):
        p = f"pos_enc.group_conv{i}."
        pe = pe + F.conv2d(grid, sd[p + "weight"], sd[p + "bias"], padding=size // 2)
    h = torch.cat([h[:1], pe.reshape(d, -1).T])
    h = block("agg.", h)
    return lin(sd, "head.", _ln(sd, "norm.", h[0]))


def reference_logits(config: str, sd: dict, feats: torch.Tensor) -> torch.Tensor:
    """(B, OUT) float64 logits, each slide on its real tiles only."""
    forward = {
        "meanpool": ref_meanpool,
        "chowder": ref_chowder,
        "abmil": ref_abmil,
        "dsmil_values=False": lambda s, x: ref_dsmil(s, x, False),
        "dsmil_values=True": lambda s, x: ref_dsmil(s, x, True),
        "hiptmil": ref_hiptmil,
        "transmil": ref_transmil,
    }[config]
    return torch.stack([forward(sd, feats[i, :n, 3:]) for i, n in enumerate(N_REAL)])


def loaded(config: str, sd: dict) -> nn.Module:
    torch.manual_seed(0)
    model = BUILDERS[config]().double().eval()
    model.load_state_dict(sd, strict=True)
    return model


# ------------------------------------------------------------------------ tests
@pytest.mark.parametrize("config", CONFIGS)
def test_state_dict_keys_are_the_references(config):
    """Both ways: our ``state_dict()`` has exactly the reference's names and shapes."""
    model = BUILDERS[config]()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == REFERENCE_SHAPES[config]


@pytest.mark.parametrize("config", CONFIGS)
def test_reference_state_dict_loads_strictly_and_gives_its_logits(config):
    sd = reference_state_dict(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no legacy-name warning for the reference's names
        model = loaded(config, sd)
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key]), key
    feats, mask = batch(8 if config == "transmil" else 4)
    with torch.no_grad():
        got = model(feats, mask)
    expected = reference_logits(config, sd, feats)
    assert got.shape == (B, OUT)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(expected[0], expected[1])  # the slides do differ


@pytest.mark.parametrize("config", CONFIGS)
def test_old_package_names_load_with_one_warning_and_same_logits(config):
    sd = reference_state_dict(config, seed=3)
    old = old_state_dict(config, sd)
    feats, mask = batch(8 if config == "transmil" else 4, seed=4)
    with torch.no_grad():
        expected = loaded(config, sd)(feats, mask)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = loaded(config, old)
    legacy = [w for w in caught if "old key names" in str(w.message)]
    if OLD_PREFIXES[config]:
        assert set(old) != set(sd)
        assert len(legacy) == 1, [str(w.message) for w in caught]
        assert type(model).__name__ in str(legacy[0].message)
    else:  # MeanPool's names never changed
        assert old == sd and not legacy
    with torch.no_grad():
        torch.testing.assert_close(model(feats, mask), expected, rtol=0, atol=0)


@pytest.mark.parametrize("config", ["chowder", "dsmil_values=False", "transmil"])
def test_old_names_load_inside_a_parent_module(config):
    """The renaming follows the model's prefix when it is a submodule (e.g. a wrapper)."""
    sd = reference_state_dict(config)
    old = {"net." + k: v for k, v in old_state_dict(config, sd).items()}
    parent = nn.ModuleDict({"net": BUILDERS[config]().double()})
    with pytest.warns(UserWarning, match="old key names"):
        parent.load_state_dict(old, strict=True)
    for key, value in parent["net"].state_dict().items():
        assert torch.equal(value, sd[key]), key


def test_own_state_dict_reloads_without_warning_and_bad_keys_still_fail():
    model = _dsmil(False)
    other = _dsmil(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        other.load_state_dict(model.state_dict(), strict=True)
    sd = dict(model.state_dict())
    sd["tiles_scores.hidden_layers.7.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        other.load_state_dict(sd, strict=True)
    old = old_state_dict("dsmil_values=False", reference_state_dict("dsmil_values=False"))
    del old["score_model.hidden_layers.1.bias"]  # an old dict with a key missing
    with pytest.warns(UserWarning, match="old key names"), pytest.raises(
        RuntimeError, match="Missing key"
    ):
        other.double().load_state_dict(old, strict=True)


def test_saved_and_reloaded_through_torch_save(tmp_path):
    """An old-name checkpoint file (weights only) loads like the reference's."""
    sd = reference_state_dict("chowder")
    path = tmp_path / "fold.pt"
    torch.save(old_state_dict("chowder", sd), path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    with pytest.warns(UserWarning, match="old key names"):
        model = loaded("chowder", state)
    assert set(model.state_dict()) == set(sd)


def test_legacy_map_of_a_tiles_mlp_with_dropout():
    """Nested block i (Linear, act, Dropout) -> flat 3i; the last Linear n_hidden -> 3n."""
    from rl_benchmarks.models.slide_models.utils import TilesMLP, legacy_key_map

    mlp = TilesMLP(4, 1, hidden=[3, 2], dropout=[0.1, 0.2])
    expected = {
        f"hidden_layers.{old}.{p}": f"hidden_layers.{new}.{p}"
        for old, new in (("0.0", 0), ("1.0", 3), ("2", 6))
        for p in ("weight", "bias")
    }
    assert legacy_key_map(mlp) == expected
