"""Feature-extraction pipeline vs. the model alone.

(1) ViT-B/16 (random weights, Phikon's shape) at fp32 and bf16: tiles/s of the full
    pipeline (slide -> read -> batched normalisation -> model -> features.npy) against the
    same model on pre-made tensors of the same batch size. Goal: pipeline >= 0.95 x model.
(2) A tiny ViT, where reading and decoding dominate as they do on a GPU: pipeline tiles/s
    for num_workers = 0, 1, 2.

    python benchmarks/extraction.py [--quick]

With ``--device cuda`` (section ``extraction_gpu``) the same two measurements run on the
GPU, at fp32, bf16 and fp16, with a larger batch and more loader workers; with
``--real-slides K`` the tiles come from K copies of each real SVS slide of the shared data
folder (JPEG and JPEG 2000 tiles) instead of the generated TIFF.

``--decode cpu,gpu`` adds a row per decoder: ``cpu`` decodes JPEG tiles in the DataLoader
workers, ``gpu`` (extract-slides ``decode=gpu``) has the workers read the compressed tiles and
decodes them with nvJPEG on the extractor's GPU (rl_benchmarks/slides/jpeg_tiles.py). With
``--device cpu`` the ``gpu`` rows run that same main-process path with ``decode_jpeg`` on the
CPU: a smoke test of the code, not a measurement of GPU decoding. ``--no-write`` leaves
BENCHMARKS.md alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rl_benchmarks.extraction.slides import (  # noqa: E402
    SlideExtractionSettings,
    SlideInput,
    run_slide_extraction,
)
from rl_benchmarks.models.feature_extractors import create_extractor  # noqa: E402
from rl_benchmarks.slides import tile_slide  # noqa: E402
from rl_benchmarks.slides.synthetic import write_pyramidal_tiff  # noqa: E402
from rl_benchmarks.utils.bench import (  # noqa: E402
    command_line,
    machine_description,
    real_data_root,
    write_section,
)


def make_slide(folder: Path, side: int) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    img = np.full((side, side, 3), 240, np.uint8)
    m = side // 10
    tissue = np.clip(np.array([200, 110, 170]) + rng.normal(0, 30, (side - 2 * m, side - 2 * m, 3)),
                     0, 255).astype(np.uint8)
    img[m:-m, m:-m] = tissue
    path = folder / "bench.tif"
    write_pyramidal_tiff(path, img, mpp=0.5, tile_size=256, compression="jpeg")
    coords = tile_slide(path, tile_size=224, target_mpp=0.5).coords
    return path, coords


#: --real-kinds: the real SVS slide of each kind, and how the report names it.
REAL_SLIDES = {"jpeg": ("CMU-1-Small-Region.svs", "CMU-1-Small-Region, JPEG"),
               "j2k": ("tcga-cr-7395-01a-01-ts1.svs", "tcga-cr-7395, JPEG 2000")}


def real_slides(copies: int, folder: Path, kinds: list[str]) -> list[tuple[Path, np.ndarray]]:
    """``copies`` links to each real SVS slide of the shared data (``RLB_REAL_DATA``), with
    their tissue coords at 0.5 mpp (224 px): every copy is a separate slide to the
    pipeline (its own reader and tile cache), as distinct slides of a cohort are."""
    root = real_data_root()
    if not (root / "slides" / "svs").is_dir():
        raise SystemExit(f"--real-slides: no slides/svs under {root} (set RLB_REAL_DATA)")
    jobs = []
    for src, _ in (REAL_SLIDES[k] for k in kinds):
        path = root / "slides" / "svs" / src
        coords = tile_slide(path, tile_size=224, target_mpp=0.5, default_mpp=0.5).coords
        for k in range(copies):
            link = folder / f"{path.stem}_{k:03d}.svs"
            os.symlink(path.resolve(), link)
            jobs.append((link, np.asarray(coords)))
    return jobs


def real_mosaic(folder: Path) -> Path:
    """An 11,100 × 11,868 px pyramidal JPEG TIFF (q80, 256-px tiles, 0.499 mpp) tiled from
    the real pixels of CMU-1-Small-Region.svs, mirrored 5 × 4: real H&E to decode, in a
    slide large enough that a pass over its tiles overflows OpenSlide's tile cache."""
    import openslide

    from rl_benchmarks.slides.synthetic import write_pyramidal_tiff

    with openslide.OpenSlide(str(real_data_root() / "slides" / "svs" / REAL_SLIDES["jpeg"][0])) as s:
        img = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))
    rows = [np.concatenate([img[:: -1 if r % 2 else 1, :: -1 if c % 2 else 1]
                            for c in range(5)], axis=1) for r in range(4)]
    path = folder / "cmu_mosaic.tif"
    write_pyramidal_tiff(path, np.ascontiguousarray(np.concatenate(rows, axis=0)), mpp=0.499,
                         tile_size=256, compression="jpeg", quality=80)
    return path


