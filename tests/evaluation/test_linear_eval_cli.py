"""``rlbench linear-eval`` end to end on small generated features (tier 1)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rl_benchmarks.cli.main import run
from rl_benchmarks.evaluation.linear_probe import EXTRA_COLUMNS
from rl_benchmarks.paths import REPO_ROOT
from rl_benchmarks.utils.linear_evaluation import result_columns

NCT = ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]
D = 6
FAST = ["n_ensembling=2", "n_resamples=30", "num_workers=1", "knn_k=5", "progress=false"]


def _feature(label: int, rng: np.random.Generator, n_classes: int) -> np.ndarray:
    centers = np.random.default_rng(99).normal(size=(n_classes, D)) * 3.0
    return (centers[label] + rng.normal(size=D)).astype(np.float32)


def _save_features(folder: Path, ids: list[str], labels: list[int], n_classes: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "tile_features.npy", np.stack([_feature(y, rng, n_classes) for y in labels]))
    np.save(folder / "tile_ids.npy", np.asarray(ids, dtype=str))


def _make_nct(root: Path, per_class_train: int = 12, per_class_valid: int = 5) -> None:
    base = root / "raw" / "tiles_classification" / "NCT-CRC_FULL"
    (base / "clinical").mkdir(parents=True)
    with open(base / "clinical" / "dict_labels.pkl", "wb") as f:
        pickle.dump({c: i for i, c in enumerate(NCT)}, f)
    ids, labels = [], []
    for folder, n, tag in (("NCT-CRC-HE-100K-NONORM", per_class_train, ""),
                           ("CRC-VAL-HE-7K", per_class_valid, "TCGA-")):
        for code, cls in enumerate(NCT):
            (base / "patches" / folder / cls).mkdir(parents=True)
            for i in range(n):
                name = f"{cls}-{tag}{i:04d}"
                (base / "patches" / folder / cls / f"{name}.tif").touch()  # only listed, never read
                ids.append(name)
                labels.append(code)
    _save_features(root / "preprocessed" / "tiles_classification" / "features" / "TinyViT"
                   / "NCT-CRC_FULL", ids, labels, len(NCT))


def _make_camelyon(root: Path) -> dict[int, int]:
    base = root / "raw" / "tiles_classification" / "CAMELYON17-WILDS_FULL" / "clinical"
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = []
    for center in range(5):
        for i in range(30):
            rows.append({"patient": center * 10 + i % 3, "node": i % 2, "x_coord": i * 96,
                         "y_coord": center * 96, "tumor": int(rng.random() < 0.4),
                         "center": center})
    meta = pd.DataFrame(rows)
    meta.to_csv(base / "metadata.csv")
    ids = [f"patch_patient_{r.patient:03d}_node_{r.node}_x_{r.x_coord}_y_{r.y_coord}"
           for r in meta.itertuples()]
    _save_features(root / "preprocessed" / "tiles_classification" / "features" / "TinyViT"
                   / "CAMELYON17-WILDS_FULL", ids, meta["tumor"].tolist(), 2)
    return meta["center"].value_counts().to_dict()


def _check_table(path: Path, classes: list[str], portions: list[float]) -> pd.DataFrame:
    table = pd.read_csv(path)
    assert list(table.columns) == result_columns(classes) + list(EXTRA_COLUMNS)
    assert table["portion"].tolist() == portions
    numeric = table.drop(columns=["eval_set"])
    assert np.isfinite(numeric.to_numpy(dtype=float)).all(), numeric
    for m in ("auc", "acc", "f1", "bacc"):
        assert (table[f"bt_{m}_low"] <= table[m]).all()
        assert (table[m] <= table[f"bt_{m}_high"]).all()
    return table


def test_nct_crc_removes_back_and_writes_the_reference_csv(tmp_path, monkeypatch):
    _make_nct(tmp_path / "data")
    monkeypatch.setenv("RLB_LOGS_DIR", str(tmp_path / "env_logs"))
    code = run("linear-eval", ["tile_dataset=nct_crc", "feature_extractor=TinyViT",
                               f"data_dir={tmp_path / 'data'}", "portions=[0.5,1.0]", *FAST])
    assert code == 0
    out = tmp_path / "env_logs" / "linear_evaluation"
    table = _check_table(out / "nct_crc_TinyViT.csv", [c for c in NCT if c != "BACK"], [0.5, 1.0])
    assert table["n_train"].tolist() == [48, 96]  # 8 classes x 12 tiles, BACK removed
    assert table["eval_set"].tolist() == ["valid", "valid"]
    record = json.loads((out / "nct_crc_TinyViT" / "run.json").read_text())
    assert record["completed"] and record["n_eval"] == {"valid": 40}
    assert record["class_names"] == [c for c in NCT if c != "BACK"]


def test_camelyon_reports_both_hospitals_and_honours_logs_root_dir(tmp_path, monkeypatch):
    counts = _make_camelyon(tmp_path / "data")
    monkeypatch.setenv("RLB_LOGS_DIR", str(tmp_path / "env_logs"))
    logs = tmp_path / "my_logs"
    code = run("linear-eval", ["tile_dataset=camelyon17_wilds", "feature_extractor=TinyViT",
                               f"data_dir={tmp_path / 'data'}", f"logs_root_dir={logs}",
                               "portions=[1.0]", *FAST])
    assert code == 0
    assert not (tmp_path / "env_logs").exists()
    valid = _check_table(logs / "linear_evaluation" / "camelyon17_wilds_TinyViT.csv",
                         ["Normal", "Tumor"], [1.0])
    test = _check_table(logs / "linear_evaluation" / "camelyon17_wilds_TinyViT_test.csv",
                        ["Normal", "Tumor"], [1.0])
    assert valid["eval_set"].tolist() == ["valid"] and test["eval_set"].tolist() == ["test"]
    assert valid["n_train"].tolist() == [counts[0] + counts[3] + counts[4]]
    record_path = logs / "linear_evaluation" / "camelyon17_wilds_TinyViT" / "run.json"
    record = json.loads(record_path.read_text())
    assert record["n_eval"] == {"valid": counts[1], "test": counts[2]}


def test_custom_labels_csv_with_paths_as_ids(tmp_path):
    classes = ["ADI", "LYM", "TUM"]
    rows, ids, labels = [], [], []
    for code, cls in enumerate(classes):
        for i in range(16):
            split = "train" if i < 10 else ("val" if i < 13 else "test")
            rows.append({"path": f"{cls}/{cls}-{i}.png", "label": cls, "split": split})
            ids.append(f"{cls}/{cls}-{i}")  # what extract-tiles writes for an ImageFolder
            labels.append(code)
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    _save_features(tmp_path / "feats" / "crc_tiny", ids, labels, 3)
    code = run("linear-eval", ["tile_dataset=custom", "feature_extractor=TinyViT",
                               f"custom.features_dir={tmp_path / 'feats' / 'crc_tiny'}",
                               f"custom.labels_csv={tmp_path / 'labels.csv'}",
                               "custom.id_column=path", f"logs_root_dir={tmp_path / 'logs'}",
                               "portions=[1.0]", "stratified_portions=true", *FAST])
    assert code == 0
    out = tmp_path / "logs" / "linear_evaluation"
    test = _check_table(out / "crc_tiny_TinyViT.csv", classes, [1.0])  # sorted: test first
    val = _check_table(out / "crc_tiny_TinyViT_val.csv", classes, [1.0])
    assert test["n_train"].tolist() == [30] and val["eval_set"].tolist() == ["val"]


def test_custom_image_folder_tree(tmp_path):
    root = tmp_path / "tree"
    ids, labels = [], []
    for split, n in (("train", 8), ("test", 4)):
        for code, cls in enumerate(["benign", "tumour"]):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                (root / split / cls / f"t{i}.png").touch()
                ids.append(f"{split}/{cls}/t{i}")
                labels.append(code)
    _save_features(tmp_path / "feats", ids, labels, 2)
    code = run("linear-eval", ["tile_dataset=custom", "custom.name=tree", "feature_extractor=X",
                               f"custom.features_dir={tmp_path / 'feats'}",
                               f"custom.image_folder={root}", f"logs_root_dir={tmp_path / 'logs'}",
                               "portions=[1.0]", *FAST])
    assert code == 0
    table = _check_table(tmp_path / "logs" / "linear_evaluation" / "tree_X.csv",
                         ["benign", "tumour"], [1.0])
    assert table["n_train"].tolist() == [16]


def test_missing_features_is_a_one_line_error(tmp_path, capsys):
    code = run("linear-eval", ["tile_dataset=nct_crc", "feature_extractor=Nope",
                               f"features_root_dir={tmp_path}", f"logs_root_dir={tmp_path}",
                               "progress=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "Nope/NCT-CRC_FULL/tile_features.npy not found" in err


def test_bad_key_value_is_a_one_line_error(tmp_path, capsys):
    code = run("linear-eval", ["tile_dataset=nope", f"logs_root_dir={tmp_path}"])
    assert code == 2
    assert "unknown tile_dataset 'nope'" in capsys.readouterr().err


def test_reference_tool_script_accepts_config_name():
    script = REPO_ROOT / "tools" / "tile_level_tasks" / "linear_evaluation.py"
    proc = subprocess.run([sys.executable, str(script), "--config-name", "config",
                           "tile_dataset=nct_crc", "--help"],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "tile_dataset: nct_crc" in proc.stdout and "n_ensembling: 30" in proc.stdout


@pytest.mark.real_data
def test_real_crc_labels_csv_ids_match_image_folder_ids(real_data):
    """The crc_he_9class labels.csv paths map onto ImageFolder tile ids (class/stem)."""
    from rl_benchmarks.datasets.tiles_classification.image_folder import load_image_folder
    from rl_benchmarks.datasets.tiles_classification.probe_data import match_ids

    root = real_data / "tiles" / "crc_he_9class"
    frame = load_image_folder(root)
    labels = pd.read_csv(root / "labels.csv")
    matched = match_ids(labels["path"], frame["image_id"].to_numpy(), "labels.csv")
    assert len(matched) == len(labels) == 41
    assert set(matched) == set(frame["image_id"])


class _Payload:
    """Unpickling this creates ``marker``: code run from a data file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_object_array_tile_ids_are_read_as_plain_data_only(tmp_path, capsys):
    _make_nct(tmp_path / "data")
    folder = (tmp_path / "data" / "preprocessed" / "tiles_classification" / "features"
              / "TinyViT" / "NCT-CRC_FULL")
    ids = np.load(folder / "tile_ids.npy", allow_pickle=False)
    assert ids.dtype.kind == "U"  # what extract-tiles writes now
    marker = tmp_path / "PWNED"
    evil = np.array([_Payload(marker)] + list(ids[1:]), dtype=object)
    np.save(folder / "tile_ids.npy", evil, allow_pickle=True)
    args = ["tile_dataset=nct_crc", "feature_extractor=TinyViT", f"data_dir={tmp_path / 'data'}",
            f"logs_root_dir={tmp_path / 'logs'}", "portions=[1.0]", *FAST]
    assert run("linear-eval", args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) <= 2 and "tile_ids.npy" in err
    assert "refused to unpickle the global" in err and not marker.exists()
    # An old, plain object array (strings only) is read as data.
    np.save(folder / "tile_ids.npy", np.array(list(ids), dtype=object), allow_pickle=True)
    assert run("linear-eval", args) == 0


