"""Checkpoint key names of the MIL models: the reference's names, and the mapping of the
names this package used before it adopted them.

Every MIL model names its submodules as the reference does, so ``state_dict()`` files move
both ways between the reference code and this package. Fold models written by earlier
versions of this package used other names; :func:`register_legacy_keys` installs a
``load_state_dict`` pre-hook that renames them (with one warning per load), so those
files still load, strictly.

Old names, per model (``new`` = the reference's):

* every ``TilesMLP`` (Chowder's ``score_model``, ABMIL's ``tiles_emb``, DSMIL's three):
  ``hidden_layers`` was one nested block per hidden width, ``hidden_layers.{i}.0`` (its
  ``MaskedLinear``) and ``hidden_layers.{n_hidden}`` (the last ``Linear``); it is now the
  reference's flat sequence ``[MaskedLinear, activation, (Dropout), ..., Linear]``;
* the module renames of :data:`LEGACY_PREFIXES` (DSMIL, HIPTMIL, TransMIL).
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from .tile_layers import MaskedLinear, TilesMLP

# Per model class: (old prefix, new prefix) pairs of module paths inside the model. The
# longest matching prefix wins, so a nested rename may follow the rename of its parent.
LEGACY_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "MeanPool": (),
    "Chowder": (),
    "ABMIL": (),
    "DSMIL": (
        ("score_model.", "tiles_scores."),
        ("tiles_values_mlp.", "tiles_values."),
        ("tiles_queries_mlp.", "tiles_queries."),
    ),
    "HIPTMIL": (("global_attn_pool.", "gat."),),
    "TransMIL": (
        ("layer1.", "cor."),
        ("layer1.norm.", "cor.norm1."),
        ("layer2.", "agg."),
        ("layer2.norm.", "agg.norm1."),
        ("pos_layer.", "pos_enc."),
        ("pos_layer.proj.", "pos_enc.group_conv3."),  # 7x7
        ("pos_layer.proj1.", "pos_enc.group_conv2."),  # 5x5
        ("pos_layer.proj2.", "pos_enc.group_conv1."),  # 3x3
    ),
}


def _class_prefixes(model: nn.Module) -> tuple[tuple[str, str], ...]:
    """The (old, new) prefix pairs of ``model``'s class or of its nearest listed base."""
    for cls in type(model).__mro__:
        if cls.__name__ in LEGACY_PREFIXES:
            return LEGACY_PREFIXES[cls.__name__]
    return ()


def _tiles_mlp_old_index(mlp: TilesMLP) -> dict[str, str]:
    """Flat ``hidden_layers`` index -> the old nested one (``"i.j"``, or ``"n_hidden"`` for
    the last Linear), for every entry of ``mlp.hidden_layers``."""
    layers = list(mlp.hidden_layers)
    n_hidden = len(layers) - 1
    out: dict[str, str] = {}
    block, pos = -1, 0
    for idx, layer in enumerate(layers):
        if idx == n_hidden:
            out[str(idx)] = str(block + 1)
        else:
            if isinstance(layer, MaskedLinear):  # a hidden block starts
                block, pos = block + 1, 0
            else:
                pos += 1
            out[str(idx)] = f"{block}.{pos}"
    return out


def legacy_key_map(model: nn.Module) -> dict[str, str]:
    """``{old key: new key}`` for every key of ``model.state_dict()`` whose name this
    package used to spell differently (keys relative to ``model``)."""
    tiles_mlps = {
        name + "." if name else "": _tiles_mlp_old_index(m)
        for name, m in model.named_modules()
        if isinstance(m, TilesMLP)
    }
    renames = sorted(_class_prefixes(model), key=lambda pair: len(pair[1]), reverse=True)
    mapping: dict[str, str] = {}
    for new in model.state_dict(keep_vars=True):
        old = new
        for prefix, index_map in tiles_mlps.items():
            head = prefix + "hidden_layers."
            if old.startswith(head):
                idx, _, rest = old[len(head) :].partition(".")
                old = head + index_map[idx] + "." + rest
                break
        for old_prefix, new_prefix in renames:  # longest new prefix first
            if old.startswith(new_prefix):
                old = old_prefix + old[len(new_prefix) :]
                break
        if old != new:
            mapping[old] = new
    return mapping


def _rename_legacy_keys(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """``load_state_dict`` pre-hook: rename old-style keys in place, with one warning.

    The state dict counts as old-style when it holds a key that only the old names have;
    then all its old names are renamed at once (old and new names can coincide for
    different tensors, e.g. ``hidden_layers.2``, so renaming key by key would be wrong).
    """
    mapping = legacy_key_map(module)
    if not mapping:
        return
    current = set(mapping.values())
    old_only = {old for old in mapping if old not in current}
    present = [k[len(prefix) :] for k in state_dict if k.startswith(prefix)]
    if not any(k in old_only for k in present):
        return
    renamed = {prefix + k: prefix + mapping[k] for k in present if k in mapping}
    values = {new: state_dict.pop(old) for old, new in renamed.items()}
    state_dict.update(values)
    example = next(iter(renamed.items()))
    warnings.warn(
        f"{type(module).__name__}: the state dict uses this package's old key names; mapped "
        f"{len(renamed)} keys to the reference's names (e.g. {example[0]!r} -> "
        f"{example[1]!r}). Save it again to store the new names.",
        UserWarning,
        stacklevel=2,
    )


def register_legacy_keys(model: nn.Module) -> None:
    """Let ``model.load_state_dict`` accept the key names this package used to write."""
    model.register_load_state_dict_pre_hook(_rename_legacy_keys)
