"""``rlbench convert-weights``: a checkpoint that needs full unpickling -> plain tensors.

The rest of the package reads weights with ``torch.load(weights_only=True)`` only; this
command is the one place a user may, explicitly (``trust=true``), unpickle a file they
trust, once, to get a file the safe loader reads.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig


def main(cfg: DictConfig) -> int:
    """Convert ``cfg.input`` into ``cfg.output``; exit 2 without ``trust=true``."""
    from rl_benchmarks.models.feature_extractors.weights import convert_weights_file

    if not bool(cfg.trust):
        print(f"rlbench convert-weights: not converting {cfg.input}: loading it unpickles it "
              f"in full, which runs any code the file carries; pass trust=true if you trust "
              f"its source", file=sys.stderr)
        return 2
    summary = convert_weights_file(cfg.input, cfg.output, trust=True, key=cfg.get("key"))
    print(f"rlbench convert-weights: {summary['n_tensors']} tensors written to "
          f"{summary['output']} (sha256 {summary['output_sha256'][:12]}…)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from rl_benchmarks.cli.main import run

    sys.exit(run("convert-weights", sys.argv[1:]))
