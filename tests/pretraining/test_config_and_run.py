"""``make_config`` composes config.yaml through Hydra; ``run`` returns a PretrainResult;
``rlbench pretrain`` prints its summary."""

from __future__ import annotations

import copy

import pytest
import yaml
from testlib.pretrain import tiny_config

from rl_benchmarks.paths import CONF_ROOT
from rl_benchmarks.pretraining.train import (
    PretrainError,
    PretrainResult,
    config_overrides,
    hydra_value,
    make_config,
    run,
    train,
)


def _yaml_defaults() -> dict:
    with open(CONF_ROOT / "pretrain" / "config.yaml") as f:
        return yaml.safe_load(f)


def _merge(base: dict, over: dict) -> dict:
    """An independent nested merge (what the composed config must equal)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def test_defaults_are_the_yaml_file():
    assert make_config() == _yaml_defaults()


def test_cfg_then_overrides_merge_like_nested_dicts(tmp_path):
    cfg = tiny_config(tmp_path / "o", str(tmp_path / "imgs"))
    over = {"optim": {"lr": 1.5e-06, "epochs": 3}, "data": {"slides": [["a.svs", "a.npy"],
                                                                      "b.svs:b.npy"]},
            "precision": "bf16", "max_steps": None, "resume": False}
    expected = _merge(_merge(_yaml_defaults(), cfg), over)
    got = make_config(cfg, **over)
    assert got == expected
    assert isinstance(got["optim"]["lr"], float) and isinstance(got["optim"]["epochs"], int)


def test_dictconfig_input_is_accepted(tmp_path):
    from omegaconf import OmegaConf

    cfg = tiny_config(tmp_path / "o", "imgs")
    assert make_config(OmegaConf.create(cfg)) == make_config(cfg)


@pytest.mark.parametrize("text", [
    "plain", "/a b/c:d.npy", "it's", "back\\slash", "end\\", "${x}", "a\\${x}", "a=b,c",
    "[1,2]", "null", "", "1", "true", "\\'", "x\\\\'y", "uni é", 'dq"x', "{k: v}", "$x"])
def test_strings_compose_back_unchanged(text):
    """User strings are never re-read as numbers, lists, nulls or interpolations."""
    cfg = make_config(output_dir=text, data={"slides": [text, [text, "c"]]})
    assert cfg["output_dir"] == text and type(cfg["output_dir"]) is str
    assert cfg["data"]["slides"] == [text, [text, "c"]]


@pytest.mark.parametrize("value", [0, -3, 2.5, 1e-12, float("inf"), True, False, None])
def test_scalars_compose_back_unchanged(value):
    cfg = make_config(time_limit_min=value)
    assert cfg["time_limit_min"] == value and type(cfg["time_limit_min"]) is type(value)


def test_overrides_are_the_command_line(tmp_path):
    """``config_overrides`` gives the ``rlbench pretrain`` arguments of the same config."""
    from omegaconf import OmegaConf

    from rl_benchmarks.cli.main import compose

    cfg = tiny_config(tmp_path / "o", str(tmp_path / "img dir"), max_steps=2)
    args = config_overrides(cfg)
    assert "optim.batch_size_per_gpu=2" in args and "max_steps=2" in args
    assert OmegaConf.to_container(compose("pretrain", args)) == make_config(cfg)


def test_unknown_keys_and_groups_are_one_line_errors():
    with pytest.raises(PretrainError, match=r"unknown config key 'optim\.lrr' \(did you mean "
                                            r"optim\.lr"):
        make_config({"optim": {"lrr": 1}})
    with pytest.raises(PretrainError, match="unknown config key 'optm.lr'"):
        make_config(optm={"lr": 1})
    with pytest.raises(PretrainError, match="unknown config key 'learning_rate'"):
        make_config(learning_rate=1)
    with pytest.raises(PretrainError, match="'optim' is a group of keys"):
        make_config(optim=3)
    with pytest.raises(PretrainError, match="is not a number, string, list or mapping"):
        make_config(seed=object())
    for bad in ({"optim": {"lrr": 1}}, {"optim": 3}, {"seed": object()}):
        with pytest.raises(PretrainError) as err:
            make_config(bad)
        assert "\n" not in str(err.value)


def test_hydra_value_grammar():
    assert hydra_value(None) == "null" and hydra_value(True) == "true"
    assert hydra_value([1, "a", [None]]) == "[1,'a',[null]]"
    assert hydra_value("/x") == "'/x'" and hydra_value(1e-06) == "1e-06"
    assert hydra_value("???") == "???"  # Hydra's "missing" marker stays a marker


def test_run_result_and_train_summary(tmp_path, image_dir):
    result = run(tiny_config(tmp_path / "run", image_dir, max_steps=3))
    assert isinstance(result, PretrainResult) and result.is_main
    assert result.output_dir == tmp_path / "run"
    # 8 tiles / batch 2 = 4 steps per epoch; max_steps=3 of 2 epochs
    assert (result.steps_run, result.step, result.total_steps) == (3, 3, 8)
    assert result.epochs == pytest.approx(0.75)
    assert result.teacher_path == tmp_path / "run" / "teacher_backbone.pth"
    assert result.teacher_path.is_file() and result.seconds > 0 and result.tiles_per_s > 0
    import pandas as pd

    log = pd.read_csv(tmp_path / "run" / "train_log.csv")
    assert result.last_loss == pytest.approx(float(log["loss"].iloc[-1]))
    assert not result.resumed and not result.stopped_early
    summary = train(tiny_config(tmp_path / "run", image_dir, max_steps=4))  # resumes
    assert summary["resumed"] and summary["steps_run"] == 1 and summary["step"] == 4
    assert set(summary) == {"steps_run", "step", "total_steps", "epoch", "elapsed_s",
                            "tiles_per_s", "last_loss", "stopped_early", "resumed", "files"}
    assert summary["epoch"] == pytest.approx(1.0)
    assert summary["files"]["teacher_backbone"] == str(result.teacher_path)


def test_cli_prints_the_summary(tmp_path, image_dir, capsys):
    from rl_benchmarks.cli.main import main

    args = config_overrides(tiny_config(tmp_path / "cli", image_dir, max_steps=1,
                                        export={"teacher": False}))
    assert main(["pretrain", *args]) == 0
    err = capsys.readouterr().err
    assert "rlbench pretrain: ran 1 steps" in err and "now at step 1/8" in err
    assert f"  checkpoint: {tmp_path / 'cli' / 'checkpoint.pth'}" in err
    assert "teacher_backbone" not in err
