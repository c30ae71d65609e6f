"""``rlbench <command> key=value ...``: one entry point for every pipeline stage.

Each command has a Hydra config folder ``rl_benchmarks/conf/<conf_dir>/`` whose
primary file is ``<conf_name>.yaml`` and a module exposing ``main(cfg) -> int``.
Overrides use Hydra's grammar (``key=value``, ``group=option``, ``+new=value``). Before a
command runs, every value is type- and range-checked (:mod:`rl_benchmarks.cli.validation`):
a bad one is a one-line error and exit code 2, with nothing written. See docs/cli.md.

``-m``/``--multirun`` (sweeps through Hydra's launchers), ``--cfg`` and ``--info`` hand the
command to Hydra's application machinery (:mod:`rl_benchmarks.cli.multirun`, docs/sweeps.md);
each job of a sweep is composed and checked exactly as a single run.
"""

from __future__ import annotations

import functools
import importlib
import sys
from dataclasses import dataclass

from rl_benchmarks.cli.multirun import APP_FLAGS, run_app, wants_app
from rl_benchmarks.paths import CONF_ROOT


@dataclass(frozen=True)
class Command:
    module: str
    conf_dir: str
    conf_name: str
    help: str


COMMANDS: dict[str, Command] = {
    "tile": Command("rl_benchmarks.cli.tile", "tile", "config",
                    "detect tissue and write coords.npy (+ QC pictures) for raw slides"),
    "extract-slides": Command("rl_benchmarks.cli.extract_slides", "extract_features", "slide_config",
                              "extract tile features of slides (features.npy per slide)"),
    "extract-tiles": Command("rl_benchmarks.cli.extract_tiles", "extract_features", "tile_config",
                             "extract features of a tile dataset (tile_features.npy)"),
    "export-hf": Command("rl_benchmarks.cli.export_hf", "export_hf", "config",
                         "convert an iBOT checkpoint into an owkin/phikon-style Hugging Face folder"),
    "cv": Command("rl_benchmarks.cli.cross_validation", "slide_level_task/cross_validation", "config",
                  "nested cross-validation of a MIL model on a slide-level task"),
    "results": Command("rl_benchmarks.cli.results", "results", "config",
                       ("aggregate cv experiments: the results CSV and the benchmark table "
                        "(compare=a,b: paired statistics)")),
    "linear-eval": Command("rl_benchmarks.cli.linear_evaluation", "tile_level_task/linear_evaluation",
                           "config", "linear probe (and kNN) of tile features"),
    "heatmap": Command("rl_benchmarks.cli.heatmap", "heatmap", "config",
                       "draw per-tile scores of a trained MIL model over a slide thumbnail"),
    "report": Command("rl_benchmarks.cli.report", "report", "config",
                      "build report.html for a run folder"),
    "pretrain": Command("rl_benchmarks.cli.pretrain", "pretrain", "config",
                        "iBOT pre-training of a ViT on your own tiles"),
    "finetune": Command("rl_benchmarks.cli.finetune", "finetune", "config",
                        "LoRA (or linear) fine-tuning of a ViT extractor on a tile dataset"),
    "demo": Command("rl_benchmarks.cli.demo", "demo", "config",
                    "end-to-end demo on generated slides: tiles, features, CV, pictures, report"),
    "benchmark": Command("rl_benchmarks.cli.benchmark", "benchmark", "config",
                         "a suite's tasks x models x extractors as one cv sweep, then the table"),
    "convert-weights": Command(
        "rl_benchmarks.cli.convert_weights", "convert_weights", "config",
        "convert a checkpoint with non-tensor objects into a safe weights file"),
    "encoders": Command("rl_benchmarks.cli.encoders", "encoders", "config",
                        "list the registered tile encoders, or check= a weights file against one"),
}


