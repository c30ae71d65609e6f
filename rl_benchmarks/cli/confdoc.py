"""Meanings of configuration keys, read from the ``# comment`` on each key's line.

Why: ``rlbench <command> --help`` must list every key a command accepts with its default
and a one-line meaning, and the conf YAML files already say what each key means in a
comment. Rather than keeping a second copy of those sentences in Python, :func:`key_comments`
maps the ``key: value  # comment`` lines of a YAML file to dotted key paths (by indentation),
and :func:`command_help` joins them to the composed configuration: the primary file and the
group option files that Hydra's defaults list chose (each under its package).

Grammar understood (deliberately small): a mapping line ``<indent>key: [value]  # comment``;
a comment-only line whose ``#`` sits in the same column as the previous key's comment
continues that comment; the ``defaults:`` list's ``- group: option  # comment`` lines give
the meaning of a config group. Other lines (list items, section comments) carry no meaning.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

_KEY_LINE = re.compile(
    r"^(?P<indent> *)(?P<key>[A-Za-z_][\w\-]*|'[^']*'|\"[^\"]*\")\s*:(?P<rest>.*)$")
_DEFAULT_ITEM = re.compile(
    r"^ *- *(?:override +)?(?P<group>[\w/\-]+)(?:@[\w.\-]+)? *:(?P<rest>.*)$")


def _split_comment(rest: str) -> tuple[str, str | None, int]:
    """``(value, comment or None, offset of '#')`` of the text after ``key:``. A ``#`` starts
    a comment at the start or after whitespace (YAML's rule), and not inside a value that
    starts with a quote (``'a # b'``); an apostrophe inside a plain value is just a letter."""
    start = 0
    stripped = rest.lstrip()
    if stripped[:1] in ("'", '"'):
        quote_at = len(rest) - len(stripped)
        close = rest.find(stripped[0], quote_at + 1)
        start = close + 1 if close > 0 else len(rest)
    for i in range(start, len(rest)):
        if rest[i] == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i].strip(), rest[i + 1:].strip(), i
    return rest.strip(), None, -1


@dataclass
class FileComments:
    """The comments of one YAML file: ``keys`` by dotted path, ``groups`` by group name."""

    keys: dict[str, str] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)


def key_comments(path: str | Path) -> FileComments:
    """Map the ``key: value  # comment`` lines of the YAML file ``path`` to dotted keys."""
    out = FileComments()
    stack: list[tuple[int, str]] = []  # (indent, key) of the open mappings
    last: tuple[str, int, dict[str, str]] | None = None  # (key, comment column, its table)
    in_defaults = False
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            column = len(line) - len(line.lstrip())
            if last is not None and column == last[1]:
                key, _, table = last
                table[key] = f"{table[key]} {stripped[1:].strip()}".strip()
            else:
                last = None
            continue
        last = None
        if in_defaults and (m := _DEFAULT_ITEM.match(line)):
            _, comment, offset = _split_comment(m.group("rest"))
            group = m.group("group")
            if comment:
                out.groups[group] = comment
                last = (group, line.index(":") + 1 + offset, out.groups)
            continue
        m = _KEY_LINE.match(line)
        if m is None:
            continue
        indent, key = len(m.group("indent")), m.group("key").strip("'\"")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        in_defaults = dotted == "defaults"
        value, comment, offset = _split_comment(m.group("rest"))
        if comment:
            out.keys[dotted] = comment
            last = (dotted, m.start("rest") + offset, out.keys)
        if not value:  # a mapping (or a block list) opens here
            stack.append((indent, key))
    return out


# --------------------------------------------------------------------------- composition


@dataclass(frozen=True)
class Source:
    """One file of a composed config: its path and the package its keys land under."""

    path: Path
    package: str


def config_sources(conf_dir: Path, conf_name: str,
                   overrides: list[str]) -> tuple[list[Source], dict[str, Any]]:
    """The YAML files Hydra merges for ``conf_name`` with ``overrides``, in merge order, and
    the option chosen in each config group (None: no option)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        result = loader.compute_defaults_list(conf_name, overrides, RunMode.RUN)
    defaults = result.defaults
    choices = {k: v for k, v in result.overrides.known_choices.items()
               if not k.startswith("hydra")}
    sources = []
    for item in defaults:
        if item.config_path is None or item.config_path.startswith("hydra/") \
                or (item.package or "").startswith("hydra"):
            continue
        path = conf_dir / f"{item.config_path}.yaml"
        if path.is_file():
            sources.append(Source(path, item.package or ""))
    return sources, choices


@dataclass
class Meanings:
    """Meanings of a command's keys (dotted) and config groups, from its source files."""

    keys: dict[str, str] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, sources: list[Source]) -> Meanings:
        """Join the comments of ``sources``; a later file's comment wins (Hydra's merge
        order), a later file without a comment keeps the earlier one."""
        out = cls()
        for source in sources:
            found = key_comments(source.path)
            prefix = f"{source.package}." if source.package else ""
            for key, text in found.keys.items():
                out.keys[prefix + key] = text
            for group, text in found.groups.items():
                out.groups[group] = text
        return out


