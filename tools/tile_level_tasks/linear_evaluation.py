"""The reference's script path, a thin call into ``rlbench linear-eval`` with the same keys::

    python tools/tile_level_tasks/linear_evaluation.py feature_extractor=iBOTViTBasePANCAN \\
        tile_dataset=nct_crc portions=[0.001,0.005,0.01,0.05,0.1,0.5,1.0] n_ensembling=30 \\
        n_resamples=1000 seed=0 confidence_level=0.95 num_workers=16

Hydra sweeps work here too (``-m key=a,b ... [hydra/launcher=joblib]``, docs/sweeps.md).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rl_benchmarks.cli.main import run_reference_script  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return run_reference_script("linear-eval", argv)


if __name__ == "__main__":
    sys.exit(main())
