"""Numpy activations used by the metrics (reference: ``rl_benchmarks.utils.functional``).

The reference's ``softmax`` normalised over the whole array; here it is per row (the last
axis), which is what every caller means.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit
from scipy.special import softmax as _scipy_softmax


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Element-wise logistic function, stable for large |x|."""
    return expit(np.asarray(x, dtype=np.float64))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis`` (default: the last one, i.e. per row of a (n, C) array).

    Each row of the result sums to 1; the maximum is subtracted first for stability.
    """
    return _scipy_softmax(np.asarray(x, dtype=np.float64), axis=axis)


def is_functorch_tensor(x: Any) -> bool:
    """True when ``x`` is wrapped by a ``torch.func`` transform (vmap, grad).

    Data-dependent checks (``bool(tensor)``) are impossible there, so the losses and
    layers skip their input validation and warnings for such tensors.
    """
    try:
        import torch

        return bool(torch._C._functorch.is_functorch_wrapped_tensor(x))
    except (AttributeError, ImportError, TypeError, RuntimeError):  # pragma: no cover
        return False
