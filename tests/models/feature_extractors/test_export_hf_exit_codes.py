"""``export_hf``'s failed check is its own error (ExportCheckError): ``rlbench export-hf``
exits 1 on it and 2 on bad input; ``num_heads=None`` means "not given"."""

from __future__ import annotations

import pytest
from testlib.extractors import write_ibot_checkpoint

from rl_benchmarks.models.feature_extractors import hf
from rl_benchmarks.models.feature_extractors.weights import WeightsError


def test_failed_check_is_an_export_check_error(tmp_path):
    ckpt = write_ibot_checkpoint(tmp_path / "ck.pth")
    with pytest.raises(hf.ExportCheckError, match=r"^export check failed: HF features differ"):
        hf.export_hf(ckpt.path, tmp_path / "out", num_heads=2, atol=-1.0)
    assert issubclass(hf.ExportCheckError, WeightsError)
    assert not (tmp_path / "out" / "rlbench_export.json").exists()  # written only when checked


def test_num_heads_none_is_not_given(tmp_path):
    """A 32-wide ViT is no standard width: without heads both calls fail the same way."""
    ckpt = write_ibot_checkpoint(tmp_path / "ck.pth")
    with pytest.raises(ValueError, match="num_heads") as given_none:
        hf.export_hf(ckpt.path, tmp_path / "a", num_heads=None)
    with pytest.raises(ValueError, match="num_heads") as absent:
        hf.export_hf(ckpt.path, tmp_path / "b")
    assert str(given_none.value) == str(absent.value)


@pytest.mark.parametrize("error, code", [
    (hf.ExportCheckError("export check failed: HF features differ by 1 (> 0.0001) for x"), 1),
    (WeightsError("ck.pth: not an iBOT checkpoint"), 2),
])
def test_cli_exit_code_follows_the_error_type(tmp_path, monkeypatch, capsys, error, code):
    from rl_benchmarks.cli.main import main

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(hf, "export_hf", failing)
    assert main(["export-hf", f"weights_path={tmp_path / 'ck.pth'}",
                 f"output_dir={tmp_path / 'out'}"]) == code
    assert capsys.readouterr().err.strip() == f"rlbench export-hf: {error}"
