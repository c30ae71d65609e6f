"""``rlbench pretrain``: iBOT pre-training of a ViT on your own tiles.

Single process: ``rlbench pretrain output_dir=runs/ibot data.image_dirs=[tiles/]``.
Several processes or GPUs: ``torchrun --nproc_per_node=K -m rl_benchmarks.cli.main
pretrain ...`` (NCCL on GPU, gloo on CPU).
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig


def main(cfg: DictConfig) -> int:
    """Run the pre-training; user errors print one line and return 2."""
    from rl_benchmarks.pretraining.train import PretrainError, train
    from rl_benchmarks.slides.openslide_io import SlideError

    try:
        train(cfg)
    except (PretrainError, FileNotFoundError, ValueError, SlideError) as e:
        print(f"rlbench pretrain: error: {e}", file=sys.stderr)
        return 2
    return 0
