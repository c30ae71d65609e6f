"""Hydra's multirun, ``--cfg`` and ``--info`` for ``rlbench <command>`` (docs/sweeps.md).

``rlbench <command> key=value ...`` (a single run) composes its config with Hydra's
compose API (:mod:`rl_benchmarks.cli.main`). With ``-m``/``--multirun``, ``--cfg`` or
``--info`` the command is handed to Hydra's own application machinery instead
(:class:`hydra._internal.hydra.Hydra` with the command's config folder as the search
path), so comma sweeps, ``range()``, ``choice()``, ``glob()``, ``hydra.sweep.dir``,
``hydra/launcher=basic|joblib|submitit_local|submitit_slurm`` and every launcher setting
behave as in any Hydra application.

Each job of a sweep (:class:`SweepJob`) is one single run: its overrides go through the
command's ``preprocess_overrides`` and ``compose_checked`` (the same one-line checks as
``rlbench <command>``), then the command's ``main(cfg)``. A job never raises: a bad value or
a failed run is recorded with its cause (:class:`~rl_benchmarks.sweeps.progress.SweepOutcome`)
and the other jobs go on. Jobs report to the sweep's progress file, print a progress line
(done, skipped, failed, running, waiting, ETA) and the launching process ends with a
summary listing every failure; the exit code is 0 only when every job succeeded.

Jobs do not change directory (``hydra.job.chdir`` defaults to false with
``version_base=1.3``), so relative paths mean the same as in a single run.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl_benchmarks.sweeps.progress import (
    DONE,
    FAILED,
    PROGRESS_NAME,
    SKIPPED,
    ProgressLog,
    SweepOutcome,
    exit_code,
    format_seconds,
    read_events,
    summary_lines,
    write_summary,
)
from rl_benchmarks.utils.overrides import hydra_quote

#: Flags that hand a command to Hydra's application machinery.
APP_FLAGS = ("-m", "--multirun", "--cfg", "-c", "--info", "-i")

#: Config groups whose value may be a file path (``cv task=<cohort.csv>``): in a sweep they
#: travel as ``+rlbench_sweep.<group>=...`` (Hydra cannot compose a path as a group option)
#: and each job turns its value back into ``<group>=<value>`` for ``preprocess_overrides``.
PATH_GROUPS: dict[str, tuple[str, ...]] = {"cv": ("task",)}
SWEEP_PREFIX = "+rlbench_sweep."

#: The swept key of explicit experiment lists (``rlbench benchmark``): job ``i`` runs
#: ``experiments[i]``.
EXPERIMENT_KEY = "+rlbench_experiment"


def wants_app(argv: Sequence[str]) -> bool:
    """Whether ``argv`` asks for a multirun, ``--cfg`` or ``--info``."""
    return any(a in APP_FLAGS or a.startswith(("--cfg=", "--info=")) for a in argv)


def is_multirun(argv: Sequence[str]) -> bool:
    """Whether ``argv`` asks for a multirun."""
    return any(a in ("-m", "--multirun") for a in argv)


def _is_hydra_key(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def _looks_like_path(value: str) -> bool:
    items = [v.strip().strip("'\"") for v in value.split(",")]
    return any(v.lower().endswith((".csv", ".tsv", ".txt")) or "/" in v or os.sep in v
               for v in items)


def rename_path_groups(command: str, overrides: Sequence[str]) -> list[str]:
    """``task=a.csv,b`` -> ``+rlbench_sweep.task=a.csv,b`` for the groups of
    :data:`PATH_GROUPS` whose value names a file (see :meth:`SweepJob.job_overrides`)."""
    groups = PATH_GROUPS.get(command, ())
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.lstrip("+") in groups and _looks_like_path(value):
            item = f"{SWEEP_PREFIX}{key.lstrip('+')}={value}"
        out.append(item)
    return out


def expand(overrides: Sequence[str]) -> list[list[str]]:
    """The job override lists of a sweep, as Hydra's basic sweeper expands them (comma
    lists, ``range()``, ``choice()``...); ``hydra.*`` overrides left out."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(
        [o for o in overrides if not _is_hydra_key(o)])
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def single_runs(command: str, argv: Sequence[str], limit: int = 16) -> list[list[str]]:
    """The single-run override lists that a command line stands for (at most ``limit``):
    Hydra's flags and their values (``-m``, ``--cfg job``, ``--info defaults``) and the
    ``hydra.*``/``hydra/...`` overrides dropped, a sweep expanded into its jobs. ``rlbench
    benchmark`` takes its whole line (its ``a,b`` values are lists). For checking
    documented command lines without running them."""
    words = [w for w in argv if not w.startswith("-") and ("=" in w or w.startswith("~"))]
    if command == "benchmark":
        return [words]
    words = [w for w in words if not _is_hydra_key(w)]
    mapper = SweepJob(command, "", lambda *_: None)
    return [mapper.job_overrides(job) for job in expand(rename_path_groups(command, words))][:limit]


