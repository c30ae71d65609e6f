"""A Hugging Face folder whose config.json does not match its tensors: the error names the
folder and lists the mismatched, missing and unexpected keys with their shapes."""

from __future__ import annotations

import json
import shutil

import pytest
from testlib.extractors import TINY

from rl_benchmarks.models.feature_extractors import WeightsError
from rl_benchmarks.models.feature_extractors.hf import (
    _mismatch_report,
    expected_v4_shapes,
    export_hf,
    file_tensor_shapes,
    load_hf_vit,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, ibot_ckpt):
    out = tmp_path_factory.mktemp("hfmis") / "phikon_tiny"
    export_hf(ibot_ckpt.path, out, num_heads=TINY["num_heads"])
    return out


def _copy_with(folder, tmp_path, **changes):
    out = tmp_path / "changed"
    shutil.copytree(folder, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(changes)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def test_expected_shapes_match_an_exported_folder(folder):
    cfg = json.loads((folder / "config.json").read_text())
    assert file_tensor_shapes(folder) == expected_v4_shapes(cfg)
    assert _mismatch_report(folder, cfg) == ""


def test_wrong_intermediate_size_lists_shapes(folder, tmp_path):
    bad = _copy_with(folder, tmp_path, intermediate_size=64)
    with pytest.raises(WeightsError) as err:
        load_hf_vit(bad)
    msg = str(err.value)
    assert str(bad) in msg and "look at the above report" not in msg
    assert ("encoder.layer.0.intermediate.dense.weight (128, 32) in the file vs (64, 32) "
            "from config.json") in msg
    assert "\n" not in msg


def test_wrong_depth_lists_missing_and_unexpected_keys(folder, tmp_path):
    deeper = _copy_with(folder, tmp_path, num_hidden_layers=TINY["depth"] + 1)
    with pytest.raises(WeightsError) as err:
        load_hf_vit(deeper)
    msg = str(err.value)
    assert str(deeper) in msg and "missing keys: encoder.layer.2." in msg
    assert "(32, 32)" in msg
    shallower = tmp_path / "shallow"
    shutil.copytree(deeper, shallower)
    cfg = json.loads((shallower / "config.json").read_text())
    cfg["num_hidden_layers"] = 1
    (shallower / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match=r"unexpected keys: encoder\.layer\.1\."):
        load_hf_vit(shallower)
