"""The reference's script path for the nested cross-validation.

    python tools/slide_level_tasks/cross_validation.py --config-name config \
        task=tcga_crc_msi_prediction model=chowder task.data.n_tiles=1000 \
        task.validation_scheme.trainer_cfg.batch_size=16 features_root_dir=... logs_root_dir=...

is the same as ``rlbench cv`` with the same ``key=value`` overrides (``task=`` may also be
a cohort CSV).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def strip_config_name(argv: list[str], script: str) -> list[str]:
    """Drop Hydra's ``--config-name config`` (the only config this entry point has)."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        name = None
        if arg in ("--config-name", "-cn"):
            name, skip = (argv[i + 1] if i + 1 < len(argv) else ""), True
        elif arg.startswith("--config-name="):
            name = arg.split("=", 1)[1]
        if name is not None:
            if name != "config":
                raise SystemExit(f"{script}: unknown config {name!r} (only 'config')")
            continue
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    from rl_benchmarks.cli.cross_validation import preprocess_overrides
    from rl_benchmarks.cli.main import main as rlbench

    args = strip_config_name(list(sys.argv[1:] if argv is None else argv), "cross_validation.py")
    return rlbench(["cv", *preprocess_overrides(args)])


if __name__ == "__main__":
    sys.exit(main())
