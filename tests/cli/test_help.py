"""``rlbench <command> --help``: every key with its default and a one-line meaning.

The meanings are the ``# comments`` of the conf YAML files (rl_benchmarks.cli.confdoc);
these tests check the small parser on a hand-written file, the help text of real
commands, and that every leaf key of every command's configuration has a meaning.
"""

from __future__ import annotations

import textwrap

import pytest
from omegaconf import OmegaConf

from rl_benchmarks.cli.confdoc import (
    Meanings,
    Source,
    _absolute,
    command_help,
    help_leaves,
    key_comments,
    undocumented,
)
from rl_benchmarks.cli.main import (
    COMMANDS,
    _group_options,
    _groups,
    command_meanings,
    compose,
    help_text,
    main,
)


def _write(path, text: str):
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_key_comments_maps_lines_to_dotted_keys(tmp_path):
    path = _write(tmp_path / "c.yaml", """\
        # header: no key
        defaults:
          - _self_
          - model: abmil     # the MIL model
          - preset: null
        top: 1               # a top key
        url: 'a # b'         # quoted hash is a value
        plain: it's here     # an apostrophe in a plain value
        no_comment: 3
        nested:              # the section
          inner: x           # first line
                             # second line
          deeper:
            leaf: [1, 2]     # a list
          after: 2
        # a section comment, not a continuation
        last: true           # last key
        """)
    found = key_comments(path)
    assert found.groups == {"model": "the MIL model"}
    assert found.keys == {
        "top": "a top key",
        "url": "quoted hash is a value",
        "plain": "an apostrophe in a plain value",
        "nested": "the section",
        "nested.inner": "first line second line",
        "nested.deeper.leaf": "a list",
        "last": "last key",
    }


def test_meanings_follow_packages_and_merge_order(tmp_path):
    primary = _write(tmp_path / "config.yaml", "a: 1  # from primary\nb: 2  # b primary\n")
    option = _write(tmp_path / "opt.yaml", "a: 3  # from option\nc: 4\n")
    m = Meanings.of([Source(primary, ""), Source(option, "grp"), Source(option, "")])
    assert m.keys["a"] == "from option"          # the later file wins
    assert m.keys["b"] == "b primary"            # a later file without the key keeps it
    assert m.keys["grp.a"] == "from option"      # under its package
    assert "c" not in m.keys and "grp.c" not in m.keys


def test_interpolations_and_leaves():
    assert _absolute("task.data.train.n_tiles", "${..n_tiles}") == "task.data.n_tiles"
    assert _absolute("a.b", "${.c}") == "a.c"
    assert _absolute("a.b", "${x.y}") == "x.y"
    cfg = OmegaConf.create({"a": {"n": 3, "m": "${.n}", "_partial_": True, "_target_": "f"},
                            "empty": {}, "none": None, "lst": [1, "${a.n}"], "miss": "???"})
    leaves = dict(help_leaves(cfg))
    assert leaves == {"a.n": 3, "a.m": "${.n}", "a._target_": "f", "empty": {}, "none": None,
                      "lst": [1, "${a.n}"], "miss": "???"}
    m = Meanings(keys={"a.n": "count"})
    assert sorted(undocumented(cfg, m)) == ["empty", "lst", "miss", "none"]
    text = command_help(cfg, m, {}, {})
    assert "a.m: ${.n}" in text and "# follows a.n" in text and "# count" in text
    assert "empty: {}" in text and "# (no description)" in text


def test_tile_help_shows_default_and_meaning(capsys):
    assert main(["tile", "--help"]) == 0
    out = capsys.readouterr().out
    lines = {line.split("#")[0].strip(): line.split("#", 1)[1].strip()
             for line in out.splitlines() if line.startswith("  ") and "#" in line}
    assert lines["min_tissue: 0.6"] == "keep tiles whose tissue fraction is at least this"
    # a two-line comment in the YAML is one line in --help
    assert lines["output_dir: null"].endswith(
        "defaults to <data_dir>/preprocessed/slides_classification/coords")
    assert lines["progress: true"]


