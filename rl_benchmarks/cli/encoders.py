"""``rlbench encoders``: the registered tile encoders, or a check of a weights file.

Without ``check`` it prints one row per encoder (dimension, tile size, mpp, parameter count,
weights format, licence note). ``check=<name> weights_path=<path>`` loads the weights as that
encoder (:func:`~rl_benchmarks.models.feature_extractors.encoder_build.check_weights`), runs
two random tiles and prints the key-match report and the feature dimension: exit 0 when the
file fits, 1 when it does not, 2 for bad input (unknown name, missing path).
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig


def spec_file_overrides(overrides: list[str]) -> list[str]:
    """Turn ``feature_extractor=<spec.yaml>`` into ``feature_extractor=encoder_spec
    feature_extractor.name=<absolute path>`` (Hydra cannot take a file path as a config-group
    option): the extraction commands' ``preprocess_overrides``."""
    from rl_benchmarks.models.feature_extractors.encoders import is_spec_path
    from rl_benchmarks.utils.overrides import hydra_quote

    out: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]  # a quoted path (Hydra quoting)
        if sep and key in ("feature_extractor", "+feature_extractor") and is_spec_path(value):
            path = Path(value).expanduser().resolve()
            out += ["feature_extractor=encoder_spec", f"feature_extractor.name={hydra_quote(path)}"]
        else:
            out.append(item)
    return out


def main(cfg: DictConfig) -> int:
    from rl_benchmarks.models.feature_extractors.encoder_build import check_weights
    from rl_benchmarks.models.feature_extractors.encoders import ENCODERS, encoder_table, is_spec_path

    if cfg.check in (None, ""):
        print(encoder_table())
        return 0
    name = str(cfg.check)
    if name not in ENCODERS and not is_spec_path(name):
        print(f"rlbench encoders: unknown encoder {name!r}; one of {', '.join(ENCODERS)} or a "
              f"spec .yaml", file=sys.stderr)
        return 2
    if cfg.weights_path in (None, ""):
        print(f"rlbench encoders: check={name} needs weights_path=<file or folder>", file=sys.stderr)
        return 2
    if not Path(str(cfg.weights_path)).expanduser().exists():
        print(f"rlbench encoders: weights_path {cfg.weights_path} does not exist (nothing is "
              f"downloaded)", file=sys.stderr)
        return 2
    overrides = {} if cfg.img_size in (None, "") else {"img_size": int(cfg.img_size)}
    result = check_weights(name, cfg.weights_path, precision=cfg.precision, output=cfg.output,
                           **overrides)
    status = "OK" if result["ok"] else "NOT OK"
    print(f"rlbench encoders: {result['name']} <- {result['weights_path']}: {status}")
    if result.get("key_match"):
        km = result["key_match"]
        ignored = ", ".join(km.get("ignored") or []) or "none"
        print(f"  keys: {km.get('matched')} tensors matched by name and shape; ignored: {ignored}")
    if "feature_dim" in result:
        print(f"  features: {result['feature_dim']}-d (expected {result['expected_dim']}-d)")
    if result.get("error"):
        print(f"  error: {result['error']}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":  # pragma: no cover
    from rl_benchmarks.cli.main import run

    sys.exit(run("encoders", sys.argv[1:]))
