"""A quiet console (issue Q item 2): one header line, the progress bar, the summary; the full
config in the run folder's ``config.yaml`` and on screen only with ``verbose=true``."""

from __future__ import annotations

import logging

import yaml
from testlib.cohorts import SMALL, write_cohort

from rl_benchmarks.cli.console import header, quiet_logging, save_config
from rl_benchmarks.cli.cross_validation import preprocess_overrides
from rl_benchmarks.cli.main import main as rlbench


def test_quiet_logging_shows_warnings_only_unless_verbose(capsys):
    log = logging.getLogger("rl_benchmarks.some.module")
    quiet_logging(False)
    log.info("an info record")
    log.warning("a warning record")
    err = capsys.readouterr().err.splitlines()
    assert err == ["WARNING rl_benchmarks.some.module: a warning record"]
    quiet_logging(True)
    quiet_logging(True)  # idempotent: still one line per record
    log.info("now shown")
    assert capsys.readouterr().err.splitlines() == ["INFO rl_benchmarks.some.module: now shown"]
    quiet_logging(False)
    log.info("hidden again")
    assert capsys.readouterr().err == ""


def test_header_and_config_file(tmp_path, capsys):
    from omegaconf import OmegaConf

    assert header("tile", "tiles of x", tmp_path) == f"rlbench tile: tiles of x -> {tmp_path}"
    cfg = OmegaConf.create({"a": 1, "b": {"c": "${a}"}})
    path = save_config(cfg, tmp_path / "run")
    assert yaml.safe_load(path.read_text()) == {"a": 1, "b": {"c": 1}}  # resolved
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # the header only: not verbose
    save_config(cfg, tmp_path / "run", verbose=True)
    assert "c: 1" in capsys.readouterr().out


def _cv(csv, logs, *extra):
    return rlbench(["cv", *preprocess_overrides([f"task={csv}", "model=mean_pool", f"logs_root_dir={logs}",
                                                 *SMALL, *extra])])


def test_cv_prints_a_header_a_bar_and_a_short_summary(tmp_path, capsys):
    csv = write_cohort(tmp_path)
    logs = tmp_path / "logs"
    assert _cv(csv, logs) == 0
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0] == f"rlbench cv: cohort · MeanPool (2 x 2 nested folds) -> {logs / 'cross_validation'}"
    assert out[1].startswith("rlbench cv: done in ") and len(out) == 4, out
    assert out[3].startswith("  test auc: ") and "outer folds" in out[3]
    assert "INFO" not in captured.err and "task:" not in captured.err  # no config dump, no records
    # the progress bar: one line on screen, redrawn with \r (str.splitlines would split at \r)
    assert len(captured.err.rstrip("\n").split("\n")) <= 1
    (run,) = (logs / "cross_validation").glob("*/")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["task"]["data"]["train"]["cohort"] == str(csv.resolve())
    assert "verbose" not in config  # a console setting, not part of the run
    # the same run again with verbose=true is the same experiment (skipped), named the same
    assert _cv(csv, logs, "verbose=true") == 0
    assert f"already completed, skipped: {run}" in capsys.readouterr().out


def test_cv_verbose_prints_the_config_and_the_records(tmp_path, capsys):
    csv = write_cohort(tmp_path)
    assert _cv(csv, tmp_path / "logs", "verbose=true") == 0
    captured = capsys.readouterr()
    assert "--- config (" in captured.out and "validation_scheme:" in captured.out
    assert "repeat_1_split_1: lr=" in captured.out  # the per-fold selections
    assert "INFO rl_benchmarks.cv: " in captured.err
