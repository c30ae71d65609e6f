"""extract-slides with JPEG decoding in the main process (``decode=gpu|auto``): the device
path gives the CPU path's features, unsupported slides (JPEG 2000) fall back to the CPU
reader, records say which decoder read each slide, and ``decode=gpu`` without CUDA is a
one-line error. The device path runs here on the CPU (torchvision's libjpeg-turbo), the same
code a GPU runs with nvJPEG (tests/cuda/test_jpeg_decode_cuda.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from rl_benchmarks.extraction import slides as ex
from rl_benchmarks.models.feature_extractors import create_extractor


def tiny_extractor():
    torch.manual_seed(0)
    return create_extractor("iBOTViTBasePANCAN", pretrained=False, depth=1, embed_dim=32,
                            num_heads=2)


def jobs_of(paths, tile_size=224, n=40):
    from rl_benchmarks.slides import tile_slide

    out = []
    for p in paths:
        coords = np.asarray(tile_slide(p, tile_size=tile_size, target_mpp=0.5,
                                       default_mpp=0.5).coords)[:n]
        out.append((p, coords))
    return out


@pytest.mark.real_data
@pytest.mark.slow
def test_device_decoding_gives_cpu_features_and_j2k_falls_back(real_data):
    svs = real_data / "slides" / "svs"
    jobs = jobs_of([svs / "CMU-1-Small-Region.svs", svs / "tcga-cr-7395-01a-01-ts1.svs"])
    ext = tiny_extractor()
    cpu = ex.extract_from_coords(jobs, ext, 224, batch_size=16, progress=False)
    decoders: dict[int, str] = {}
    dev = ex.extract_from_coords(jobs, ext, 224, batch_size=16, progress=False,
                                 jpeg_device="cpu", decoders=decoders)
    assert decoders[0] == "device (decode_jpeg on cpu)"
    assert decoders[1].startswith("cpu: slide level 0 is JPEG 2000"), decoders[1]
    for k in range(2):
        assert isinstance(dev[k], np.ndarray), dev[k]
        np.testing.assert_array_equal(dev[k], cpu[k])  # same pixels, same features


@pytest.mark.real_data
def test_a_device_decoder_that_disagrees_is_not_used(real_data, monkeypatch):
    """When the first batch decoded on the device differs from the CPU's decoding, the
    slide's streams are decoded on the CPU (same features) and the reason is kept."""
    import rl_benchmarks.slides.jpeg_tiles as jt

    jobs = jobs_of([real_data / "slides" / "svs" / "CMU-1-Small-Region.svs"], n=20)
    ext = tiny_extractor()
    cpu = ex.extract_from_coords(jobs, ext, 224, batch_size=8, progress=False)
    monkeypatch.setattr(jt, "check_batch_decoder", lambda batch, device: "it disagrees")
    used = []
    real_decode = jt.decode_batch
    monkeypatch.setattr(jt, "decode_batch", lambda b, d: used.append(str(d)) or real_decode(b, d))
    decoders: dict[int, str] = {}
    dev = ex.extract_from_coords(jobs, ext, 224, batch_size=8, progress=False,
                                 jpeg_device="cpu:0", decoders=decoders)
    # the "device" is cpu:0, the fallback plain "cpu": only the fallback decoded
    assert decoders == {0: "cpu: it disagrees"} and used == ["cpu"] * 3
    np.testing.assert_array_equal(dev[0], cpu[0])


def test_decode_gpu_without_cuda_is_one_line_error(tmp_path):
    ext = tiny_extractor()
    with pytest.raises(ValueError) as err:
        ex.run_slide_extraction([], tmp_path / "out", ext,
                                ex.SlideExtractionSettings(decode="gpu", progress=False))
    assert "\n" not in str(err.value) and "decode=gpu needs the extractor on a CUDA device" \
        in str(err.value)
    assert not (tmp_path / "out").exists()
    assert ex.resolve_decode("auto", "cpu") is None
    assert ex.resolve_decode("cpu", "cpu") is None
    with pytest.raises(ValueError, match="decode must be one of cpu, gpu, auto"):
        ex.SlideExtractionSettings(decode="nvjpeg")


def test_cli_decode_gpu_on_cpu_exits_2_in_one_line(tmp_path, capsys):
    from rl_benchmarks.cli.main import main
    from rl_benchmarks.slides.synthetic import write_pyramidal_tiff

    slide = write_pyramidal_tiff(tmp_path / "s.tif", np.full((600, 600, 3), 200, np.uint8),
                                 mpp=0.5)
    code = main(["extract-slides", f"slides={slide}", f"output_dir={tmp_path / 'out'}",
                                  "device=-1", "decode=gpu", "progress=false", "num_workers=0",
                                  "feature_extractor.pretrained=false",
                                  "+feature_extractor.depth=1", "+feature_extractor.embed_dim=32",
                                  "+feature_extractor.num_heads=2"])
    captured = capsys.readouterr()
    assert code == 2
    first = captured.err.strip().splitlines()[0]
    assert first.startswith("rlbench extract-slides: error: decode=gpu needs the extractor on "
                            "a CUDA device"), captured.err
    assert "features of" not in captured.out  # stopped before the run started
    assert not (tmp_path / "out").exists()


