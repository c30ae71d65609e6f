"""``rlbench <command> -m ...``: Hydra multirun through its launchers, with each job composed
and checked as a single run, failures recorded, finished experiments skipped on re-runs."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from testlib.cohorts import SMALL, write_cohort

from rl_benchmarks.cli.main import main as rlbench
from rl_benchmarks.cli.multirun import expand, rename_path_groups, wants_app
from rl_benchmarks.sweeps.progress import read_events
from rl_benchmarks.val_schemes.results import collect_results

ROOT = Path(__file__).resolve().parents[2]
# one grid point and 2 epochs: a few seconds per experiment
FAST = [*SMALL, "task.validation_scheme.trainer_cfg.num_epochs=2",
        "task.validation_scheme.grid_search_params.learning_rate=[1.0e-3]",
        "task.validation_scheme.grid_search_params.weight_decay=[0.0]"]


def _cohorts(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "c1").mkdir()
    (tmp_path / "c2").mkdir()
    return write_cohort(tmp_path / "c1"), write_cohort(tmp_path / "c2", survival=True, seed=1)


def _status(logs: Path) -> dict[str, float]:
    """Experiment folder -> mtime of its status.json (completed runs only)."""
    out = {}
    for run in (logs / "cross_validation").iterdir():
        status = run / "status.json"
        if status.is_file() and json.loads(status.read_text()).get("completed"):
            out[run.name] = status.stat().st_mtime_ns
    return out


def _summary(sweep: Path) -> dict:
    return json.loads((sweep / "sweep_summary.json").read_text())


def test_flags_and_expansion():
    assert wants_app(["-m", "a=1"]) and wants_app(["--cfg", "job"]) and wants_app(["--info"])
    assert not wants_app(["a=1", "model=abmil"])
    jobs = expand(["model=abmil,chowder", "seed=range(2)", "device=cpu", "hydra.sweep.dir=x"])
    assert sorted(map(tuple, jobs)) == sorted(
        (f"model={m}", f"seed={s}", "device=cpu") for m in ("abmil", "chowder") for s in (0, 1))
    renamed = rename_path_groups("cv", ["task=/d/a.csv,tcga_crc_msi_prediction", "model=abmil"])
    assert renamed == ["+rlbench_sweep.task=/d/a.csv,tcga_crc_msi_prediction", "model=abmil"]
    assert rename_path_groups("cv", ["task=tcga_crc_msi_prediction"]) == [
        "task=tcga_crc_msi_prediction"]


@pytest.mark.slow
def test_basic_launcher_two_tasks_two_models_then_rerun_skips(tmp_path, monkeypatch, capsys):
    """4 experiment folders and 4 results rows; jobs keep the working directory (relative
    paths); a re-run skips every finished experiment without touching it."""
    monkeypatch.chdir(tmp_path)
    csv1, csv2 = _cohorts(tmp_path)
    args = ["cv", "-m", f"task={csv1},{csv2}", "model=mean_pool,chowder", "logs_root_dir=logs",
            "hydra.sweep.dir=sweep", *FAST]
    assert rlbench(args) == 0
    assert Path.cwd() == tmp_path  # nothing changed directory
    first = _status(tmp_path / "logs")
    assert len(first) == 4
    table = collect_results(tmp_path / "logs")
    assert len(table) == 4 and set(table["model"]) == {"MeanPool", "Chowder"}
    assert set(table["cohort"]) == {str(csv1), str(csv2)}
    assert table[["mean_auc", "mean_cindex"]].notna().any(axis=1).all()  # every cell filled
    summary = _summary(tmp_path / "sweep")
    assert [j["status"] for j in summary["jobs"]] == ["done"] * 4 and summary["exit_code"] == 0
    assert all((tmp_path / "sweep" / str(i) / "cv.log").is_file() for i in range(4))
    out = capsys.readouterr().out
    assert "4/4 finished (4 done, 0 skipped, 0 failed), 0 running, 0 waiting, ETA 0s" in out
    assert "4 experiments in" in out

    assert rlbench([*args[:-len(FAST)], "hydra.sweep.dir=sweep2", *FAST]) == 0
    assert _status(tmp_path / "logs") == first  # same folders, untouched
    assert [j["status"] for j in _summary(tmp_path / "sweep2")["jobs"]] == ["skipped"] * 4


@pytest.mark.slow
def test_interrupted_sweep_reruns_only_the_rest(tmp_path, monkeypatch):
    """A sweep that ran part of its experiments (as a killed one has), run again in full,
    finishes the rest and leaves the finished ones untouched (file modification times)."""
    monkeypatch.chdir(tmp_path)
    csv1, csv2 = _cohorts(tmp_path)
    common = ["logs_root_dir=logs", *FAST]
    assert rlbench(["cv", "-m", f"task={csv1}", "model=mean_pool,chowder",
                    "hydra.sweep.dir=part", *common]) == 0
    before = _status(tmp_path / "logs")
    assert len(before) == 2
    assert rlbench(["cv", "-m", f"task={csv1},{csv2}", "model=mean_pool,chowder",
                    "hydra.sweep.dir=full", *common]) == 0
    after = _status(tmp_path / "logs")
    assert len(after) == 4
    assert {k: after[k] for k in before} == before
    statuses = sorted(j["status"] for j in _summary(tmp_path / "full")["jobs"])
    assert statuses == ["done", "done", "skipped", "skipped"]


@pytest.mark.slow
def test_failed_job_is_listed_and_others_go_on(tmp_path, monkeypatch, capsys):
    """A job with a bad value fails with the single run's one-line cause; the next job runs;
    the sweep's exit code is that of the failure (2: bad input)."""
    monkeypatch.chdir(tmp_path)
    csv1, _ = _cohorts(tmp_path)
    small = [o for o in FAST if "n_splits_outer" not in o]
    code = rlbench(["cv", "-m", f"task={csv1}", "model=mean_pool", "logs_root_dir=logs",
                    "task.validation_scheme.n_splits_outer=1,2", "hydra.sweep.dir=sweep",
                    *small])
    assert code == 2
    jobs = _summary(tmp_path / "sweep")["jobs"]
    assert [j["status"] for j in jobs] == ["failed", "done"]
    assert jobs[0]["cause"] == ("task.validation_scheme.n_splits_outer must be an integer >= 2, "
                                "got 1")
    out = capsys.readouterr().out
    assert "1 done, 0 skipped (already completed), 1 failed" in out
    assert "failed #0 [" in out and "n_splits_outer must be an integer >= 2, got 1" in out
    assert len(_status(tmp_path / "logs")) == 1


