"""Tier 2: real crc_he_9class tiles -> extract-tiles (tiny random ViT) -> linear-eval CSV."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rl_benchmarks.cli.main import run

TINY = ["feature_extractor.pretrained=false", "+feature_extractor.depth=1",
        "+feature_extractor.embed_dim=32", "+feature_extractor.num_heads=2"]


@pytest.mark.real_data
def test_crc_tiles_extract_then_linear_eval(real_data, tmp_path):
    root = real_data / "tiles" / "crc_he_9class"
    feats_dir = tmp_path / "features"
    assert run("extract-tiles", ["tile_dataset=image_folder", f"tile_dataset.root={root}",
                                 f"output_dir={feats_dir}", "num_workers=0", "batch_size=16",
                                 "progress=false", *TINY]) == 0
    labels = pd.read_csv(root / "labels.csv")
    labels = labels[labels.label != "BACK"].reset_index(drop=True)  # a single BACK tile
    rng = np.random.default_rng(0)
    split = np.empty(len(labels), dtype=object)
    for _, idx in labels.groupby("label").groups.items():  # 2 test tiles per class
        idx = rng.permutation(np.asarray(idx))
        split[idx[:2]], split[idx[2:]] = "test", "train"
    labels["split"] = split
    labels_csv = tmp_path / "labels.csv"
    labels.to_csv(labels_csv, index=False)
    logs = tmp_path / "logs"
    assert run("linear-eval", [
        "tile_dataset=custom", f"custom.features_dir={feats_dir}", f"custom.labels_csv={labels_csv}",
        "custom.id_column=path", "custom.name=crc9", "feature_extractor=tinyvit",
        f"logs_root_dir={logs}", "portions=[0.5,1.0]", "n_ensembling=3", "n_resamples=50",
        "num_workers=1", "knn_k=5", "progress=false",
    ]) == 0
    csvs = list((logs / "linear_evaluation").glob("*.csv"))
    assert len(csvs) == 1, csvs
    table = pd.read_csv(csvs[0])
    assert table["portion"].tolist() == [0.5, 1.0]
    classes = sorted(labels.label.unique())
    expected = ["portion"] + [f"{c}_{m}" for c in classes for m in ("auc", "acc", "f1")]
    assert list(table.columns[: len(expected)]) == expected
    overall = ["auc", "acc", "f1", "bt_auc_low", "bt_auc_high", "bt_acc_low", "bt_acc_high",
               "bt_f1_low", "bt_f1_high", "bacc", "knn_acc", "knn_bacc"]
    assert set(overall) <= set(table.columns)
    assert table[overall].notna().all().all()
    assert ((table.acc >= 0) & (table.acc <= 1)).all()