def model_alone(extractor, n_tiles: int, batch_size: int) -> float:
    """Tiles/s of the model on a batch already on its device (the pipeline's ceiling)."""
    x = torch.randn(batch_size, 3, 224, 224, device=extractor.device)
    extractor(x)  # warm-up
    sync(extractor)
    done, t0 = 0, time.perf_counter()
    while done < n_tiles:
        extractor(x)
        done += batch_size
    sync(extractor)
    return done / (time.perf_counter() - t0)


def sync(extractor) -> None:
    if extractor.device.type == "cuda":
        torch.cuda.synchronize(extractor.device)


def pipeline(extractor, jobs: list[tuple[Path, np.ndarray]], n_tiles: int, batch_size: int,
             workers: int, work: Path, decode: str = "cpu") -> float:
    """Tiles/s of ``run_slide_extraction`` over ``jobs`` (slide, coords), at most
    ``n_tiles`` tiles in all (taken slide by slide), JPEG tiles decoded as ``decode`` says
    (``gpu`` on a CPU extractor: the main-process path with decode_jpeg on the CPU)."""
    import rl_benchmarks.extraction.slides as slides_mod

    out = work / f"out_{workers}_{time.perf_counter_ns()}"
    inputs, left = [], n_tiles
    for slide, coords in jobs:
        if left <= 0:
            break
        cpath = work / f"{slide.stem}.coords.npy"
        np.save(cpath, coords[:left])
        inputs.append(SlideInput(slide, slide.name, cpath))
        left -= len(coords[:left])
    smoke = decode == "gpu" and extractor.device.type != "cuda"
    settings = SlideExtractionSettings(batch_size=batch_size, num_workers=workers, progress=False,
                                       decode="auto" if smoke else decode)
    real_resolve = slides_mod.resolve_decode
    if smoke:  # the device path, on the CPU
        slides_mod.resolve_decode = lambda d, dev: torch.device("cpu") if d == "auto" else None
    # warm-up batch outside the timing (model kernels, page cache)
    extractor(torch.randn(batch_size, 3, 224, 224, device=extractor.device))
    sync(extractor)
    try:
        t0 = time.perf_counter()
        summary = run_slide_extraction(inputs, out, extractor, settings)
        dt = time.perf_counter() - t0
    finally:
        slides_mod.resolve_decode = real_resolve
    assert summary.n_tiles == n_tiles - max(left, 0) and not summary.failed, summary
    if decode == "gpu":
        fallback = {k: d.fallback for k, d in summary.decoders.items() if not d.on_device}
        if fallback:
            print(f"  note: decode=gpu fell back to the CPU for {fallback}")
    shutil.rmtree(out)
    return summary.n_tiles / dt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:K")
    parser.add_argument("--real-slides", type=int, default=0, metavar="K",
                        help="read K copies of each real SVS slide instead of a generated TIFF")
    parser.add_argument("--real-kinds", default="jpeg,j2k",
                        help="which real slides: jpeg (CMU-1-Small-Region), j2k (tcga-cr-7395)")
    parser.add_argument("--slide", default=None,
                        help="read this slide file (its tissue tiles at 0.5 mpp) instead of a "
                             "generated TIFF")
    parser.add_argument("--real-mosaic", action="store_true",
                        help="read a mosaic of the real CMU-1-Small-Region pixels (see "
                             "real_mosaic) instead of a generated TIFF")
    parser.add_argument("--repeat", type=int, default=1,
                        help="with --slide: read its tissue tiles this many times over (each "
                             "pass reads far more than OpenSlide's tile cache holds)")
    parser.add_argument("--tiles", type=int, default=None,
                        help="tiles per measurement (default: 128 ViT-B / 2048 tiny on CPU, "
                             "4096 / 8192 on GPU); more tiles amortise the loader's start")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated (default fp32,bf16; GPU: fp32,bf16,fp16)")
    parser.add_argument("--note", default="", help="a sentence on the slide, for the report")
    parser.add_argument("--section", default=None,
                        help="BENCHMARKS.md section (default extraction, or extraction_gpu)")
    parser.add_argument("--workers", type=int, default=None,
                        help="loader workers of the ViT-B pipeline (default 1; GPU: 8)")
    parser.add_argument("--decode", default="cpu",
                        help="comma-separated JPEG decoders to compare: cpu (loader workers), "
                             "gpu (nvJPEG in the main process; on --device cpu: the same path "
                             "with decode_jpeg on the CPU, a smoke test)")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    parser.add_argument("--scaling-workers", default=None,
                        help="comma-separated num_workers of the tiny-ViT rows "
                             "(default 0,1,2; GPU: 0,2,4,8,14)")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    batch = 256 if gpu else 32
    workers = args.workers if args.workers is not None else (8 if gpu else 1)
    scaling_workers = [int(w) for w in (args.scaling_workers
                                        or ("0,2,4,8,14" if gpu else "0,1,2")).split(",")]
    precisions = (args.precisions.split(",") if args.precisions else
                  ("fp32", "bf16", "fp16") if gpu else ("fp32", "bf16"))
    decodes = args.decode.split(",")
    if any(d not in ("cpu", "gpu") for d in decodes):
        raise SystemExit(f"--decode {args.decode}: give cpu, gpu or cpu,gpu")
    n_big = 32 if args.quick else (args.tiles or (4096 if gpu else 128))
    n_small = 256 if args.quick else (args.tiles or (8192 if gpu else 2048))
    work = Path(tempfile.mkdtemp(prefix="rlb_extract_bench_"))
    if args.real_mosaic:
        args.slide = str(real_mosaic(work))
    if args.slide:
        path = Path(args.slide)
        coords = np.asarray(tile_slide(path, tile_size=224, target_mpp=0.5).coords)
        jobs = [(path, np.tile(coords, (args.repeat, 1)))]
        source = (f"{path.name} ({len(coords)} tissue tiles at 0.5 mpp"
                  + (f", read {args.repeat} times over" if args.repeat > 1 else "") + ")")
    elif args.real_slides:
        kinds = args.real_kinds.split(",")
        jobs = real_slides(args.real_slides, work, kinds)
        n_unique = sum(len(c) for _, c in jobs) // args.real_slides
        source = (f"{args.real_slides} copies of "
                  + " and ".join(REAL_SLIDES[k][1] for k in kinds)
                  + f": {n_unique} distinct tissue tiles at 0.5 mpp, "
                  f"{sum(len(c) for _, c in jobs)} in all")
    else:
        side = 3000 if args.quick else (16000 if gpu else 12000)
        slide, coords = make_slide(work, side)
        jobs = [(slide, coords)]
        source = f"generated {side}×{side} px pyramidal JPEG TIFF at 0.5 mpp"
    total = sum(len(c) for _, c in jobs)
    n_big, n_small = min(n_big, total), min(n_small, total)
    print(f"{source}; {total} tissue tiles")
    rows = []
    torch.manual_seed(0)
    for precision in precisions:
        ext = create_extractor("iBOTViTBasePANCAN", pretrained=False,
                               precision=precision).place(args.device)
        alone = model_alone(ext, n_big, batch)
        for decode in decodes:
            pipe = pipeline(ext, jobs, n_big, batch, workers, work, decode)
            rows.append((precision, decode, alone, pipe))
            print(f"ViT-B {precision}, decode={decode}: model alone {alone:.2f} tiles/s, "
                  f"pipeline {pipe:.2f} tiles/s, ratio {pipe / alone:.3f}")
    tiny = create_extractor("iBOTViTBasePANCAN", pretrained=False, depth=1, embed_dim=32,
                            num_heads=2).place(args.device)
    tiny_alone = model_alone(tiny, n_small, 64)
    scaling = []
    for decode in decodes:
        for w in scaling_workers:
            rate = pipeline(tiny, jobs, n_small, 64, w, work, decode)
            scaling.append((decode, w, rate))
            print(f"tiny ViT, decode={decode}, num_workers={w}: {rate:.1f} tiles/s")
    shutil.rmtree(work, ignore_errors=True)

    title = ("Feature extraction on a GPU" if gpu else
             "Feature extraction: pipeline vs. model alone")
    md = [
        f"## {title} (`{command_line('benchmarks/extraction.py', sys.argv[1:])}`)",
        "",
        f"Machine: {machine_description()}.",
        f"Slides: {source}; {n_big} tiles per ViT-B measurement, batch {batch}, "
        f"num_workers={workers}; random weights." + (f" {args.note}" if args.note else ""),
        "",
        "| model | precision | decode | model alone (tiles/s) | pipeline (tiles/s) | pipeline / model |",
        "|---|---|---|---|---|---|",
    ]
    md += [f"| ViT-B/16 | {p} | {d} | {a:.2f} | {b:.2f} | **{b / a:.3f}** |"
           for p, d, a, b in rows]
    md += [
        "",
        f"I/O-bound case: a tiny ViT (1 block, 32-d; model alone {tiny_alone:.0f} tiles/s), "
        f"{n_small} tiles, batch 64:",
        "",
        "| decode | num_workers | pipeline tiles/s |",
        "|---|---|---|",
    ]
    md += [f"| {d} | {w} | {r:.1f} |" for d, w, r in scaling]
    md += [""]
    if gpu:
        md += ["Model alone: a batch already on the GPU, timed to a `cuda.synchronize`. The "
               "pipeline time includes reading and decoding in DataLoader workers (pinned "
               "memory), the copy to the GPU, batched normalisation there, the model, the copy "
               "back and the atomic write of `features.npy` per slide."]
    else:
        md += ["The pipeline time includes reading and JPEG decoding (in DataLoader workers), "
               "batched normalisation, the model and the atomic write of `features.npy`. On 2 "
               "cores the workers share the cores with the model, so more workers cannot help "
               "a CPU-bound ViT-B; they matter on a GPU, where the tiny-model row is the "
               "relevant one."]
    if "gpu" in decodes:
        md += ["", "decode=gpu: DataLoader workers read the compressed JPEG tiles; the main "
               "process decodes each batch's TIFF tiles with one torchvision `decode_jpeg` call "
               f"on {'the GPU (nvJPEG)' if gpu else 'the CPU (a smoke test of the path)'}, "
               "then crops, shrinks and pads them there (docs/extraction.md)."]
    if args.no_write:
        print("\n".join(md))
        return
    write_section(args.section or ("extraction_gpu" if gpu else "extraction"), "\n".join(md))


if __name__ == "__main__":
    main()
