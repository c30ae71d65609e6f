"""Sweep progress (counts, ETA, exit code, summary) and benchmark suites (loading, errors,
expansion)."""

from __future__ import annotations

import threading

import pytest

from rl_benchmarks.paths import CONF_ROOT
from rl_benchmarks.sweeps.progress import (
    ProgressLog,
    ProgressState,
    SweepOutcome,
    exit_code,
    format_seconds,
    read_events,
    summary_lines,
)
from rl_benchmarks.sweeps.suite import PAPER_MODELS, expand, load_suite

SUITES = CONF_ROOT / "benchmark" / "suites"
CV = CONF_ROOT / "slide_level_task" / "cross_validation"


def _events(spec):
    """(job, event, status, seconds) tuples -> progress events."""
    return [{"job": j, "event": e, "status": s, "seconds": t} for j, e, s, t in spec]


def test_state_counts_and_eta():
    events = _events([(0, "start", None, 0), (1, "start", None, 0), (0, "end", "done", 10.0),
                      (2, "start", None, 0), (1, "end", "skipped", 0.1),
                      (2, "end", "failed", 30.0), (3, "start", None, 0)])
    state = ProgressState.of(events, total=8, parallel=2)
    assert (state.done, state.skipped, state.failed, state.running, state.waiting) == (1, 1, 1, 1, 4)
    # mean run time of the jobs that ran (skipped excluded) x ceil(5 left / 2 at once)
    assert state.eta_s == pytest.approx((10.0 + 30.0) / 2 * 3)
    assert state.line() == ("3/8 finished (1 done, 1 skipped, 1 failed), 1 running, 4 waiting, "
                            "ETA 1m00s")
    assert ProgressState.of(_events([(0, "start", None, 0)]), total=2).eta_s is None
    assert ProgressState.of(events[:0], total=0).eta_s == 0.0


def test_progress_file_is_shared_by_concurrent_writers(tmp_path):
    log = ProgressLog(str(tmp_path / "p.jsonl"), "L1", total=40, parallel=4)
    other = ProgressLog(str(tmp_path / "p.jsonl"), "L0", total=1)
    other.end(SweepOutcome(0, [], "failed"))  # an earlier launch into the same folder

    def job(i):
        log.start(i, [f"seed={i}"])
        log.end(SweepOutcome(i, [f"seed={i}"], "done", seconds=1.0))

    threads = [threading.Thread(target=job, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_events(tmp_path / "p.jsonl", "L1")) == 80
    state = log.state()
    assert (state.done, state.failed, state.running, state.eta_s) == (40, 0, 0, 0.0)


def test_exit_code_and_summary():
    ok = SweepOutcome(0, ["model=abmil"], "done")
    skipped = SweepOutcome(1, ["model=chowder"], "skipped")
    bad = SweepOutcome(2, ["model=dsmil"], "failed", code=2, cause="x must be positive")
    crashed = SweepOutcome(3, ["model=trans_mil"], "failed", code=1, cause="RuntimeError: boom")
    assert exit_code([ok, skipped]) == 0
    assert exit_code([ok, crashed]) == 1 and exit_code([ok, crashed, bad]) == 2
    lines = summary_lines([ok, skipped, bad, crashed], 75.0, name="sweep")
    assert lines[0] == ("sweep: 4 experiments in 1m15s: 1 done, 1 skipped (already completed), "
                        "2 failed")
    assert lines[1:] == ["  failed #2 [model=dsmil]: x must be positive",
                         "  failed #3 [model=trans_mil]: RuntimeError: boom"]
    assert format_seconds(4000) == "1h06m40s" and format_seconds(5) == "5s"


def test_phikon_paper_suite_is_the_papers_grid():
    suite = load_suite("phikon_paper", SUITES)
    assert len(suite.tasks) == 14 == len(set(suite.tasks))
    tasks = {p.stem for p in (CV / "task").glob("*.yaml")}
    assert set(suite.tasks) == tasks - {"test_ncv"}
    assert sorted(suite.models) == sorted(PAPER_MODELS)
    assert all((CV / "model" / f"{m}.yaml").is_file() for m in suite.models)
    experiments = expand(suite, ["iBOTViTBasePANCAN", "ResNet50"], common=["device=cpu"])
    assert len(experiments) == 14 * 6 * 2
    hipt = [e for e in experiments if e.model == "hipt_mil"]
    assert all("task.validation_scheme.trainer_cfg.batch_size=1" in e.overrides for e in hipt)
    resnet = [e for e in experiments if e.extractor == "ResNet50"]
    assert all("task.validation_scheme.trainer_cfg.num_epochs=100" in e.overrides for e in resnet)
    assert all(e.overrides[-1] == "device=cpu" for e in experiments)
    assert "task.data.feature_extractor='ResNet50'" in resnet[0].overrides


def test_suite_files_cohorts_and_errors(tmp_path):
    (tmp_path / "a.csv").write_text("slide_id,label\n")
    path = tmp_path / "mine.yaml"
    path.write_text("tasks: [a.csv, tcga_crc_msi_prediction]\nmodels: [abmil]\n")
    suite = load_suite(str(path), SUITES)
    assert suite.tasks == [str(tmp_path / "a.csv"), "tcga_crc_msi_prediction"]
    exps = expand(suite, ["X"], features_root_dir=str(tmp_path / "f"))
    assert f"features_root_dir='{tmp_path / 'f' / 'X'}'" in exps[0].overrides  # CSV: per extractor
    assert f"features_root_dir='{tmp_path / 'f'}'" in exps[1].overrides  # reference: the root
    cohorts = load_suite([str(tmp_path / "a.csv")], SUITES)
    assert cohorts.tasks == [str(tmp_path / "a.csv")] and cohorts.models == list(PAPER_MODELS)

    with pytest.raises(ValueError, match="suite=nope: no such suite; shipped suites: "
                                         "phikon_paper, tiny"):
        load_suite("nope", SUITES)
    path.write_text("tasks: [a.csv]\nmodel: [abmil]\n")
    with pytest.raises(ValueError, match=r"mine.yaml: unknown suite key\(s\) model"):
        load_suite(str(path), SUITES)
    path.write_text("models: [abmil]\n")
    with pytest.raises(ValueError, match="mine.yaml: the suite lists no tasks"):
        load_suite(str(path), SUITES)
    with pytest.raises(FileNotFoundError, match="no_such.csv: no such file"):
        load_suite([str(tmp_path / "no_such.csv")], SUITES)