def _absolute(path: str, interpolation: str) -> str | None:
    """The dotted key a simple ``${...}`` interpolation at ``path`` points to."""
    m = re.fullmatch(r"\$\{(\.*)([\w.]+)\}", interpolation.strip())
    if m is None:
        return None
    dots, target = m.groups()
    if not dots:
        return target
    container = path.split(".")[:-1]
    up = len(dots) - 1
    if up > len(container):
        return None
    base = container[: len(container) - up]
    return ".".join(base + [target])


def meaning(meanings: Meanings, path: str, raw: Any) -> str | None:
    """The meaning of leaf ``path`` (raw value ``raw``): its comment; for an uncommented
    interpolation ``${..x}``, which key it follows."""
    if path in meanings.keys:
        return meanings.keys[path]
    if path.endswith("._target_") or path == "_target_":
        return "the class or function built from this node"
    if isinstance(raw, str) and raw.startswith("${"):
        target = _absolute(path, raw)
        return f"follows {target}" if target else f"follows {raw}"
    return None


# --------------------------------------------------------------------------- leaves


def help_leaves(cfg: DictConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, raw value)`` of every key a user sets in ``cfg``: scalars, lists,
    empty or null mappings, and ``_target_`` (``_partial_`` and ``_args_`` are skipped).
    Interpolations are given unresolved (``${..n_tiles}``), ``???`` as is."""
    for key in cfg.keys():
        key = str(key)
        if key in ("_partial_", "_args_", "_recursive_", "_convert_"):
            continue
        path = f"{prefix}.{key}" if prefix else key
        node = cfg._get_node(key)
        if OmegaConf.is_missing(cfg, key):
            yield path, "???"
        elif OmegaConf.is_interpolation(cfg, key):
            yield path, str(node._value())
        elif isinstance(node, DictConfig):
            if node._is_none():
                yield path, None
            elif len(node) == 0:
                yield path, {}
            else:
                yield from help_leaves(node, path)
        elif isinstance(node, ListConfig):
            yield path, None if node._is_none() else OmegaConf.to_container(node, resolve=False)
        else:
            yield path, node._value()


def undocumented(cfg: DictConfig, meanings: Meanings) -> list[str]:
    """Leaf keys of ``cfg`` without a meaning."""
    return [path for path, raw in help_leaves(cfg) if not meaning(meanings, path, raw)]


# --------------------------------------------------------------------------- rendering


def show_value(value: Any) -> str:
    """A default as one would write it in YAML (strings unquoted unless empty)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else "''"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    return str(value)


def _row(left: str, text: str | None, width: int) -> list[str]:
    """``left  # meaning``, meanings aligned at ``width``; a longer ``left`` puts its
    meaning on the next line."""
    text = text or "(no description)"
    if len(left) <= width:
        return [f"  {left:<{width}}  # {text}"]
    return [f"  {left}", f"        # {text}"]


def command_help(cfg: DictConfig, meanings: Meanings, choices: dict[str, Any],
                 options: dict[str, list[str]]) -> str:
    """The key listing of ``--help``: config groups (chosen option, options, meaning),
    then every leaf key with its current value and meaning."""
    lines: list[str] = []
    if options:
        lines.append("config groups (choose with group=option):\n")
        lefts = {g: f"{g}: {show_value(choices.get(g))}" for g in options}
        width = max(len(left) for left in lefts.values())
        for group, names in options.items():
            lines += _row(lefts[group], meanings.groups.get(group), width)
            lines += textwrap.wrap(", ".join(names) or "none", width=88,
                                   initial_indent="      options: ", subsequent_indent=" " * 15)
        lines.append("")
    lines.append("keys (override with key=value; shown with their current value):\n")
    rows = [(f"{path}: {show_value(raw)}", meaning(meanings, path, raw))
            for path, raw in help_leaves(cfg)]
    width = min(max((len(left) for left, _ in rows), default=0), 44)
    for left, text in rows:
        lines += _row(left, text, width)
    return "\n".join(lines)
