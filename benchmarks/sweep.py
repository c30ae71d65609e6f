"""Sweep launchers: 8 small cv experiments, the joblib launcher (``n_jobs=2``) against the
basic (sequential) one, and the launcher overhead per experiment.

    .venv/bin/python benchmarks/sweep.py            # 8 experiments, see --help
    .venv/bin/python benchmarks/sweep.py --quick    # a small smoke run (fewer slides)

One generated cohort (a planted signal), 8 experiments ``seed=range(8)`` of one model, each
a small nested CV. Each launcher runs the whole sweep as ``rlbench cv -m`` in a fresh
process with a fresh logs folder (so nothing is skipped), every job with one torch thread
(``OMP_NUM_THREADS=1``): on 2 free cores the joblib sweep can approach 2x.

* **ratio**: wall time of the basic sweep / wall time of the joblib sweep (same process
  start-up on both sides);
* **overhead per experiment**: of the basic sweep, ``(sweep time - time spent inside the
  cv command's main) / 8``, the sweep time counted from the start of the sweep (after the
  imports): Hydra's composition and launching, each job's own composition and checks,
  progress bookkeeping, the summary. Process start-up (Python, torch, Hydra imports) is paid
  once per sweep and is reported apart.

The goals (issue 17): ratio >= 1.8 on 2 free cores, overhead < 2 s per experiment.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def generate(folder: Path, n_slides: int, n_tiles: int, dim: int, seed: int = 0) -> Path:
    """A binary cohort CSV with per-slide features (positive slides: shifted tiles)."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_slides):
        y = (i // 2) % 2  # two slides per patient, one label per patient
        x = rng.standard_normal((n_tiles, 3 + dim)).astype(np.float32)
        x[:, :3] = np.stack([np.full(n_tiles, 12), np.arange(n_tiles), np.zeros(n_tiles)], 1)
        x[: n_tiles // 10, 3] += 2.0 * y
        np.save(folder / f"s{i:03d}.npy", x)
        rows.append({"slide_id": f"s{i:03d}", "features_path": f"s{i:03d}.npy",
                     "patient_id": f"P{i // 2:03d}", "label": ["neg", "pos"][y]})
    path = folder / "cohort.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def run_sweep(work: Path, csv: Path, launcher: list[str], args) -> dict:
    """One ``rlbench cv -m`` sweep in a fresh process; its wall time and job times."""
    name = "joblib" if any("joblib" in a for a in launcher) else "basic"
    logs, sweep = work / f"logs_{name}", work / f"sweep_{name}"
    for folder in (logs, sweep):
        shutil.rmtree(folder, ignore_errors=True)
    cmd = [sys.executable, "-m", "rl_benchmarks", "cv", "-m", f"task={csv}",
           f"model={args.model}", f"seed=range({args.experiments})", f"logs_root_dir={logs}",
           f"hydra.sweep.dir={sweep}", "device=cpu",
           f"task.validation_scheme.n_splits_outer={args.outer}",
           f"task.validation_scheme.n_splits_inner={args.inner}",
           f"task.validation_scheme.trainer_cfg.num_epochs={args.epochs}",
           "task.validation_scheme.trainer_cfg.batch_size=8", *launcher]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{name} sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    jobs = summary["jobs"]
    assert [j["status"] for j in jobs] == ["done"] * args.experiments, jobs
    return {"launcher": name, "wall_s": wall, "sweep_s": summary["seconds"],
            "job_s": [j["seconds"] for j in jobs],
            "main_s": [j["extra"].get("main_s", j["seconds"]) for j in jobs]}


def startup_seconds() -> float:
    """Wall time of ``rlbench --help`` in a fresh process with the sweep's imports."""
    code = ("import time; t=time.perf_counter(); import torch, hydra, rl_benchmarks.cli.main, "
            "rl_benchmarks.cli.cross_validation; print(time.perf_counter()-t)")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                   env=dict(os.environ, PYTHONPATH=str(REPO)))
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small cohort, smoke run")
    p.add_argument("--experiments", type=int, default=8)
    p.add_argument("--slides", type=int, default=120)
    p.add_argument("--tiles", type=int, default=200)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--model", default="chowder")
    p.add_argument("--outer", type=int, default=3)
    p.add_argument("--inner", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--n-jobs", type=int, default=2)
    p.add_argument("--workdir", default=os.environ.get("TMPDIR", "/tmp") + "/rlb_bench_sweep")
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    p.add_argument("--note", default="", help="a sentence added to the section (e.g. that "
                                              "other jobs shared the machine)")
    args = p.parse_args()
    if args.quick:
        args.slides, args.tiles, args.epochs, args.outer, args.inner = 40, 64, 2, 2, 2

    from rl_benchmarks.utils.bench import command_line, machine_description, write_section

    work = Path(args.workdir)
    csv = generate(work / f"cohort_{args.slides}x{args.tiles}x{args.dim}", args.slides,
                   args.tiles, args.dim)
    startup = startup_seconds()
    basic = run_sweep(work, csv, [], args)
    joblib = run_sweep(work, csv, ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.n_jobs}"],
                       args)
    n = args.experiments
    ratio = basic["wall_s"] / joblib["wall_s"]
    overhead = (basic["sweep_s"] - sum(basic["main_s"])) / n
    in_job = (sum(basic["job_s"]) - sum(basic["main_s"])) / n
    rows = [
        ("basic (sequential)", basic),
        (f"joblib, n_jobs={args.n_jobs}", joblib),
    ]
    table = "\n".join(
        f"| {label} | {r['wall_s']:.1f} | {sum(r['main_s']):.1f} | "
        f"{np.mean(r['main_s']):.2f} |" for label, r in rows)
    md = f"""## sweep (`benchmarks/sweep.py`)

Machine: {machine_description()}. Command: `{command_line('benchmarks/sweep.py', sys.argv[1:])}`.
{n} experiments `rlbench cv -m seed=range({n}) model={args.model}` on one generated cohort
({args.slides} slides x {args.tiles} tiles x {args.dim}), {args.outer}x{args.inner} nested CV,
{args.epochs} epochs; one torch thread per job; each sweep in a fresh process. {args.note}

| launcher | sweep wall time (s) | time inside the cv command, summed (s) | per experiment (s) |
|---|---|---|---|
{table}

* joblib (n_jobs={args.n_jobs}) vs basic, wall-time ratio: **{ratio:.2f}x** (goal >= 1.8x on 2 free cores).
* launcher overhead per experiment (basic: the sweep's time after start-up minus the time
  inside the command, / {n}): **{overhead:.2f} s** (goal < 2 s), of which each job's own
  composition and checks {in_job:.2f} s; process start-up (imports) {startup:.1f} s, paid
  once per sweep (and once per worker process by joblib).
"""
    print(md)
    if not args.no_write:
        write_section("sweep", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
