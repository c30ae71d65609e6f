"""Reference-compatible entry point: `python tools/extract_features/extract_slide_features.py key=value ...`.

A thin call into `rlbench extract-slides` with the same Hydra keys.
"""

import sys

from rl_benchmarks.cli.main import run

if __name__ == "__main__":
    args, skip = [], False
    for a in sys.argv[1:]:  # the reference passed --config-name <name>; one config here
        if skip or a.startswith("--config-name"):
            skip = a == "--config-name"
            continue
        args.append(a)
    sys.exit(run("extract-slides", args))
