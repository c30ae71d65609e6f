import pytest
import torch

from rl_benchmarks.utils import device as dev


def test_cpu_forms():
    for value in (-1, "-1", "cpu", [-1], torch.device("cpu")):
        assert dev.parse_device(value) == dev.DeviceSpec("cpu")
    assert dev.parse_device(-1).primary == torch.device("cpu")


def test_gpu_requests_without_cuda(monkeypatch):
    monkeypatch.setattr(dev, "_cuda_count", lambda: 0)
    for value in (0, [0, 1], "[0,1]", None, "null"):
        with pytest.warns(UserWarning, match="CUDA is not available") if value not in (
                None, "null") else _nothing():
            assert dev.parse_device(value).type == "cpu"
    assert dev.parse_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="CUDA is not available"):
        dev.parse_device("cuda:0")


def test_gpu_requests_with_fake_cuda(monkeypatch):
    monkeypatch.setattr(dev, "_cuda_count", lambda: 3)
    assert dev.parse_device(2) == dev.DeviceSpec("cuda", (2,))
    assert dev.parse_device("cuda:1").primary == torch.device("cuda", 1)
    spec = dev.parse_device([1, 2])
    assert spec.ids == (1, 2) and spec.is_multi_gpu and spec.primary == torch.device("cuda", 1)
    assert dev.parse_device(None).ids == (0, 1, 2)
    assert dev.parse_device("auto").ids == (0,)
    with pytest.raises(ValueError, match="out of range"):
        dev.parse_device(5)
    with pytest.raises(ValueError, match="listed twice"):
        dev.parse_device([1, 1])


def test_bad_device_values():
    for value in ("gpu0", True, -3, [], ["a"]):
        with pytest.raises(ValueError):
            dev.parse_device(value)


def test_precision_and_autocast():
    assert dev.parse_precision("bfloat16") == "bf16"
    assert dev.parse_precision(None) == "fp32"
    with pytest.raises(ValueError, match="precision='int8'"):
        dev.parse_precision("int8")
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with dev.autocast("cpu", "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with dev.autocast(torch.device("cpu"), "fp32"):
        assert (a @ b).dtype == torch.float32


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
