"""The reference's script path, a thin call into ``rlbench cv`` with the same keys::

    python tools/slide_level_tasks/cross_validation.py --config-name config \\
        task=tcga_crc_msi_prediction model=chowder task.data.n_tiles=1000 \\
        task.validation_scheme.trainer_cfg.batch_size=16 features_root_dir=... logs_root_dir=...

``task=`` may also be a cohort CSV

Hydra sweeps work here too (``-m key=a,b ... [hydra/launcher=joblib]``, docs/sweeps.md).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rl_benchmarks.cli.main import run_reference_script  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return run_reference_script("cv", argv)


if __name__ == "__main__":
    sys.exit(main())
