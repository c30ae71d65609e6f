"""The reference's script path for the results table of the cross-validation runs.

    python tools/slide_level_tasks/get_results.py [logs_root_dir=...] [output=...]

is the same as ``rlbench results``: it writes
``<logs_root_dir>/cross_validation/nested_cross_validation_results.csv`` (reference §8
columns, plus the hyper-parameters selected in each outer fold).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv: list[str] | None = None) -> int:
    from rl_benchmarks.cli.main import main as rlbench

    return rlbench(["results", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
