"""`rlbench cv` and `rlbench results` end to end on a tiny generated cohort (CSV)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lifelines.utils import concordance_index
from sklearn.metrics import roc_auc_score
from testlib.cohorts import SMALL, D, write_cohort

from rl_benchmarks.cli.main import main as rlbench
from rl_benchmarks.val_schemes.experiment import ExperimentFolder

ROOT = Path(__file__).resolve().parents[2]
def _tool(name: str):
    path = ROOT / "tools" / "slide_level_tasks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cv_end_to_end_then_results(tmp_path, capsys):
    csv = write_cohort(tmp_path)
    logs = tmp_path / "logs"
    args = ["--config-name", "config", f"task={csv}", "model=mean_pool",
            f"logs_root_dir={logs}", *SMALL]
    assert _tool("cross_validation").main(args) == 0
    runs = list((logs / "cross_validation").iterdir())
    assert len(runs) == 1
    run = runs[0]
    for name in ("status.json", "params.json", "train_metrics.json", "test_metrics.json",
                 f"{run.name}.log", "selected_params.json", "summary.json"):
        assert (run / name).is_file(), name
    assert not list(run.rglob("*.pkl")) and not (run / ".lock").exists()
    assert json.loads((run / "status.json").read_text()) == {"completed": True}
    test_metrics = ExperimentFolder(run).read_metrics("test")
    assert set(test_metrics) >= {"auc", "accuracy"}
    assert set(test_metrics["auc"]) == {"repeat_1_split_1", "repeat_1_split_2"}

    # predictions: every slide once, and the AUC recomputed from them equals the metric
    preds = pd.concat(pd.read_csv(p) for p in sorted((run / "predictions").glob("*.csv")))
    cohort = pd.read_csv(csv)
    assert sorted(preds["slide_id"]) == sorted(cohort["slide_id"])
    assert list(preds.columns) == ["fold", "slide_id", "patient_id", "label", "score"]
    for fold, part in preds.groupby("fold"):
        assert test_metrics["auc"][fold][-1] == pytest.approx(
            roc_auc_score(part["label"], part["score"]))
        assert part["patient_id"].nunique() == len(set(part["patient_id"]))
    assert np.mean([v[-1] for v in test_metrics["auc"].values()]) > 0.9

    # selected hyper-parameters per outer fold; the fold models reload into MeanPool
    selected = json.loads((run / "selected_params.json").read_text())
    for fold, params in selected.items():
        assert params["learning_rate"] in (1e-3, 1e-4)
        assert params["weight_decay"] in (0.0, 1e-4)
        assert 1 <= params["num_epochs"] <= 3
        assert len(test_metrics["auc"][fold]) == params["num_epochs"]
        from rl_benchmarks.models import MeanPool

        model = MeanPool(D, 1)
        model.load_state_dict(torch.load(run / "models" / f"{fold}.pt"))

    # a completed experiment is skipped
    capsys.readouterr()
    assert _tool("cross_validation").main(args) == 0
    assert "already completed" in capsys.readouterr().out

    # results: the reference's columns, then the selected hyper-parameters
    assert _tool("get_results").main([f"logs_root_dir={logs}"]) == 0
    table = pd.read_csv(logs / "cross_validation" / "nested_cross_validation_results.csv")
    assert list(table.columns[:21]) == [
        "model", "features", "n_tiles", "cohort", "label", "gs_params", "n_repeats", "n_splits",
        "stratified", "split_mode", "batch_size", "num_epochs", "learning_rate", "weight_decay",
        "mean_auc", "mean_accuracy", "mean_cindex", "std_auc", "std_accuracy", "std_cindex",
        "log_path"]
    row = table.iloc[0]
    last = [v[-1] for v in test_metrics["auc"].values()]
    assert row["model"] == "MeanPool" and row["n_splits"] == "2x2"
    assert row["mean_auc"] == pytest.approx(np.mean(last))
    assert row["std_auc"] == pytest.approx(np.std(last))
    assert np.isnan(row["mean_cindex"])
    assert row["selected_num_epochs"] == ";".join(
        str(selected[k]["num_epochs"]) for k in sorted(selected))


def test_cv_survival_plain_path_chowder(tmp_path):
    csv = write_cohort(tmp_path, survival=True, seed=1)
    logs = tmp_path / "logs"
    from rl_benchmarks.cli.cross_validation import preprocess_overrides

    args = preprocess_overrides([f"task={csv}", "model=chowder", "model.n_top=2",
                                 "model.n_bottom=2", f"logs_root_dir={logs}", "fast=false",
                                 *SMALL])
    assert rlbench(["cv", *args]) == 0
    (run,) = list((logs / "cross_validation").iterdir())
    test_metrics = ExperimentFolder(run).read_metrics("test")
    assert set(test_metrics) == {"cindex", "loss"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["fast_path"] is False  # asked for the plain path
    preds = pd.concat(pd.read_csv(p) for p in sorted((run / "predictions").glob("*.csv")))
    assert {"time", "event", "score"} <= set(preds.columns)
    for fold, part in preds.groupby("fold"):
        expected = concordance_index(part["time"], -part["score"], part["event"])
        assert test_metrics["cindex"][fold][-1] == pytest.approx(expected)


def test_train_test_fold_ensemble(tmp_path):
    """test_cohort: scores = mean of the fold models' logits, recomputed here in numpy."""
    train_dir, test_dir = tmp_path / "train", tmp_path / "test"
    train_dir.mkdir()
    test_dir.mkdir()
    train_csv = write_cohort(train_dir, seed=2)
    test_csv = write_cohort(test_dir, n_patients=12, seed=3)
    logs = tmp_path / "logs"
    from rl_benchmarks.cli.cross_validation import preprocess_overrides

    args = preprocess_overrides([f"task={train_csv}", f"test_cohort={test_csv}", "preset=tutorial",
                                 "model=mean_pool", f"logs_root_dir={logs}", "device=cpu",
                                 "task.validation_scheme.n_splits_outer=3", "n_bootstrap=50"])
    from rl_benchmarks.cli.main import compose
    from rl_benchmarks.val_schemes.run_experiment import prepare_config, run_experiment

    cfg = prepare_config(compose("cv", args))
    vs = cfg.task.validation_scheme
    assert (vs.n_splits_outer, vs.n_splits_inner, vs.trainer_cfg.num_epochs) == (3, 0, 15)
    assert vs.trainer_cfg.model.n_top == 5 and vs.trainer_cfg.learning_rate == 1e-3
    # the preset brings the tutorial's Chowder; MeanPool's logits can be recomputed by hand
    cfg.model = {"_target_": "rl_benchmarks.models.MeanPool"}
    vs.trainer_cfg.num_epochs, vs.trainer_cfg.learning_rate = 5, 1e-2
    result = run_experiment(cfg)
    run_dir = result.folder
    assert not result.skipped
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_cohort"]["n_slides"] == result.summary["test_cohort"]["n_slides"]
    preds = pd.read_csv(run_dir / "test_predictions.csv")
    cohort = pd.read_csv(test_csv)
    assert sorted(preds["slide_id"]) == sorted(cohort["slide_id"])
    folds = sorted((run_dir / "models").glob("*.pt"))
    assert len(folds) == 3 == summary["test_cohort"]["n_models"]
    for _, row in preds.iterrows():
        x = np.load(test_dir / f"{row['slide_id']}.npy")[:, 3:].astype(np.float64)
        logits = []
        for f in folds:
            state = torch.load(f)
            w = next(v for k, v in state.items() if k.endswith("weight")).double().numpy()
            b = next(v for k, v in state.items() if k.endswith("bias")).double().numpy()
            logits.append(x.mean(0) @ w[0] + b[0])
        assert row["score"] == pytest.approx(np.mean(logits), abs=1e-4)
    t = summary["test_cohort"]
    assert t["value"] == pytest.approx(roc_auc_score(preds["label"], preds["score"]))
    assert t["ci_low"] <= t["value"] <= t["ci_high"]
    assert t["value"] > 0.9


def test_tutorial_chowder_has_23170_parameters():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from rl_benchmarks.cli.main import CONF_ROOT

    folder = CONF_ROOT / "slide_level_task/cross_validation"
    for cfg in (OmegaConf.load(folder / "preset/tutorial.yaml").model,
                OmegaConf.load(folder / "model/chowder_tutorial.yaml")):
        model = instantiate(cfg, in_features=768, out_features=1)
        assert sum(p.numel() for p in model.parameters()) == 23170


def test_cv_bad_cohort_is_one_clear_line(tmp_path, capsys):
    csv = write_cohort(tmp_path, n_patients=3)
    from rl_benchmarks.cli.cross_validation import preprocess_overrides

    args = preprocess_overrides([f"task={csv}", f"logs_root_dir={tmp_path / 'logs'}", *SMALL,
                                 "task.validation_scheme.n_splits_outer=5"])
    assert rlbench(["cv", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rlbench cv: error:")
    assert "n_splits=5" in err[-1]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
