"""Model-alone throughput of the ViT extractors on this CPU, against its matmul roofline.

    .venv/bin/python benchmarks/extractor_throughput.py                 # ~5-10 min on a quiet 2-core CPU
    .venv/bin/python benchmarks/extractor_throughput.py --quick         # smoke run (tiny ViT, 1 size)
    .venv/bin/python benchmarks/extractor_throughput.py --compile       # also time torch.compile
    .venv/bin/python benchmarks/extractor_throughput.py --sizes S,B     # only these ViT sizes

Three parts:

1. **Roofline**: the best rate of 4096² matmuls in fp32 and bf16 (GFLOP/s).
2. **Paths** on ViT-B/16 (Phikon's shape, random weights), batch ``--batch``: timm fp32, timm
   under ``torch.autocast`` bf16, timm with bf16 weights, the fast path
   (:mod:`rl_benchmarks.models.feature_extractors.fast_inference`: bf16 weights, bmm
   attention, oneDNN-fused linears; the default on the CPU for ``precision=bf16``, and in fp32
   with the module's own weights) and its
   variants (unfused, fp32 residual stream, fp32), and with ``--compile`` the bf16-weight model
   under ``torch.compile`` (inductor, freezing; its compile time is reported). Batches of all
   paths are timed in turns (ABC… ABC…) so they see the same machine load; rates are medians.
   Each path's share of the roofline uses the model's FLOPs per tile, counted by
   ``torch.utils.flop_counter`` (35.1 GFLOP for ViT-B/16 at 224 px). Cosine similarity to
   fp32 features is per tile, on the real CRC tiles when the shared data folder is found
   ($RLB_REAL_DATA or ../shared/data), else on random pixels.
3. **Sizes** (issue 18): tiles/s at fp32 and bf16 (each precision's default path) with the peak RSS of
   a fresh process for each ViT size S/16, B/16, L/16, H/14, g/14 (timm, random weights;
   few tiles for the big ones). bf16 models are created directly in bf16 (as the encoder
   loader does: no fp32 copy).

Results go to the ``extractor_throughput`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rl_benchmarks.models.feature_extractors import create_extractor  # noqa: E402
from rl_benchmarks.models.feature_extractors.fast_inference import (  # noqa: E402
    build_fast_module,
    cpu_has_bf16_units,
    onednn_fusions_available,
)
from rl_benchmarks.utils.bench import (  # noqa: E402
    machine_description,
    peak_rss_mb,
    real_data_root,
    write_section,
)

#: timm architecture and tiles per timed batch for each ViT size of part 3.
SIZES: dict[str, tuple[str, int]] = {
    "S": ("vit_small_patch16_224", 32),
    "B": ("vit_base_patch16_224", 16),
    "L": ("vit_large_patch16_224", 8),
    "H": ("vit_huge_patch14_224", 4),
    "g": ("vit_giant_patch14_224", 2),
}


def real_tiles(n: int) -> tuple[np.ndarray, str]:
    """Up to ``n`` real 224-px tiles (uint8 NHWC) cycled to ``n``, and where they came from."""
    from PIL import Image

    folder = real_data_root() / "tiles" / "crc_he_9class"
    files = [f for f in sorted(folder.rglob("*.png")) + sorted(folder.rglob("*.tif"))
             if f.is_file()]
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    arrays = [a for a in arrays if a.shape == (224, 224, 3)]
    if arrays:
        picked = [arrays[i % len(arrays)] for i in range(n)]
        return np.stack(picked), f"{len(arrays)} real CRC-HE tiles (shared data, tiles/crc_he_9class)"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8), "random pixels"


#: The clock of every measurement: wall time, or with ``--cpu-time`` this process's CPU time
#: divided by the thread count (with 1 thread: the rate a quiet core gives, even while other
#: processes share the machine).
CLOCK: dict[str, Any] = {"fn": time.perf_counter, "div": 1.0, "cpu": False}


def clock() -> float:
    return CLOCK["fn"]() / CLOCK["div"]


def use_cpu_time() -> None:
    CLOCK.update(fn=time.process_time, div=float(torch.get_num_threads()), cpu=True)


def matmul_roofline(dtype: torch.dtype, n: int = 4096, reps: int = 3) -> float:
    """Best GFLOP/s of an ``n``×``n`` matmul in ``dtype`` (one untimed warm-up)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = clock()
        a @ b
        best = min(best, clock() - t0)
    return 2 * n ** 3 / best / 1e9