@pytest.mark.real_data
@pytest.mark.slow
def test_records_name_the_decoder_and_it_is_not_a_setting(real_data, tmp_path, monkeypatch):
    """decode=auto with the device path forced onto the CPU (as on CUDA): features.json says
    which decoder read each slide (and why not the device), the summary counts them, and a
    re-run with decode=cpu skips the finished slides (the decoder is not a setting)."""
    svs = real_data / "slides" / "svs"
    for name in ("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs"):
        shutil.copy(svs / name, tmp_path / name)
    jobs = jobs_of([tmp_path / "CMU-1-Small-Region.svs", tmp_path / "tcga-cr-7395-01a-01-ts1.svs"],
                   n=20)
    inputs = []
    for path, coords in jobs:
        np.save(tmp_path / f"{path.name}.npy", coords)
        inputs.append(ex.SlideInput(path, path.name, tmp_path / f"{path.name}.npy"))
    ext = tiny_extractor()
    out = tmp_path / "out"
    ref = ex.run_slide_extraction(inputs, tmp_path / "ref", ext, ex.SlideExtractionSettings(
        batch_size=8, num_workers=0, progress=False))
    assert ref.decoders == {}
    real_resolve = ex.resolve_decode
    monkeypatch.setattr(ex, "resolve_decode", lambda decode, device: (
        torch.device("cpu") if decode == "auto" else real_resolve(decode, device)))
    summary = ex.run_slide_extraction(inputs, out, ext, ex.SlideExtractionSettings(
        batch_size=8, num_workers=1, progress=False, decode="auto"))
    assert sorted(summary.done) == sorted(i.slide_id for i in inputs) and not summary.failed
    assert summary.decoders["CMU-1-Small-Region.svs"] == "device (decode_jpeg on cpu)"
    assert summary.decoders["tcga-cr-7395-01a-01-ts1.svs"].startswith("cpu: slide level 0 is JPEG 2000")
    assert "JPEG decoded on the device for 1 slide(s), on the CPU for 1" in summary.line()
    for i in inputs:
        rec = json.loads((out / i.slide_id / "features.json").read_text())
        assert rec["decode"] == "auto" and "decode" not in rec["settings"]
        np.testing.assert_array_equal(np.load(out / i.slide_id / "features.npy"),
                                      np.load(tmp_path / "ref" / i.slide_id / "features.npy"))
    rec = json.loads((out / "tcga-cr-7395-01a-01-ts1.svs" / "features.json").read_text())
    assert rec["decoder"] == "cpu" and "JPEG 2000" in rec["decoder_fallback"]
    again = ex.run_slide_extraction(inputs, out, ext, ex.SlideExtractionSettings(
        batch_size=8, num_workers=0, progress=False, decode="cpu"))
    assert sorted(again.skipped) == sorted(i.slide_id for i in inputs) and not again.done


@pytest.mark.real_data
@pytest.mark.slow
def test_cli_lists_slides_decoded_on_the_cpu(real_data, tmp_path, monkeypatch, capsys):
    """extract-slides decode=auto (device path forced onto the CPU, as on CUDA): the JPEG
    2000 slide is named with its reason, the JPEG one is not, the summary counts both."""
    from rl_benchmarks.cli.main import main

    for name in ("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs"):
        shutil.copy(real_data / "slides" / "svs" / name, tmp_path / name)
    real_resolve = ex.resolve_decode
    monkeypatch.setattr(ex, "resolve_decode", lambda decode, device: (
        torch.device("cpu") if decode == "auto" else real_resolve(decode, device)))
    code = main(["extract-slides", f"slides={tmp_path}", f"output_dir={tmp_path / 'out'}",
                 "device=-1", "decode=auto", "progress=false", "num_workers=0", "n_tiles=8",
                 "default_mpp=0.5", "feature_extractor.pretrained=false",
                 "+feature_extractor.depth=1", "+feature_extractor.embed_dim=32",
                 "+feature_extractor.num_heads=2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "JPEG decoded on the device for 1 slide(s), on the CPU for 1" in out
    assert ("decoded on the CPU (slide level 0 is JPEG 2000 (Aperio RGB), not JPEG): "
            "tcga-cr-7395-01a-01-ts1.svs") in out
    assert "CMU-1-Small-Region.svs\n" not in out.split("decoded on the CPU", 1)[1]