def test_bad_sweep_is_one_line_before_any_job(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert rlbench(["cv", "-m", "model=mean_pool,nonexistent", "hydra.sweep.dir=sweep"]) == 2
    err = capsys.readouterr().err
    assert "model=nonexistent: no such option; options: abmil" in err
    assert len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "sweep" / "sweep_progress.jsonl").exists()
    assert rlbench(["cv", "-m", "model=abmil", "hydra/launcher=slurm", "hydra.sweep.dir=s"]) == 2
    assert capsys.readouterr().err.strip() == (
        "rlbench cv: error: In 'hydra/config': Could not find 'hydra/launcher/slurm' Available "
        "options in 'hydra/launcher': basic joblib submitit_local submitit_slurm")


def test_cfg_job_and_info(capsys, tmp_path):
    csv1, _ = _cohorts(tmp_path)
    assert rlbench(["cv", "--cfg", "job", "model=abmil", f"task={csv1}"]) == 0
    out = capsys.readouterr().out
    assert "rl_benchmarks.models.ABMIL" in out and str(csv1) in out and "hydra:" not in out
    assert rlbench(["cv", "--info", "defaults", "model=chowder"]) == 0
    out = capsys.readouterr().out
    assert "model/chowder" in out and "hydra/launcher/basic" in out
    assert rlbench(["cv", "--cfg", "hydra", "hydra/launcher=joblib"]) == 0
    assert "JoblibLauncher" in capsys.readouterr().out