def test_stage_run_returns_the_tables_it_wrote(tmp_path, capsys):
    """``evaluation.linear_eval_run.run``: the Result holds the tables, the CSVs holding them,
    the run record and the time; the stage itself prints nothing."""
    from rl_benchmarks.cli.main import compose
    from rl_benchmarks.evaluation.linear_eval_run import run as run_stage

    counts = _make_camelyon(tmp_path / "data")
    cfg = compose("linear-eval", ["tile_dataset=camelyon17_wilds", "feature_extractor=TinyViT",
                                  f"data_dir={tmp_path / 'data'}",
                                  f"logs_root_dir={tmp_path / 'logs'}", "portions=[0.5,1.0]",
                                  *FAST])
    started = []
    result = run_stage(cfg, on_start=lambda data, config: started.append((data.name, config)))
    assert capsys.readouterr().out == ""
    assert [name for name, _ in started] == ["camelyon17_wilds"]
    assert started[0][1] is result.config and result.config.bootstrap_interval == "basic"
    out = tmp_path / "logs" / "linear_evaluation"
    assert result.csvs == {"valid": out / "camelyon17_wilds_TinyViT.csv",
                           "test": out / "camelyon17_wilds_TinyViT_test.csv"}
    for name, table in result.tables.items():
        pd.testing.assert_frame_equal(pd.read_csv(result.csvs[name]), table, check_dtype=False)
    assert len(result.data.evals["test"][1]) == counts[2]
    record = json.loads(result.record_path.read_text())
    assert record["completed"] and record["seconds"] == round(result.seconds, 2)
    assert result.seconds > 0


