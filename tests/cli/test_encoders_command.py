"""``rlbench encoders`` (issue 18): the table lists every encoder; ``check=`` reports a
fitting file as OK (exit 0) and a wrong one as NOT OK (exit 1) with the likely model; a
spec file given as ``feature_extractor=<spec.yaml>`` becomes the ``encoder_spec`` node."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from testlib.encoders import kaiko_s16_checkpoint

from rl_benchmarks.models.feature_extractors.encoders import ENCODERS

SPEC_YAML = """\
name: my_kaiko_s16
timm: vit_small_patch16_224
kwargs: {dynamic_img_size: true}
mean: [0.5, 0.5, 0.5]
std: [0.5, 0.5, 0.5]
"""


@pytest.fixture(scope="module")
def kaiko_s16(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A full-size ViT-S/16 (kaiko / Lunit layout) with random weights, as a plain .pth."""
    return kaiko_s16_checkpoint(tmp_path_factory.mktemp("kaiko"))


@pytest.mark.slow
def test_rlbench_encoders_lists_and_checks(kaiko_s16, capsys):
    from rl_benchmarks.cli.main import main

    path, ref = kaiko_s16
    assert main(["encoders"]) == 0
    out = capsys.readouterr().out
    for name, spec in ENCODERS.items():
        line = next(x for x in out.splitlines() if x.startswith(name + " "))
        assert f"{spec.params:,}" in line and str(spec.feature_dim()) in line
    assert main(["encoders", "check=kaiko_vits16", f"weights_path={path}"]) == 0
    out = capsys.readouterr().out
    assert ": OK" in out and "features: 384-d (expected 384-d)" in out
    assert f"{len(ref.state_dict())} tensors matched" in out
    assert main(["encoders", "check=lunit_vits8", f"weights_path={path}"]) == 1
    out = capsys.readouterr().out
    assert "NOT OK" in out and "looks like kaiko_vits16 / lunit_vits16" in out
    spec = path.parent / "my_kaiko.yaml"
    spec.write_text(SPEC_YAML)
    assert main(["encoders", f"check={spec}", f"weights_path={path}"]) == 0
    assert "my_kaiko_s16 <- " in capsys.readouterr().out
    assert main(["encoders", "check=nope", f"weights_path={path}"]) == 2
    assert main(["encoders", "check=uni", "weights_path=/no/such/file"]) == 2


def test_spec_file_as_the_feature_extractor_option(tmp_path):
    from rl_benchmarks.cli.encoders import spec_file_overrides
    from rl_benchmarks.cli.main import compose_checked

    spec = tmp_path / "my spec.yaml"
    spec.write_text(SPEC_YAML)
    overrides = spec_file_overrides([f"feature_extractor='{spec}'", "precision=bf16"])
    assert overrides[0] == "feature_extractor=encoder_spec" and overrides[-1] == "precision=bf16"
    cfg = compose_checked("extract-slides", overrides)
    assert cfg.feature_extractor.name == str(spec.resolve())
    assert spec_file_overrides(["feature_extractor=uni"]) == ["feature_extractor=uni"]
