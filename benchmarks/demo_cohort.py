"""Cost of the demo's pieces: synthetic slide generation, heatmap drawing, report building.

    .venv/bin/python benchmarks/demo_cohort.py [--quick]

Reports CPU time (process time, less sensitive than wall time to other jobs on a shared
machine) and wall time per synthetic slide in quick and full size, split into rendering
and TIFF writing, and the cost of one heatmap and of report.html for a small run.
Writes the "demo_cohort" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rl_benchmarks.utils.bench import machine_description, peak_rss_mb, write_section  # noqa: E402


def _timed(fn, *args, **kwargs):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.process_time() - c0, time.perf_counter() - w0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, smaller sizes")
    args = ap.parse_args()

    import pandas as pd

    from rl_benchmarks.demo.synthetic import render_slide
    from rl_benchmarks.reports.heatmap import draw_heatmap
    from rl_benchmarks.reports.report import build_report
    from rl_benchmarks.slides.geometry import grid_coords
    from rl_benchmarks.slides.synthetic import write_pyramidal_tiff
    from rl_benchmarks.utils.io import write_csv

    sizes = {"quick (1536 px)": 1536} if args.quick else {"quick (1536 px)": 1536, "full (2560 px)": 2560}
    reps = 2 if args.quick else 4
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="rlb-bench-demo-"))
    render_slide(256, 256, 0.1, np.random.default_rng(0))  # warm imports
    for name, size in sizes.items():
        rc, rw, wc, ww = [], [], [], []
        for i in range(reps):
            (rgb, _, _), c, w = _timed(render_slide, size, size, 0.15, np.random.default_rng(i), pen="blue")
            rc.append(c)
            rw.append(w)
            _, c, w = _timed(write_pyramidal_tiff, tmp / f"s{size}_{i}.tif", rgb, 0.5)
            wc.append(c)
            ww.append(w)
        per_slide = np.median(rc) + np.median(wc)
        tiles = (size // 224) ** 2
        rows.append((name, np.median(rc), np.median(wc), per_slide, np.median(rw) + np.median(ww),
                     24 * per_slide, tiles))

    slide = tmp / f"s{1536}_0.tif"
    coords = grid_coords(1536, 1536, 224)
    scores = np.random.default_rng(0).normal(size=len(coords))
    draw_heatmap(slide, coords, scores, tmp / "warm.png", tile_size=224, thumbnail_size=256)
    _, hm_cpu, hm_wall = _timed(draw_heatmap, slide, coords, scores, tmp / "run" / "heatmaps" / "h.png",
                                tile_size=224)
    rng = np.random.default_rng(0)
    for exp in ("abmil", "chowder"):
        lab = np.arange(24) % 2
        write_csv(tmp / "run" / "cv" / exp / "predictions.csv", pd.DataFrame({
            "slide_id": [f"s{i}" for i in range(24)], "fold": np.arange(24) % 4, "label": lab,
            "score": lab + rng.normal(size=24)}), index=False)
    write_csv(tmp / "run" / "cv" / "cox" / "predictions.csv", pd.DataFrame({
        "slide_id": [f"s{i}" for i in range(24)], "fold": np.arange(24) % 4,
        "time": rng.uniform(1, 60, 24).round(1), "event": rng.integers(0, 2, 24),
        "risk": rng.normal(size=24)}), index=False)
    _, rep_cpu, rep_wall = _timed(build_report, tmp / "run")

    lines = [
        f"Machine: {machine_description()}.",
        "Figures taken on a shared machine (other jobs were running): CPU time (process time)",
        "is the figure to read; wall time is shown for reference only.",
        "",
        "| slide size | render CPU s | TIFF write CPU s | per slide CPU s | per slide wall s "
        "| 24-slide cohort CPU s | 224-px grid tiles |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r, w, s, wall, cohort, tiles in rows:
        lines.append(f"| {name} | {r:.2f} | {w:.2f} | {s:.2f} | {wall:.2f} | {cohort:.1f} | {tiles} |")
    lines += [
        "",
        f"- One heatmap (1536-px slide, {len(coords)} tiles, 1024-px thumbnail): "
        f"{hm_cpu:.2f} s CPU ({hm_wall:.2f} s wall).",
        f"- report.html for 3 experiments (2 ROC + 1 Kaplan–Meier figures drawn) and 1 heatmap: "
        f"{rep_cpu:.2f} s CPU ({rep_wall:.2f} s wall).",
        f"- Peak RSS: {peak_rss_mb():.0f} MiB.",
        f"- Median of {reps} slides per size{' (--quick)' if args.quick else ''}.",
    ]
    md = "## demo_cohort: synthetic slides, heatmap and report (`benchmarks/demo_cohort.py`)\n\n" + "\n".join(lines)
    write_section("demo_cohort", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
