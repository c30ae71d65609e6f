"""The reference's script path, a thin call into ``rlbench extract-slides`` with the same keys::

    python tools/extract_features/extract_slide_features.py feature_extractor=iBOTViTBasePANCAN \\
        slide_dataset=tcga_coad n_tiles=1000 random_sampling=True seed=0 batch_size=64 num_workers=8 device=-1

Hydra sweeps work here too (``-m key=a,b ... [hydra/launcher=joblib]``, docs/sweeps.md).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rl_benchmarks.cli.main import run_reference_script  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return run_reference_script("extract-slides", argv)


if __name__ == "__main__":
    sys.exit(main())
