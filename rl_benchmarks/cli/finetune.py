"""``rlbench finetune``: LoRA or linear fine-tuning of a ViT extractor on tile classification."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from rl_benchmarks.evaluation import finetune as ft


def load_tile_frame(cfg: DictConfig) -> tuple[pd.DataFrame, list[str]]:
    """A frame with image_path, label (int) and optionally split, and the class names."""
    if cfg.data:
        path = Path(cfg.data)
        if path.is_dir():
            from rl_benchmarks.datasets import load_image_folder

            frame = load_image_folder(path)
        elif path.is_file():
            frame = pd.read_csv(path)
            missing = {"image_path", "label"} - set(frame.columns)
            if missing:
                raise ValueError(f"finetune: {path} lacks the column(s) {sorted(missing)}")
            frame["image_path"] = [
                str(p if Path(p).is_absolute() else path.parent / p) for p in frame["image_path"]
            ]
        else:
            raise FileNotFoundError(f"finetune: data={path} does not exist")
    elif cfg.tile_dataset:
        from rl_benchmarks.datasets import load_dataset

        names = {"nct_crc": "NCT-CRC", "camelyon17_wilds": "CAMELYON17-WILDS"}
        if cfg.tile_dataset not in names:
            raise ValueError(f"finetune: tile_dataset must be one of {sorted(names)}")
        base = names[cfg.tile_dataset]
        parts = {"TRAIN": "train", "VALID": "valid"}
        if base == "CAMELYON17-WILDS":
            parts["TEST"] = "test"
        data_dir = cfg.get("data_dir") or None  # else $RLB_DATA_DIR / conf.yaml
        frames = []
        for cohort, split in parts.items():
            f = load_dataset(f"{base}_{cohort}", data_dir=data_dir)
            f = f.assign(split=split)
            frames.append(f)
        frame = pd.concat(frames, ignore_index=True)
        if base == "NCT-CRC":  # the tutorial: a validation part drawn from train, test = VAL-7K
            frame.loc[frame.split == "valid", "split"] = "test"
    else:
        raise ValueError("finetune: give data=<folder or CSV> or tile_dataset=<name>")
    # Class names when the loader gives them (ImageFolder), else the label values; codes
    # 0..K-1 follow their sorted order.
    source = frame["class_name"] if "class_name" in frame else frame["label"]
    values = sorted(source.unique())
    frame["label"] = source.map({v: i for i, v in enumerate(values)}).astype(int)
    classes = [str(v) for v in values]
    return frame, classes


def make_splits(frame: pd.DataFrame, cfg: DictConfig) -> dict[str, pd.DataFrame]:
    """Use the frame's ``split`` column when present, else draw stratified parts with the seed.

    With a given split but no validation part (e.g. NCT-CRC), the validation part is drawn
    as half of the training part, as in the reference tutorial (1000 tiles -> 500/500).
    """
    from sklearn.model_selection import train_test_split

    if "split" in frame and frame["split"].notna().all():
        splits = {s: frame[frame.split == s] for s in ("train", "valid", "test")}
        if cfg.max_train_tiles and len(splits["train"]) > cfg.max_train_tiles:
            splits["train"] = splits["train"].sample(cfg.max_train_tiles, random_state=cfg.seed)
        if len(splits["valid"]) == 0:
            splits["train"], splits["valid"] = train_test_split(
                splits["train"], test_size=0.5, random_state=cfg.seed
            )
    else:
        splits = ft.split_frame(frame, tuple(cfg.split_fractions), cfg.seed)
        if cfg.max_train_tiles and len(splits["train"]) > cfg.max_train_tiles:
            splits["train"] = splits["train"].sample(cfg.max_train_tiles, random_state=cfg.seed)
    for name, part in splits.items():
        if len(part) == 0:
            raise ValueError(f"finetune: the {name} split is empty")
    return splits


def main(cfg: DictConfig) -> int:
    frame, classes = load_tile_frame(cfg)
    splits = make_splits(frame, cfg)
    run_cfg = ft.FinetuneConfig(
        mode=cfg.mode, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout, learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay, batch_size=cfg.batch_size, num_epochs=cfg.num_epochs,
        image_size=cfg.image_size, precision=cfg.precision, device=str(cfg.device),
        num_workers=cfg.num_workers, seed=cfg.seed, augment=cfg.augment,
        max_steps_per_epoch=cfg.max_steps_per_epoch,
    )
    vit_kwargs = dict(OmegaConf.to_container(cfg.vit)) | {"image_size": cfg.image_size}
    backbone = ft.load_vit_backbone(cfg.weights_path, cfg.pretrained, cfg.encoder, vit_kwargs,
                                    num_heads=OmegaConf.select(cfg, "num_heads"))
    if not cfg.pretrained:
        print("finetune: the backbone is RANDOMLY INITIALISED (pretrained=false)")
    model = ft.build_model(backbone, len(classes), run_cfg)
    print(f"finetune: mode={run_cfg.mode}, {len(classes)} classes, "
          f"train/valid/test = {len(splits['train'])}/{len(splits['valid'])}/{len(splits['test'])}")
    model, result = ft.train(model, splits, run_cfg)
    result.classes = classes
    out = ft.save_outputs(model, result, run_cfg, cfg.output_dir, extra_record={
        "weights_path": cfg.weights_path, "pretrained": cfg.pretrained,
        "hydra_config": OmegaConf.to_container(cfg),
    })
    m = result.test_metrics
    print(
        f"finetune: {result.trainable_percent:.2f}% trainable ({result.n_trainable:,} of "
        f"{result.n_total:,}); best epoch {result.best_epoch + 1}; test accuracy "
        f"{m['accuracy']:.4f}, balanced accuracy {m['balanced_accuracy']:.4f}, "
        f"macro F1 {m['f1_macro']:.4f}\nfinetune: outputs in {out}"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    from rl_benchmarks.cli.main import run

    sys.exit(run("finetune", sys.argv[1:]))
