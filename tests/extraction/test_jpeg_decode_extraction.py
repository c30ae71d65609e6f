"""extract-slides with JPEG decoding in the main process (``decode=gpu|auto``): the device
path gives the CPU path's features, unsupported slides (JPEG 2000) and slides stored as a kind
of JPEG the device's decoder fails its probe on are read by the loader workers (never decoded
in the main process), records say which decoder read each slide, and ``decode=gpu`` without
CUDA is a one-line error. The device path runs here on the CPU (torchvision's libjpeg-turbo),
the same code a GPU runs with nvJPEG (tests/cuda/test_jpeg_decode_cuda.py); a device whose
decoder disagrees is the CPU named ``cpu:0`` with a doctored decode_jpeg."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from testlib.jpeg_pyramid import write_pyramid

from rl_benchmarks.extraction import slides as ex
from rl_benchmarks.models.feature_extractors import create_extractor


def tiny_extractor():
    torch.manual_seed(0)
    return create_extractor("iBOTViTBasePANCAN", pretrained=False, depth=1, embed_dim=32,
                            num_heads=2)


STAND_IN = "cpu:0"  # the "device" whose decoder disagrees with the CPU's


def disagreeing_decoder(monkeypatch, rgb_only: bool) -> None:
    """decode_jpeg on STAND_IN drops the Adobe RGB marker (``rgb_only``: it takes Aperio's RGB
    tiles for YCbCr) or brightens every pixel by 40 grey levels; elsewhere it is the real one."""
    import torchvision.io

    from rl_benchmarks.slides.jpeg_tiles import ADOBE_RGB

    real = torchvision.io.decode_jpeg

    def decode(data, *args, device="cpu", **kwargs):
        if str(torch.device(device)) != STAND_IN:
            return real(data, *args, device=device, **kwargs)
        if not rgb_only:
            return [(img.int() + 40).clamp(0, 255).to(torch.uint8)
                    for img in real(data, *args, device=device, **kwargs)]
        data = [torch.frombuffer(bytearray(b"\xff\xd8" + bytes(d[2 + len(ADOBE_RGB):].numpy())),
                                 dtype=torch.uint8)
                if bytes(d[2:2 + len(ADOBE_RGB)].numpy()) == ADOBE_RGB else d for d in data]
        return real(data, *args, device=device, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode)


def spy_decoding(monkeypatch) -> tuple[list[str], list[int]]:
    """(names of the slides whose streams a worker read, sizes of the batches this process
    decoded): read_compressed and decode_batch, recorded."""
    import rl_benchmarks.slides.jpeg_tiles as jt

    read, decoded = [], []
    real_read, real_decode = jt.read_compressed, jt.decode_batch
    monkeypatch.setattr(jt, "read_compressed", lambda source, coords: read.append(
        source.slide_path.name) or real_read(source, coords))
    monkeypatch.setattr(jt, "decode_batch", lambda batch, device: decoded.append(
        len(batch)) or real_decode(batch, device))
    return read, decoded


def top_level_jobs(path, n=20, tile_size=224):
    """(path, the first ``n`` tiles of the slide's finest DeepZoom level)."""
    from rl_benchmarks.slides.reader import TileReader

    reader = TileReader(path, tile_size)
    dz = reader.deepzoom
    level = dz.level_count - 1
    cols, rows = dz.level_tiles[level]
    reader.close()
    return (path, np.array([(level, c, r) for r in range(rows) for c in range(cols)][:n],
                           np.int64))


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
    assert decoders[0] == ex.SlideDecoder(device="cpu")
    assert not decoders[1].on_device
    assert decoders[1].fallback.startswith("slide level 0 is JPEG 2000"), decoders[1]
    for k in range(2):
        assert isinstance(dev[k], np.ndarray), dev[k]
        np.testing.assert_array_equal(dev[k], cpu[k])  # same pixels, same features


@pytest.mark.real_data
def test_slides_of_a_kind_the_device_decodes_wrongly_are_read_by_the_workers(
        real_data, tmp_path, monkeypatch):
    """A device decoder that ignores the Adobe RGB marker fails the probe on RGB JPEG only:
    the Aperio RGB slide is read by the workers' CPU reader (its streams are never read nor
    decoded in this process), the YCbCr pyramid is still decoded on the device, and both
    give the CPU path's features."""
    jobs = [jobs_of([real_data / "slides" / "svs" / "CMU-1-Small-Region.svs"], n=20)[0],
            top_level_jobs(write_pyramid(tmp_path / "pyramid.tif"))]
    ext = tiny_extractor()
    cpu = ex.extract_from_coords(jobs, ext, 224, batch_size=8, progress=False)
    disagreeing_decoder(monkeypatch, rgb_only=True)
    read, decoded = spy_decoding(monkeypatch)
    decoders: dict[int, ex.SlideDecoder] = {}
    dev = ex.extract_from_coords(jobs, ext, 224, batch_size=8, progress=False,
                                 jpeg_device=STAND_IN, decoders=decoders)
    assert not decoders[0].on_device
    assert decoders[0].fallback.startswith("RGB baseline JPEG: decode_jpeg on cpu:0 differs "
                                           "from the CPU by"), decoders[0]
    assert decoders[1] == ex.SlideDecoder(device=STAND_IN)
    assert set(read) == {"pyramid.tif"} and decoded == [8, 8, 4]  # the pyramid's batches only
    for k in range(2):
        np.testing.assert_array_equal(dev[k], cpu[k])


def test_a_device_decoder_that_disagrees_is_probed_once_and_not_used(tmp_path, monkeypatch):
    """A device decoder that disagrees on every kind of stream: probed once before the
    loader starts, no stream is read nor decoded, the loader reads the slide with the CPU
    reader (same features), and the reason is kept."""
    import rl_benchmarks.slides.jpeg_tiles as jt

    jobs = [top_level_jobs(write_pyramid(tmp_path / "pyramid.tif"))]
    ext = tiny_extractor()
    cpu = ex.extract_from_coords(jobs, ext, 224, batch_size=8, progress=False)
    disagreeing_decoder(monkeypatch, rgb_only=False)
    probes = []
    real_probe = jt.probe_decoder
    monkeypatch.setattr(jt, "probe_decoder", lambda device: probes.append(device) or
                        real_probe(device))
    read, decoded = spy_decoding(monkeypatch)
    decoders: dict[int, ex.SlideDecoder] = {}
    dev = ex.extract_from_coords(jobs, ext, 224, batch_size=8, progress=False,
                                 jpeg_device=STAND_IN, decoders=decoders)
    assert probes == [STAND_IN] and decoded == [] and read == []
    assert decoders[0].fallback.startswith("YCbCr baseline JPEG: decode_jpeg on cpu:0 differs "
                                           "from the CPU by"), decoders[0]
    np.testing.assert_array_equal(dev[0], cpu[0])
    # the same slide with a decoder that agrees: its streams are decoded in this process
    monkeypatch.undo()
    read, decoded = spy_decoding(monkeypatch)
    decoders.clear()
    dev = ex.extract_from_coords(jobs, ext, 224, batch_size=8, progress=False,
                                 jpeg_device=STAND_IN, decoders=decoders)
    assert decoders == {0: ex.SlideDecoder(device=STAND_IN)} and decoded == [8, 8, 4]
    assert read == ["pyramid.tif"] * 3
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
    assert summary.decoders["CMU-1-Small-Region.svs"] == ex.SlideDecoder(device="cpu")
    j2k = summary.decoders["tcga-cr-7395-01a-01-ts1.svs"]
    assert not j2k.on_device and j2k.fallback.startswith("slide level 0 is JPEG 2000"), j2k
    assert "JPEG decoded on the device for 1 slide(s), on the CPU for 1" in summary.line()
    for i in inputs:
        rec = json.loads((out / i.slide_id / "features.json").read_text())
        assert rec["decode"] == "auto" and "decode" not in rec["settings"]
        np.testing.assert_array_equal(np.load(out / i.slide_id / "features.npy"),
                                      np.load(tmp_path / "ref" / i.slide_id / "features.npy"))
    rec = json.loads((out / "tcga-cr-7395-01a-01-ts1.svs" / "features.json").read_text())
    assert rec["decoder"] == "cpu" and "JPEG 2000" in rec["decoder_fallback"]
    rec = json.loads((out / "CMU-1-Small-Region.svs" / "features.json").read_text())
    assert rec["decoder"] == "device (decode_jpeg on cpu)" and "decoder_fallback" not in rec
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
