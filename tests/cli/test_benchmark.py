"""``rlbench benchmark``: a suite's tasks × models × extractors as one cv sweep, then the
results table of those experiments."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from testlib.cohorts import write_cohort

from rl_benchmarks.cli.benchmark import preprocess_overrides
from rl_benchmarks.cli.main import compose_checked
from rl_benchmarks.cli.main import main as rlbench

FAST = ["task.validation_scheme.trainer_cfg.num_epochs=2",
        "task.validation_scheme.grid_search_params.learning_rate=[1.0e-3]",
        "task.validation_scheme.grid_search_params.weight_decay=[0.0]", "device=cpu"]


def test_command_line_is_sorted_into_benchmark_cv_and_sweep_keys():
    out = preprocess_overrides(["-m", "suite=tiny", "feature_extractor=a,b", "device=cpu",
                                "task.data.n_tiles=10", "hydra/launcher=joblib",
                                "hydra.launcher.n_jobs=2"])
    assert out == ["suite=tiny", "feature_extractor=[a,b]",
                   "cv=['device=cpu','task.data.n_tiles=10']",
                   "sweep=['hydra/launcher=joblib','hydra.launcher.n_jobs=2']"]
    cfg = compose_checked("benchmark", out)
    assert list(cfg.feature_extractor) == ["a", "b"] and list(cfg.sweep)[0] == "hydra/launcher=joblib"


def _per_extractor_features(tmp_path: Path, name: str, survival: bool) -> Path:
    """A cohort CSV without features_path, its features under feats/<extractor>/<slide>/
    (two extractors: A, and B = A with noise)."""
    folder = tmp_path / name
    folder.mkdir()
    csv = write_cohort(folder, survival=survival)
    frame = pd.read_csv(csv)
    rng = np.random.default_rng(0)
    for row in frame.itertuples():
        x = np.load(folder / row.features_path)
        for extractor, noise in (("A", 0.0), ("B", 1.0)):
            out = tmp_path / "feats" / extractor / row.slide_id
            out.mkdir(parents=True, exist_ok=True)
            y = x.copy()
            y[:, 3:] += noise * rng.normal(size=y[:, 3:].shape)
            np.save(out / "features.npy", y.astype(np.float32))
    frame.drop(columns=["features_path"]).to_csv(csv, index=False)
    return csv


def test_bad_names_are_one_line_errors_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert rlbench(["benchmark", "suite=tiny", "models=[abmil,nope]", "logs_root_dir=logs"]) == 2
    assert "model 'nope': no such cv model; options: abmil" in capsys.readouterr().err
    assert rlbench(["benchmark", "suite=tiny", "logs_root_dir=logs", "task.nope=1"]) == 2
    assert "unknown key 'task.nope'" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists() and not (tmp_path / "multirun").exists()


def test_dry_run_lists_the_grid(tmp_path, capsys):
    csv = write_cohort(tmp_path)
    assert rlbench(["benchmark", f"suite={csv}", "feature_extractor=A,B", "models=[abmil]",
                    f"logs_root_dir={tmp_path}", "dry_run=true"]) == 0
    out = capsys.readouterr().out
    assert "rlbench benchmark: 2 experiments (dry run, nothing launched)" in out
    assert "task.data.feature_extractor='B'" in out
    assert not (tmp_path / "cross_validation").exists()


@pytest.mark.slow
def test_benchmark_two_tasks_two_extractors_then_table(tmp_path, monkeypatch):
    """2 CSV tasks × 1 model × 2 extractors = 4 experiments through the joblib launcher,
    each reading its extractor's features; the table holds their 4 rows."""
    monkeypatch.chdir(tmp_path)
    c1 = _per_extractor_features(tmp_path, "c1", survival=False)
    c2 = _per_extractor_features(tmp_path, "c2", survival=True)
    suite = tmp_path / "suite.yaml"
    shutil.copy(Path(__file__).resolve().parents[2] / "rl_benchmarks" / "conf" / "benchmark"
                / "suites" / "tiny.yaml", suite)
    code = rlbench(["benchmark", f"suite={suite}", f"tasks=[{c1},{c2}]", "models=[mean_pool]",
                    "feature_extractor=A,B", f"features_root_dir={tmp_path / 'feats'}",
                    "logs_root_dir=logs", "hydra.sweep.dir=sweep", "hydra/launcher=joblib",
                    "hydra.launcher.n_jobs=2", *FAST])
    assert code == 0
    table = pd.read_csv(tmp_path / "logs" / "cross_validation" / "benchmark_tiny.csv")
    assert len(table) == 4
    assert sorted(table["features"]) == ["A", "A", "B", "B"]
    assert table.groupby("cohort")["features_identity"].nunique().tolist() == [2, 2]
    summary = json.loads((tmp_path / "sweep" / "sweep_summary.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == ["done"] * 4
    # the paper-style table: 2 task rows, the model under both extractors, every cell filled
    paper = pd.read_csv(tmp_path / "logs" / "benchmark" / "tiny" / "benchmark_table.csv")
    assert len(paper) == 2
    cells = pd.read_csv(tmp_path / "logs" / "benchmark" / "tiny" / "benchmark_cells.csv")
    assert len(cells) == 4 and cells["n_folds"].gt(0).all()

    # again: every experiment skipped, the same table
    assert rlbench(["benchmark", f"suite={suite}", f"tasks=[{c1},{c2}]", "models=[mean_pool]",
                    "feature_extractor=A,B", f"features_root_dir={tmp_path / 'feats'}",
                    "logs_root_dir=logs", "hydra.sweep.dir=sweep2", *FAST]) == 0
    again = json.loads((tmp_path / "sweep2" / "sweep_summary.json").read_text())
    assert [j["status"] for j in again["jobs"]] == ["skipped"] * 4
    assert len(pd.read_csv(tmp_path / "logs" / "cross_validation" / "benchmark_tiny.csv")) == 4