# --------------------------------------------------------------------------- one job


class _Tee(io.TextIOBase):
    """Writes go to ``stream`` and are kept (the failure cause is the last line)."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.kept = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.kept.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def last_line(self) -> str:
        lines = [ln.strip() for ln in self.kept.getvalue().splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.startswith("(set RLB_DEBUG")]
        return lines[-1] if lines else ""


@contextlib.contextmanager
def outside_hydra() -> Iterator[None]:
    """Run a block as a single ``rlbench`` run would: without the sweep's global Hydra
    state (so the compose API works inside a job), restored afterwards."""
    import copy

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobRuntime

    saved = Singleton._instances.pop(GlobalHydra, None)
    hydra_config = Singleton._instances.get(HydraConfig)
    saved_cfg = getattr(hydra_config, "cfg", None)
    runtime = Singleton._instances.get(JobRuntime)  # the compose API renames the job
    saved_runtime = copy.deepcopy(runtime.conf) if runtime is not None else None
    try:
        yield
    finally:
        Singleton._instances.pop(GlobalHydra, None)
        if saved is not None:
            Singleton._instances[GlobalHydra] = saved
        if hydra_config is not None:
            hydra_config.cfg = saved_cfg
        if runtime is not None:
            runtime.conf = saved_runtime


@contextlib.contextmanager
def _observe_skip(module: Any) -> Iterator[dict[str, Any]]:
    """Whether the command skipped its (already completed) experiment, and its folder:
    commands that run through ``run_and_print`` (``cv``) return a result with ``.skipped``
    and ``.folder``."""
    seen: dict[str, Any] = {"skipped": False}
    original = getattr(module, "run_and_print", None)
    if original is None:
        yield seen
        return

    def spy(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        seen["skipped"] = bool(getattr(result, "skipped", False))
        if getattr(result, "folder", None) is not None:
            seen["folder"] = str(result.folder)
        return result

    module.run_and_print = spy
    try:
        yield seen
    finally:
        module.run_and_print = original


def _one_line(exc: BaseException) -> str:
    """The first line of an error; the type is named unless it is a bad-input error."""
    text = str(exc).strip().splitlines()
    if text and _bad_input(exc):
        return text[0]
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _bad_input(exc: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(exc, (ValueError, FileNotFoundError, KeyError, HydraException,
                            OmegaConfBaseException))


@dataclass
class SweepJob:
    """The task function of a sweep: one single run of ``command`` per job.

    Picklable (joblib and submitit ship it to other processes): it holds names and plain
    data, and ``compose_checked`` by reference."""

    command: str
    module: str
    compose_checked: Callable[[str, list[str]], Any]
    progress: ProgressLog | None = None
    experiments: list[list[str]] | None = None
    name: str = ""
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""  # the launching process's working directory: relative paths mean the same

    def job_overrides(self, overrides: Sequence[str]) -> list[str]:
        """The single-run overrides of a job: renamed path groups back to ``<group>=``,
        and ``+rlbench_experiment=i`` replaced by ``experiments[i]``."""
        out: list[str] = []
        for item in overrides:
            key, _, value = item.partition("=")
            if key.startswith(SWEEP_PREFIX):
                out.append(f"{key[len(SWEEP_PREFIX):]}={value}")
            elif key in (EXPERIMENT_KEY, EXPERIMENT_KEY.lstrip("+")) and self.experiments is not None:
                out.extend(self.experiments[int(value)])
            else:
                out.append(item)
        return out

    def explain(self, jobs: Sequence[Sequence[str]]) -> None:
        """Raise the one-line error of the first job whose config does not compose (what
        ``rlbench <command>`` says for it); return when every job composes."""
        module = importlib.import_module(self.module)
        rewrite = getattr(module, "preprocess_overrides", None)
        for overrides in jobs:
            single = self.job_overrides(overrides)
            with outside_hydra():
                self.compose_checked(self.command, rewrite(single) if rewrite else single)

    def run(self, index: int, overrides: Sequence[str]) -> SweepOutcome:
        """Validate and run one job; every failure becomes an outcome, never an exception
        (except KeyboardInterrupt)."""
        t0 = time.perf_counter()
        overrides = list(overrides)
        outcome = SweepOutcome(index=index, overrides=overrides, status=DONE)
        module = importlib.import_module(self.module)
        try:
            rewrite = getattr(module, "preprocess_overrides", None)
            single = rewrite(list(overrides)) if rewrite is not None else list(overrides)
            cfg = self.compose_checked(self.command, single)  # bad values: one line, no work
        except Exception as exc:  # noqa: BLE001 - recorded as this job's failure
            outcome.status, outcome.code, outcome.cause = FAILED, 2, _one_line(exc)
            print(f"rlbench {self.command}: error: {outcome.cause}", file=sys.stderr)
            outcome.seconds = time.perf_counter() - t0
            return outcome
        tee = _Tee(sys.stderr)
        try:
            t_main = time.perf_counter()
            try:
                with contextlib.redirect_stderr(tee), _observe_skip(module) as seen:
                    code = int(module.main(cfg) or 0)
            finally:  # the command's own time (the rest of ``seconds`` is the sweep's)
                outcome.extra["main_s"] = time.perf_counter() - t_main
            outcome.code = code
            if seen.get("folder"):
                outcome.extra["folder"] = seen["folder"]
            if code:
                outcome.status, outcome.cause = FAILED, tee.last_line() or f"exit code {code}"
            elif seen["skipped"]:
                outcome.status = SKIPPED
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit included: one job's end
            if isinstance(exc, SystemExit) and not exc.code:
                outcome.status = DONE
            else:
                outcome.status, outcome.cause = FAILED, _one_line(exc)
                outcome.code = 2 if _bad_input(exc) else 1
                if isinstance(exc, SystemExit) and isinstance(exc.code, int):
                    outcome.code = exc.code
                if outcome.code != 2 or os.environ.get("RLB_DEBUG"):  # a bug: its traceback
                    traceback.print_exc()
                else:  # bad input: one line, as a single run prints it
                    print(f"rlbench {self.command}: error: {outcome.cause}", file=sys.stderr)
        outcome.seconds = time.perf_counter() - t0
        return outcome

    def __call__(self, cfg: Any) -> SweepOutcome:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        index = int(hydra_cfg.job.num)
        overrides = self.job_overrides(list(hydra_cfg.overrides.task))
        os.environ.update(self.env)
        label = " ".join(overrides) or "(defaults)"
        name = self.name or f"rlbench {self.command}"
        if self.progress is not None:
            self.progress.start(index, overrides)
        print(f"[{name}] #{index} started: {label}", flush=True)
        here = os.getcwd()
        # a reused worker process (joblib keeps its pool) may stand elsewhere; an explicit
        # hydra.job.chdir=true (the job's output folder) is left as the user asked
        if (self.cwd and self.cwd != here and os.path.isdir(self.cwd)
                and not hydra_cfg.job.get("chdir")):
            os.chdir(self.cwd)
        try:
            with outside_hydra():
                outcome = self.run(index, overrides)
        finally:
            os.chdir(here)
        line = ""
        if self.progress is not None:
            self.progress.end(outcome)
            line = " | " + self.progress.state().line()
        cause = f": {outcome.cause}" if outcome.status == FAILED else ""
        print(f"[{name}] #{index} {outcome.status} in {format_seconds(outcome.seconds)} "
              f"[{label}]{cause}{line}", flush=True)
        return outcome


# --------------------------------------------------------------------------- the sweep


@contextlib.contextmanager
def hydra_app(command: str, conf_dir: str | os.PathLike) -> Iterator[Any]:
    """A Hydra application over the config folder ``conf_dir`` (version_base 1.3: jobs do
    not change directory), torn down afterwards."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton

    version.setbase("1.3")
    saved = Singleton._instances.pop(GlobalHydra, None)
    search_path = create_config_search_path(f"file://{Path(conf_dir).resolve()}")
    try:
        yield Hydra.create_main_hydra2(task_name=command.replace("-", "_"),
                                       config_search_path=search_path)
    finally:
        GlobalHydra.instance().clear()
        Singleton._instances.pop(GlobalHydra, None)
        if saved is not None:
            Singleton._instances[GlobalHydra] = saved


