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
