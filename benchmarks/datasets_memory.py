"""Memory and read speed of SlideClassificationDataset on a generated cohort.

Writes ``S`` slides × ``T`` tiles × (3 + 768) float32 ``features.npy`` files and a CSV
cohort, then measures, each in a fresh process (peak RSS is per process):

* ``items``: one pass over every item (per-item memory-mapped reads, n_tiles = T);
* ``as_tensor32`` / ``as_tensor16``: the padded fast path in float32 / float16;
* ``preload``: the reference's way, every matrix loaded into RAM (``preload_features``).

Usage: ``.venv/bin/python benchmarks/datasets_memory.py [--slides 200] [--tiles 1000]
[--quick] [--no-write]``. The defaults keep the files at 0.6 GB; ``--slides 1000`` gives
the 1,000 × 1,000 × 768 case (3.1 GB of files and of RAM for the float32 tensor).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def generate(root: Path, n_slides: int, n_tiles: int, dim: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n_slides):
        d = root / "feats" / f"slide{i:04d}.svs"
        d.mkdir(parents=True, exist_ok=True)
        arr = rng.standard_normal((n_tiles, 3 + dim), dtype=np.float32)
        np.save(d / "features.npy", arr)
    csv = root / "cohort.csv"
    lines = ["slide_id,patient_id,label"] + [
        f"slide{i:04d},p{i // 2},{(i // 2) % 2}" for i in range(n_slides)
    ]
    csv.write_text("\n".join(lines) + "\n")
    return csv


def measure(mode: str, root: Path, n_tiles: int) -> dict:
    """Run in a child process: build the dataset, do ``mode``, report RSS and time."""
    import torch

    from rl_benchmarks.datasets import SlideClassificationDataset
    from rl_benchmarks.utils.bench import peak_rss_mb
    from rl_benchmarks.utils.features import preload_features

    ds = SlideClassificationDataset(root / "feats", str(root / "cohort.csv"), n_tiles=n_tiles)
    base = peak_rss_mb()
    t0 = time.perf_counter()
    if mode == "items":
        total = 0
        for i in range(len(ds)):
            total += ds[i][0].shape[0]
    elif mode == "as_tensor32":
        out = ds.as_tensor()
        total = int((~out.mask).sum())
    elif mode == "as_tensor16":
        out = ds.as_tensor(dtype=torch.float16)
        total = int((~out.mask).sum())
    elif mode == "preload":
        os.environ["TQDM_DISABLE"] = "1"
        out = preload_features(list(ds.features), n_tiles=n_tiles)
        total = sum(a.shape[0] for a in out)
    else:
        raise ValueError(mode)
    dt = time.perf_counter() - t0
    return {"mode": mode, "base_mb": base, "peak_mb": peak_rss_mb(), "seconds": dt,
            "tiles": total, "slides": len(ds), "nbytes32": ds.tensor_nbytes()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=200)
    parser.add_argument("--tiles", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--quick", action="store_true", help="20 slides x 200 tiles smoke run")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "ROOT", "TILES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, root, tiles = args.child
        print(json.dumps(measure(mode, Path(root), int(tiles))))
        return 0
    if args.quick:
        args.slides, args.tiles = 20, 200
    from rl_benchmarks.utils.bench import machine_description, write_section

    with tempfile.TemporaryDirectory(prefix="rlb_ds_bench_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        generate(root, args.slides, args.tiles, args.dim)
        print(f"generated {args.slides} x {args.tiles} x {3 + args.dim} in {time.perf_counter() - t0:.1f}s")
        results = []
        for mode in ("items", "as_tensor32", "as_tensor16", "preload"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, str(root), str(args.tiles)],
                capture_output=True, text=True,
            )
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
                return out.returncode
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(res)
            print(f"{mode:12s} +{res['peak_mb'] - res['base_mb']:8.1f} MiB  "
                  f"{1000 * res['seconds'] / res['slides']:7.2f} ms/slide")
    files_mb = args.slides * args.tiles * (3 + args.dim) * 4 / 2**20
    scale = 1000 * 1000 / (args.slides * args.tiles)
    rows = [
        "| mode | extra peak RSS (MiB) | × file size | ms per slide | extrapolated to 1000 × 1000 (GiB) |",
        "|---|---|---|---|---|",
    ]
    labels = {
        "items": "per-item memory-mapped reads (one pass)",
        "as_tensor32": "`as_tensor()` float32",
        "as_tensor16": "`as_tensor(dtype=torch.float16)`",
        "preload": "reference-style `preload_features` (all in RAM)",
    }
    for r in results:
        extra = r["peak_mb"] - r["base_mb"]
        grows = r["mode"] != "items"
        extrap = f"{extra * scale / 1024:.2f}" if grows else f"{extra / 1024:.2f} (does not grow)"
        rows.append(
            f"| {labels[r['mode']]} | {extra:.0f} | {extra / files_mb:.2f} | "
            f"{1000 * r['seconds'] / r['slides']:.2f} | {extrap} |"
        )
    md = "\n".join(
        [
            "## datasets_memory (`benchmarks/datasets_memory.py`)",
            "",
            f"Machine: {machine_description()}. Shared with other agents: times are indicative.",
            "",
            f"Cohort: {args.slides} slides × {args.tiles} tiles × (3 + {args.dim}) float32 "
            f"= {files_mb:.0f} MiB of `features.npy` (warm page cache). Each mode runs in a fresh "
            "process; 'extra peak RSS' is the peak after building the dataset minus the peak before.",
            "",
            *rows,
            "",
            "Per-item reads keep the RAM flat (one slide at a time; pages are unmapped after each "
            "item). The padded tensor costs S·n·(3+D)·4 bytes in float32 (3.1 GB for 1000 × 1000 × "
            "771) and half in float16; `as_tensor` checks this against the free RAM before allocating.",
        ]
    )
    print(md)
    if not args.no_write and not args.quick:
        write_section("datasets_memory", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
