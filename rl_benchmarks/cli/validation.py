"""Typed, range-checked ``rlbench`` configurations (an equivalent of Hydra structured configs).

Why: Hydra parses ``n_tiles=abc`` as a string and ``batch_size=-4`` as an int, and happily
hands both to the command, which then fails late (after writing outputs) or, worse, runs
with a meaningless value. Before a command does any work, :func:`check_config` compares
every leaf of the composed configuration with the same command's defaults:

* a leaf whose default is a bool, an int or a float must still be one (an int is a float;
  a bool is neither; ``null`` only where the default is ``null``);
* :data:`RULES` adds the allowed range of well-known keys by name (``n_tiles`` positive or
  null, ``batch_size`` positive, ``seed`` a non-negative integer, ``device`` in the grammar
  of :mod:`rl_benchmarks.utils.device`, fractions in [0, 1], ...). A rule replaces the
  type check of its key.

A failure is one :class:`ConfigValueError` line naming the key and the value, e.g.
``task.data.n_tiles must be a positive integer or null, got -5``. Hydra's own composition
errors (a mistyped key, a missing group option, an unparsable override) are turned into
one line by :func:`composition_message`, with the closest valid keys instead of Hydra's
``+key=value`` hint (which would accept the typo silently).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from rl_benchmarks.utils.overrides import hydra_quote  # noqa: F401 - used by the commands

#: Exit code of every ``rlbench`` command for a bad configuration or bad input.
EXIT_BAD_INPUT = 2


class ConfigValueError(ValueError):
    """A configuration value of the wrong type or out of range (one line, names the key)."""


# --------------------------------------------------------------------------- values


def show(value: Any) -> str:
    """A value as the user would write it on the command line (strings quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, ListConfig)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """``ok(value)`` says whether a value is allowed; ``what`` completes "<key> must be ...".

    ``nullable``: null is allowed. ``each``: a list value is checked element by element
    (the grid-search lists of ``learning_rate`` / ``weight_decay``).
    """

    ok: Callable[[Any], bool]
    what: str
    nullable: bool = False
    each: bool = False


def _int_min(low: int, **kw: Any) -> Rule:
    word = {1: "a positive integer", 0: "a non-negative integer"}.get(low, f"an integer >= {low}")
    if kw.get("nullable"):
        word += " or null"
    return Rule(lambda v: _is_int(v) and v >= low, word, **kw)


def _num(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False,
         **kw: Any) -> Rule:
    def ok(v: Any) -> bool:
        return (_is_number(v) and (v > low if low_open else v >= low)
                and (v < high if high_open else v <= high))

    if high == math.inf:
        what = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        what = (f"a number in {'(' if low_open else '['}{low:g}, {high:g}"
                f"{')' if high_open else ']'}")
    return Rule(ok, what, **kw)


def _choice(*names: str, case: bool = True, **kw: Any) -> Rule:
    allowed = set(names) if case else {n.lower() for n in names}

    def ok(v: Any) -> bool:
        return isinstance(v, str) and (v if case else v.lower()) in allowed

    return Rule(ok, "one of " + ", ".join(names), **kw)


def _list_of(rule: Rule, what: str) -> Rule:
    def ok(v: Any) -> bool:
        return isinstance(v, (list, ListConfig)) and all(rule.ok(x) for x in v)

    return Rule(ok, what)


_DEVICE_TEXT = re.compile(
    r"(cpu|auto|none|null|all|~|-?\d+|cuda(:\d+)?|\[\s*(-?\d+\s*(,\s*-?\d+\s*)*)?\])"
)


def _device_ok(v: Any) -> bool:
    """The grammar of :func:`rl_benchmarks.utils.device.parse_device`, without asking
    whether the GPUs exist (the command says so with its own message)."""
    if v is None:
        return True
    if isinstance(v, str):
        text = v.strip().lower()
        if not _DEVICE_TEXT.fullmatch(text):
            return False
        if text.startswith("["):
            v = [int(t) for t in re.findall(r"-?\d+", text)]
        elif re.fullmatch(r"-?\d+", text):
            v = int(text)
        else:
            return True
    if _is_int(v):
        return v >= -1
    if isinstance(v, (list, ListConfig)):
        items = list(v)
        return bool(items) and all(_is_int(i) for i in items) and (
            items == [-1] or all(i >= 0 for i in items))
    return False


