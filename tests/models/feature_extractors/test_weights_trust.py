"""Weights are never unpickled in full: a checkpoint carrying code is refused with the names
of what it holds, and ``rlbench convert-weights`` converts it without running any of its code."""

from __future__ import annotations

import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch
from testlib.extractors import make_vit

from rl_benchmarks.cli import main as cli
from rl_benchmarks.models.feature_extractors.weights import (
    WeightsError,
    pickle_globals,
    read_weights_file,
    unsafe_globals,
)


class Payload:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): code run from data."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_checkpoint(tmp_path: Path) -> tuple[Path, Path, dict]:
    marker = tmp_path / "PWNED"
    vit = make_vit(224, 0)
    teacher = {f"backbone.{k}": v for k, v in vit.state_dict().items()}
    path = tmp_path / "evil.pth"
    torch.save({"teacher": teacher, "args": Payload(marker), "epoch": 3}, path)
    assert not marker.exists()
    return path, marker, teacher


@pytest.fixture
def convert_command(monkeypatch):
    """``convert-weights`` in the CLI's table (main.py is not edited by this change)."""
    monkeypatch.setitem(cli.COMMANDS, "convert-weights", cli.Command(
        "rl_benchmarks.cli.convert_weights", "convert_weights", "config",
        "rewrite a checkpoint holding non-tensor objects as plain tensors"))


def test_pickle_globals_reads_global_and_stack_global_without_running():
    data2 = pickle.dumps({"a": Payload(Path("/nonexistent/x"))}, protocol=2)
    data4 = pickle.dumps({"a": Payload(Path("/nonexistent/x"))}, protocol=4)
    assert "STACK_GLOBAL" in {op.name for op, _, _ in pickletools.genops(data4)}
    want = f"{open.__module__}.{open.__qualname__}".replace("__builtin__.", "builtins.")
    assert pickle_globals(data2) == [want]
    assert pickle_globals(data4) == [want]


def test_read_weights_file_never_unpickles_and_names_the_global(tmp_path):
    path, marker, _ = _evil_checkpoint(tmp_path)
    refused = unsafe_globals(path)
    assert refused and all("open" in name for name in refused), refused
    with pytest.raises(WeightsError) as err:
        read_weights_file(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message and refused[0] in message
    assert f"rlbench convert-weights input={path}" in message
    assert not marker.exists()


def test_extract_slides_and_finetune_never_run_the_payload(tmp_path, capsys):
    from rl_benchmarks.evaluation.finetune import load_vit_backbone

    path, marker, _ = _evil_checkpoint(tmp_path)
    (tmp_path / "slides").mkdir()
    code = cli.main(["extract-slides", f"slides={tmp_path / 'slides'}",
                     f"output_dir={tmp_path / 'out'}", f"feature_extractor.weights_path={path}",
                     "+feature_extractor.num_heads=2", "progress=false"])
    assert code == 2
    err = capsys.readouterr().err
    assert "convert-weights" in err and str(path) in err
    with pytest.raises(WeightsError, match="convert-weights"):
        load_vit_backbone(path, pretrained=True, num_heads=2)
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.npy"))


def test_convert_weights_never_runs_the_payload_and_gives_a_safe_file(tmp_path, convert_command,
                                                                      capsys):
    from rl_benchmarks.models.feature_extractors import create_extractor

    path, marker, teacher = _evil_checkpoint(tmp_path)
    out = tmp_path / "clean.pth"
    assert cli.main(["convert-weights", f"input={path}", f"output={out}"]) == 0
    assert not marker.exists()  # the payload's global was an inert stand-in
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert sorted(ckpt) == ["teacher"]  # the payload and the int are gone
    assert sorted(ckpt["teacher"]) == sorted(teacher)
    for k, v in teacher.items():
        torch.testing.assert_close(ckpt["teacher"][k], v, rtol=0, atol=0)
    ext = create_extractor("iBOTViTBasePANCAN", weights_path=out, num_heads=2,
                           architecture="auto")
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        np.testing.assert_allclose(ext(x).numpy(), make_vit(224, 0)(x).numpy(), atol=1e-5)
    assert not marker.exists()

    flat = tmp_path / "clean.safetensors"
    assert cli.main(["convert-weights", f"input={out}", f"output={flat}"]) == 2
    assert "key=" in capsys.readouterr().err  # nested: say which sub-dict to keep
    assert cli.main(["convert-weights", f"input={out}", f"output={flat}",
                     "key=teacher"]) == 0
    assert sorted(read_weights_file(flat)) == sorted(teacher)


def test_convert_pickled_module_gives_its_state_dict(tmp_path, convert_command):
    """A whole pickled ``nn.Module`` (classes the safe loader refuses) converts to exactly its
    ``state_dict()``, without importing or running the module's class."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.GELU())
    path, out = tmp_path / "module.pth", tmp_path / "module_clean.pth"
    torch.save({"model": model, "epoch": 3}, path)
    with pytest.raises(WeightsError, match="Sequential"):
        read_weights_file(path)
    assert cli.main(["convert-weights", f"input={path}", f"output={out}"]) == 0
    got = torch.load(out, map_location="cpu", weights_only=True)
    want = model.state_dict()
    assert sorted(got) == ["model"] and sorted(got["model"]) == sorted(want)
    for k, v in want.items():
        torch.testing.assert_close(got["model"][k], v, rtol=0, atol=0)


def test_convert_refuses_a_file_naming_blocked_modules(tmp_path, convert_command, capsys):
    class Shell:
        def __reduce__(self):
            import os
            return (os.system, ("true",))

    path = tmp_path / "shell.pth"
    torch.save({"w": torch.zeros(1), "x": Shell()}, path)
    assert cli.main(["convert-weights", f"input={path}", f"output={tmp_path / 'o.pth'}"]) == 2
    assert "cannot be converted" in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists()
