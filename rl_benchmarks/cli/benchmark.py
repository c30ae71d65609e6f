"""``rlbench benchmark suite=<suite> feature_extractor=<a>,<b> [hydra/launcher=...]``.

The paper's benchmark in one command: a suite (:mod:`rl_benchmarks.sweeps.suite`) lists
tasks and MIL models; with the compared feature extractors it expands to tasks × models ×
extractors ``rlbench cv`` experiments, launched as one Hydra sweep
(:func:`rl_benchmarks.cli.multirun.run_sweep`: each experiment is its own job, finished
ones are skipped, failures are listed with their cause), then the results table of those
experiments is written (:func:`rl_benchmarks.val_schemes.results.collect_results`).

Keys that are not the benchmark's own go to every cv experiment (``device=cpu``), and
``hydra/...``/``hydra.*`` keys to the sweep (``hydra/launcher=joblib hydra.launcher.n_jobs=2``);
see docs/sweeps.md. Exit code: 0 when every experiment succeeded, else the largest job
exit code (1: a run failed, 2: bad input).
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rl_benchmarks.cli.main import COMMANDS, compose_checked
from rl_benchmarks.cli.multirun import EXPERIMENT_KEY, outside_hydra, run_sweep
from rl_benchmarks.cli.validation import ConfigValueError
from rl_benchmarks.paths import CONF_ROOT
from rl_benchmarks.sweeps.suite import Experiment, expand, is_cohort, load_suite
from rl_benchmarks.utils.overrides import hydra_value

SUITES_DIR = CONF_ROOT / "benchmark" / "suites"
CV_CONF = CONF_ROOT / COMMANDS["cv"].conf_dir
#: Benchmark keys whose ``a,b`` command-line value is a list.
LIST_KEYS = ("feature_extractor", "models", "tasks", "suite")


def _own_keys() -> set[str]:
    cfg = OmegaConf.load(CONF_ROOT / "benchmark" / "config.yaml")
    return {str(k) for k in cfg if k != "hydra"}


def preprocess_overrides(overrides: list[str]) -> list[str]:
    """Sort the command line: benchmark keys stay (``key=a,b`` becomes a list for
    :data:`LIST_KEYS`), ``hydra/...`` and ``hydra.*`` go to ``sweep=[...]``, anything else
    to ``cv=[...]`` (every experiment's overrides). ``-m`` is accepted and dropped."""
    own, cv, sweep = [], [], []
    keys = _own_keys()
    for item in overrides:
        if item in ("-m", "--multirun", "-h", "--help"):
            if item in ("-h", "--help"):
                own.append(item)
            continue
        key, sep, value = item.partition("=")
        bare = key.lstrip("+~")
        if bare == "hydra" or bare.startswith(("hydra/", "hydra.")):
            sweep.append(item)
        elif bare in keys or not sep:
            if (sep and bare in LIST_KEYS and "," in value and not value.startswith("[")
                    and not value.startswith(("'", '"'))):
                item = f"{key}=[{value}]"
            own.append(item)
        else:
            cv.append(item)
    for name, extra in (("cv", cv), ("sweep", sweep)):
        if extra:
            if any(o.partition("=")[0].lstrip("+~") == name for o in own):
                raise ConfigValueError(f"give {name}=[...] or separate {name} keys "
                                       f"({extra[0]}), not both")
            own.append(f"{name}={hydra_value(extra)}")
    return own


def _strings(value) -> list[str]:
    if value is None:
        return []
    if OmegaConf.is_list(value) or isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def experiments_of(cfg: DictConfig) -> tuple[str, list[Experiment]]:
    """The suite's name and its experiments as ``cfg`` describes them (checked: unknown
    task or model names, or a config that does not compose, are one-line errors)."""
    from rl_benchmarks.cli.cross_validation import preprocess_overrides as cv_rewrite

    suite = load_suite(_strings(cfg.suite), SUITES_DIR)
    if cfg.models is not None:
        suite.models = _strings(cfg.models)
    if cfg.tasks is not None:
        suite.tasks = [str(Path(t).expanduser().resolve()) if is_cohort(t) else t
                       for t in _strings(cfg.tasks)]
    for group, names in (("task", suite.tasks), ("model", suite.models)):
        options = sorted(p.stem for p in (CV_CONF / group).glob("*.yaml"))
        for name in names:
            if not (group == "task" and is_cohort(name)) and name not in options:
                raise ConfigValueError(f"{suite.source}: {group} {name!r}: no such cv {group}; "
                                       f"options: {', '.join(options)}"
                                       + (" (or a cohort CSV)" if group == "task" else ""))
    common = list(_strings(cfg.cv))
    for key in ("logs_root_dir", "data_dir"):
        if cfg.get(key) is not None:
            common.append(f"{key}={hydra_value(str(cfg[key]))}")
    experiments = expand(suite, _strings(cfg.feature_extractor), cfg.features_root_dir, common)
    seen = set()
    for exp in experiments:  # each distinct task x model composes as a single cv run
        if (exp.task, exp.model) not in seen:
            seen.add((exp.task, exp.model))
            with outside_hydra():
                compose_checked("cv", cv_rewrite(list(exp.overrides)))
    return suite.name, experiments


def write_table(cfg: DictConfig, suite: str, folders: set[str]) -> tuple[Path, int]:
    """The results table of this benchmark's experiments (their rows of
    :func:`~rl_benchmarks.val_schemes.results.collect_results`), written atomically."""
    from rl_benchmarks.utils import io
    from rl_benchmarks.val_schemes.experiment import logs_root
    from rl_benchmarks.val_schemes.results import collect_results

    root = logs_root(cfg.logs_root_dir)
    frame = collect_results(root)
    frame = frame[frame["experiment"].isin(folders)].reset_index(drop=True)
    out = Path(cfg.results) if cfg.results else root / "cross_validation" / f"benchmark_{suite}.csv"
    io.write_csv(out, frame, index=False)
    return out, len(frame)


def main(cfg: DictConfig) -> int:
    """Entry point of ``rlbench benchmark``; returns the exit code."""
    from rl_benchmarks.val_schemes.experiment import logs_root

    logs_root(cfg.logs_root_dir)  # no logs folder: one line, before any work
    suite, experiments = experiments_of(cfg)
    if cfg.dry_run:
        for i, exp in enumerate(experiments):
            print(f"#{i} {exp.task} × {exp.model} × {exp.extractor}: {' '.join(exp.overrides)}")
        print(f"rlbench benchmark: {len(experiments)} experiments (dry run, nothing launched)")
        return 0
    result = run_sweep("cv", COMMANDS["cv"].module, CV_CONF, COMMANDS["cv"].conf_name,
                       [f"{EXPERIMENT_KEY}=range({len(experiments)})", *_strings(cfg.sweep)],
                       compose_checked, experiments=[list(e.overrides) for e in experiments],
                       name="rlbench benchmark")
    folders = {Path(o.extra["folder"]).name for o in result.outcomes if o.extra.get("folder")}
    try:
        path, rows = write_table(cfg, suite, folders)
        bench = write_paper_table(cfg, suite, experiments)
    except (OSError, ValueError) as err:
        print(f"rlbench benchmark: error: results table not written: {err}", file=sys.stderr)
        return max(result.code, 1)
    print(f"rlbench benchmark: results of {rows}/{len(experiments)} experiments -> {path}")
    missing = f"; {len(bench.missing)} missing" if len(bench.missing) else ""
    print(f"rlbench benchmark: table ({bench.n_filled} cells filled{missing}) -> {bench.files['table_md']}")
    return result.code


def write_paper_table(cfg: DictConfig, suite: str, experiments: list):
    """The paper-style table (tasks × model · extractor, mean ± sd over folds; docs/results.md)
    of the logs root, with this suite's cells as the expected ones, in
    ``<logs root>/benchmark/<suite>/``."""
    from rl_benchmarks.reports.benchmark_table import write_benchmark
    from rl_benchmarks.val_schemes.experiment import logs_root

    root = logs_root(cfg.logs_root_dir)
    expected = [{"task": e.task, "model": e.model, "extractor": e.extractor} for e in experiments]
    return write_benchmark(root, out_dir=root / "benchmark" / suite, expected=expected)


__all__ = ["main", "preprocess_overrides", "experiments_of", "write_table", "write_paper_table"]