_POS_INT = _int_min(1)
_POS_INT_OR_NULL = _int_min(1, nullable=True)
_NONNEG_INT = _int_min(0)
_FRACTION = _num(0.0, 1.0)
_FRACTION_OPEN = _num(0.0, 1.0, low_open=True)  # (0, 1]
_POS = _num(0.0, low_open=True)
_NONNEG = _num(0.0)

_DEVICE = Rule(_device_ok, "-1 or 'cpu', a GPU index K or 'cuda:K', a list [K1, K2], "
                           "null (all GPUs) or 'auto'", nullable=True)
# ``rlbench pretrain`` gives device to torch.device (see pretraining/train.py).
_TORCH_DEVICE = Rule(lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v)
                     is not None, "one of auto, cpu, cuda, cuda:K")


def _precisions() -> tuple[str, ...]:
    from rl_benchmarks.utils.device import PRECISIONS

    return tuple(PRECISIONS)


#: Range rules by key name (the last part of a dotted key); ``(command, name)`` entries
#: win over ``name`` entries. Keys whose default is ``null`` or ``'auto'`` also accept
#: that default (see :func:`check_config`).
RULES: dict[str | tuple[str, str], Rule] = {
    # sizes and counts
    "n_tiles": _POS_INT_OR_NULL,
    **{k: _POS_INT for k in (
        "batch_size", "batch_size_per_gpu", "num_epochs", "epochs", "chunk_size",
        "image_size", "img_size", "tile_size", "slide_tile_size", "global_size", "local_size",
        "patch_size", "thumbnail_size", "n_ensembling", "n_patients", "n_slides", "lora_r",
        "lora_alpha", "hidden_size", "num_hidden_layers", "num_attention_heads", "out_features",
        "out_dim", "patch_out_dim", "hidden_dim", "bottleneck_dim", "nlayers",
        "n_repeats_outer", "n_repeats_inner", "min_block")},
    ("pretrain", "tiles"): _POS_INT,
    **{k: _POS_INT_OR_NULL for k in (
        "num_heads", "max_steps", "max_steps_per_epoch", "max_train_tiles",
        "max_tiles_per_slide")},
    "n_splits_outer": Rule(lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "n_splits_inner": Rule(lambda v: _is_int(v) and (v == 0 or v >= 2),
                           "0 (no inner selection) or an integer >= 2"),
    **{k: _NONNEG_INT for k in (
        "num_workers", "seed", "class_index", "knn_k", "n_resamples", "n_bootstrap",
        "every_steps", "save_every_steps", "saveckp_freq", "freeze_last_layer", "local_number",
        "heatmap_slides", "warmup_teacher_temp_epochs")},
    ("linear-eval", "num_workers"): Rule(_is_int, "an integer (<= 0: every core)"),
    # optimisation
    "learning_rate": _num(0.0, low_open=True, each=True),
    "lr": _POS,
    **{k: _NONNEG for k in ("weight_decay_end", "min_lr", "clip_grad",
                            "warmup_epochs", "koleo_weight", "lambda_cls", "lambda_patch",
                            "atol", "mpp_tolerance", "brightness", "contrast", "saturation")},
    "weight_decay": _num(0.0, each=True),
    **{k: _POS for k in ("student_temp", "teacher_temp", "warmup_teacher_temp",
                         "teacher_patch_temp", "warmup_teacher_patch_temp", "temperature",
                         "time_limit_min")},
    # resolutions (µm per pixel)
    **{k: _POS for k in ("target_mpp", "default_mpp", "mask_mpp", "mpp")},
    # fractions and probabilities
    **{k: _FRACTION for k in (
        "min_tissue", "alpha", "hflip", "vflip", "jitter_p", "blur_global1", "blur_global2",
        "blur_local", "solarize_global2", "stain_jitter_p", "probability", "momentum_teacher", "center_momentum",
        "center_momentum2")},
    "hue": _num(0.0, 0.5),
    ("extract-slides", "shard"): _NONNEG_INT,
    ("extract-slides", "num_shards"): _POS_INT,
    ("heatmap", "top_percent"): _num(0.0, 100.0, low_open=True),
    ("heatmap", "lesion_threshold"): _FRACTION_OPEN,
    "stain_jitter": _num(0.0, 1.0),
    "lora_dropout": _num(0.0, 1.0, high_open=True),
    "drop_path_rate": _num(0.0, 1.0, high_open=True),
    "confidence_level": _num(0.0, 1.0, low_open=True, high_open=True),
    "portions": _list_of(_FRACTION_OPEN, "a list of fractions in (0, 1]"),
    "split_fractions": _list_of(_FRACTION, "a list of 3 fractions in [0, 1] summing to 1"),
    "ratio": _list_of(_FRACTION, "a list [low, high] of fractions in [0, 1]"),
    "global_scale": _list_of(_FRACTION_OPEN, "a list [low, high] of fractions in (0, 1]"),
    "local_scale": _list_of(_FRACTION_OPEN, "a list [low, high] of fractions in (0, 1]"),
    # named choices
    "device": _DEVICE,
    ("pretrain", "device"): _TORCH_DEVICE,
    "precision": Rule(lambda v: isinstance(v, str) and v.strip().lower() in _precisions(),
                      "one of fp32, bf16, fp16"),
    ("pretrain", "precision"): _choice("fp32", "bf16", "fp16"),
    ("finetune", "precision"): _choice("auto", "fp32", "bf16", "fp16"),
    ("finetune", "mode"): _choice("lora", "linear"),
    "encoder": _choice("teacher", "student"),
    ("tile", "layout"): _choice("flat", "reference"),
    ("linear-eval", "bootstrap_method"): _choice("fast", "sklearn"),
    "inference_path": _choice("auto", "fast", "plain"),  # fast_inference.check_mode
    ("extract-slides", "decode"): _choice("cpu", "gpu", "auto"),  # extraction.slides.DECODES
}

# A value equal to one of these defaults means "choose for me" and is always accepted.
_SENTINELS = (None, "auto")


def rule_for(command: str, path: str) -> Rule | None:
    """The range rule of ``path`` (dotted key) in ``command``, if any."""
    name = path.rsplit(".", 1)[-1]
    return RULES.get((command, name)) or RULES.get(name)


# --------------------------------------------------------------------------- walking


_MISSING = object()


def _leaves(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, Any, str | None]]:
    """(dotted key, value or _MISSING, raw interpolation string or None) of every leaf;
    lists are leaves. Keys starting with ``_`` (``_target_``, ``_partial_``) are skipped."""
    for key in node.keys():
        key = str(key)
        if key.startswith("_"):
            continue
        path = f"{prefix}.{key}" if prefix else key
        if OmegaConf.is_missing(node, key):
            yield path, _MISSING, None
            continue
        child = node._get_node(key)
        if OmegaConf.is_interpolation(node, key):
            yield path, _MISSING, str(child._value())
            continue
        if isinstance(child, DictConfig):
            if child._is_none():
                yield path, None, None
            else:
                yield from _leaves(child, path)
        elif isinstance(child, ListConfig):
            try:
                value = None if child._is_none() else OmegaConf.to_container(child, resolve=True)
            except Exception:  # noqa: BLE001 - an unresolvable item is the command's to report
                value = _MISSING
            yield path, value, None
        else:
            yield path, child._value(), None


