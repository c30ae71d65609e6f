"""``rlbench convert-weights``: a checkpoint the safe loader refuses -> plain tensors.

The package reads weights with ``torch.load(weights_only=True)`` only. A checkpoint that
also holds objects (a pickled ``nn.Module``, a config class) is refused there; this command
reads it with inert stand-ins for those objects (no code of the file runs) and writes its
tensors to a file the safe loader reads.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig


def main(cfg: DictConfig) -> int:
    """Convert ``cfg.input`` into ``cfg.output`` (bad input: one line, exit 2)."""
    from rl_benchmarks.models.feature_extractors.weights import convert_weights_file

    summary = convert_weights_file(cfg.input, cfg.output, key=cfg.get("key"))
    print(f"rlbench convert-weights: {summary['n_tensors']} tensors written to "
          f"{summary['output']} (sha256 {summary['output_sha256'][:12]}…)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from rl_benchmarks.cli.main import run

    sys.exit(run("convert-weights", sys.argv[1:]))
