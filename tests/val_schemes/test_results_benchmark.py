"""`rlbench results` on real tiny experiments: two cohorts that share a file name (in two
folders) × two models give four filled cells with distinct names, and no absolute path
reaches a table or a figure file name (report.html included)."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from testlib.cohorts import shifted_binary_cohort
from testlib.html import TableText

D = 6


def _cv(csv, logs, model: str, extra=()):
    from rl_benchmarks.cli.main import run

    assert run("cv", [f"task={csv}", f"model={model}", f"logs_root_dir={logs}", "device=cpu",
                      "task.validation_scheme.n_splits_outer=2", "task.validation_scheme.n_splits_inner=2",
                      "task.validation_scheme.trainer_cfg.num_epochs=1",
                      "task.validation_scheme.trainer_cfg.batch_size=2",
                      "task.validation_scheme.grid_search_params.learning_rate=[1e-2]",
                      "task.validation_scheme.grid_search_params.weight_decay=[0.0]", *extra]) == 0


@pytest.mark.slow
def test_results_table_names_and_report(tmp_path, capsys):
    from rl_benchmarks.cli.main import run
    from rl_benchmarks.reports.report import build_report

    logs = tmp_path / "logs"
    csvs = [shifted_binary_cohort(tmp_path / "site_a", 0, 12, D), shifted_binary_cohort(tmp_path / "site_b", 1, 12, D)]
    for csv in csvs:
        for model in ("mean_pool", "abmil"):
            _cv(csv, logs, model)
    capsys.readouterr()
    assert run("results", [f"logs_root_dir={logs}", "compare=MeanPool,ABMIL"]) == 0
    out = capsys.readouterr().out
    assert "4 filled cell(s), 2 task(s)" in out and "Wilcoxon" in out

    table = pd.read_csv(logs / "benchmark" / "benchmark_table.csv")
    tasks = list(table["task"])
    assert len(tasks) == 2 and len(set(tasks)) == 2  # same stem, two folders: two names
    assert all(re.fullmatch(r"cohort \[[0-9a-f]{6}\]", t) for t in tasks), tasks
    cells = table.drop(columns=["task", "metric"])
    assert cells.shape == (2, 2)
    assert cells.map(lambda v: bool(re.fullmatch(r"\d\.\d{3} ± \d\.\d{3} \(n=2\)", v))).all().all()
    results = pd.read_csv(logs / "cross_validation" / "nested_cross_validation_results.csv")
    assert set(results["task"]) == {"cohort"}  # the raw task name; the cohort column keeps the path
    assert set(results["cohort"]) == {str(c.resolve()) for c in csvs}

    # task_name= names the task (and does not re-run the experiment)
    _cv(csvs[0], logs, "mean_pool", ["task_name=CRC site A"])
    assert "already completed" in capsys.readouterr().out

    rep = build_report(logs)
    page = rep.path.read_text()
    assert 'id="benchmark-table"' in page and "benchmark.png" in page
    parser = TableText()
    parser.feed(page)
    in_tables = " ".join(parser.text)
    assert "cohort [" in in_tables
    for absolute in (str(tmp_path), str(tmp_path.resolve())):
        assert absolute not in in_tables
    names = [p.name for p in logs.rglob("*.png")]
    assert len(names) >= 5  # 4 ROC figures + the benchmark figure
    assert len(set(rep.experiments)) == 4
    for name in names:
        assert "site_" not in name and "tmp" not in name and len(name) < 100, name
    assert len({p.name for p in rep.figures}) == 4


def test_task_name_key_names_the_task_without_renaming_the_run():
    """``task_name`` is a display name: it is not hashed into the experiment's folder name."""
    from omegaconf import OmegaConf

    from rl_benchmarks.utils.cross_validation import params2experiment_name
    from rl_benchmarks.val_schemes.experiment import experiment_label, task_name

    cfg = OmegaConf.create({"task_name": "CRC", "seed": 0, "task": {"data": {"train": {
        "cohort": "/abs/path/cohort.csv", "label": None}}, "validation_scheme": {"trainer_cfg": {
            "model": {"_target_": "rl_benchmarks.models.ABMIL"}}}}})
    plain = cfg.copy()
    plain.pop("task_name")
    assert params2experiment_name(cfg) == params2experiment_name(plain)
    container = OmegaConf.to_container(cfg)
    assert task_name(container) == "CRC"
    container["task_name"] = None
    assert task_name(container) == "cohort"
    assert experiment_label(container, {"extractor": "phikon"}) == "cohort · ABMIL · phikon"
    container["task"]["data"]["train"] = {"cohort": "TCGA_CRC", "label": "MSI"}
    assert task_name(container) == "tcga_crc_msi_prediction"


def test_experiment_folds_statuses(tmp_path):
    """Completed, completed with fewer outer folds than planned, running (a live lock) and
    unfinished (a killed run) are told apart, each with its reason."""
    from rl_benchmarks.extraction import locks
    from rl_benchmarks.val_schemes.experiment import experiment_folder
    from rl_benchmarks.val_schemes.results import collect_folds

    def run(name: str, n_values: int, completed: bool = True):
        exp = experiment_folder(tmp_path, name)
        exp.reset()
        exp.write_params({"task": {"data": {"train": {"cohort": "/x/c.csv", "label": None}},
                                   "validation_scheme": {"n_splits_outer": 5, "n_repeats_outer": 1,
                                                         "trainer_cfg": {"model": {"_target_": "m.ABMIL"}}}}},
                         {"features": {"extractor": name}})
        if completed:
            exp.write_metrics("test", {"loss": {"f": [1.0]},
                                       "auc": {f"repeat_1_split_{k}": [0.7] for k in range(1, n_values + 1)}})
            exp.write_status(True)
        return exp

    run("done", 5)
    run("partial", 3)
    held = run("busy", 0, completed=False)
    assert locks.try_lock(held.path / ".lock") is None  # held by this (live) process
    run("killed", 0, completed=False)
    try:
        got = {r.experiment: r for r in collect_folds(tmp_path)}
    finally:
        locks.release(held.path / ".lock")
    assert got["done"].status == "completed" and got["done"].metric == "auc"
    assert len(got["done"].folds) == 5 and got["done"].label == "c · ABMIL · done"
    assert (got["partial"].status, got["partial"].reason) == ("incomplete", "3 of 5 outer folds")
    assert got["busy"].status == "running" and got["busy"].reason.startswith("running (pid")
    assert got["killed"].status == "unfinished" and "not completed" in got["killed"].reason