def _reference_value(reference: DictConfig, path: str) -> Any:
    """The default at ``path`` (raw, unresolved), or _MISSING when there is none."""
    node: Any = reference
    for part in path.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return _MISSING
        if OmegaConf.is_missing(node, part):
            return _MISSING
        child = node._get_node(part)
        if OmegaConf.is_interpolation(node, part):
            return ("interp", str(child._value()))
        node = child
    if isinstance(node, DictConfig):
        return None if node._is_none() else _MISSING
    if isinstance(node, ListConfig):
        return None if node._is_none() else OmegaConf.to_container(node, resolve=False)
    return node._value()


def _added_key_error(path: str, reference: DictConfig) -> str | None:
    """The message for a key added with ``+key=value`` where the config has no such key and
    takes no free keys. Free keys are accepted only inside an empty mapping (heatmap's
    ``model_kwargs: {}``) or a node built from ``_target_`` (constructor arguments, e.g.
    ``+feature_extractor.depth=4``): elsewhere an added key is a typo that would be ignored."""
    node: Any = reference
    parts = path.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or node._is_none():
            return None  # below a leaf or a null node: the type checks have their say
        if part not in node.keys():  # (``in node`` is False for a ``???`` value)
            if len(node) == 0 or "_target_" in node:
                return None
            parent = ".".join(parts[:i])
            keys = flat_keys(reference)
            matches = closest_keys(path, keys)
            hint = (f"did you mean {' or '.join(matches)}?" if matches
                    else "see the keys with --help")
            where = f" under '{parent}'" if parent else ""
            return f"unknown key '{path}' (added with +{path}=...; no free keys{where}): {hint}"
        if OmegaConf.is_missing(node, part) or OmegaConf.is_interpolation(node, part):
            return None
        node = node._get_node(part)
    return None


