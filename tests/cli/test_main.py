"""The rlbench dispatcher: help, unknown commands, one-line input errors, reference scripts."""

from __future__ import annotations

from rl_benchmarks.cli.main import COMMANDS, main, run_reference_script


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_command_help_shows_keys_and_defaults(capsys):
    assert main(["tile", "--help"]) == 0
    out = capsys.readouterr().out
    assert "min_tissue: 0.6" in out and "target_mpp: 0.5" in out


def test_unknown_command_and_bad_input_are_one_line_errors(capsys, tmp_path):
    assert main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err
    code = main(["extract-slides", f"slides={tmp_path / 'missing'}", f"output_dir={tmp_path}",
                 "feature_extractor.pretrained=false"])
    err = capsys.readouterr().err
    assert code == 2 and "missing" in err and "Traceback" not in err


def test_reference_scripts_accept_config_name_config(capsys):
    assert run_reference_script("cv", ["--config-name", "config", "model=abmil", "--help"]) == 0
    out = capsys.readouterr().out
    assert "ABMIL" in out and "n_splits_outer: 5" in out
    assert run_reference_script("cv", ["--config-name=other"]) == 2
    assert "unknown config 'other'" in capsys.readouterr().err


def _fake_main(monkeypatch, command, behaviour):
    import importlib

    module = importlib.import_module(COMMANDS[command].module)
    monkeypatch.setattr(module, "main", behaviour)


def test_exit_codes_of_the_dispatcher(monkeypatch, capsys):
    """docs/cli.md's table: 130 on Ctrl-C, 2 (one line + RLB_DEBUG hint) for a user error
    escaping a command, the command's own code otherwise, a traceback for anything else."""
    import pytest

    def interrupted(cfg):
        raise KeyboardInterrupt

    def missing(cfg):
        raise FileNotFoundError("/x/features.npy does not exist")

    def bug(cfg):
        raise ZeroDivisionError("division by zero")

    _fake_main(monkeypatch, "results", interrupted)
    assert main(["results"]) == 130
    assert capsys.readouterr().err.strip() == "rlbench: interrupted"
    _fake_main(monkeypatch, "results", missing)
    assert main(["results"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "rlbench results: error: /x/features.npy does not exist",
        "(set RLB_DEBUG=1 to see the traceback)"]
    _fake_main(monkeypatch, "results", lambda cfg: 1)
    assert main(["results"]) == 1
    _fake_main(monkeypatch, "results", bug)
    with pytest.raises(ZeroDivisionError):  # Python prints the traceback and exits 1
        main(["results"])


def test_docs_exit_code_table_names_every_command():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    table = text.split("## Exit codes", 1)[1]
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 130 |"):
        assert code in table
    missing = [name for name in COMMANDS if f"**{name}**" not in table
               and f"`{name}`" not in table and f" {name}," not in table]
    assert missing == []
