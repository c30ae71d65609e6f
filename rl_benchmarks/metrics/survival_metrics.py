"""Survival metric: Harrell's concordance index (lifelines)."""

from __future__ import annotations

import numpy as np
from lifelines.utils import concordance_index


def compute_cindex(labels: np.ndarray, logits: np.ndarray) -> float:
    """Harrell's C-index of risk scores ``logits`` for signed times ``labels`` (> 0 event,
    < 0 censored): ``concordance_index(|y|, -logits, y > 0)``.

    Returns 0.5 when lifelines raises an AssertionError (as the reference) and NaN when no
    pair is comparable (lifelines' ZeroDivisionError, which the reference let through) or
    when a risk score is NaN (a diverged model). A NaN label is an error.
    """
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"compute_cindex: {y.shape[0]} labels for {x.shape[0]} risk scores")
    if np.isnan(y).any():
        raise ValueError("compute_cindex: NaN survival label; labels are signed times")
    if np.isnan(x).any():
        return float("nan")
    try:
        return float(concordance_index(np.abs(y), -x, event_observed=(y > 0).astype(int)))
    except AssertionError:
        return 0.5
    except ZeroDivisionError:
        return float("nan")
