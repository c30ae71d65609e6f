"""The 14 slide-level task configs (docs/protocol.md#slide-level-tasks), test_ncv and the dataset configs."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rl_benchmarks.cli.main import CONF_ROOT

TASK_DIR = CONF_ROOT / "slide_level_task" / "cross_validation" / "task"
BIN = ("BCEWithLogitsLoss", {"auc": "compute_binary_auc", "accuracy": "compute_binary_accuracy"})
MULTI = ("CrossEntropyLoss", {"auc": "compute_mean_one_vs_all_auc", "accuracy": "compute_multiclass_accuracy"})
COX = ("CoxLoss", {"cindex": "compute_cindex"})
TASKS = {
    "camelyon16_train_tumor_prediction": ("CAMELYON16_TRAIN", None, BIN),
    "tcga_crc_msi_prediction": ("TCGA_CRC", "MSI", BIN),
    "tcga_stad_msi_prediction": ("TCGA_STAD", "MSI", BIN),
    "tcga_ov_hrd_prediction": ("TCGA_OV", "HRD", BIN),
    "tcga_brca_hrd_prediction": ("TCGA_BRCA", "HRD", BIN),
    "tcga_brca_histological_subtype_prediction": ("TCGA_BRCA", "HISTOLOGICAL_SUBTYPE", BIN),
    "tcga_brca_molecular_subtype_prediction": ("TCGA_BRCA", "MOLECULAR_SUBTYPE", MULTI),
    "tcga_nsclc_cancer_subtype_prediction": ("TCGA_NSCLC", "CANCER_SUBTYPE", BIN),
    "tcga_rcc_cancer_subtype_prediction": ("TCGA_RCC", "CANCER_SUBTYPE", MULTI),
    "tcga_brca_os_prediction": ("TCGA_BRCA", "OS", COX),
    "tcga_coad_os_prediction": ("TCGA_COAD", "OS", COX),
    "tcga_luad_os_prediction": ("TCGA_LUAD", "OS", COX),
    "tcga_lusc_os_prediction": ("TCGA_LUSC", "OS", COX),
    "tcga_paad_os_prediction": ("TCGA_PAAD", "OS", COX),
}


def test_exactly_the_reference_tasks_plus_test_ncv():
    assert sorted(p.stem for p in TASK_DIR.glob("*.yaml")) == sorted([*TASKS, "test_ncv"])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_skeleton(name):
    cohort, label, (criterion, metrics) = TASKS[name]
    cfg = OmegaConf.load(TASK_DIR / f"{name}.yaml")
    assert cfg.data.n_tiles == 1000 and cfg.data.feature_extractor == "iBOTViTBasePANCAN"
    train = cfg.data.train
    assert train._target_ == "rl_benchmarks.datasets.SlideClassificationDataset"
    assert train.cohort == cohort and train.get("label") == label
    assert ("label" in train) == (label is not None)  # the Camelyon16 task has no label key
    vs = cfg.validation_scheme
    assert vs._target_ == "rl_benchmarks.val_schemes.NestedCrossValidation"
    assert (vs.n_repeats_outer, vs.n_splits_outer, vs.n_repeats_inner, vs.n_splits_inner) == (1, 5, 1, 5)
    assert vs.stratified is True and vs.split_mode == "patient_split"
    assert OmegaConf.to_container(vs.grid_search_params) == {
        "learning_rate": [1e-3, 1e-4], "weight_decay": [0.0, 1e-4]}
    tr = vs.trainer_cfg
    assert tr._target_ == "rl_benchmarks.trainers.TorchTrainer"
    assert (tr.batch_size, tr.num_epochs, tr.learning_rate, tr.weight_decay) == (16, 50, 2e-4, 0.0)
    assert tr.optimizer._target_ == "torch.optim.Adam" and tr.optimizer._partial_
    assert tr.train_step._target_ == "rl_benchmarks.utils.slide_level_train_step"
    assert tr.val_step._target_ == "rl_benchmarks.utils.slide_level_val_step"
    assert tr.collator._target_ == "rl_benchmarks.utils.pad_collate_fn" and tr.collator._partial_
    assert tr.model._target_ == "rl_benchmarks.models.MeanPool"
    assert tr.criterion._target_ == f"rl_benchmarks.losses.{criterion}"
    assert {k: v._target_ for k, v in tr.metrics.items()} == {
        k: f"rl_benchmarks.metrics.{v}" for k, v in metrics.items()}
    assert all(v._partial_ for v in tr.metrics.values())
    # n_tiles follows data.n_tiles
    cfg.data.n_tiles = 12
    assert cfg.data.train.n_tiles == 12


def test_test_ncv():
    cfg = OmegaConf.load(TASK_DIR / "test_ncv.yaml")
    assert (cfg.data.train.cohort, cfg.data.train.label, cfg.data.n_tiles) == ("TCGA_COAD", "OS", 10)
    vs = cfg.validation_scheme
    assert (vs.n_splits_outer, vs.n_splits_inner, vs.trainer_cfg.num_epochs) == (2, 2, 5)
    assert OmegaConf.to_container(vs.grid_search_params) == {"learning_rate": [1e-3, 1e-4], "weight_decay": [0.0]}
    assert vs.trainer_cfg.criterion._target_.endswith("CoxLoss")


def test_extract_features_dataset_configs(ref):
    slide_dir = CONF_ROOT / "extract_features" / "slide_dataset"
    names = sorted(p.stem for p in slide_dir.glob("*.yaml"))
    expected = ["camelyon16_full", "csv"] + [f"tcga_{c}" for c in
                ("brca", "coad", "kich", "kirc", "kirp", "luad", "lusc", "ov", "paad", "read", "stad")]
    assert names == sorted(expected)
    for name in names:
        cfg = OmegaConf.load(slide_dir / f"{name}.yaml")
        assert cfg._target_ == "rl_benchmarks.datasets.load_dataset" and cfg._partial_
        if name != "csv":
            assert cfg.cohort == name.upper()
    tile_dir = CONF_ROOT / "extract_features" / "tile_dataset"
    assert OmegaConf.load(tile_dir / "nct_crc.yaml").cohort == "NCT-CRC_FULL"
    assert OmegaConf.load(tile_dir / "camelyon17_wilds.yaml").cohort == "CAMELYON17-WILDS_FULL"
    # a partial load_dataset is what the extraction calls
    ref.tcga_slides("TCGA_COAD", {"TCGA-A6-2671": 1}, with_slide_file=True)
    loader = instantiate(OmegaConf.load(slide_dir / "tcga_coad.yaml"))
    frame = loader(features_root_dir=str(ref.features), tile_size=224)
    assert len(frame) == 1 and frame["slide_path"].iloc[0].endswith(".svs")


def test_build_task_config_for_csv_cohorts(tmp_path, ref):
    import pandas as pd

    from rl_benchmarks.datasets import build_task_config, task_type

    feats = tmp_path / "feats"
    for i in range(3):
        ref.write_features(feats / f"s{i}.svs", 5, seed=i)
    csv = tmp_path / "own.csv"
    pd.DataFrame({"slide_id": ["s0", "s1", "s2"], "label": ["a", "b", "c"],
                  "time": [1, 2, 3], "event": [1, 0, 1]}).to_csv(csv, index=False)
    assert task_type(str(csv)) == "multiclass" and task_type(str(csv), "OS") == "survival"
    cfg = build_task_config(str(csv), n_tiles=4)
    assert cfg.validation_scheme.trainer_cfg.criterion._target_.endswith("CrossEntropyLoss")
    assert set(cfg.validation_scheme.trainer_cfg.metrics) == {"auc", "accuracy"}
    cfg = build_task_config(str(csv), label="OS", n_tiles=4)
    assert list(cfg.validation_scheme.trainer_cfg.metrics) == ["cindex"]
    # the skeleton matches a shipped task except cohort/label/head
    ref_cfg = OmegaConf.load(TASK_DIR / "tcga_coad_os_prediction.yaml")
    assert cfg.validation_scheme.n_splits_outer == ref_cfg.validation_scheme.n_splits_outer
    ds = instantiate(cfg.data.train, features_root_dir=str(feats))
    assert ds.task == "survival" and ds.n_tiles == 4 and ds.n_slides == 3


# the loss and metrics a CSV target must get, written out here (not read from the package)
CSV_HEADS = {"binary": BIN, "multiclass": MULTI, "survival": COX}


def _csv_cohort(folder, kind):
    import pandas as pd

    n = 6
    frame = pd.DataFrame({"slide_id": [f"s{i}" for i in range(n)],
                          "patient_id": [f"p{i}" for i in range(n)]})
    if kind == "survival":
        frame["time"], frame["event"] = [float(i + 1) for i in range(n)], [1, 0] * (n // 2)
    else:
        frame["label"] = [["a", "b", "c"][i % (2 if kind == "binary" else 3)] for i in range(n)]
    path = folder / f"{kind}.csv"
    frame.to_csv(path, index=False)
    return path


def _head(trainer) -> tuple[str, dict[str, str], set[bool]]:
    return (trainer.criterion._target_,
            {k: v._target_ for k, v in trainer.metrics.items()},
            {bool(v._partial_) for v in trainer.metrics.values()})


@pytest.mark.parametrize("kind", ["binary", "multiclass", "survival"])
def test_build_task_config_and_cv_command_agree_on_csv_cohorts(tmp_path, kind):
    """The Python API and ``rlbench cv task=<csv>`` give one criterion and one metric set,
    the one the CSV's target calls for (binary, multi-class, survival)."""
    from rl_benchmarks.cli.cross_validation import preprocess_overrides
    from rl_benchmarks.cli.main import compose
    from rl_benchmarks.datasets import build_task_config
    from rl_benchmarks.val_schemes.run_experiment import prepare_config

    csv = _csv_cohort(tmp_path, kind)
    criterion, metrics = CSV_HEADS[kind]
    expected = (f"rl_benchmarks.losses.{criterion}",
                {k: f"rl_benchmarks.metrics.{v}" for k, v in metrics.items()}, {True})
    api = build_task_config(str(csv), n_tiles=4)
    # the template ships the binary head: the multi-class and survival cohorts show that the
    # cv command sets the head from the CSV
    cv = prepare_config(compose("cv", preprocess_overrides([f"task={csv}", "device=cpu"])))
    assert _head(api.validation_scheme.trainer_cfg) == expected
    assert _head(cv.task.validation_scheme.trainer_cfg) == expected
    # same skeleton otherwise: the shipped template's validation scheme
    for key in ("n_splits_outer", "n_splits_inner", "stratified", "split_mode"):
        assert api.validation_scheme[key] == cv.task.validation_scheme[key]
    assert cv.task.data.train.cohort == str(csv.resolve())
    assert api.data.train.cohort == str(csv) and api.data.n_tiles == 4


def test_cohort_task_config_refuses_an_unknown_kind(tmp_path):
    from rl_benchmarks.datasets.tasks import cohort_task_config

    with pytest.raises(ValueError, match="unknown task kind 'ordinal'"):
        cohort_task_config(str(tmp_path / "c.csv"), kind="ordinal")
