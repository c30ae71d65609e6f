"""Multi-layer perceptron used as the slide-level head of the MIL models."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from torch import nn

_ACTIVATIONS = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "identity": nn.Identity,
}


def resolve_activation(activation: Any) -> nn.Module:
    """An activation module from a module, a module class or a name.

    Accepted: ``nn.Sigmoid()``, ``nn.Sigmoid``, ``"sigmoid"``, ``"relu"``, ``"tanh"``,
    ``"gelu"``, ``"identity"``, or a dotted path such as ``"torch.nn.ReLU"`` (the form the
    reference's Hydra configs use).
    """
    if activation is None:
        return nn.Identity()
    if isinstance(activation, nn.Module):
        return activation
    if isinstance(activation, type) and issubclass(activation, nn.Module):
        return activation()
    if isinstance(activation, str):
        key = activation.strip().lower()
        if key in _ACTIVATIONS:
            return _ACTIVATIONS[key]()
        if "." in activation:
            module_name, _, attr = activation.rpartition(".")
            try:
                cls = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as err:
                raise ValueError(f"activation {activation!r}: cannot import it ({err})") from err
            return resolve_activation(cls)
    if callable(activation):  # e.g. a Hydra partial returning a module
        built = activation()
        if isinstance(built, nn.Module):
            return built
    raise ValueError(
        f"activation {activation!r}: expected an nn.Module, an nn.Module class or one of "
        f"{sorted(_ACTIVATIONS)}"
    )


def check_dropout(hidden: Sequence[int] | None, dropout: Sequence[float] | None, name: str) -> None:
    """``dropout`` must give one probability per hidden layer."""
    if dropout is None:
        return
    n_hidden = 0 if hidden is None else len(hidden)
    if len(dropout) != n_hidden:
        raise ValueError(
            f"{name}: dropout has {len(dropout)} values but there are {n_hidden} hidden layers; "
            "give one dropout probability per hidden layer"
        )


class MLP(nn.Sequential):
    """``[Linear(bias) -> activation -> Dropout?]`` per hidden width, then ``Linear(d, out)``.

    Parameters
    ----------
    in_features, out_features: input and output widths.
    hidden: hidden widths (None: a single linear layer).
    dropout: one dropout probability per hidden layer (None: no dropout).
    activation: module, class or name (see :func:`resolve_activation`).
    bias: bias of the hidden layers; the final layer always has one (as in the reference).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] | None = None,
        dropout: Sequence[float] | None = None,
        activation: Any = nn.Sigmoid(),
        bias: bool = True,
    ) -> None:
        check_dropout(hidden, dropout, "MLP")
        act = resolve_activation(activation)
        layers: list[nn.Module] = []
        d = in_features
        for i, width in enumerate(hidden or []):
            block: list[nn.Module] = [nn.Linear(d, int(width), bias=bias), act]
            if dropout is not None:
                block.append(nn.Dropout(float(dropout[i])))
            layers.append(nn.Sequential(*block))
            d = int(width)
        layers.append(nn.Linear(d, out_features))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features
