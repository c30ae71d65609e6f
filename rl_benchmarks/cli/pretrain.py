"""``rlbench pretrain``: iBOT pre-training of a ViT on your own tiles.

Single process: ``rlbench pretrain output_dir=runs/ibot data.image_dirs=[tiles/]``.
Several processes or GPUs: ``torchrun --nproc_per_node=K -m rl_benchmarks.cli.main
pretrain ...`` (NCCL on GPU, gloo on CPU). The work is :func:`rl_benchmarks.pretraining.run`;
this module prints its summary (rank 0) and maps user errors to exit code 2.
"""

from __future__ import annotations

import os
import sys

from omegaconf import DictConfig, OmegaConf


def summary_lines(result) -> list[str]:
    """The end-of-run summary of a :class:`~rl_benchmarks.pretraining.PretrainResult`."""
    last = "n/a" if result.last_loss is None else f"{result.last_loss:.4f}"
    head = (f"rlbench pretrain: ran {result.steps_run} steps in {result.seconds:.1f} s "
            f"({result.tiles_per_s:.2f} tiles/s), now at step {result.step}/"
            f"{result.total_steps} (epoch {result.epochs:.2f}); last loss {last}"
            + ("; stopped by time_limit_min" if result.stopped_early else ""))
    return [head] + [f"  {name}: {path}" for name, path in result.files.items()]


def main(cfg: DictConfig) -> int:
    """Run the pre-training; user errors print one line and return 2."""
    from rl_benchmarks.cli.console import header, quiet_logging, save_config
    from rl_benchmarks.pretraining import PretrainError, run
    from rl_benchmarks.slides.openslide_io import SlideError

    verbose = bool(cfg.get("verbose", False))
    quiet_logging(verbose)
    if int(os.environ.get("RANK", "0")) == 0:
        where = None if OmegaConf.is_missing(cfg, "output_dir") else cfg.output_dir
        header("pretrain", f"iBOT pre-training of {cfg.model.get('arch', 'a ViT')}", where)
    try:
        result = run(cfg)
    except (PretrainError, FileNotFoundError, ValueError, SlideError) as e:
        print(f"rlbench pretrain: error: {e}", file=sys.stderr)
        return 2
    if result.is_main:
        save_config(cfg, cfg.output_dir, verbose)
        for line in summary_lines(result):
            print(line, file=sys.stderr)
    return 0
