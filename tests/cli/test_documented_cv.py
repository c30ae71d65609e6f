"""The documented cv path works as written (issue S): the extractor a run records comes from
the features' records (with ``task.data.feature_extractor`` as an override), a batch size too
large for a small cohort names the largest valid one and its key, ``cv --help`` lists
``preset``, and the ``NestedCrossValidation`` example of docs/cv.md runs as shown."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from testlib.cohorts import SMALL, with_feature_folders, write_cohort

from rl_benchmarks.cli.cross_validation import preprocess_overrides
from rl_benchmarks.cli.main import main as rlbench
from rl_benchmarks.val_schemes.experiment import (
    features_identity,
    recorded_extractor,
    run_extractor,
)

ROOT = Path(__file__).resolve().parents[2]
FAST = ["task.validation_scheme.trainer_cfg.num_epochs=2",
        "task.validation_scheme.grid_search_params.learning_rate=[1e-3]",
        "task.validation_scheme.grid_search_params.weight_decay=[0.0]"]
TIMM_NAME = "timm:vit_tiny_patch16_224"


def with_records(folder: Path, name: str = TIMM_NAME, odd: dict[str, str] | None = None) -> Path:
    """A CSV cohort whose slides have ``<slide>/features.npy`` + ``features.json`` records in
    the layout ``rlbench extract-slides`` writes (a ``settings`` block naming the extractor);
    ``odd`` gives some slides another extractor name."""
    def record(i, slide_id, x):
        extractor = (odd or {}).get(slide_id, name)
        settings = {"extractor": extractor, "weights_sha256": "random-init", "tile_size": 224,
                    "mpp": 0.5, "n_tiles": 1000, "seed": 0}
        return {"extractor": {"name": extractor, "weights": "random-init"}, "settings": settings,
                "n_tiles": len(x), "shape": list(x.shape), "dtype": "float32"}

    return with_feature_folders(folder, record)


def cv(csv: Path, logs: Path, *extra: str) -> int:
    args = preprocess_overrides([f"task={csv}", "model=mean_pool", f"logs_root_dir={logs}",
                                 *SMALL, *FAST, *extra])
    return rlbench(["cv", *args])


def test_results_and_report_show_the_extractor_of_the_records(tmp_path, capsys):
    from rl_benchmarks.reports.report import find_predictions

    csv = with_records(tmp_path)
    logs = tmp_path / "logs"
    assert cv(csv, logs) == 0
    out = capsys.readouterr().out
    assert f"features: {TIMM_NAME}" in out
    (run,) = sorted((logs / "cross_validation").glob("*/"))
    summary = json.loads((run / "summary.json").read_text())
    params = json.loads((run / "params.json").read_text())
    assert summary["extractor"] == TIMM_NAME
    assert params["identity"]["features"]["extractor"] == TIMM_NAME
    # the task skeleton's default is still in the configuration, but nobody shows it
    assert params["task"]["data"]["feature_extractor"] == "iBOTViTBasePANCAN"

    assert rlbench(["results", f"logs_root_dir={logs}"]) == 0
    printed = capsys.readouterr().out
    assert TIMM_NAME in printed and "iBOTViTBasePANCAN" not in printed
    table = pd.read_csv(logs / "cross_validation" / "nested_cross_validation_results.csv")
    assert table.loc[0, "features"] == TIMM_NAME and table.loc[0, "extractor"] == TIMM_NAME

    (name,) = find_predictions(logs)
    assert TIMM_NAME in name and "iBOTViTBasePANCAN" not in name
    assert rlbench(["report", f"run_dir={logs}", "draw_figures=false"]) == 0
    html = (logs / "report.html").read_text()
    assert TIMM_NAME in html and "iBOTViTBasePANCAN" not in html


def test_feature_extractor_overrides_the_recorded_name(tmp_path, capsys):
    csv = with_records(tmp_path)
    logs = tmp_path / "logs"
    assert cv(csv, logs, "task.data.feature_extractor=my-vit") == 0
    (run,) = sorted((logs / "cross_validation").glob("*/"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["extractor"] == "my-vit"
    assert summary["identity"]["features"]["extractor"] == TIMM_NAME  # the records' name kept
    capsys.readouterr()
    assert rlbench(["results", f"logs_root_dir={logs}"]) == 0
    row = pd.read_csv(logs / "cross_validation" / "nested_cross_validation_results.csv").iloc[0]
    assert (row["features"], row["extractor"]) == ("my-vit", TIMM_NAME)


def test_run_extractor_rules():
    def cfg(cohort: str, extractor: str | None) -> OmegaConf:
        return OmegaConf.create({"task": {"data": {"feature_extractor": extractor,
                                                   "train": {"cohort": cohort}}}})

    records = {"features": {"extractor": "phikon_hf"}}
    none = {"features": {"extractor": None}}
    # CSV cohort: the records, unless a value other than the skeleton's default is given
    assert run_extractor(cfg("/c.csv", "iBOTViTBasePANCAN"), records) == "phikon_hf"
    assert run_extractor(cfg("/c.csv", "mine"), records) == "mine"
    assert run_extractor(cfg("/c.csv", None), records) == "phikon_hf"
    assert run_extractor(cfg("/c.csv", "iBOTViTBasePANCAN"), none) is None
    # reference cohort: the records, else the folder's name
    assert run_extractor(cfg("TCGA_CRC", "iBOTViTBasePANCAN"), records) == "phikon_hf"
    assert run_extractor(cfg("TCGA_CRC", "iBOTViTBasePANCAN"), none) == "iBOTViTBasePANCAN"
    # readers: summary, then the records in params.json, then the reference's config key
    params = {"task": {"data": {"feature_extractor": "iBOTViTBasePANCAN"}},
              "identity": {"features": {"extractor": "timm:x"}}}
    assert recorded_extractor(params, {"extractor": "mine"}) == "mine"
    assert recorded_extractor(params, {}) == "timm:x"
    assert recorded_extractor({"task": params["task"]}, {}) == "iBOTViTBasePANCAN"
    assert recorded_extractor({}, None) is None


def test_slides_from_different_extractors_are_an_error(tmp_path, capsys):
    csv = with_records(tmp_path, odd={"slide_05_0": "ResNet50"})
    frame = pd.read_csv(csv)
    with pytest.raises(ValueError, match=r"slide_05_0 .*different extractions \(they differ "
                                         r"in extractor\)"):
        features_identity([Path(p) for p in frame.features_path], list(frame.slide_id))
    assert cv(csv, tmp_path / "logs") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("rlbench cv: error: features of slide") and "slide_05_0" in err
    assert not (tmp_path / "logs" / "cross_validation").exists() or not any(
        (tmp_path / "logs" / "cross_validation").glob("*/summary.json"))


BATCH = "task.validation_scheme.trainer_cfg.batch_size"
ONE_POINT = ["task.validation_scheme.grid_search_params.learning_rate=[1e-3]",
             "task.validation_scheme.grid_search_params.weight_decay=[0.0]",
             "task.validation_scheme.trainer_cfg.num_epochs=1", "device=cpu"]


def _largest_batch(err: str) -> int:
    match = re.search(r"the largest batch size that keeps the protocol valid here is (\d+): "
                      rf"pass {re.escape(BATCH)}=(\d+) ", err)
    assert match, err
    assert match.group(1) == match.group(2)
    return int(match.group(1))


def test_small_cohort_error_names_the_largest_valid_batch_size(tmp_path, capsys):
    # the default protocol (5 x 5 folds, batch 16) on a 16-patient cohort
    csv = write_cohort(tmp_path, n_patients=16)
    logs = tmp_path / "logs"
    base = preprocess_overrides([f"task={csv}", f"logs_root_dir={logs}", *ONE_POINT])
    assert rlbench(["cv", *base]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fewer than batch_size=16" in err
    n = _largest_batch(err)
    assert 1 <= n < 16
    # one more than the suggestion still fails (with the same suggestion) ...
    assert rlbench(["cv", *base, f"{BATCH}={n + 1}"]) == 2
    assert _largest_batch(capsys.readouterr().err) == n
    # ... the suggestion itself runs the whole protocol
    assert rlbench(["cv", *base, f"{BATCH}={n}"]) == 0
    (run,) = [r for r in (logs / "cross_validation").glob("*/") if (r / "summary.json").is_file()]
    assert json.loads((run / "status.json").read_text()) == {"completed": True}
    assert json.loads((run / "params.json").read_text())["task"]["validation_scheme"][
        "trainer_cfg"]["batch_size"] == n


def test_batch_size_grid_error_names_the_grid_key():
    from testlib.cv import ToyCohort, trainer_cfg

    from rl_benchmarks.val_schemes import NestedCrossValidation

    ncv = NestedCrossValidation(trainer_cfg(), n_splits_outer=2, n_splits_inner=2,
                                grid_search_params={"batch_size": [2, 64]})
    with pytest.raises(ValueError, match=r"fewer than batch_size=64: .* keep every value of "
                                         r"task.validation_scheme.grid_search_params.batch_size "
                                         r"at most \d+"):
        ncv.run(ToyCohort(n_patients=8, n_tiles=4))


def test_cv_help_lists_preset(capsys):
    from rl_benchmarks.cli.main import compose_checked

    assert rlbench(["cv", "--help"]) == 0
    out = capsys.readouterr().out
    line = re.search(r"^\s*preset: null\b.*$", out, re.M)
    assert line and "tutorial" in line.group(0), out[:600]
    cfg = compose_checked("cv", ["preset=tutorial"])
    assert cfg.task.validation_scheme.n_splits_inner == 0 and cfg.model.n_top == 5
    assert rlbench(["cv", "preset=tutorials"]) == 2
    assert "did you mean tutorial" in capsys.readouterr().err


@pytest.mark.slow
def test_docs_nested_cv_python_example_runs_as_shown(tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "cv.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S)
                if "NestedCrossValidation(" in b]
    csv = write_cohort(tmp_path)
    os.replace(csv, tmp_path / "my_cohort.csv")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "docs/cv.md", "exec"), scope)  # noqa: S102 - the documented code
    ncv, test_metrics = scope["ncv"], scope["test_metrics"]
    assert len(ncv.selected_params) == 5 and len(test_metrics["auc"]) == 5
    assert ncv.selected_params["repeat_1_split_1"]["learning_rate"] in (1e-3, 1e-4)
    assert scope["trainer_cfg"].model._target_ == "rl_benchmarks.models.ABMIL"
    last = [values[-1] for values in test_metrics["auc"].values()]
    assert np.mean(last) > 0.8  # the cohort's planted signal is found
    assert "'learning_rate'" in capsys.readouterr().out


def test_test_cohort_from_another_extractor_is_an_error_before_training(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    (tmp_path / "same").mkdir()
    (tmp_path / "other").mkdir()
    train = with_records(tmp_path / "train")
    same = with_records(tmp_path / "same")
    other = with_records(tmp_path / "other", name="ResNet50")
    logs = tmp_path / "logs"
    assert cv(train, logs, f"test_cohort={other}") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"test_cohort {other}: its features come from another extraction" in err
    assert "ResNet50" in err and TIMM_NAME in err
    assert not list(logs.glob("cross_validation/*/summary.json"))  # nothing trained
    assert cv(train, logs, f"test_cohort={same}") == 0
    (run,) = [r for r in logs.glob("cross_validation/*/") if (r / "summary.json").is_file()]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["identity"]["test_features"]["extractor"] == TIMM_NAME
    assert summary["test_cohort"]["n_slides"] == len(pd.read_csv(same))