def _parallel(launcher: Any) -> int:
    """How many jobs the launcher runs at once (0: unknown), for the ETA."""
    if launcher is None:
        return 1
    for key in ("n_jobs", "array_parallelism"):
        value = launcher.get(key) if hasattr(launcher, "get") else None
        if isinstance(value, int):
            return (os.cpu_count() or 1) if value < 0 else value
    return 1 if "BasicLauncher" in str(launcher.get("_target_", "")) else 0


@dataclass
class SweepResult:
    """A finished sweep: its folder, its jobs' outcomes and its exit code."""

    sweep_dir: Path
    outcomes: list[SweepOutcome]
    seconds: float
    code: int


def _outcomes(events: list[dict[str, Any]], jobs: list[list[str]], returns: Any,
              error: str) -> list[SweepOutcome]:
    """Every job's outcome: its end event, else its Hydra return value, else failed
    (killed, or never started because the sweep stopped)."""
    ended = {int(e["job"]): e for e in events if e.get("event") == "end"}
    started = {int(e["job"]) for e in events if e.get("event") == "start"}
    by_index: dict[int, SweepOutcome] = {}
    for batch in returns or []:
        for r in batch:
            value = getattr(r, "_return_value", None)
            if isinstance(value, SweepOutcome):
                by_index[value.index] = value
    out = []
    for i, overrides in enumerate(jobs):
        if i in ended:
            e = ended[i]
            out.append(SweepOutcome(index=i, overrides=list(e.get("overrides") or overrides),
                                    status=e.get("status", FAILED), code=int(e.get("code", 0)),
                                    cause=e.get("cause", ""), seconds=float(e.get("seconds", 0)),
                                    extra=dict(e.get("extra") or {})))
        elif i in by_index:
            out.append(by_index[i])
        else:
            why = "started but no result (killed?)" if i in started else "not run"
            out.append(SweepOutcome(index=i, overrides=overrides, status=FAILED, code=1,
                                    cause=f"{why}{': ' + error if error else ''}"))
    return out


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """Hydra configures logging (``dictConfig``) for itself and for every job. In the
    launching process that must not outlive the sweep: its handlers hold the streams of the
    moment (which a caller may swap and close), and it may disable existing loggers."""
    manager = logging.Logger.manager
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    saved = {name: (lg.level, list(lg.handlers), lg.propagate, lg.disabled)
             for name, lg in manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    try:
        yield
    finally:
        root.setLevel(saved_root[0])
        root.handlers[:] = saved_root[1]
        for name, lg in list(manager.loggerDict.items()):
            if not isinstance(lg, logging.Logger):
                continue
            if name in saved:
                lg.level, handlers, lg.propagate, lg.disabled = saved[name]
                lg.handlers[:] = handlers
            else:  # made during the sweep (Hydra's own): no handler of the sweep's survives
                lg.handlers[:] = []
                lg.disabled = False


def run_sweep(command: str, module: str, conf_dir: str | os.PathLike, conf_name: str,
              overrides: Sequence[str], compose_checked: Callable[[str, list[str]], Any],
              experiments: list[list[str]] | None = None, name: str | None = None,
              quiet_summary: bool = False) -> SweepResult:
    """Launch ``command`` over the sweep ``overrides`` (Hydra grammar, ``hydra.*`` and
    ``hydra/launcher=...`` included) and wait for every job; see the module docstring.

    ``experiments`` (with an ``+rlbench_experiment=range(N)`` sweep) gives each job's
    overrides explicitly. Raises a one-line HydraException for an unparsable sweep or a
    bad ``hydra`` setting, before any job runs."""
    from hydra.errors import HydraException
    from hydra.types import RunMode

    from rl_benchmarks.cli.validation import ConfigValueError

    name = name or f"rlbench {command}"
    overrides = rename_path_groups(command, overrides)
    if not any("job_logging" in o for o in overrides):  # INFO logs go to each job's .log file
        overrides = [*overrides, "++hydra.job_logging.handlers.console.level=WARNING"]
    mapper = SweepJob(command, module, compose_checked, experiments=experiments)
    jobs = [mapper.job_overrides(j) for j in expand(overrides)]  # each job's single-run overrides
    launch = uuid.uuid4().hex[:12]
    t0 = time.perf_counter()
    with _logging_restored(), hydra_app(command, conf_dir) as hydra:
        try:
            sweep_cfg = hydra.compose_config(config_name=conf_name, overrides=list(overrides),
                                             run_mode=RunMode.MULTIRUN,
                                             with_log_configuration=False)
        except HydraException as exc:  # e.g. hydra/launcher=<unknown>: one line
            text = str(exc).split("Config search path")[0]
            raise ConfigValueError(" ".join(text.replace("\t", " ").split())) from None
        sweep_dir = Path(str(sweep_cfg.hydra.sweep.dir)).expanduser().resolve()
        progress = ProgressLog(str(sweep_dir / PROGRESS_NAME), launch, len(jobs),
                               _parallel(sweep_cfg.hydra.get("launcher")))
        job = SweepJob(command, module, compose_checked, progress=progress,
                       experiments=experiments, name=name, cwd=os.getcwd())
        print(f"[{name}] {len(jobs)} experiments -> {sweep_dir}", flush=True)
        returns, error = None, ""
        try:
            returns = hydra.multirun(
                config_name=conf_name, task_function=job,
                overrides=[*overrides, f"hydra.sweep.dir={hydra_quote(str(sweep_dir))}",
                           "hydra.mode=MULTIRUN"])
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - a launcher failure: report what finished
            if not read_events(progress.path, launch):
                job.explain(jobs)  # nothing ran: a job's own one-line error, if it has one
                raise  # else a bad launcher setting
            error = _one_line(exc)
    seconds = time.perf_counter() - t0
    outcomes = _outcomes(read_events(progress.path, launch), jobs, returns, error)
    write_summary(sweep_dir, outcomes, seconds, {"command": command, "launch": launch})
    if not quiet_summary:
        print("\n".join(summary_lines(outcomes, seconds, name=f"[{name}]")), flush=True)
    return SweepResult(sweep_dir, outcomes, seconds, exit_code(outcomes))


def run_app(command: str, module: str, conf_dir: str | os.PathLike, conf_name: str,
            argv: Sequence[str], compose_checked: Callable[[str, list[str]], Any]) -> int:
    """``rlbench <command> -m|--cfg|--info ...``: parse Hydra's flags and run; returns the
    exit code (a sweep's: 0 only when every job succeeded)."""
    from hydra._internal.utils import get_args_parser

    from rl_benchmarks.cli.validation import ConfigValueError

    parser = get_args_parser()
    parser.exit_on_error = False
    try:
        args = parser.parse_args(list(argv))
    except (SystemExit, Exception) as exc:  # argparse's own message is already printed
        raise ConfigValueError(f"bad Hydra flags in {' '.join(argv)!r}: {exc}") from None
    chosen = [n for n, on in (("--multirun", args.multirun), ("--cfg", args.cfg is not None),
                              ("--info", args.info is not None)) if on]
    if len(chosen) > 1:
        raise ConfigValueError(f"give one of {', '.join(chosen)}, not several")
    overrides = list(args.overrides)
    if args.multirun:
        return run_sweep(command, module, conf_dir, conf_name, overrides, compose_checked).code
    rewrite = getattr(importlib.import_module(module), "preprocess_overrides", None)
    if rewrite is not None:
        overrides = rewrite(overrides)
    with _logging_restored(), hydra_app(command, conf_dir) as hydra:
        if args.cfg is not None:
            hydra.show_cfg(config_name=conf_name, overrides=overrides, cfg_type=args.cfg,
                           package=args.package, resolve=args.resolve)
        else:
            hydra.show_info(args.info, config_name=conf_name, overrides=overrides)
    return 0


__all__ = ["APP_FLAGS", "EXPERIMENT_KEY", "SweepJob", "SweepResult", "expand", "hydra_app",
           "is_multirun", "outside_hydra", "rename_path_groups", "run_app", "run_sweep",
           "single_runs", "wants_app"]