def _type_error(path: str, default: Any, value: Any) -> str | None:
    """The message when ``value`` has not the type of ``default`` (bool, int or float)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            return f"{path} must be true or false, got {show(value)}"
    elif _is_int(default):
        if not _is_int(value):
            return f"{path} must be an integer, got {show(value)}"
    elif isinstance(default, float):
        if not (_is_int(value) or isinstance(value, float)):
            return f"{path} must be a number, got {show(value)}"
    return None


def check_config(command: str, cfg: DictConfig, reference: DictConfig) -> None:
    """Raise :class:`ConfigValueError` on the first leaf of ``cfg`` with a wrong type or an
    out-of-range value. ``reference`` is the same command's config composed with the same
    group choices (``model=abmil``, ``feature_extractor=timm``...) but no value overrides.
    A key that ``+key=value`` added where the config takes no free keys is an error too."""
    for path, value, interp in _leaves(cfg):
        default = _reference_value(reference, path)
        if default is _MISSING:
            message = _added_key_error(path, reference)
            if message:
                raise ConfigValueError(message)
        if interp is not None:
            if default == ("interp", interp):
                continue  # the default's interpolation: its source key is checked itself
            try:
                value = OmegaConf.select(cfg, path, throw_on_resolution_failure=True)
            except Exception:  # noqa: BLE001 - an unresolvable value is the command's to report
                continue
            if isinstance(value, (DictConfig, ListConfig)):
                value = OmegaConf.to_container(value, resolve=True)
        if value is _MISSING:
            continue  # ``???``: the command asks for it by name
        if isinstance(default, tuple):
            default = _MISSING
        rule = rule_for(command, path)
        if rule is not None:
            if default in _SENTINELS and value == default:
                continue
            if value is None and rule.nullable:
                continue
            if rule.each and isinstance(value, list) and isinstance(default, list):
                bad = [v for v in value if not rule.ok(v)]
                if bad:
                    raise ConfigValueError(f"{path} must be {rule.what} (or a list of them), "
                                           f"got {show(value)}")
                continue
            if not rule.ok(value):
                raise ConfigValueError(f"{path} must be {rule.what}, got {show(value)}")
            continue
        if default is _MISSING or default is None or isinstance(default, list):
            continue
        message = _type_error(path, default, value)
        if message:
            raise ConfigValueError(message)


# --------------------------------------------------------------------------- composition


def flat_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every dotted key of ``cfg`` (nodes and leaves), for "did you mean" answers."""
    keys = []
    for key in cfg.keys():
        path = f"{prefix}.{key}" if prefix else str(key)
        keys.append(path)
        if OmegaConf.is_missing(cfg, key) or OmegaConf.is_interpolation(cfg, key):
            continue
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none():
            keys += flat_keys(child, path)
    return keys


