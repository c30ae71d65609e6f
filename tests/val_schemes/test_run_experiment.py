"""The experiment as a domain object: ``run_experiment`` (what ``rlbench cv`` runs) returns
its folder, whether it skipped, and the summary it wrote; ``collect_results`` reads it back."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rl_benchmarks.val_schemes.experiment import ExperimentFolder

D = 6


def _cohort(folder, n_patients: int = 16):
    """A binary CSV cohort whose positive slides have shifted tiles."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_patients):
        y = p % 2
        x = rng.normal(size=(6, D)).astype(np.float32)
        x[:3, 0] += 3.0 * y
        coords = np.stack([np.full(6, 12), np.arange(6), np.zeros(6)], 1)
        np.save(folder / f"s{p}.npy", np.concatenate([coords, x], 1).astype(np.float32))
        rows.append({"slide_id": f"s{p}", "features_path": f"s{p}.npy", "patient_id": f"P{p}",
                     "label": ["neg", "pos"][y]})
    path = folder / "cohort.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _cfg(csv, logs):
    from rl_benchmarks.cli.cross_validation import preprocess_overrides
    from rl_benchmarks.cli.main import compose

    return compose("cv", preprocess_overrides([
        f"task={csv}", "model=mean_pool", f"logs_root_dir={logs}", "device=cpu",
        "task.validation_scheme.n_splits_outer=2", "task.validation_scheme.n_splits_inner=2",
        "task.validation_scheme.trainer_cfg.num_epochs=2",
        "task.validation_scheme.trainer_cfg.batch_size=2",
        "task.validation_scheme.grid_search_params.learning_rate=[1e-2]",
        "task.validation_scheme.grid_search_params.weight_decay=[0.0]",
    ]))


def test_run_experiment_returns_what_it_wrote_then_skips(tmp_path, capsys):
    from rl_benchmarks.val_schemes.results import COLUMNS, EXTRA_COLUMNS, collect_results
    from rl_benchmarks.val_schemes.run_experiment import ExperimentResult, run_experiment

    csv, logs = _cohort(tmp_path), tmp_path / "logs"
    first = run_experiment(_cfg(csv, logs))
    assert isinstance(first, ExperimentResult) and not first.skipped
    assert first.folder.parent == logs / "cross_validation"
    assert capsys.readouterr().out == ""  # printing belongs to the command
    exp = ExperimentFolder(first.folder)
    assert exp.is_completed()
    written = json.loads((first.folder / "summary.json").read_text())
    assert written["experiment"] == first.folder.name == first.summary["experiment"]
    # the summary's test AUC: mean/std over outer folds of the last epoch, recomputed here
    last = [v[-1] for v in exp.read_metrics("test")["auc"].values()]
    assert len(last) == 2
    assert first.summary["test"]["auc"]["mean"] == pytest.approx(np.mean(last))
    assert first.summary["test"]["auc"]["std"] == pytest.approx(np.std(last))
    assert written["test"]["auc"]["folds"] == pytest.approx(last)

    again = run_experiment(_cfg(csv, logs))
    assert again.skipped and again.folder == first.folder
    assert again.summary == written

    table = collect_results(logs)
    assert list(table.columns) == COLUMNS + EXTRA_COLUMNS and len(table) == 1
    row = table.iloc[0]
    assert row["experiment"] == first.folder.name and row["model"] == "MeanPool"
    assert row["mean_auc"] == pytest.approx(np.mean(last))
    assert row["selected_learning_rate"] == "0.01;0.01"


def test_collect_results_skips_incomplete_runs(tmp_path):
    from rl_benchmarks.val_schemes.experiment import experiment_folder
    from rl_benchmarks.val_schemes.results import collect_results

    exp = experiment_folder(tmp_path, "unfinished")
    exp.reset()  # a started run: status "not completed"
    assert collect_results(tmp_path).empty