@pytest.mark.slow
def test_reference_tool_script_takes_multirun(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    csv1, csv2 = _cohorts(tmp_path)
    path = ROOT / "tools" / "slide_level_tasks" / "cross_validation.py"
    spec = importlib.util.spec_from_file_location("tool_cv_multirun", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--config-name", "config", "-m", f"task={csv1},{csv2}", "model=mean_pool",
                      "logs_root_dir=logs", "hydra.sweep.dir=sweep", *FAST]) == 0
    assert len(_status(tmp_path / "logs")) == 2


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_worker_processes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    csv1, csv2 = _cohorts(tmp_path)
    assert rlbench(["cv", "-m", f"task={csv1},{csv2}", "model=mean_pool,chowder",
                    "logs_root_dir=logs", "hydra.sweep.dir=sweep", "hydra/launcher=joblib",
                    "hydra.launcher.n_jobs=2", *FAST]) == 0
    assert len(_status(tmp_path / "logs")) == 4
    assert len(collect_results(tmp_path / "logs")) == 4
    starts = [e for e in read_events(tmp_path / "sweep" / "sweep_progress.jsonl")
              if e["event"] == "start"]
    assert len(starts) == 4
    assert (tmp_path / "sweep" / "multirun.yaml").is_file()
    cfg = (tmp_path / "sweep" / "multirun.yaml").read_text()
    assert "JoblibLauncher" in cfg and "n_jobs: 2" in cfg


def _table(logs: Path) -> pd.DataFrame:
    return collect_results(logs).sort_values(["cohort", "model"]).reset_index(drop=True)


@pytest.mark.slow
def test_submitit_local_launcher_end_to_end(tmp_path, monkeypatch):
    """submitit's local executor: each job in its own real subprocess, results collected."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    csv1, _ = _cohorts(tmp_path)
    assert rlbench(["cv", "-m", f"task={csv1}", "model=mean_pool,chowder", "logs_root_dir=logs",
                    "hydra.sweep.dir=sweep", "hydra/launcher=submitit_local",
                    "hydra.launcher.timeout_min=10", *FAST]) == 0
    assert len(_status(tmp_path / "logs")) == 2
    pids = {e["pid"] for e in read_events(tmp_path / "sweep" / "sweep_progress.jsonl")
            if e["event"] == "start"}
    assert len(pids) == 2 and os.getpid() not in pids
    assert list((tmp_path / "sweep" / ".submitit").rglob("*_result.pkl"))
    assert len(_table(tmp_path / "logs")) == 2


@pytest.mark.slow
def test_killed_sweep_then_rerun_finishes_the_rest(tmp_path):
    """A real ``rlbench cv -m`` process killed (SIGKILL) once its first experiment is
    complete; the same command again skips the finished ones (untouched) and runs the rest."""
    import signal
    import subprocess
    import sys
    import time

    csv1, csv2 = _cohorts(tmp_path)
    cmd = [sys.executable, "-m", "rl_benchmarks", "cv", "-m", f"task={csv1},{csv2}",
           "model=mean_pool,chowder", "logs_root_dir=logs", *FAST]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([*cmd, "hydra.sweep.dir=first"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (tmp_path / "logs" / "cross_validation").is_dir() and _status(tmp_path / "logs"):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _status(tmp_path / "logs")
    assert 1 <= len(before) < 4, "the sweep was not killed mid-run"

    done = subprocess.run([*cmd, "hydra.sweep.dir=second"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _status(tmp_path / "logs")
    assert len(after) == 4
    assert {k: after[k] for k in before} == before  # finished experiments not redone
    statuses = [j["status"] for j in _summary(tmp_path / "second")["jobs"]]
    assert statuses.count("skipped") == len(before) and statuses.count("done") == 4 - len(before)
