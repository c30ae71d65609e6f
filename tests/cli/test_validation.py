"""Every ``rlbench`` command checks types and ranges of its configuration before any work,
and answers a mistyped key or a bad override with one line (never Hydra's ``+key`` hint)."""

from __future__ import annotations

import importlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rl_benchmarks.cli import main as cli
from rl_benchmarks.cli.validation import (
    ConfigValueError,
    _device_ok,
    check_config,
    closest_keys,
    rule_for,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    """Run in an empty folder and make every command's ``main`` fail the test if called."""
    monkeypatch.chdir(tmp_path)
    called = []

    def spy(command):
        module = importlib.import_module(cli.COMMANDS[command].module)
        monkeypatch.setattr(module, "main", lambda cfg: called.append(cfg) or 0)
        return called

    return spy


def _run(capsys, argv):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# The cases, and a few more: (argv, the one line that must be printed).
BAD = [
    (["cv", "task.data.n_tiles=-5"],
     "rlbench cv: error: task.data.n_tiles must be a positive integer or null, got -5"),
    (["cv", "task.data.n_tiles=0"],
     "rlbench cv: error: task.data.n_tiles must be a positive integer or null, got 0"),
    (["extract-slides", "n_tiles=abc"],
     "rlbench extract-slides: error: n_tiles must be a positive integer or null, got 'abc'"),
    (["extract-slides", "batch_size=-4"],
     "rlbench extract-slides: error: batch_size must be a positive integer, got -4"),
    (["extract-slides", "batch_size=0"],
     "rlbench extract-slides: error: batch_size must be a positive integer, got 0"),
    (["extract-tiles", "chunk_size=0"],
     "rlbench extract-tiles: error: chunk_size must be a positive integer, got 0"),
    (["extract-slides", "seed=abc"],
     "rlbench extract-slides: error: seed must be a non-negative integer, got 'abc'"),
    (["tile", "seed_not_a_key=1"], None),  # unknown key: checked separately below
    (["tile", "min_tissue=1.5"],
     "rlbench tile: error: min_tissue must be a number in [0, 1], got 1.5"),
    (["tile", "target_mpp=0"], "rlbench tile: error: target_mpp must be a number > 0, got 0"),
    (["tile", "qc=yes"], "rlbench tile: error: qc must be true or false, got 'yes'"),
    (["finetune", "augment=1"], "rlbench finetune: error: augment must be true or false, got 1"),
    (["finetune", "num_epochs=2.5"],
     "rlbench finetune: error: num_epochs must be a positive integer, got 2.5"),
    (["finetune", "lora_dropout=1.0"],
     "rlbench finetune: error: lora_dropout must be a number in [0, 1), got 1.0"),
    (["finetune", "precision=fp64"],
     "rlbench finetune: error: precision must be one of auto, fp32, bf16, fp16, got 'fp64'"),
    (["cv", "task.validation_scheme.trainer_cfg.learning_rate=0"],
     "rlbench cv: error: task.validation_scheme.trainer_cfg.learning_rate must be a number > 0, "
     "got 0"),
    (["cv", "task.validation_scheme.grid_search_params.weight_decay=[0.0,-1.0]"],
     "rlbench cv: error: task.validation_scheme.grid_search_params.weight_decay must be a "
     "number >= 0 (or a list of them), got [0.0, -1.0]"),
    (["cv", "task.validation_scheme.n_splits_outer=1"],
     "rlbench cv: error: task.validation_scheme.n_splits_outer must be an integer >= 2, got 1"),
    (["cv", "model=abmil", "model.d_model_attention=abc"],
     "rlbench cv: error: model.d_model_attention must be an integer, got 'abc'"),
    (["extract-slides", "device=cuda:x"],
     "rlbench extract-slides: error: device must be -1 or 'cpu', a GPU index K or 'cuda:K', "
     "a list [K1, K2], null (all GPUs) or 'auto', got 'cuda:x'"),
    (["extract-slides", "device=-2"],
     "rlbench extract-slides: error: device must be -1 or 'cpu', a GPU index K or 'cuda:K', "
     "a list [K1, K2], null (all GPUs) or 'auto', got -2"),
    (["pretrain", "optim.batch_size_per_gpu=0"],
     "rlbench pretrain: error: optim.batch_size_per_gpu must be a positive integer, got 0"),
    (["pretrain", "precision=float16"],
     "rlbench pretrain: error: precision must be one of fp32, bf16, fp16, got 'float16'"),
    (["heatmap", "alpha=2"], "rlbench heatmap: error: alpha must be a number in [0, 1], got 2"),
    (["linear-eval", "portions=[0.5,0]"],
     "rlbench linear-eval: error: portions must be a list of fractions in (0, 1], got [0.5, 0]"),
    (["demo", "n_splits_outer=0"],
     "rlbench demo: error: n_splits_outer must be an integer >= 2, got 0"),
    (["export-hf", "atol=-1"], "rlbench export-hf: error: atol must be a number >= 0, got -1"),
    (["report", "draw_figures=maybe"],
     "rlbench report: error: draw_figures must be true or false, got 'maybe'"),
    (["extract-slides", "decode=nvjpeg"],
     "rlbench extract-slides: error: decode must be one of cpu, gpu, auto, got 'nvjpeg'"),
    (["extract-slides", "inference_path=turbo"],
     "rlbench extract-slides: error: inference_path must be one of auto, fast, plain, "
     "got 'turbo'"),
    (["extract-tiles", "inference_path=FAST"],
     "rlbench extract-tiles: error: inference_path must be one of auto, fast, plain, "
     "got 'FAST'"),
]


@pytest.mark.parametrize("argv,line", [b for b in BAD if b[1] is not None],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_value_is_one_line_exit_2_before_any_work(argv, line, capsys, tmp_path, no_work):
    called = no_work(argv[0])
    out_dir = tmp_path / "out"
    extra = {"export-hf": ["weights_path=w.pth", f"output_dir={out_dir}"],
             "pretrain": [f"output_dir={out_dir}"], "heatmap": ["slide_path=s.tif"],
             "report": [f"run_dir={out_dir}"]}.get(argv[0], [])
    code, out, err = _run(capsys, [*argv, *extra])
    assert code == 2
    assert err.rstrip("\n") == line  # exactly one line
    assert out == ""
    assert called == []  # the command module did nothing
    assert list(tmp_path.iterdir()) == []  # no output folder, no file


def test_bad_values_of_real_commands_write_nothing(capsys, tmp_path, monkeypatch):
    """The same checks, with the real command modules: nothing is created."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "slides").mkdir()
    out = tmp_path / "out"
    for argv in (
        ["extract-slides", f"slides={tmp_path / 'slides'}", f"output_dir={out}", "n_tiles=abc",
         "feature_extractor.pretrained=false"],
        ["extract-slides", f"slides={tmp_path / 'slides'}", f"output_dir={out}", "batch_size=-4"],
        ["cv", f"logs_root_dir={out}", "task.data.n_tiles=-5"],
        ["tile", f"slides={tmp_path / 'slides'}", f"output_dir={out}", "tile_size=0"],
        ["extract-tiles", "tile_dataset=image_folder", f"tile_dataset.root={tmp_path / 'slides'}",
         f"output_dir={out}", "chunk_size=0"],
    ):
        code, _, err = _run(capsys, argv)
        assert code == 2 and len(err.strip().splitlines()) == 1, (argv, err)
        assert not out.exists(), argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slides"]


GOOD = [
    ("cv", ["task.data.n_tiles=null"]), ("cv", ["task.data.n_tiles=7"]),
    ("cv", ["device=cpu"]), ("cv", ["device=auto"]), ("cv", ["preset=tutorial"]),
    ("cv", ["task.validation_scheme.n_splits_inner=0",
            "task.validation_scheme.grid_search_params=null"]),
    ("cv", ["task.validation_scheme.trainer_cfg.learning_rate=1"]),  # an int is a number
    ("extract-slides", ["n_tiles=null", "device=[0,1]", "tile_size=auto", "precision=bf16"]),
    ("extract-slides", ["device=null", "n_tiles=5", "target_mpp=1", "float16=true"]),
    ("extract-slides", ["device=auto", "tile_size=224"]), ("extract-slides", ["device=cuda:1"]),
    ("extract-tiles", ["device=-1", "chunk_size=1"]),
    ("extract-slides", ["decode=gpu", "inference_path=plain"]),
    ("extract-slides", ["decode=auto", "inference_path=fast"]),
    ("extract-tiles", ["inference_path=auto"]),
    ("finetune", ["augment=false", "learning_rate=1", "precision=auto", "device=cpu"]),
    ("finetune", ["max_steps_per_epoch=3", "max_steps_per_epoch=null"]),
    ("linear-eval", ["num_workers=-1", "portions=[1.0]"]),
    ("pretrain", ["optim.warmup_epochs=0.5", "device=cuda:0", "data.tile_size=256"]),
    ("tile", ["slides=a", "target_mpp=1", "num_workers=0"]),
    ("heatmap", ["slide_path=a", "alpha=0", "title=abc"]),
]


@pytest.mark.parametrize("command,overrides", GOOD, ids=lambda v: str(v))
def test_good_values_pass(command, overrides):
    cli.compose_checked(command, overrides)


def _options(conf_dir: str, group: str) -> list[str]:
    return sorted(p.stem for p in (cli.CONF_ROOT / conf_dir / group).glob("*.yaml"))


def test_every_default_config_passes_its_own_check():
    for name in cli.COMMANDS:
        cli.compose_checked(name, [])


@pytest.mark.slow
def test_every_group_option_passes_its_own_check():
    """Every option of every config group (tasks, models, extractors...) is valid."""
    checked = 0
    assert cli._groups("cv") == ["model", "preset", "task"]
    assert cli._groups("extract-slides") == ["feature_extractor", "slide_dataset", "stain_norm"]
    for name, spec in cli.COMMANDS.items():
        groups = cli._groups(name)
        variants = [[]] + [[f"{g}={o}"] for g in groups for o in _options(spec.conf_dir, g)]
        for overrides in variants:
            if overrides == ["slide_dataset=csv"]:
                overrides = [*overrides, "slide_dataset.cohort=c.csv"]
            if overrides and overrides[0].startswith("stain_norm=") and overrides[0] != "stain_norm=none":
                overrides = [*overrides, "stain_norm.target=t.png"]  # a required key (???)
            cli.compose_checked(name, overrides)
            checked += 1
    assert checked > 40


def test_wrong_value_in_a_group_option_is_checked_against_that_option():
    """model=chowder has n_top (an int); the default mean_pool has none."""
    with pytest.raises(ConfigValueError, match=r"^model\.n_top must be an integer, got 'x'$"):
        cli.compose_checked("cv", ["model=chowder", "model.n_top=x"])
    cli.compose_checked("cv", ["model=chowder", "model.n_top=3"])


def test_interpolated_key_is_reported_at_its_source():
    with pytest.raises(ConfigValueError, match=r"^task\.data\.n_tiles "):
        cli.compose_checked("cv", ["task.data.n_tiles=-1"])
    with pytest.raises(ConfigValueError, match=r"^task\.data\.train\.n_tiles "):
        cli.compose_checked("cv", ["task.data.train.n_tiles=-1"])


DEVICE_OK = [-1, 0, 3, None, [0, 1], [-1], "cpu", "auto", "cuda", "cuda:1", "0", "-1",
             "[0,1]", "all", "null", " CPU "]
DEVICE_BAD = ["-2", -2, [], "gpu", "cuda:x", "[a]", 1.5, True, "cuda:-1",
              [0, -1], "[-1, 2]"]  # the last two: a negative GPU index in a list


@pytest.mark.parametrize("value", DEVICE_OK + DEVICE_BAD, ids=repr)
def test_device_rule_follows_parse_device(value):
    """What the rule accepts, parse_device understands (whether the GPUs exist is its own
    question); what the rule rejects, parse_device rejects too, or (a negative index in a
    list) rejects on a machine with GPUs and silently turns into the CPU without one."""
    import warnings

    from rl_benchmarks.utils.device import parse_device

    assert _device_ok(value) == (value in DEVICE_OK)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parse_device(value)
        understood, fell_back = True, any("CUDA is not available" in str(w.message)
                                          for w in caught)
    except ValueError as err:
        understood = any(s in str(err) for s in ("not available", "out of range"))
        fell_back = False
    if value in DEVICE_OK:
        assert understood
    else:
        assert not understood or fell_back


def test_choice_rules_follow_the_code_they_guard():
    """decode and inference_path accept exactly what the extraction code accepts."""
    from rl_benchmarks.extraction.slides import DECODES
    from rl_benchmarks.models.feature_extractors.fast_inference import MODES

    for command, key, allowed in (("extract-slides", "decode", DECODES),
                                  ("extract-slides", "inference_path", MODES),
                                  ("extract-tiles", "inference_path", MODES)):
        rule = rule_for(command, key)
        assert rule is not None and rule.what == "one of " + ", ".join(allowed)
        assert all(rule.ok(v) for v in allowed)
        assert not any(rule.ok(v) for v in ("", "GPU", "turbo", None, 1))


def test_rule_lookup_prefers_command_specific_rules():
    assert rule_for("linear-eval", "num_workers").ok(-1)
    assert not rule_for("tile", "num_workers").ok(-1)
    assert rule_for("pretrain", "device").ok("cuda:0") and not rule_for("pretrain", "device").ok(0)
    assert rule_for("extract-slides", "device").ok(0)


def test_check_config_on_a_plain_reference():
    """The type check without any rule: bool, int and float defaults keep their type."""
    ref = OmegaConf.create({"flag": True, "count": 3, "ratio_x": 0.5, "name": "a", "opt": None})
    check_config("x", OmegaConf.create({"flag": False, "count": 4, "ratio_x": 1, "name": 5,
                                        "opt": "anything"}), ref)
    for bad, msg in ((("flag", 1), "flag must be true or false, got 1"),
                     (("count", "3"), "count must be an integer, got '3'"),
                     (("count", 2.0), "count must be an integer, got 2.0"),
                     (("count", None), "count must be an integer, got null"),
                     (("ratio_x", False), "ratio_x must be a number, got false")):
        cfg = OmegaConf.create({**OmegaConf.to_container(ref), bad[0]: bad[1]})
        with pytest.raises(ConfigValueError) as info:
            check_config("x", cfg, ref)
        assert str(info.value) == msg


# --------------------------------------------------------------------------- mistyped keys


@pytest.mark.parametrize("argv,expected", [
    (["cv", "task.data.ntiles=3"], "task.data.n_tiles"),
    (["cv", "n_tiles=3"], "task.data.n_tiles"),
    (["cv", "task.validation_scheme.trainer_cfg.num_epoch=3"],
     "task.validation_scheme.trainer_cfg.num_epochs"),
    (["extract-slides", "batchsize=3"], "batch_size"),
    (["cv", "modle=abmil"], "model"),
    (["tile", "slides=a", "min_tisue=0.5"], "min_tissue"),
])
def test_mistyped_key_names_closest_keys_and_no_plus_hint(argv, expected, capsys, no_work):
    called = no_work(argv[0])
    code, _, err = _run(capsys, argv)
    typo = argv[-1].split("=")[0]
    assert code == 2 and called == []
    assert len(err.strip().splitlines()) == 1
    assert f"unknown key '{typo}'" in err and expected in err
    assert "+" not in err


def test_closest_keys_by_last_part():
    keys = ["a.b.batch_size", "a.num_workers", "seed"]
    assert closest_keys("batchsize", keys) == ["a.b.batch_size"]
    assert closest_keys("zzz", keys) == []


@pytest.mark.parametrize("argv,pieces", [
    (["cv", "model=abmill"], ["model=abmill: no such option", "did you mean abmil?"]),
    (["cv", "+seed=1"], ["'seed' already exists: set it with seed=<value>"]),
    (["cv", "~nope"], ["cannot delete 'nope'"]),
    (["cv", "seed=1,2"], ["write seed=[1,2] for a list", "seed='1,2'"]),
    (["tile", "slides=/d/a (1).svs"], ["cannot parse the override 'slides=/d/a (1).svs'",
                                      "\"slides='/d/a (1).svs'\""]),
    (["tile", "slides"], ["cannot parse the override 'slides': write key=value"]),
    (["heatmap", "model_kwargs.n_top=5"], ["model_kwargs holds free keys"]),
])
def test_composition_errors_are_one_line(argv, pieces, capsys, no_work):
    called = no_work(argv[0])
    code, _, err = _run(capsys, argv)
    assert code == 2 and called == []
    assert len(err.strip().splitlines()) == 1, err
    for piece in pieces:
        assert piece in err


def test_help_still_works_with_bad_values(capsys):
    """--help shows the keys; it does not judge the values."""
    code, out, _ = _run(capsys, ["cv", "task.data.n_tiles=-5", "--help"])
    assert code == 0 and "n_tiles: -5" in out


def test_rlb_debug_shows_the_exception(monkeypatch):
    monkeypatch.setenv("RLB_DEBUG", "1")
    with pytest.raises(ConfigValueError):
        cli.main(["cv", "task.data.n_tiles=-5"])


# --------------------------------------------------------------------------- quoting


SPECIAL = "/data/my slides/ü é (1),[2]{3}#&;%!+=x.svs"


@pytest.mark.parametrize("shell_arg,expected", [
    ("'slides=/data/my slides/a b.svs'", "/data/my slides/a b.svs"),
    ('"slides=/data/my slides/a b.svs"', "/data/my slides/a b.svs"),
    ("slides=/data/my\\ slides/a.svs", "/data/my slides/a.svs"),
    ("\"slides='/data/my slides/a.svs'\"", "/data/my slides/a.svs"),
    (f"\"slides='{SPECIAL}'\"", SPECIAL),
    (f"'slides=\"{SPECIAL}\"'", SPECIAL),
    ("\"slides='~/my slides'\"", "~/my slides"),
    ("\"slides=\\\"/data/O'Brien/case.svs\\\"\"", "/data/O'Brien/case.svs"),
    ("'slides=/data/\\${HOME}/a.svs'", "/data/${HOME}/a.svs"),
    ("'slides=/data/my slides/a.svs '", "/data/my slides/a.svs"),
])
def test_paths_reach_the_command_intact(shell_arg, expected, capsys, no_work):
    """The forms docs/cli.md gives, split as a POSIX shell splits them (shlex)."""
    called = no_work("tile")
    argv = ["tile", *shlex.split(shell_arg)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert called[0].slides == expected


def test_quoted_number_stays_a_string(no_work):
    called = no_work("tile")
    assert cli.main(["tile", "slides=a", *shlex.split("\"output_dir='2024'\"")]) == 0
    assert called[0].output_dir == "2024"
    assert cli.main(["tile", "slides=a", "output_dir=2024"]) == 0
    assert called[1].output_dir == 2024


@pytest.mark.slow
def test_path_with_space_through_a_real_shell_and_real_tiling(tmp_path):
    """`rlbench tile` run by bash on a slide whose folder and name have spaces."""
    import numpy as np

    from rl_benchmarks.slides.synthetic import write_pyramidal_tiff

    folder = tmp_path / "my slides (v2)"
    folder.mkdir()
    img = np.full((896, 896, 3), (214, 120, 170), np.uint8)
    slide = write_pyramidal_tiff(folder / "case one.tiff", img, mpp=0.25)
    out = tmp_path / "out dir"
    script = (f"{shlex.quote(sys.executable)} -m rl_benchmarks.cli.main tile "
              f"\"slides='{slide}'\" \"output_dir='{out}'\" qc=false progress=false")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    coords = np.load(out / Path(slide).name / "coords.npy")
    assert coords.shape == (4, 3)  # 2 x 2 tiles of 224 px at 0.5 mpp on a 0.25-mpp slide


@pytest.mark.parametrize("path", [
    SPECIAL, "/d/O'Brien/a b.csv", "/d/a\\b.csv", "~/x", "2024", "null", "/d/a\\",
    "/d/a\\'b\\\\'c", "/d/\u00e9t\u00e9 (1)=2.csv",
])
def test_hydra_quote_for_overrides_built_in_code(path, no_work):
    from rl_benchmarks.cli.validation import hydra_quote

    called = no_work("tile")
    assert cli.main(["tile", f"slides={hydra_quote(path)}"]) == 0
    assert called[0].slides == path
