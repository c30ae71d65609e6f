import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from rl_benchmarks.models import Extractor, ParallelExtractor, create_extractor
from rl_benchmarks.models.feature_extractors import core
from rl_benchmarks.utils import device as dev

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_extractor("iBOTViTBasePANCAN", pretrained=False, embed_dim=32, depth=1,
                            num_heads=2, img_size=32, tile_size=32)


def _tiles(n=3, size=32):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_transform_is_totensor_then_imagenet_normalize(tiny):
    ref = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*IMAGENET)])
    for arr in _tiles():
        img = Image.fromarray(arr)
        assert torch.equal(tiny.transform(img), ref(img))
    # no resize: the tile keeps its size
    assert tiny.transform(Image.fromarray(_tiles(1, 48)[0])).shape == (3, 48, 48)


def test_normalize_uint8_matches_transform_both_layouts(tiny):
    arr = _tiles()
    expected = torch.stack([tiny.transform(Image.fromarray(a)) for a in arr])
    assert torch.equal(tiny.normalize_uint8(torch.from_numpy(arr)), expected)
    chw = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    assert torch.equal(tiny.normalize_uint8(chw), expected)
    assert torch.equal(tiny.normalize_uint8(arr), expected)  # numpy accepted
    with pytest.raises(TypeError, match="uint8"):
        tiny.normalize_uint8(torch.zeros(1, 8, 8, 3))
    with pytest.raises(ValueError, match="ambiguous"):
        tiny.normalize_uint8(torch.zeros(1, 3, 8, 3, dtype=torch.uint8))


def test_call_gives_float32_without_grad_and_bf16_is_close(tiny):
    x = tiny.normalize_uint8(torch.from_numpy(_tiles(4)))
    out = tiny(x)
    assert out.shape == (4, 32) and out.dtype == torch.float32 and not out.requires_grad
    # timm's token features (final norm applied), CLS token
    with torch.no_grad():
        ref = tiny.feature_extractor.forward_features(x)[:, 0]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    tiny.precision = "bf16"
    try:
        low = tiny(x)
    finally:
        tiny.precision = "fp32"
    assert low.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(low, out, dim=1)
    assert cos.min() > 0.98 and not torch.equal(low, out)
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        tiny(torch.zeros(3, 32, 32))
    with pytest.raises(TypeError, match="normalize_uint8"):
        tiny(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_record_random_init_and_file_sha(tmp_path, tiny):
    rec = tiny.record()
    assert rec["weights"] == "random-init" and rec["weights_sha256"] == "random-init"
    assert rec["pretrained"] is False and rec["tile_size"] == 32 and rec["mpp"] == 0.5
    assert rec["precision"] == "fp32" and rec["feature_dim"] == 32
    import hashlib

    from rl_benchmarks.models.feature_extractors.ibot_vit import iBOTViT

    path = tmp_path / "w.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in
                            tiny.feature_extractor.state_dict().items()}}, path)
    ext = iBOTViT("vit_base", weights_path=path, embed_dim=32, depth=1, num_heads=2, img_size=32)
    rec = ext.record()
    assert rec["weights"] == str(path) and rec["encoder"] == "teacher"
    assert rec["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_parallel_extractor_cpu_calls_the_prepared_module(tiny):
    par = ParallelExtractor(tiny, gpu=-1)
    assert isinstance(par, Extractor) and par.device == torch.device("cpu")
    assert par.transform is not None and par.feature_dim == tiny.feature_dim
    calls = []
    handle = par.parallel_module.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(2, 3, 32, 32)
    try:
        out = par(x)
    finally:
        handle.remove()
    assert calls == [1]
    torch.testing.assert_close(out, tiny(x))
    assert par.record()["device"] == "cpu"


def test_prepare_module_wraps_several_gpus_in_dataparallel(monkeypatch):
    """Without GPUs here, fake two: the module is wrapped in DataParallel over both."""
    monkeypatch.setattr(dev, "_cuda_count", lambda: 2)
    moved = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, d: (moved.append(str(d)), self)[1])
    made = {}

    class FakeDP(torch.nn.Module):
        def __init__(self, module, device_ids, output_device):
            super().__init__()
            made.update(device_ids=device_ids, output_device=output_device)
            self.module = module

    monkeypatch.setattr(core.nn, "DataParallel", FakeDP)
    net = torch.nn.Linear(2, 2)
    wrapped, device = core.prepare_module(net, [0, 1])
    assert isinstance(wrapped, FakeDP) and device == "cuda:0" and moved == ["cuda:0"]
    assert made == {"device_ids": [0, 1], "output_device": 0}
    assert not any(p.requires_grad for p in wrapped.parameters())
    wrapped, device = core.prepare_module(net, None)
    assert isinstance(wrapped, FakeDP) and made["device_ids"] == [0, 1]
    wrapped, device = core.prepare_module(net, "cuda:1")
    assert wrapped is net and device == "cuda:1"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_parallel_extractor_gpu_matches_cpu(tiny):
    x = torch.randn(4, 3, 32, 32)
    ref = tiny(x)
    par = ParallelExtractor(tiny, gpu=list(range(torch.cuda.device_count())))
    torch.testing.assert_close(par(x).cpu(), ref, atol=1e-4, rtol=1e-4)
    tiny.to("cpu")
