"""``rlbench finetune``: LoRA or linear fine-tuning of a ViT extractor on tile classification.

The stage is :func:`rl_benchmarks.evaluation.finetune.run` (data, splits, model, training,
outputs); this module calls it and prints what it does.
"""

from __future__ import annotations

import sys

import pandas as pd
from omegaconf import DictConfig

from rl_benchmarks.evaluation import finetune as ft


def main(cfg: DictConfig) -> int:
    """Fine-tune: a header line, the progress bar, the summary; the config to ``config.yaml``."""
    from rl_benchmarks.cli.console import quiet_logging, save_config

    verbose = bool(cfg.get("verbose", False))
    quiet_logging(verbose)

    def on_start(run_cfg: ft.FinetuneConfig, classes: list[str],
                 splits: dict[str, pd.DataFrame]) -> None:
        if not cfg.pretrained:
            print("finetune: the backbone is RANDOMLY INITIALISED (pretrained=false)")
        if run_cfg.feature_extractor:
            print(f"finetune: encoder {run_cfg.feature_extractor}, {run_cfg.image_size}-px tiles, "
                  f"mean {list(run_cfg.mean)}, std {list(run_cfg.std)}")
        print(f"finetune: mode={run_cfg.mode}, {len(classes)} classes, train/valid/test = "
              f"{len(splits['train'])}/{len(splits['valid'])}/{len(splits['test'])}")

    result = ft.run(cfg, on_start=on_start)
    m = result.test_metrics
    print(
        f"finetune: {result.trainable_percent:.2f}% trainable ({result.n_trainable:,} of "
        f"{result.n_total:,}); best epoch {result.best_epoch + 1}; test accuracy "
        f"{m['accuracy']:.4f}, balanced accuracy {m['balanced_accuracy']:.4f}, "
        f"macro F1 {m['f1_macro']:.4f}\nfinetune: outputs in {result.output_dir}"
    )
    save_config(cfg, result.output_dir, verbose)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from rl_benchmarks.cli.main import run

    sys.exit(run("finetune", sys.argv[1:]))
