"""``rlbench export-hf``: turn an iBOT checkpoint into an owkin/phikon-format HF folder.

The stage is :func:`rl_benchmarks.models.feature_extractors.hf.export_hf` (its summary is
also written as ``rlbench_export.json``); this module calls it, prints one line and chooses
the exit code: 0, 1 when the exported folder fails its check, 2 for bad input.
"""

from __future__ import annotations

import sys
import time

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue


def main(cfg: DictConfig) -> int:
    """Export, verify, print a short summary; returns 0, or 1/2 with a one-line error."""
    from rl_benchmarks.models.feature_extractors.hf import ExportCheckError, export_hf
    from rl_benchmarks.models.feature_extractors.weights import WeightsError

    try:
        weights_path, output_dir = cfg.weights_path, cfg.output_dir
    except MissingMandatoryValue as err:
        print(f"rlbench export-hf: {err.full_key} is required "
              f"(rlbench export-hf weights_path=<iBOT .pth> output_dir=<dir>)", file=sys.stderr)
        return 2
    num_heads = OmegaConf.select(cfg, "num_heads")
    start = time.perf_counter()
    try:
        summary = export_hf(weights_path, output_dir, encoder=cfg.encoder,
                            architecture=cfg.architecture, verify=bool(cfg.verify),
                            atol=float(cfg.atol),
                            num_heads=None if num_heads is None else int(num_heads))
    except (WeightsError, ValueError, FileNotFoundError) as err:
        print(f"rlbench export-hf: {err}", file=sys.stderr)
        # a failed verification is work that failed; anything else is bad input
        return 1 if isinstance(err, ExportCheckError) else 2
    check = (f"; max |HF - iBOTViT| = {summary['verify_max_abs_diff']:.2e}"
             if "verify_max_abs_diff" in summary else "")
    print(f"exported {summary['source']} ({summary['encoder']}, ViT d={summary['embed_dim']} "
          f"depth={summary['depth']} heads={summary['num_heads']} patch={summary['patch_size']} "
          f"img={summary['image_size']}) to {summary['output_dir']} in "
          f"{time.perf_counter() - start:.1f} s{check}")
    return 0
