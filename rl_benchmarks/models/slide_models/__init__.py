"""The six MIL slide models of the reference and a registry to build them by name.

Every model takes ``forward(features (B, N, metadata_cols + D), mask (B, N, 1) bool or None)``
(mask True = padded tile) and returns logits (B, out_features). Padding never changes a
slide's output. Models that score tiles expose ``tile_scores(features, mask, class_index=0)``
-> (B, N) with NaN at padded tiles (see docs/models.md).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .abmil import ABMIL
from .chowder import Chowder
from .dsmil import DSMIL
from .hiptmil import HIPTMIL
from .meanpool import MeanPool
from .transmil import PPEG, TransMIL

SLIDE_MODELS: dict[str, type[nn.Module]] = {
    "mean_pool": MeanPool,
    "chowder": Chowder,
    "abmil": ABMIL,
    "dsmil": DSMIL,
    "hipt_mil": HIPTMIL,
    "trans_mil": TransMIL,
}

# The keyword arguments of the reference's Hydra model configs (conf/.../model/*.yaml).
REFERENCE_MODEL_KWARGS: dict[str, dict[str, Any]] = {
    "mean_pool": {},
    "chowder": {
        "n_top": 10,
        "n_bottom": 10,
        "tiles_mlp_hidden": [128],
        "mlp_hidden": [128, 64],
        "mlp_activation": "torch.nn.Sigmoid",
        "bias": True,
    },
    "abmil": {
        "d_model_attention": 128,
        "temperature": 1.0,
        "mlp_hidden": [128, 64],
        "mlp_activation": "torch.nn.ReLU",
        "bias": True,
    },
    "dsmil": {
        "d_tiles_values": 32,
        "d_tiles_queries": 32,
        "passing_values": False,
        "tiles_scores_mlp_hidden": [200, 100],
        "tiles_queries_mlp_hidden": [200, 100],
        "mlp_hidden": [200, 100],
    },
    "hipt_mil": {},
    "trans_mil": {},
}

# Class names are accepted by the registry too (e.g. "Chowder").
_ALIASES = {cls.__name__.lower(): name for name, cls in SLIDE_MODELS.items()}
_ALIASES.update({"meanpool": "mean_pool", "hiptmil": "hipt_mil", "transmil": "trans_mil"})


def create_slide_model(name: str, in_features: int, out_features: int, **kwargs: Any) -> nn.Module:
    """Build the MIL model ``name`` (mean_pool, chowder, abmil, dsmil, hipt_mil, trans_mil).

    ``kwargs`` go to the constructor; the constructor defaults apply otherwise (see
    ``REFERENCE_MODEL_KWARGS`` for the reference's configured values).
    """
    key = name.strip().lower()
    key = key if key in SLIDE_MODELS else _ALIASES.get(key.replace("-", "_"), key)
    if key not in SLIDE_MODELS:
        raise ValueError(f"unknown slide model {name!r}; choose one of {sorted(SLIDE_MODELS)}")
    if key == "chowder" and not {"n_top", "n_bottom", "n_extreme"} & set(kwargs):
        raise ValueError("slide model 'chowder' needs n_top and/or n_bottom (reference: 10 and 10)")
    return SLIDE_MODELS[key](in_features=in_features, out_features=out_features, **kwargs)


__all__ = [
    "ABMIL",
    "DSMIL",
    "HIPTMIL",
    "PPEG",
    "REFERENCE_MODEL_KWARGS",
    "SLIDE_MODELS",
    "Chowder",
    "MeanPool",
    "TransMIL",
    "create_slide_model",
]