def flops_per_tile(model: torch.nn.Module, size: int = 224) -> float:
    """FLOPs of one tile through ``model`` (attention counted as matmuls), by flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    saved = []
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            saved.append((m, m.fused_attn))
            m.fused_attn = False  # timm's matmul attention: counted, same FLOPs as SDPA
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.randn(1, 3, size, size, dtype=next(model.parameters()).dtype))
    finally:
        for m, flag in saved:
            m.fused_attn = flag
    return float(counter.get_total_flops())


def compile_bf16(network: torch.nn.Module, x: torch.Tensor) -> tuple[Any, float]:
    """``torch.compile`` (inductor, freezing) of a bf16-weight copy; returns it and the compile
    time (first call included)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    model = copy.deepcopy(network).to(torch.bfloat16).eval()
    compiled = torch.compile(model)
    t0 = time.perf_counter()
    with torch.no_grad():
        compiled(x.to(torch.bfloat16))
    return (lambda t: compiled(t.to(torch.bfloat16))), time.perf_counter() - t0


def time_paths(paths: dict[str, Any], x: torch.Tensor, warmup: int, rounds: int) -> tuple[dict, dict]:
    """Seconds per timed batch of each path (timed in turns), and each path's last output."""
    times: dict[str, list[float]] = {k: [] for k in paths}
    outs: dict[str, torch.Tensor] = {}
    for step in range(warmup + rounds):
        for name, fn in paths.items():
            t0 = clock()
            with torch.no_grad():
                out = fn(x)
            dt = clock() - t0
            outs[name] = out.float()
            if step >= warmup:
                times[name].append(dt)
        print(f"round {step + 1}/{warmup + rounds}: " + ", ".join(
            f"{k} {x.shape[0] / v[-1]:.2f}" if v else f"{k} warm-up" for k, v in times.items())
            + " tiles/s", file=sys.stderr)
    return times, outs