def compose(command: str, overrides: list[str]):
    """Compose the Hydra config of ``command`` with ``overrides`` (no working-dir change)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    spec = COMMANDS[command]
    conf_dir = CONF_ROOT / spec.conf_dir
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return hydra_compose(config_name=spec.conf_name, overrides=overrides)


def _groups(command: str) -> list[str]:
    """The config groups of ``command``: those of its primary file's ``defaults`` list
    (two commands may share a config folder, each with its own groups)."""
    from omegaconf import OmegaConf

    spec = COMMANDS[command]
    primary = CONF_ROOT / spec.conf_dir / f"{spec.conf_name}.yaml"
    if not primary.is_file():
        return []
    defaults = OmegaConf.to_container(OmegaConf.load(primary)).get("defaults") or []
    names = [str(k).split()[-1] for d in defaults if isinstance(d, dict) for k in d]
    return sorted(n for n in names if (CONF_ROOT / spec.conf_dir / n).is_dir())


def _group_options(command: str, group: str) -> list[str]:
    """The options of config group ``group`` of ``command``."""
    folder = CONF_ROOT / COMMANDS[command].conf_dir / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _group_overrides(command: str, overrides: list[str]) -> list[str]:
    """The overrides that choose a config group option (``model=abmil``, ``~preset``)."""
    groups = set(_groups(command))
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in groups]


def compose_checked(command: str, overrides: list[str], check: bool = True):
    """Compose ``command``'s config; bad overrides raise one-line ``ConfigValueError``s.

    A mistyped key gets the closest valid keys (never Hydra's ``+key`` hint, which would
    accept the typo); with ``check``, every value is type- and range-checked against the
    command's defaults (:mod:`rl_benchmarks.cli.validation`) before any work is done.
    """
    from hydra.errors import HydraException

    from rl_benchmarks.cli.validation import ConfigValueError, check_config, composition_message

    groups = _group_overrides(command, overrides)
    try:
        cfg = compose(command, overrides)
    except HydraException as exc:
        try:
            reference = compose(command, groups)
        except HydraException:
            reference = None
        message = composition_message(exc, overrides, reference, _groups(command),
                                      lambda group: _group_options(command, group))
        raise ConfigValueError(message) from None
    if check:
        check_config(command, cfg, _reference(command, tuple(groups)))
    return cfg


@functools.lru_cache(maxsize=64)
def _reference(command: str, groups: tuple[str, ...]):
    """The defaults of ``command`` with the group choices ``groups`` (what values are
    checked against); cached, so that the jobs of a sweep compose each reference once.
    Read only: :func:`~rl_benchmarks.cli.validation.check_config` does not change it."""
    from omegaconf import OmegaConf

    cfg = compose(command, list(groups))
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: rlbench <command> [key=value ...]",
        "       rlbench <command> --help   (every key: its default and what it means)",
        "       rlbench <command> -m key=a,b ...   (a Hydra sweep: one job per combination,"
        " docs/sweeps.md)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {c.help}" for name, c in COMMANDS.items()]
    return "\n".join(lines)


def command_meanings(command: str, overrides: list[str]):
    """The meanings (``# comments``) of ``command``'s keys and groups, read from the YAML
    files its config is composed of with ``overrides`` (:mod:`rl_benchmarks.cli.confdoc`),
    and the option chosen in each group."""
    from rl_benchmarks.cli.confdoc import Meanings, config_sources

    spec = COMMANDS[command]
    sources, choices = config_sources(CONF_ROOT / spec.conf_dir, spec.conf_name,
                                      _group_overrides(command, overrides))
    return Meanings.of(sources), choices


def help_text(command: str, overrides: list[str]) -> str:
    """``rlbench <command> --help``: every config group and every key, each with its current
    value (defaults, after ``overrides``) and a one-line meaning."""
    from rl_benchmarks.cli.confdoc import command_help

    cfg = compose_checked(command, overrides, check=False)
    meanings, choices = command_meanings(command, overrides)
    options = {g: _group_options(command, g) for g in _groups(command)}
    groups = " [group=option ...]" if options else ""
    return (f"rlbench {command}: {COMMANDS[command].help}\n"
            f"usage: rlbench {command}{groups} [key=value ...]   (docs/cli.md)\n\n"
            + command_help(cfg, meanings, choices, options))


def run(command: str, overrides: list[str]) -> int:
    """Run ``command`` with ``overrides``; returns the exit code."""
    if command not in COMMANDS:
        print(f"rlbench: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command].module)
    helping = any(a in ("-h", "--help") for a in overrides)
    if not helping and wants_app(overrides):  # -m/--multirun, --cfg, --info: Hydra's app
        spec = COMMANDS[command]
        return run_app(command, spec.module, CONF_ROOT / spec.conf_dir, spec.conf_name,
                       overrides, compose_checked)
    # A command may rewrite its overrides first (e.g. ``cv task=<cohort.csv>``).
    rewrite = getattr(module, "preprocess_overrides", None)
    if rewrite is not None:
        overrides = rewrite(list(overrides))
    if helping:
        print(help_text(command, [a for a in overrides if a not in ("-h", "--help", *APP_FLAGS)]))
        return 0
    cfg = compose_checked(command, overrides)  # bad values stop here, before any work
    code = module.main(cfg)
    return int(code or 0)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "bad input": shown as one line, not a traceback."""
    errors: list[type[BaseException]] = [FileNotFoundError, ValueError]
    for module, name in (
        ("rl_benchmarks.datasets.validation", "CohortError"),
        ("rl_benchmarks.slides.openslide_io", "SlideError"),
        ("rl_benchmarks.models.feature_extractors.weights", "WeightsError"),
        ("hydra.errors", "HydraException"),
        ("omegaconf.errors", "OmegaConfBaseException"),
    ):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # pragma: no cover
            pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    """Console entry point. Set RLB_DEBUG=1 to see tracebacks of input errors."""
    import os
    import signal

    if hasattr(signal, "SIGPIPE"):  # `rlbench cv --help | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    from rl_benchmarks.cli.validation import EXIT_BAD_INPUT, ConfigValueError

    try:
        return run(argv[0], argv[1:])
    except ConfigValueError as exc:
        if os.environ.get("RLB_DEBUG"):
            raise
        print(f"rlbench {argv[0]}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("rlbench: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("RLB_DEBUG") or not isinstance(exc, _user_errors()):
            raise
        message = str(exc).strip() or type(exc).__name__
        print(f"rlbench {argv[0]}: error: {message}\n(set RLB_DEBUG=1 to see the traceback)",
              file=sys.stderr)
        return EXIT_BAD_INPUT


def run_reference_script(command: str, argv: list[str] | None = None) -> int:
    """Entry point of the reference's script paths under ``tools/``.

    They take the same ``key=value`` overrides as ``rlbench <command>``; Hydra's
    ``--config-name config`` (the reference's only config) is accepted and dropped.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args, i = [], 0
    while i < len(argv):
        arg, name = argv[i], None
        if arg in ("--config-name", "-cn"):
            name = argv[i + 1] if i + 1 < len(argv) else ""
            i += 1
        elif arg.startswith("--config-name="):
            name = arg.split("=", 1)[1]
        else:
            args.append(arg)
        if name is not None and name != "config":
            print(f"{command}: unknown config {name!r} (this script has one: 'config')",
                  file=sys.stderr)
            return 2
        i += 1
    return main([command, *args])


if __name__ == "__main__":
    sys.exit(main())
