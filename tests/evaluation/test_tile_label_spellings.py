"""Tile-level label tables (linear-eval's custom labels CSV, finetune's data CSV) refuse
labels that differ only by case or whitespace, and name an empty file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from rl_benchmarks.datasets.tiles_classification.probe_data import load_custom_data
from rl_benchmarks.datasets.validation import CohortError
from rl_benchmarks.evaluation.finetune import load_tile_frame


def _probe_cfg(tmp_path, labels):
    feats = tmp_path / "feats"
    feats.mkdir()
    ids = [f"t{i}" for i in range(len(labels))]
    np.save(feats / "tile_features.npy", np.random.default_rng(0).normal(
        size=(len(ids), 4)).astype(np.float32))
    np.save(feats / "tile_ids.npy", np.asarray(ids, dtype=str))
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"image_id": ids, "label": labels,
                  "split": ["train", "test"] * (len(ids) // 2)}).to_csv(csv, index=False)
    return OmegaConf.create({"custom": {
        "features_dir": str(feats), "name": None, "labels_csv": str(csv), "image_folder": None,
        "id_column": "image_id", "label_column": "label", "split_column": "split",
        "train_split": "train", "eval_splits": None, "classes": None}})


def test_linear_eval_custom_labels_refuse_case_variants(tmp_path):
    cfg = _probe_cfg(tmp_path, ["Neg", "neg", "pos", "pos"])
    with pytest.raises(CohortError, match=r"labels\.csv.*'Neg' / 'neg'"):
        load_custom_data(cfg)


def test_linear_eval_custom_labels_accept_clean_labels(tmp_path):
    data = load_custom_data(_probe_cfg(tmp_path, ["neg", "neg", "pos", "pos"]))
    assert sorted(data.class_names) == ["neg", "pos"]


def test_finetune_csv_refuses_case_variants_and_names_an_empty_file(tmp_path):
    csv = tmp_path / "tiles.csv"
    pd.DataFrame({"image_path": ["a.png", "b.png"], "label": ["Tumor", "tumor "]}).to_csv(
        csv, index=False)
    cfg = OmegaConf.create({"data": str(csv), "tile_dataset": None, "data_dir": None})
    with pytest.raises(CohortError, match=r"tiles\.csv"):
        load_tile_frame(cfg)
    csv.write_text("")
    with pytest.raises(CohortError, match=r"tiles\.csv"):
        load_tile_frame(cfg)