# ----------------------------------------------------------------------------- sizes
def one_size(arch: str, precision: str, tiles: int, rounds: int) -> dict[str, Any]:
    """Run in a fresh process: tiles/s and peak RSS of ``arch`` at ``precision``."""
    import timm

    from rl_benchmarks.models.feature_extractors.core import ModuleExtractor

    torch.manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = timm.create_model(arch, pretrained=False, num_classes=0, dtype=dtype).eval()
    ext = ModuleExtractor(model, name=arch, feature_dim=int(model.num_features), tile_size=224,
                          precision=precision)
    x = torch.randn(tiles, 3, 224, 224)
    ext(x)  # warm-up (builds the fast path copy for bf16)
    ts = []
    for _ in range(rounds):
        t0 = clock()
        ext(x)
        ts.append(clock() - t0)
    gflop = flops_per_tile(model) / 1e9
    return {"arch": arch, "precision": precision, "tiles": tiles, "rate": tiles / statistics.median(ts),
            "gflop": gflop, "rss": _vm_hwm_mb(), "path": ext.record()["inference_path"],
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def _vm_hwm_mb() -> float:
    """Peak RSS of this process since its exec (VmHWM); ``ru_maxrss`` would also count the
    parent's peak, which Linux carries across fork + exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mb()


def run_sizes(sizes: list[str], rounds: int, scale: float) -> list[dict[str, Any]]:
    rows = []
    for key in sizes:
        arch, tiles = SIZES[key]
        tiles = max(1, int(round(tiles * scale)))
        for precision in ("fp32", "bf16"):
            cmd = [sys.executable, __file__, "--_one-size", arch, precision, str(tiles), str(rounds),
                   "--threads", str(torch.get_num_threads())] + (["--cpu-time"] if CLOCK["cpu"] else [])
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                print(f"size {key} {precision} failed: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                rows.append({"size": key, "arch": arch, "precision": precision, "error": True})
                continue
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row["size"] = key
            print(f"size {key} {precision}: {row['rate']:.2f} tiles/s, RSS {row['rss']:.0f} MiB",
                  file=sys.stderr)
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny ViT, batch 4, size S only")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="timed batches per path")
    ap.add_argument("--warmup", type=int, default=1, help="untimed batches per path")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with this process's CPU time / threads (use with --threads 1 on a busy machine)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (minutes to compile)")
    ap.add_argument("--sizes", default="S,B,L,H,g", help="ViT sizes of part 3, comma-separated; '' skips")
    ap.add_argument("--skip-paths", action="store_true", help="skip part 2 (paths on ViT-B)")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--_one-size", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        use_cpu_time()
    if args._one_size:
        arch, precision, tiles, rounds = args._one_size
        print(json.dumps(one_size(arch, precision, int(tiles), int(rounds))))
        return 0
    if args.quick:
        args.batch, args.rounds, args.warmup, args.sizes = 4, 1, 1, "S"
    start = time.perf_counter()

    n = 1024 if args.quick else 4096
    roof = {"fp32": matmul_roofline(torch.float32, n), "bf16": matmul_roofline(torch.bfloat16, n)}
    print(f"roofline: fp32 {roof['fp32']:.0f}, bf16 {roof['bf16']:.0f} GFLOP/s", file=sys.stderr)
    # Measured again after the paths and the sizes; the best of the three is the roofline (a
    # busy moment can only lower a measurement).
    paths_md: list[str] = []
    if not args.skip_paths:
        ph = part_paths(args, roof)
        roof = {k: max(v, matmul_roofline(_DT[k], n)) for k, v in roof.items()}
        paths_md = ph(roof)

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    size_rows = run_sizes(sizes, max(1, args.rounds - 1), 0.5 if args.quick else 1.0) if sizes else []
    if size_rows:
        roof = {k: max(v, matmul_roofline(_DT[k], n)) for k, v in roof.items()}
        if not args.skip_paths:
            paths_md = ph(roof)
    wall = time.perf_counter() - start

    shown = argv if argv is not None else sys.argv[1:]
    md = [
        f"## extractor_throughput (`benchmarks/extractor_throughput.py{' ' + ' '.join(shown) if shown else ''}`)",
        "",
        f"Machine: {machine_description()}; bf16 matrix units (oneDNN): "
        f"{'yes' if cpu_has_bf16_units() else 'no'}; oneDNN fused linears: "
        f"{'yes' if onednn_fusions_available() else 'no'}. Rates from one run with all paths timed in "
        "turns; "
        + ("clock: CPU time of this process / threads (`--cpu-time`): rates per second of CPU actually "
           "received, close to a quiet machine's (cache and memory contention still count). " if args.cpu_time else
           "clock: wall time; on a machine shared with other processes absolute rates are noisy, "
           "ratios less so. "),
        "",
        f"**Roofline** (best of 3 {n}² matmuls at the start, after the paths and after the sizes): fp32 "
        f"**{roof['fp32']:.0f}** GFLOP/s, bf16 **{roof['bf16']:.0f}** GFLOP/s.",
        "",
        *paths_md,
    ]
    if size_rows:
        md += ["", f"**Sizes** (issue 18; timm, random weights, created in the run's dtype; fresh process per row, "
               f"{max(1, args.rounds - 1)} timed batch(es) after 1 warm-up; bf16 = the default path; peak RSS = "
               "VmHWM of that process):", "",
               "| size | timm arch | params (M) | GFLOP/tile | precision | path | tiles/batch | tiles/s | "
               "share of roofline | peak RSS (MiB) |",
               "|---|---|---|---|---|---|---|---|---|---|"]
        for r in size_rows:
            if r.get("error"):
                md.append(f"| {r['size']} | {r['arch']} | | | {r['precision']} | failed (see stderr) | | | | |")
                continue
            share = r["rate"] * r["gflop"] / roof[r["precision"]]
            md.append(f"| {r['size']} | {r['arch']} | {r['params_m']:.0f} | {r['gflop']:.1f} | {r['precision']} | "
                      f"{r['path']} | {r['tiles']} | {r['rate']:.2f} | {share:.2f} | {r['rss']:.0f} |")
    md.append(f"- Peak RSS of the main process {peak_rss_mb():.0f} MiB; run time {wall:.0f} s.")
    text = "\n".join(md)
    print(text)
    if not args.no_write:
        write_section("extractor_throughput", text)
    return 0


_DT = {"fp32": torch.float32, "bf16": torch.bfloat16}
PLAIN32 = "timm fp32 (inference_path=plain)"  # the reference every path is compared with


def part_paths(args: argparse.Namespace, roof: dict[str, float]) -> Any:
    """Part 2: every path on ViT-B/16 (a tiny ViT with ``--quick``), timed in turns; returns a
    function of the final roofline that writes the markdown."""
    torch.manual_seed(0)
    shape = {"embed_dim": 192, "depth": 2, "num_heads": 3} if args.quick else {}
    ext = create_extractor("iBOTViTBasePANCAN", pretrained=False, **shape)  # ViT-B/16, random weights
    net = ext.feature_extractor
    tiles, source = real_tiles(args.batch)
    x = ext.normalize_uint8(torch.from_numpy(tiles))
    gflop = flops_per_tile(net) / 1e9
    bf16_weights = copy.deepcopy(net).to(torch.bfloat16)
    # name -> (callable, roofline it is compared with)
    paths: dict[str, tuple[Any, str]] = {
        PLAIN32: (net, "fp32"),
        "timm, torch.autocast bf16": (lambda t: _autocast(net, t), "bf16"),
        "timm, bf16 weights": (lambda t: bf16_weights(t.to(torch.bfloat16)), "bf16"),
        "fast bf16 (default for bf16)": (build_fast_module(net, "bf16"), "bf16"),
        "fast bf16, unfused (no oneDNN post-ops)": (build_fast_module(net, "bf16", fused=False), "bf16"),
        "fast bf16, fp32 residual stream": (build_fast_module(net, "bf16", residual_fp32=True), "bf16"),
        "fast fp32 (default for fp32)": (build_fast_module(net, "fp32"), "fp32"),
    }
    compile_s = None
    if args.compile:
        fn, compile_s = compile_bf16(net, x)
        paths["torch.compile bf16 weights (inductor, freezing)"] = (fn, "bf16")
    times, outs = time_paths({k: v[0] for k, v in paths.items()}, x, args.warmup, args.rounds)
    record = {"fp32": ext.record()}
    ext.precision = "bf16"
    record["bf16"] = ext.record()
    return partial(_paths_md, args, gflop, source, paths, times, outs, record, compile_s)


def _paths_md(args: argparse.Namespace, gflop: float, source: str, paths: dict, times: dict, outs: dict,
              record: dict, compile_s: float | None, roof: dict[str, float]) -> list[str]:
    median = {k: statistics.median(v) for k, v in times.items()}
    ref = outs[PLAIN32]
    md = [
        f"**Paths**, {'tiny ViT (quick run)' if args.quick else 'ViT-B/16 (Phikon shape, random weights)'}: "
        f"{gflop:.1f} GFLOP per 224-px tile (flop_counter), so the roofline is "
        f"{roof['fp32'] / gflop:.2f} tiles/s in fp32 and {roof['bf16'] / gflop:.2f} in bf16. Model alone, batch "
        f"{args.batch}, {args.warmup} warm-up + {args.rounds} timed batch(es) per path; cosine: per tile, "
        f"to timm fp32, on {source}.",
        "",
        "| path | tiles/s (median) | min–max over batches | share of its roofline | vs timm fp32 | "
        "cosine to fp32 (min) |",
        "|---|---|---|---|---|---|",
    ]
    base = args.batch / median[PLAIN32]
    for name, sec in median.items():
        rate, kind = args.batch / sec, paths[name][1]
        cos = torch.nn.functional.cosine_similarity(outs[name], ref, dim=1).min()
        spread = f"{args.batch / max(times[name]):.2f}–{args.batch / min(times[name]):.2f}"
        md.append(f"| {name} | {rate:.2f} | {spread} | {rate * gflop / roof[kind]:.2f} of {kind} | "
                  f"{rate / base:.2f}× | {cos:.6f} |")
    md += [""] + [f"- The extractor's record at `precision={p}` on this machine: `inference_path="
                  f"{r['inference_path']}` ({r['inference_detail']})." for p, r in record.items()]
    if compile_s is not None:
        md.append(f"- torch.compile: {compile_s:.0f} s (wall) to compile, first call included; inductor caches "
                  "the graph under /tmp/torchinductor_$USER for later processes.")
    return md


def _autocast(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return net(x)


if __name__ == "__main__":
    sys.exit(main())
