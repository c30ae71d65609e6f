"""``resolve_torch_device``: the one single-device parser (trainers, pre-training)."""

from __future__ import annotations

import pytest
import torch

from rl_benchmarks.utils import device as dev


def test_cpu_forms_need_no_cuda(monkeypatch):
    monkeypatch.setattr(dev, "_cuda_count", lambda: 0)
    for value in (-1, "-1", "cpu", " CPU ", None, torch.device("cpu"), "auto"):
        assert dev.resolve_torch_device(value) == torch.device("cpu"), value
    assert dev.resolve_torch_device("auto", local_rank=3) == torch.device("cpu")


@pytest.mark.parametrize("value", [0, 2, "0", "cuda", "cuda:1", torch.device("cuda", 0)])
def test_gpu_without_cuda_is_an_error_naming_the_value(monkeypatch, value):
    monkeypatch.setattr(dev, "_cuda_count", lambda: 0)
    with pytest.raises(ValueError, match="CUDA is not available") as err:
        dev.resolve_torch_device(value)
    assert repr(str(value) if isinstance(value, torch.device) else value) in str(err.value)
    assert "\n" not in str(err.value)


def test_gpu_forms_with_fake_cuda(monkeypatch):
    monkeypatch.setattr(dev, "_cuda_count", lambda: 3)
    assert dev.resolve_torch_device(2) == torch.device("cuda", 2)
    assert dev.resolve_torch_device("1") == torch.device("cuda", 1)
    assert dev.resolve_torch_device("cuda:2") == torch.device("cuda", 2)
    assert dev.resolve_torch_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    # a bare cuda/auto is the current GPU, or the process's own one under torchrun
    assert dev.resolve_torch_device("auto") == torch.device("cuda")
    assert dev.resolve_torch_device("cuda") == torch.device("cuda")
    assert dev.resolve_torch_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert dev.resolve_torch_device("cuda", local_rank=2) == torch.device("cuda", 2)
    # an explicit index wins over local_rank
    assert dev.resolve_torch_device("cuda:0", local_rank=2) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="out of range"):
        dev.resolve_torch_device(3)
    with pytest.raises(ValueError, match="out of range"):
        dev.resolve_torch_device("auto", local_rank=5)


@pytest.mark.parametrize("value", [True, -2, "cuda:-1", "gpu0", [0, 1], "[0]", 1.0, "all"])
def test_values_that_are_not_one_device(monkeypatch, value):
    monkeypatch.setattr(dev, "_cuda_count", lambda: 2)
    with pytest.raises(ValueError, match="device="):
        dev.resolve_torch_device(value)


def test_trainer_and_pretraining_use_it():
    """The MIL trainer's and pre-training's device handling is this function (one parser)."""
    from rl_benchmarks.utils import distributed

    assert distributed.resolve_torch_device is dev.resolve_torch_device
    assert distributed.setup_distributed("cpu").device == torch.device("cpu")