def test_percentile_interval_is_an_option(tmp_path):
    """``++bootstrap_interval=percentile`` swaps the reference's basic interval for the
    percentile one: same point estimates, intervals mirrored around them."""
    from rl_benchmarks.cli.main import compose
    from rl_benchmarks.evaluation.linear_eval_run import run as run_stage

    _make_camelyon(tmp_path / "data")
    base = ["tile_dataset=camelyon17_wilds", "feature_extractor=TinyViT",
            f"data_dir={tmp_path / 'data'}", "portions=[1.0]", *FAST]
    basic = run_stage(compose("linear-eval", [*base, f"logs_root_dir={tmp_path / 'a'}"]))
    pct = run_stage(compose("linear-eval", [*base, f"logs_root_dir={tmp_path / 'b'}",
                                            "++bootstrap_interval=percentile"]))
    b, p = basic.tables["valid"].iloc[0], pct.tables["valid"].iloc[0]
    for m in ("auc", "acc", "f1", "bacc"):
        assert b[m] == p[m]
        assert b[f"bt_{m}_low"] == pytest.approx(2 * b[m] - p[f"bt_{m}_high"], abs=1e-12)
        assert b[f"bt_{m}_high"] == pytest.approx(2 * b[m] - p[f"bt_{m}_low"], abs=1e-12)
    assert run("linear-eval", [*base, f"logs_root_dir={tmp_path / 'c'}",
                               "++bootstrap_interval=bca"]) == 2