def closest_keys(key: str, keys: list[str], n: int = 3) -> list[str]:
    """Valid keys closest to a mistyped ``key``: by the whole dotted key, then by its last part."""
    found = difflib.get_close_matches(key, keys, n=n, cutoff=0.6)
    last = key.rsplit(".", 1)[-1]
    by_last: dict[str, list[str]] = {}
    for k in keys:
        by_last.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    for name in difflib.get_close_matches(last, list(by_last), n=n, cutoff=0.75):
        for k in by_last[name]:
            if k not in found:
                found.append(k)
    return found[:n]


def unknown_key_message(key: str, reference: DictConfig, groups: list[str]) -> str:
    """One line for an override of a key that the config does not have."""
    parent = key.rsplit(".", 1)[0] if "." in key else None
    if parent is not None:
        node = OmegaConf.select(reference, parent, default=None)
        if isinstance(node, DictConfig) and len(node) == 0:
            # A free-form dict (e.g. heatmap model_kwargs: {}): keys are added, not typos.
            return (f"{parent} holds free keys and has none yet: add one with "
                    f"+{key}=<value>")
    keys = flat_keys(reference) + [g for g in groups if g not in reference]
    matches = closest_keys(key, keys)
    hint = (f"did you mean {' or '.join(matches)}?" if matches
            else "see the keys with --help")
    return f"unknown key '{key}': {hint}"


_NOT_OVERRIDE = re.compile(r"Could not override '([^']+)'")
_NOT_DELETE = re.compile(r"Could not delete from config\. '([^']+)' does not exist")
_ALREADY = re.compile(r"An item is already at '([^']+)'")
_NO_OPTION = re.compile(r"Could not find '([^']+)'")
_AMBIGUOUS = re.compile(r"Ambiguous value for argument '([^']+)'")


def composition_message(exc: BaseException, overrides: list[str], reference: DictConfig | None,
                        groups: list[str], group_options: Callable[[str], list[str]]) -> str:
    """One line for a Hydra composition or override-parsing error.

    ``reference``: the config composed with the group choices only (None when even that
    failed); ``group_options(group)`` lists the options of a config group.
    """
    text = str(exc)
    if m := _NOT_OVERRIDE.search(text):
        return unknown_key_message(m.group(1), reference if reference is not None
                                   else OmegaConf.create(), groups)
    if m := _NOT_DELETE.search(text):
        return f"cannot delete '{m.group(1)}': there is no such key"
    if m := _ALREADY.search(text):
        return f"'{m.group(1)}' already exists: set it with {m.group(1)}=<value> (no +)"
    if m := _NO_OPTION.search(text):
        group, _, option = m.group(1).rpartition("/")
        options = group_options(group)
        close = difflib.get_close_matches(option, options, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}? " if close else ""
        return (f"{group}={option}: no such option; {hint}"
                f"options: {', '.join(options) or 'none'}")
    if m := _AMBIGUOUS.search(text):
        key, _, value = m.group(1).partition("=")
        return (f"{m.group(1)}: a comma makes a list or a sweep; write {key}=[{value}] for a "
                f"list, or quote the value for a string: {key}='{value}'")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if "override" in type(exc).__name__.lower() or "LexerNoViableAlt" in first \
            or "mismatched input" in first or "no viable alternative" in first:
        bad = getattr(exc, "override", None) or next((o for o in overrides if o in text), None)
        key, sep, value = (bad or "").partition("=")
        example = (f"\"{key.strip()}='{value.strip()}'\"" if sep and "'" not in value
                   else "\"key='value'\"")
        where = f"'{bad}' " if bad else ""
        if bad and not sep and not bad.startswith("~"):
            return f"cannot parse the override '{bad}': write key=value"
        return (f"cannot parse the override {where}({first.strip()}): quote a value with "
                f"special characters, e.g. {example} (see docs/cli.md)")
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())
