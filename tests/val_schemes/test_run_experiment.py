"""The experiment as a domain object: ``run_experiment`` (what ``rlbench cv`` runs) returns
its folder, whether it skipped, and the summary it wrote; ``collect_results`` reads it back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from testlib.cohorts import shifted_binary_cohort

from rl_benchmarks.val_schemes.experiment import ExperimentFolder

D = 6


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

    csv, logs = shifted_binary_cohort(tmp_path, dim=D), tmp_path / "logs"
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


def test_feature_extractor_key_is_an_alias_that_does_not_change_the_name():
    """``cv feature_extractor=X`` (the sweep-friendly key) is ``task.data.feature_extractor=X``."""
    from rl_benchmarks.cli.main import compose_checked
    from rl_benchmarks.utils.cross_validation import params2experiment_name
    from rl_benchmarks.val_schemes.run_experiment import prepare_config

    short = prepare_config(compose_checked("cv", ["feature_extractor=ResNet50"]))
    long = prepare_config(compose_checked("cv", ["task.data.feature_extractor=ResNet50"]))
    assert short.task.data.feature_extractor == "ResNet50" and "feature_extractor" not in short
    assert params2experiment_name(short) == params2experiment_name(long)
    default = prepare_config(compose_checked("cv", []))
    assert params2experiment_name(default) != params2experiment_name(long)
