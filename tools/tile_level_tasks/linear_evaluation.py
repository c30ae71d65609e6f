"""The reference's script path for the tile-level linear evaluation.

    python tools/tile_level_tasks/linear_evaluation.py feature_extractor=iBOTViTBasePANCAN \
        tile_dataset=nct_crc portions=[0.001,0.005,0.01,0.05,0.1,0.5,1.0] n_ensembling=30 \
        n_resamples=1000 seed=0 confidence_level=0.95 num_workers=16

is the same as ``rlbench linear-eval`` with the same ``key=value`` overrides.
"""

from __future__ import annotations

import sys


def _strip_config_name(argv: list[str]) -> list[str]:
    """Drop Hydra's ``--config-name config`` (the only config this entry point has)."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in ("--config-name", "-cn"):
            name = argv[i + 1] if i + 1 < len(argv) else ""
            if name != "config":
                raise SystemExit(f"linear_evaluation.py: unknown config {name!r} (only 'config')")
            skip = True
            continue
        if arg.startswith("--config-name="):
            continue
        out.append(arg)
    return out


if __name__ == "__main__":
    from rl_benchmarks.cli.main import run

    sys.exit(run("linear-eval", _strip_config_name(sys.argv[1:])))
