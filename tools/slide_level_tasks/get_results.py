"""The reference's script path, a thin call into ``rlbench results`` with the same keys::

    python tools/slide_level_tasks/get_results.py [logs_root_dir=...]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rl_benchmarks.cli.main import run_reference_script  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return run_reference_script("results", argv)


if __name__ == "__main__":
    sys.exit(main())
