"""JPEG tiles decoded on the GPU (nvJPEG through torchvision's ``decode_jpeg(device="cuda")``)
against TileReader (OpenSlide + libjpeg-turbo on the CPU): the same comparison as
tests/slides/test_jpeg_tiles.py, which is exact on the CPU, within nvJPEG's tolerance here;
and ``extract-slides decode=gpu`` against ``decode=cpu``.

Tolerance (not yet measured on a GPU when written; a run of benchmarks/gpu_checks.sh writes
the measured values to ``$RLB_GPU_MEASURE_DIR/jpeg_decode_cuda.json``): mean absolute
difference <= 1 grey level and 99.9th percentile <= 8 for 4:4:4 JPEG (CMU-1-Small-Region);
mean <= 2 and 99.9th percentile <= 24 for 4:2:0 JPEG (the generated pyramid), whose chroma
upsampling may differ between decoders.

Skipped without a GPU; run with ``pytest -m gpu``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TOLERANCE = {"444": (1.0, 8), "420": (2.0, 24)}  # (mean abs, 99.9th percentile abs)


def _record(name: str, values: dict) -> None:
    folder = os.environ.get("RLB_GPU_MEASURE_DIR")
    if not folder:
        return
    path = Path(folder) / "jpeg_decode_cuda.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[name] = values
    path.write_text(json.dumps(data, indent=1))


def _compare_on_cuda(path: Path, level: int, tile_size: int = 224) -> dict:
    from rl_benchmarks.slides.jpeg_tiles import JpegTiles, decode_batch, read_compressed
    from rl_benchmarks.slides.reader import TileReader

    reader = TileReader(path, tile_size)
    cols, rows = reader.deepzoom.level_tiles[level]
    coords = np.array([(level, c, r) for r in range(rows) for c in range(cols)], np.int64)
    source = JpegTiles(path, tile_size)
    assert source.unsupported(level) == ""
    got = decode_batch(read_compressed(source, coords), "cuda")
    assert got.is_cuda and got.dtype == torch.uint8
    ref = np.stack([reader.read(*map(int, c)) for c in coords])
    diff = np.abs(got.cpu().numpy().astype(int) - ref)
    return {"tiles": len(coords), "max": int(diff.max()), "mean": float(diff.mean()),
            "p99.9": float(np.percentile(diff, 99.9)), "share_equal": float((diff == 0).mean())}


@pytest.mark.real_data
def test_cuda_decoding_matches_cpu_on_real_svs(real_data):
    path = real_data / "slides" / "svs" / "CMU-1-Small-Region.svs"
    mean, p999 = TOLERANCE["444"]
    for level in (12, 11):  # native, and shrunk 2x like PIL's thumbnail
        m = _compare_on_cuda(path, level)
        _record(f"CMU-1-Small-Region level {level}", m)
        assert m["mean"] <= mean and m["p99.9"] <= p999, m


def test_cuda_decoding_matches_cpu_on_generated_pyramid(tmp_path):
    from testlib.jpeg_pyramid import write_pyramid

    path = write_pyramid(tmp_path / "pyramid.tif")
    mean, p999 = TOLERANCE["420"]
    for level in (11, 10, 9, 8):
        m = _compare_on_cuda(path, level)
        _record(f"generated pyramid level {level}", m)
        assert m["mean"] <= mean and m["p99.9"] <= p999, m


@pytest.mark.real_data
def test_extract_slides_decode_gpu_matches_decode_cpu(real_data, tmp_path):
    from rl_benchmarks.cli.main import run

    slide = tmp_path / "CMU-1-Small-Region.svs"
    shutil.copy(real_data / "slides" / "svs" / slide.name, slide)
    tiny = ["feature_extractor.pretrained=false", "+feature_extractor.depth=1",
            "+feature_extractor.embed_dim=32", "+feature_extractor.num_heads=2"]
    out = {}
    for decode in ("cpu", "gpu"):
        code = run("extract-slides", [f"slides={slide}", f"output_dir={tmp_path / decode}",
                                      "device=0", f"decode={decode}", "num_workers=2",
                                      "batch_size=16", "progress=false", *tiny])
        assert code == 0
        out[decode] = np.load(tmp_path / decode / slide.name / "features.npy")
    rec = json.loads((tmp_path / "gpu" / slide.name / "features.json").read_text())
    assert rec["decoder"] == "device (decode_jpeg on cuda:0)", rec["decoder"]
    a, b = out["gpu"], out["cpu"]
    np.testing.assert_array_equal(a[:, :3], b[:, :3])
    cos = (a[:, 3:] * b[:, 3:]).sum(1) / (np.linalg.norm(a[:, 3:], axis=1)
                                          * np.linalg.norm(b[:, 3:], axis=1))
    _record("extract-slides decode=gpu vs cpu (tiny ViT)", {"min_cosine": float(cos.min())})
    assert cos.min() > 0.999, cos.min()
