"""Benchmark suites: which tasks and MIL models ``rlbench benchmark`` runs.

A suite is a YAML file (``rl_benchmarks/conf/benchmark/suites/<name>.yaml``, or any path)::

    tasks:                      # cv task names (conf/slide_level_task/cross_validation/task)
      - tcga_crc_msi_prediction #   or cohort CSV paths (relative to the suite file)
      - my_cohort.csv
    models: [abmil, chowder]    # cv model names (conf/slide_level_task/cross_validation/model)
    overrides: []               # rlbench cv overrides for every experiment (optional)
    model_overrides:            # ... for the experiments of one model (optional)
      hipt_mil: [task.validation_scheme.trainer_cfg.batch_size=1]
    extractor_overrides:        # ... for the experiments of one feature extractor (optional)
      ResNet50: [task.validation_scheme.trainer_cfg.num_epochs=100]

``suite=<cohort.csv>`` (or several, comma-separated) is a suite of those cohorts with the
paper's six models. :func:`expand` turns a suite and the compared feature extractors into
one list of ``rlbench cv`` overrides per experiment (tasks × models × extractors).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl_benchmarks.utils.overrides import hydra_quote

#: The paper's six MIL models (the reference's scripts/slides_classification.sh).
PAPER_MODELS = ("mean_pool", "chowder", "abmil", "dsmil", "hipt_mil", "trans_mil")
SUITE_KEYS = ("name", "tasks", "models", "overrides", "model_overrides", "extractor_overrides")
_COHORT_SUFFIXES = (".csv", ".tsv")


@dataclass
class Suite:
    """Tasks × models, with the overrides of every experiment, of one model and of one
    feature extractor."""

    name: str
    tasks: list[str]
    models: list[str]
    overrides: list[str] = field(default_factory=list)
    model_overrides: dict[str, list[str]] = field(default_factory=dict)
    extractor_overrides: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""


@dataclass(frozen=True)
class Experiment:
    """One cell of the benchmark: a task, a model, a feature extractor, and the ``rlbench
    cv`` overrides that run it."""

    task: str
    model: str
    extractor: str
    overrides: tuple[str, ...]


def is_cohort(value: str) -> bool:
    """Whether a task (or suite) value is a cohort CSV path."""
    return str(value).lower().endswith(_COHORT_SUFFIXES)


def _strings(value: Any, what: str, source: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{source}: {what} must be a list of names, got {value!r}")
    return list(value)


def _per_name(value: Any, what: str, source: str) -> dict[str, list[str]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{source}: {what} must map a name to a list of overrides, got {value!r}")
    return {str(k): _strings(v, f"{what}.{k}", source) for k, v in value.items()}


def suite_from_mapping(obj: Any, name: str, source: str, base: Path | None = None) -> Suite:
    """A :class:`Suite` from a YAML mapping (``source`` names the file in errors; CSV tasks
    relative to ``base``)."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: a suite is a mapping with 'tasks' and 'models'")
    unknown = sorted(set(obj) - set(SUITE_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown suite key(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(SUITE_KEYS)}")
    if not obj.get("tasks"):
        raise ValueError(f"{source}: the suite lists no tasks")
    tasks = []
    for task in _strings(obj["tasks"], "tasks", source):
        if is_cohort(task):
            path = Path(task).expanduser()
            if not path.is_absolute() and base is not None:
                path = base / path
            task = str(path.resolve())
        tasks.append(task)
    models = _strings(obj.get("models") or list(PAPER_MODELS), "models", source)
    return Suite(name=str(obj.get("name") or name), tasks=tasks, models=models,
                 overrides=_strings(obj.get("overrides") or [], "overrides", source),
                 model_overrides=_per_name(obj.get("model_overrides"), "model_overrides", source),
                 extractor_overrides=_per_name(obj.get("extractor_overrides"),
                                               "extractor_overrides", source),
                 source=source)


def available_suites(suites_dir: str | os.PathLike) -> list[str]:
    """The names of the suites shipped in ``suites_dir``."""
    return sorted(p.stem for p in Path(suites_dir).glob("*.yaml"))


def load_suite(spec: str | Sequence[str], suites_dir: str | os.PathLike) -> Suite:
    """The suite ``spec`` names: a shipped suite (``suites_dir/<name>.yaml``), a suite YAML
    path, or cohort CSV path(s) (a suite of those cohorts with the paper's models).
    A bad suite is a one-line ValueError naming the file."""
    from omegaconf import OmegaConf

    items = [spec] if isinstance(spec, str) else list(spec)
    items = [str(s).strip() for s in items if str(s).strip()]
    if not items:
        raise ValueError("suite is empty: give suite=<name>, a suite YAML or cohort CSV(s)")
    if all(is_cohort(s) for s in items):
        tasks = [str(Path(s).expanduser().resolve()) for s in items]
        missing = [t for t in tasks if not Path(t).is_file()]
        if missing:
            raise FileNotFoundError(f"suite cohort {missing[0]}: no such file")
        return Suite(name="cohorts", tasks=tasks, models=list(PAPER_MODELS), source=",".join(items))
    if len(items) > 1:
        raise ValueError(f"suite={','.join(items)}: give one suite (a name or a YAML file), "
                         f"or cohort CSV files only")
    value = items[0]
    path = Path(value).expanduser()
    if path.suffix.lower() not in (".yaml", ".yml"):
        path = Path(suites_dir) / f"{value}.yaml"
        if not path.is_file():
            raise ValueError(f"suite={value}: no such suite; shipped suites: "
                             f"{', '.join(available_suites(suites_dir))} (or give a YAML path)")
    if not path.is_file():
        raise FileNotFoundError(f"suite file {path}: no such file")
    try:
        obj = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # noqa: BLE001 - a YAML or interpolation error: one line
        raise ValueError(f"{path}: not a readable suite YAML ({str(exc).splitlines()[0]})") from None
    return suite_from_mapping(obj, path.stem, str(path), base=path.parent)


def expand(suite: Suite, extractors: Sequence[str], features_root_dir: str | None = None,
           common: Sequence[str] = ()) -> list[Experiment]:
    """Every experiment of ``suite`` × ``extractors`` (task-major order), each with its
    ``rlbench cv`` overrides: the task, the model, ``task.data.feature_extractor`` (reference
    tasks read ``<features root>/slides_classification/features/<extractor>``); for a CSV
    task with ``features_root_dir``, ``features_root_dir=<root>/<extractor>`` (its slides
    without ``features_path`` read ``<root>/<extractor>/<slide>/features.npy``); then the
    suite's, the model's, the extractor's and the ``common`` overrides, in that order."""
    if not extractors:
        raise ValueError("feature_extractor lists no extractor")
    out = []
    for task in suite.tasks:
        for model in suite.models:
            for extractor in extractors:
                ov = [f"task={hydra_quote(task) if is_cohort(task) else task}", f"model={model}",
                      f"task.data.feature_extractor={hydra_quote(extractor)}"]
                if features_root_dir:
                    root = Path(str(features_root_dir)).expanduser()
                    root = root / extractor if is_cohort(task) else root
                    ov.append(f"features_root_dir={hydra_quote(str(root))}")
                ov += [*suite.overrides, *suite.model_overrides.get(model, []),
                       *suite.extractor_overrides.get(extractor, []), *common]
                out.append(Experiment(task, model, extractor, tuple(ov)))
    return out


__all__ = ["PAPER_MODELS", "Experiment", "Suite", "available_suites", "expand", "is_cohort",
           "load_suite", "suite_from_mapping"]