def test_cv_help_lists_groups_options_and_chosen_keys():
    text = help_text("cv", ["model=abmil"])
    assert "preset: null" in text and "options: tutorial" in text
    assert "model: abmil" in text and "chowder_tutorial" in text
    assert "model.d_model_attention: 128" in text          # keys of the chosen option
    assert "task.data.train.n_tiles: ${..n_tiles}" in text
    assert "# follows task.data.n_tiles" in text


def test_help_values_follow_overrides():
    assert "tile_size: 256" in help_text("tile", ["tile_size=256"])


def _cases() -> list:
    """One case per command: the defaults, then each option of each config group."""
    cases = []
    for command in COMMANDS:
        choices = [[]] + [[f"{g}={o}"] for g in _groups(command)
                          for o in _group_options(command, g)]
        cases.append(pytest.param(command, choices, id=command))
    return cases


@pytest.mark.parametrize(("command", "choices"), _cases())
def test_every_key_has_a_meaning(command, choices):
    """Every config group, and every leaf key of the default config and of each group
    option, has a meaning."""
    missing = {f"group {g}" for g in _groups(command)
               if g not in command_meanings(command, [])[0].groups}
    for overrides in choices:
        cfg = compose(command, overrides)
        meanings, _ = command_meanings(command, overrides)
        missing |= {f"{k} ({' '.join(overrides) or 'defaults'})"
                    for k in undocumented(cfg, meanings)}
    assert not missing, f"rlbench {command}: keys without a # comment: {sorted(missing)}"


@pytest.mark.parametrize(("overrides", "expected"), [
    (["slides=x", "+progres=1"], "unknown key 'progres' (added with +progres=...; no free keys): "
                                 "did you mean progress?"),
    (["slides=x", "+qc_extra.a=1"], "unknown key 'qc_extra.a'"),
])
def test_added_typo_is_an_error(overrides, expected):
    """``+key=value`` cannot sneak a mistyped key past the check (it would be ignored)."""
    from rl_benchmarks.cli.main import compose_checked
    from rl_benchmarks.cli.validation import ConfigValueError

    with pytest.raises(ConfigValueError) as info:
        compose_checked("tile", overrides)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_added_keys_allowed_in_free_places():
    """Inside a ``_target_`` node (constructor arguments) an added key is accepted."""
    from rl_benchmarks.cli.main import compose_checked

    cfg = compose_checked("extract-slides", ["feature_extractor.pretrained=false",
                                             "+feature_extractor.depth=2"])
    assert cfg.feature_extractor.depth == 2
    with pytest.raises(ValueError, match="no free keys under 'task.data'"):
        compose_checked("cv", ["+task.data.foo=1"])


def test_added_key_rule():
    from rl_benchmarks.cli.validation import _added_key_error

    ref = OmegaConf.create({"free": {}, "obj": {"_target_": "f"}, "fixed": {"a": 1}, "m": "???"})
    assert _added_key_error("free.x", ref) is None          # a free-form dict
    assert _added_key_error("obj.x", ref) is None           # constructor arguments
    assert _added_key_error("m", ref) is None               # exists (value still missing)
    assert _added_key_error("fixed.a", ref) is None
    assert "did you mean fixed.a" in _added_key_error("fixed.b", ref)


def test_parser_agrees_with_yaml_on_every_conf_file():
    """Each dotted key the comment parser finds exists in the file as YAML reads it (an
    independent parser), for every conf file of the package."""
    from rl_benchmarks.paths import CONF_ROOT

    files = sorted(CONF_ROOT.rglob("*.yaml"))
    assert len(files) > 20
    wrong = []
    for path in files:
        loaded = OmegaConf.load(path)
        for key in key_comments(path).keys:
            parent, _, last = key.rpartition(".")
            node = OmegaConf.select(loaded, parent) if parent else loaded
            if node is None or last not in node.keys():
                wrong.append(f"{path.relative_to(CONF_ROOT)}: {key}")
    assert not wrong, wrong
