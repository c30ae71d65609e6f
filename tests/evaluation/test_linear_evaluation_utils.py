"""rl_benchmarks.utils.linear_evaluation: bootstrap, metrics, label removal, dataset build."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from rl_benchmarks.utils.linear_evaluation import (
    basic_interval,
    bootstrap,
    build_datasets,
    dict_to_dataframe,
    get_binary_class_metrics,
    get_bootstrapped_metrics,
    remove_labels,
    resample_indices,
    result_columns,
)


def _scores(n: int, k: int, seed: int = 0, round_to: int | None = None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    s = rng.random((n, k)) + 0.6 * np.eye(k)[y]
    if round_to is not None:  # creates ties
        s = np.round(s, round_to)
    s = s / s.sum(axis=1, keepdims=True)
    return y, s


@pytest.mark.parametrize("k,round_to", [(2, None), (2, 1), (4, None), (4, 1)])
def test_fast_bootstrap_equals_sklearn_per_resample(k, round_to):
    y, s = _scores(150, k, seed=k, round_to=round_to)
    fast = get_bootstrapped_metrics(y, s, n_resamples=60, seed=7, method="fast")
    slow = get_bootstrapped_metrics(y, s, n_resamples=60, seed=7, method="sklearn")
    assert fast.keys() == slow.keys()
    for key in fast:
        assert fast[key] == pytest.approx(slow[key], abs=1e-12), key


@pytest.mark.parametrize("k", [2, 5])
def test_point_estimates_equal_direct_sklearn(k):
    y, s = _scores(300, k, seed=11)
    pred = s.argmax(axis=1)
    out = get_bootstrapped_metrics(y, s, n_resamples=0)
    if k == 2:
        auc, f1 = roc_auc_score(y, s[:, 1]), f1_score(y, pred)
    else:
        auc = roc_auc_score(y, s, average="macro", multi_class="ovr")
        f1 = f1_score(y, pred, average="macro")
    assert out["auc"] == pytest.approx(auc, abs=1e-12)
    assert out["acc"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert out["f1"] == pytest.approx(f1, abs=1e-12)
    assert out["bacc"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert np.isnan(out["bt_auc_low"]) and np.isnan(out["bt_auc_high"])


def test_basic_interval_is_reverse_percentile():
    y, s = _scores(200, 3, seed=3)
    pred = s.argmax(axis=1)
    theta = accuracy_score(y, pred)
    stats = np.array([accuracy_score(y[i], pred[i]) for i in resample_indices(len(y), 200, seed=5)])
    q_low, q_high = np.quantile(stats, [0.05, 0.95])
    out = get_bootstrapped_metrics(y, s, 200, confidence_level=0.9, seed=5, metrics=["acc"])
    assert out["acc"] == pytest.approx(theta)
    assert out["bt_acc_low"] == pytest.approx(2 * theta - q_high)
    assert out["bt_acc_high"] == pytest.approx(2 * theta - q_low)


def test_ci_brackets_point_estimate_and_widens_with_confidence():
    y, s = _scores(400, 4, seed=21)
    narrow = get_bootstrapped_metrics(y, s, 300, confidence_level=0.8, seed=1)
    wide = get_bootstrapped_metrics(y, s, 300, confidence_level=0.99, seed=1)
    for m in ("auc", "acc", "f1", "bacc"):
        assert narrow[f"bt_{m}_low"] < narrow[m] < narrow[f"bt_{m}_high"], m
        assert wide[f"bt_{m}_low"] < narrow[f"bt_{m}_low"], m
        assert wide[f"bt_{m}_high"] > narrow[f"bt_{m}_high"], m


def test_generic_bootstrap_skips_undefined_resamples():
    # 1 positive in 30: many resamples hold no positive and the AUC is undefined there
    y = np.zeros(30, dtype=int)
    y[0] = 1
    score = np.linspace(0, 1, 30)[::-1]
    theta, low, high = bootstrap(y, score, roc_auc_score, n_resamples=100, seed=0)
    assert theta == 1.0
    assert np.isfinite(low) and np.isfinite(high)
    assert basic_interval(0.5, np.array([0.4, np.nan]), 0.9) == pytest.approx((0.6, 0.6))
    assert all(np.isnan(basic_interval(0.5, np.array([np.nan]))))


def test_binary_class_metrics_equal_sklearn():
    y, s = _scores(120, 3, seed=4)
    names = ["A", "B", "C"]
    out = get_binary_class_metrics(y, s, names)
    pred = s.argmax(axis=1)
    assert list(out) == [f"{c}_{m}" for c in "ABC" for m in ("auc", "acc", "f1")]
    for k, name in enumerate(names):
        assert out[f"{name}_auc"] == pytest.approx(roc_auc_score(y == k, s[:, k]))
        assert out[f"{name}_acc"] == pytest.approx(accuracy_score(y == k, pred == k))
        assert out[f"{name}_f1"] == pytest.approx(f1_score(y == k, pred == k))
    with pytest.raises(ValueError, match="class names"):
        get_binary_class_metrics(y, s, ["A", "B"])


def test_absent_class_gives_nan_auc_not_a_crash():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.tile([0.5, 0.3, 0.2], (6, 1))
    s[y == 1] = [0.2, 0.6, 0.2]
    out = get_binary_class_metrics(y, s, ["a", "b", "c"])
    assert np.isnan(out["c_auc"]) and out["c_acc"] == 1.0
    # macro AUC over the classes present, as documented
    assert get_bootstrapped_metrics(y, s, 0)["auc"] == pytest.approx(1.0)


def test_remove_labels_drops_and_relabels():
    labels = np.arange(9).repeat(2)  # NCT-CRC codes: ADI 0, BACK 1, ..., TUM 8
    feats = np.arange(18, dtype=np.float32)[:, None] * np.ones((1, 3), dtype=np.float32)
    X, y = remove_labels(feats, labels, 1)
    assert len(X) == 16 and not np.any(X[:, 0] == 2) and not np.any(X[:, 0] == 3)
    np.testing.assert_array_equal(y, np.arange(8).repeat(2))
    np.testing.assert_array_equal(X[:, 0], np.r_[0, 1, np.arange(4, 18)])
    X2, y2 = remove_labels(feats, labels, [4, 1])
    np.testing.assert_array_equal(np.unique(y2), np.arange(7))
    # old 5 -> 3 (two removed labels below it), old 8 -> 6
    assert set(y2[labels[~np.isin(labels, [1, 4])] == 5]) == {3}
    assert set(y2[labels[~np.isin(labels, [1, 4])] == 8]) == {6}


def test_build_datasets_matches_by_image_id():
    feats = np.arange(10, dtype=np.float32).reshape(5, 2)
    ids = np.array(["a", "b", "c", "d", "e"], dtype=object)
    train = pd.DataFrame({"image_id": ["e", "a", "c"], "label": [1, 0, 1]})
    valid = pd.DataFrame({"label": [0]}, index=pd.Index(["d"], name="image_id"))
    (Xt, yt), (Xv, yv) = build_datasets(feats, ids, [train, valid], source="feats/tile_ids.npy")
    np.testing.assert_array_equal(Xt, feats[[4, 0, 2]])
    np.testing.assert_array_equal(yt, [1, 0, 1])
    np.testing.assert_array_equal(Xv, feats[[3]])
    with pytest.raises(ValueError,
                       match=r"feats/tile_ids.npy: 1 of 2 tiles have no features.*'zz'"):
        build_datasets(feats, ids, [pd.DataFrame({"image_id": ["a", "zz"], "label": [0, 1]})],
                       source="feats/tile_ids.npy")
    with pytest.raises(ValueError, match="duplicate tile ids"):
        build_datasets(feats, np.array(["a", "a", "c", "d", "e"]), [train])


def test_result_columns_and_dict_to_dataframe():
    cols = result_columns(["Normal", "Tumor"])
    assert cols == [
        "portion", "Normal_auc", "Normal_acc", "Normal_f1", "Tumor_auc", "Tumor_acc", "Tumor_f1",
        "auc", "acc", "f1", "bt_auc_low", "bt_auc_high", "bt_acc_low", "bt_acc_high",
        "bt_f1_low", "bt_f1_high",
    ]
    frame = dict_to_dataframe({0.1: {"auc": 0.7, "acc": 0.6}, 1.0: {"acc": 0.8, "auc": 0.9}},
                              columns=["auc", "acc"])
    assert list(frame.columns) == ["portion", "auc", "acc"]
    assert frame.loc[1, "auc"] == 0.9 and frame.loc[0, "portion"] == 0.1


def test_bad_inputs_are_named():
    y, s = _scores(20, 3)
    with pytest.raises(ValueError, match="confidence_level"):
        get_bootstrapped_metrics(y, s, 10, confidence_level=95)
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        get_bootstrapped_metrics(y + 1, s, 10)
    with pytest.raises(ValueError, match="unknown bootstrap metrics"):
        get_bootstrapped_metrics(y, s, 10, metrics=["mcc"])
