"""Predictions readers, ROC / Kaplan–Meier figures and the results table."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from rl_benchmarks.reports.plots import (
    fold_metrics,
    kaplan_meier,
    results_from_predictions,
    results_table,
    risk_groups,
    roc_curves,
)
from rl_benchmarks.utils.io import write_csv
from rl_benchmarks.val_schemes.predictions import PredictionsError, load_predictions

from ._data import binary_predictions, survival_predictions, write_per_fold


def _png_ok(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_both_layouts_read_the_same(tmp_path):
    frame = binary_predictions()
    write_per_fold(frame, tmp_path / "per_fold")
    write_csv(tmp_path / "one" / "predictions.csv", frame, index=False)
    a = load_predictions(tmp_path / "per_fold")
    b = load_predictions(tmp_path / "one" / "predictions.csv")
    assert a.attrs["task"] == b.attrs["task"] == "binary"
    key = ["repeat", "fold", "slide_id"]
    cols = ["repeat", "fold", "slide_id", "patient_id", "label", "score"]
    pd.testing.assert_frame_equal(
        a[cols].sort_values(key).reset_index(drop=True),
        b[cols].sort_values(key).reset_index(drop=True),
        check_dtype=False,
    )
    assert sorted(a["fold"].unique()) == [0, 1, 2, 3, 4]


def test_bad_predictions_name_file_and_cause(tmp_path):
    bad = binary_predictions().assign(label=2)
    write_csv(tmp_path / "a" / "predictions.csv", bad, index=False)
    with pytest.raises(PredictionsError, match=r"a/predictions.csv.*'label' must be 0 or 1"):
        load_predictions(tmp_path / "a")
    surv = survival_predictions()
    surv.loc[3, "time"] = 0
    write_csv(tmp_path / "b" / "predictions.csv", surv, index=False)
    with pytest.raises(PredictionsError, match=r"b/predictions.csv.*'time' must be > 0"):
        load_predictions(tmp_path / "b")
    write_csv(tmp_path / "c" / "predictions.csv", binary_predictions().drop(columns="score"),
              index=False)
    with pytest.raises(PredictionsError, match="needs 'score'"):
        load_predictions(tmp_path / "c")
    with pytest.raises(PredictionsError, match="no such predictions file"):
        load_predictions(tmp_path / "empty_dir_does_not_exist")


def test_roc_fold_aucs_match_sklearn(tmp_path):
    frame = binary_predictions(n=80, n_folds=4, seed=3)
    summary = roc_curves(frame, tmp_path / "roc.png", title="ABMIL")
    expected = {
        f"0/{k}": roc_auc_score(g["label"], g["score"]) for k, g in frame.groupby("fold")
    }
    assert summary.fold_auc.keys() == expected.keys()
    for k, v in expected.items():
        assert summary.fold_auc[k] == pytest.approx(v, abs=1e-12)
    assert summary.mean_auc == pytest.approx(np.mean(list(expected.values())))
    assert summary.std_auc == pytest.approx(np.std(list(expected.values())))
    w, h = _png_ok(summary.path)
    assert w > 300 and h > 300


def test_multiclass_fold_metric_is_mean_one_vs_rest(tmp_path):
    rng = np.random.default_rng(0)
    n = 90
    label = np.arange(n) % 3
    logits = rng.normal(0, 1, (n, 3)) + 1.5 * np.eye(3)[label]
    frame = pd.DataFrame({"slide_id": [f"s{i}" for i in range(n)], "fold": (np.arange(n) // 3) % 3,
                          "label": label, **{f"score_{c}": logits[:, c] for c in range(3)}})
    m = fold_metrics(frame)
    for (_, row), (k, g) in zip(m.iterrows(), frame.groupby("fold")):
        assert row["fold"] == k
        lg = g[[f"score_{c}" for c in range(3)]].to_numpy()
        want = np.mean([roc_auc_score(g["label"] == c, lg[:, c]) for c in range(3)])
        assert row["value"] == pytest.approx(want)
    _png_ok(roc_curves(frame, tmp_path / "mc.png").path)


def _harrell(time, event, risk) -> float:
    """Brute-force Harrell's c-index: ties in risk count one half; an event and a censoring
    at the same time form a pair (the event is taken to come first)."""
    num = den = 0.0
    for i, j in itertools.permutations(range(len(time)), 2):
        if event[i] and (time[i] < time[j] or (time[i] == time[j] and not event[j])):
            den += 1
            num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return num / den


def test_cindex_per_fold_matches_brute_force():
    frame = survival_predictions(n=32, n_folds=2, seed=5)
    m = fold_metrics(frame)
    assert list(m["metric"]) == ["cindex", "cindex"]
    for (_, row), (_, g) in zip(m.iterrows(), frame.groupby("fold")):
        want = _harrell(g["time"].to_numpy(), g["event"].to_numpy(), g["risk"].to_numpy())
        assert row["value"] == pytest.approx(want)


def test_km_groups_come_from_the_predictions_file(tmp_path):
    from lifelines.statistics import logrank_test

    frame = survival_predictions(n=40, n_folds=4, seed=2)
    # One patient with two slides: its risk is the mean of its slides' risks.
    frame.loc[1, "patient_id"] = frame.loc[5, "patient_id"]
    frame.loc[1, ["time", "event", "fold"]] = frame.loc[5, ["time", "event", "fold"]].to_numpy()
    write_csv(tmp_path / "surv" / "predictions.csv", frame, index=False)

    summary = kaplan_meier(tmp_path / "surv", tmp_path / "km.png")
    # Independent expectation: per-patient mean risk, then the median split inside each fold.
    per_pat = frame.groupby("patient_id").agg(risk=("risk", "mean"), fold=("fold", "first"),
                                              time=("time", "first"), event=("event", "first"))

    def expected_high(risk: pd.Series) -> set:
        out = set()
        for _, idx in per_pat.groupby("fold").groups.items():
            r = risk[idx]
            out |= set(r.index[r > np.median(r)])
        return out

    high = expected_high(per_pat["risk"])
    got = summary.groups.set_index("patient_id")["group"]
    assert set(got.index) == set(per_pat.index)
    assert set(got.index[got == "high"]) == high
    assert summary.n_high == len(high) and summary.n_low == len(per_pat) - len(high)
    hi = per_pat.index.isin(sorted(high))
    want = logrank_test(per_pat["time"][~hi], per_pat["time"][hi],
                        event_observed_A=per_pat["event"][~hi],
                        event_observed_B=per_pat["event"][hi])
    assert summary.p_value == pytest.approx(want.p_value)
    _png_ok(summary.path)

    # Flip the predicted risks in the file: the groups follow the file.
    frame["risk"] = -frame["risk"]
    write_csv(tmp_path / "surv" / "predictions.csv", frame, index=False)
    flipped = risk_groups(tmp_path / "surv").set_index("patient_id")["group"]
    assert set(flipped.index[flipped == "high"]) == expected_high(-per_pat["risk"])
    assert len(high & set(flipped.index[flipped == "high"])) == 0


def test_km_rejects_classification_predictions(tmp_path):
    with pytest.raises(PredictionsError, match="survival predictions"):
        kaplan_meier(binary_predictions(), tmp_path / "km.png")


def test_results_table_formats_mean_and_std(tmp_path):
    csv = tmp_path / "nested_cross_validation_results.csv"
    write_csv(csv, pd.DataFrame({
        "model": ["ABMIL", "Chowder"], "features": ["iBOTViTBasePANCAN"] * 2,
        "cohort": ["TCGA_COAD"] * 2,
        "label": ["MSI"] * 2, "mean_auc": [0.81234, 0.7], "std_auc": [0.0345, np.nan],
        "mean_cindex": [np.nan, np.nan], "std_cindex": [np.nan, np.nan], "log_path": ["x", "y"],
    }), index=False)
    table = results_table(csv)
    assert list(table.columns) == ["model", "features", "cohort", "label", "auc"]
    assert table["auc"].tolist() == ["0.812 ± 0.035", "0.700"]

    computed = results_from_predictions({"abmil": binary_predictions(),
                                         "cox": survival_predictions()})
    shown = results_table(computed)
    assert {"experiment", "task", "auc", "cindex"} <= set(shown.columns)
    auc = fold_metrics(binary_predictions())["value"]
    assert shown.loc[0, "auc"] == f"{auc.mean():.3f} ± {auc.std(ddof=0):.3f}"


def test_rlbench_cv_layout_is_read(tmp_path):
    """``rlbench cv`` writes predictions/repeat_<r>_split_<s>.csv with a named fold column."""
    frame = binary_predictions()
    folder = tmp_path / "exp" / "predictions"
    for k, g in frame.groupby("fold"):
        name = f"repeat_1_split_{k + 1}"
        write_csv(folder / f"{name}.csv", g.assign(fold=name), index=False)
    got = load_predictions(folder)
    assert set(got["repeat"]) == {1} and sorted(got["fold"].unique()) == [1, 2, 3, 4, 5]
    assert got.loc[got["slide_id"] == "s007", "fold_name"].item() == "repeat_1_split_3"
    merged = got.merge(frame, on="slide_id", suffixes=("", "_orig"))
    assert (merged["fold"] == merged["fold_orig"] + 1).all()
    assert np.allclose(merged["score"], merged["score_orig"])


# ------------------------------------------------------------------------------------------
# The report's per-fold numbers are the run's: the same functions of rl_benchmarks.metrics,
# on predictions written by the run's own writer.


class _Cohort:
    """The few attributes of a slide dataset that the predictions writer reads."""

    def __init__(self, n: int, task: str) -> None:
        self.slide_id = np.array([f"s{i:03d}" for i in range(n)])
        self.patient_id = np.array([f"p{i:03d}" for i in range(n)])
        self.task = task

    def __len__(self) -> int:
        return len(self.slide_id)


def _written(task: str, folds: list[tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """One predictions table from per-fold (labels, logits) as the cv run has them."""
    from rl_benchmarks.val_schemes.experiment import predictions_frame

    n = sum(len(y) for y, _ in folds)
    cohort = _Cohort(n, task)
    parts, start = [], 0
    for k, (labels, logits) in enumerate(folds):
        idx = np.arange(start, start + len(labels))
        start += len(labels)
        parts.append(predictions_frame(cohort, idx, labels, logits, f"repeat_0_split_{k}"))
    return pd.concat(parts, ignore_index=True)


def _same(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or a == b


_SURVIVAL_FOLDS = [  # signed times: > 0 event, < 0 censored
    (np.array([-3.0, -5.0, -8.0, -2.0]), np.array([0.3, -1.0, 2.0, 0.1])),  # all censored
    (np.array([4.0, 4.0, -4.0, 6.0, 9.0]), np.array([1.0, 1.0, 1.0, 0.5, 0.5])),  # ties
    (np.array([7.0]), np.array([0.2])),  # no comparable pair
    (np.array([2.0, -6.0, 3.0, 10.0, -1.5]), np.array([2.0, 0.1, 1.5, -1.0, 0.0])),
]
_BINARY_FOLDS = [
    (np.array([1, 1, 1]), np.array([0.2, -0.5, 1.0])),  # a single class
    (np.array([0, 1, 0, 1, 1]), np.array([0.5, 0.5, -1.0, 2.0, 0.5])),  # tied scores
    (np.array([0, 1, 0, 1]), np.array([40.0, 50.0, 45.0, -3.0])),  # saturated logits
    (np.array([0, 1, 0, 1, 0]), np.array([-1.0, 0.7, 0.2, 0.1, -0.4])),
]
_MULTICLASS_FOLDS = [
    (np.array([2, 2, 2]), np.eye(3)[[2, 0, 1]]),  # a single class
    (np.array([0, 2, 0, 2]), np.array([[1.0, 0, 0], [0, 1, 2], [0, 0, 0], [1, 1, 1]])),  # no 1
    (np.array([0, 1, 2, 0, 1, 2]), np.ones((6, 3))),  # every score tied
]


@pytest.mark.parametrize("task,metric,folds", [
    ("survival", "cindex", _SURVIVAL_FOLDS),
    ("binary", "auc", _BINARY_FOLDS),
    ("multiclass", "auc", _MULTICLASS_FOLDS),
])
def test_report_numbers_equal_the_metrics_module_on_edge_cases(tmp_path, task, metric, folds):
    from rl_benchmarks import metrics

    fn = {"survival": metrics.compute_cindex, "binary": metrics.compute_binary_auc,
          "multiclass": metrics.compute_mean_one_vs_all_auc}[task]  # the task configs' metric
    run_values = [fn(labels, logits) for labels, logits in folds]  # what the cv run computes
    frame = _written(task, folds)
    got = fold_metrics(frame)
    assert list(got["metric"]) == [metric] * len(folds)
    for value, want in zip(got["value"], run_values):
        assert _same(value, want), (got, run_values)
    assert any(np.isnan(run_values)), "an edge case must leave the metric undefined"

    table = results_from_predictions({"run": frame})
    finite = [v for v in run_values if not np.isnan(v)]
    assert table.loc[0, f"mean_{metric}"] == pytest.approx(np.mean(finite), abs=1e-12)
    assert table.loc[0, f"std_{metric}"] == pytest.approx(np.std(finite), abs=1e-12)
    if task != "survival":
        summary = roc_curves(frame, tmp_path / "roc.png")
        assert all(_same(a, b) for a, b in zip(summary.fold_auc.values(), run_values))
        assert summary.mean_auc == pytest.approx(np.mean(finite), abs=1e-12)


def test_undefined_cindex_is_nan_not_one_half():
    """All-censored and single-slide folds have no comparable pair: NaN, as in the run."""
    from rl_benchmarks.metrics import compute_cindex

    frame = _written("survival", _SURVIVAL_FOLDS)
    values = fold_metrics(frame)["value"].to_numpy()
    assert np.isnan(values[0]) and np.isnan(values[2])
    labels, risk = _SURVIVAL_FOLDS[1]
    time, event = np.abs(labels), labels > 0
    assert values[1] == pytest.approx(_harrell(time, event, risk))
    assert values[1] == compute_cindex(labels, risk)


def test_saturated_logits_follow_the_run_not_the_raw_scores():
    """The run's binary AUC is that of sigmoid(logit): logits 40..50 all become 1.0 (tied)."""
    from rl_benchmarks.metrics import compute_binary_auc

    labels, logits = _BINARY_FOLDS[2]
    value = fold_metrics(_written("binary", [(labels, logits)]))["value"].item()
    assert value == compute_binary_auc(labels, logits)
    assert value != roc_auc_score(labels, logits)  # the raw logits rank 50 > 45 > 40
