"""k-nearest-neighbour probe of tile features (k=20, cosine similarity, majority vote).

A second probe beside the linear one: it needs no training, so it shows how well the
raw embedding space separates the classes. The features are L2-normalised (cosine
similarity = dot product of unit vectors) and the ``k`` most similar training tiles
vote with equal weight; a tie goes to the smallest label, as in scikit-learn's
``KNeighborsClassifier(n_neighbors=k, metric="cosine")``.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def l2_normalize(features: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm, as a new float32 array (all-zero rows stay zero)."""
    x = np.array(features, dtype=np.float32, copy=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.maximum(norms, eps)
    return x


def knn_predict(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    eval_features: np.ndarray,
    k: int = 20,
    n_classes: int | None = None,
    normalized: bool = False,
    batch_size: int = 1024,
) -> np.ndarray:
    """Majority-vote labels of the ``k`` nearest training tiles by cosine similarity.

    ``normalized=True`` says both feature matrices already have unit rows (saves a copy).
    ``k`` larger than the training set is lowered to its size, with a warning.
    """
    import torch

    train_labels = np.asarray(train_labels, dtype=np.int64)
    if len(train_features) != len(train_labels):
        raise ValueError(
            f"kNN: {len(train_features)} training feature rows but {len(train_labels)} labels"
        )
    if len(train_labels) == 0:
        raise ValueError("kNN: empty training set")
    if train_features.shape[1] != eval_features.shape[1]:
        raise ValueError(
            f"kNN: training features have {train_features.shape[1]} dimensions, "
            f"evaluation features {eval_features.shape[1]}"
        )
    if k < 1:
        raise ValueError(f"kNN: k must be >= 1, got {k}")
    if k > len(train_labels):
        logger.warning("kNN: k=%d > %d training tiles; using k=%d", k, len(train_labels),
                       len(train_labels))
        k = len(train_labels)
    n_classes = int(n_classes or train_labels.max() + 1)
    if not normalized:
        train_features = l2_normalize(train_features)
        eval_features = l2_normalize(eval_features)
    train_t = torch.from_numpy(np.ascontiguousarray(train_features, dtype=np.float32))
    labels_t = torch.from_numpy(train_labels)
    out = np.empty(len(eval_features), dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, len(eval_features), batch_size):
            block = np.ascontiguousarray(eval_features[start:start + batch_size], dtype=np.float32)
            sims = torch.from_numpy(block) @ train_t.T
            nearest = sims.topk(k, dim=1).indices
            votes = torch.zeros(len(block), n_classes, dtype=torch.int64)
            votes.scatter_add_(1, labels_t[nearest], torch.ones_like(nearest))
            # argmax returns the first maximum: ties go to the smallest label
            out[start:start + len(block)] = votes.argmax(dim=1).numpy()
    return out


def knn_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    eval_features: np.ndarray,
    eval_labels: np.ndarray,
    k: int = 20,
    n_classes: int | None = None,
    normalized: bool = False,
) -> dict[str, float]:
    """kNN accuracy and balanced accuracy: ``{"knn_acc": ..., "knn_bacc": ...}``."""
    from rl_benchmarks.metrics.tile_metrics import balanced_accuracy_metric

    eval_labels = np.asarray(eval_labels, dtype=np.int64)
    n_classes = int(n_classes or max(np.max(train_labels), np.max(eval_labels)) + 1)
    pred = knn_predict(train_features, train_labels, eval_features, k=k,
                       n_classes=n_classes, normalized=normalized)
    onehot = np.eye(n_classes)[pred]
    return {
        "knn_acc": float(np.mean(pred == eval_labels)),
        "knn_bacc": balanced_accuracy_metric(eval_labels, onehot),
    }
