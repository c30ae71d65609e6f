"""Nested CV speed: the package's fast path against a plain reference-style implementation.

    .venv/bin/python benchmarks/cv.py            # all 6 models (+ TransMIL depthwise), see below
    .venv/bin/python benchmarks/cv.py --quick    # a small smoke run
    .venv/bin/python benchmarks/cv.py --models abmil,trans_mil --precision bf16 --threads 2

The cohort is generated (per-slide ``features.npy`` files, a planted signal: positive
slides carry a few tiles shifted along one direction). Both sides run the reference
protocol: 5x5 patient-grouped stratified folds, the lr {1e-3,1e-4} x wd {0,1e-4} grid,
batch 16, Adam, epoch selection on the inner mean AUC curve, retrain e*+1 epochs, the
last-epoch test AUC.

* **baseline** (written here, as the reference runs it): one model at a time, a DataLoader
  with pad-collate over a dataset that re-reads each slide's features (memory map, first
  1000 rows) and permutes its tiles at every access, a train and a val pass every epoch;
* **ours**: ``NestedCrossValidation(fast=True)`` (features preloaded once, the grid points
  of an inner fold trained as one vmapped ensemble, MeanPool on precomputed means, Chowder
  back-propagating through its selected tiles only, the first tile layers of ABMIL, Chowder
  and DSMIL as one matmul for all members, HIPT-MIL's dropout replayed member by member,
  TransMIL's PPEG as one convolution with summed kernels).

Models: meanpool, chowder, abmil, dsmil (400 slides x 1000 tiles by default), hipt_mil,
trans_mil (the reference's full PPEG, the default) and trans_mil_dw (the original paper's
depthwise PPEG, ``ppeg: depthwise``), which cost seconds per slide-epoch in the baseline:
these run on their own smaller cohort (``--slow-slides``, ``--slow-tiles``,
``--slow-epochs``; TransMIL can get yet another with ``--trans-slides``, ``--trans-tiles``,
``--trans-epochs``). HIPT-MIL runs with batch size 1 on both sides (its reference config).

Against the roofline: per model and precision the script computes the FLOPs the fast path
does per training slide and per evaluated slide (``flops_per_slide``, flop_counter on the
meta device), measures the machine's matmul rate (fp32 and bf16, GFLOP per CPU second) in
the same invocation, and reports the floor those imply, the ceiling on the speed-up
(baseline / floor), the measured ratio and the fraction of the ceiling reached. Times are
CPU seconds of each side's process (robust to other jobs on a shared machine).

The full protocol of the plain baseline takes hours on a 2-core CPU, so by default both
sides run the same documented subset (``--outer-folds`` of the 5 outer folds, every inner
fold and grid point, ``--epochs`` epochs per run). The cost of both is linear in
slide-epochs, so the ratio measured on the subset is the ratio of the full protocol; the
full-protocol times are extrapolated linearly and marked as such. Each side runs in its
own process so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = {"meanpool": "mean_pool", "chowder": "chowder", "abmil": "abmil", "dsmil": "dsmil",
          "hipt_mil": "hipt_mil", "trans_mil": "trans_mil", "trans_mil_dw": "trans_mil"}
# per benchmark model: overrides of the package's model yaml (trans_mil_dw: the original
# paper's depthwise PPEG; trans_mil keeps the reference's full convolutions, the default)
MODEL_OVERRIDES = {"trans_mil_dw": {"ppeg": "depthwise"}}
# the reference's batch size is 16, except HIPT-MIL's 1 (its model yaml says so)
BATCH_SIZE = {"hipt_mil": 1}
# models that cost seconds per slide-epoch in the baseline: their own (smaller) cohort
SLOW_MODELS = ("hipt_mil", "trans_mil", "trans_mil_dw")
# TransMIL (49M-parameter full PPEG): a cohort of its own again (--trans-*), by default the
# slow models' one
TRANS_MODELS = ("trans_mil", "trans_mil_dw")
GRID = {"learning_rate": [1.0e-3, 1.0e-4], "weight_decay": [0.0, 1.0e-4]}


# ------------------------------------------------------------------------------------------
# cohort
def generate(root: Path, n_slides: int, n_tiles: int, dim: int, seed: int = 0) -> Path:
    """Per-slide features (n_tiles, 3 + dim) float32 and a cohort CSV; reused when present
    and its feature files have the cohort's shape.

    Each cohort writes its features under its own folder (cohorts of one workdir used to
    share ``features/slide_XXXX`` and overwrite each other's slides)."""
    import pandas as pd

    from rl_benchmarks.utils.io import save_npy, write_csv

    name = f"cohort_{n_slides}x{n_tiles}x{dim}_s{seed}"
    csv = root / f"{name}.csv"
    if csv.is_file() and _cohort_ok(csv, n_slides, (n_tiles, 3 + dim)):
        return csv
    rng = np.random.default_rng(seed)
    n_patients = max(4, (n_slides * 4) // 5)
    patient = np.sort(np.concatenate([np.arange(n_patients),
                                      rng.integers(0, n_patients, n_slides - n_patients)]))
    label_of = rng.random(n_patients) < 0.5
    direction = rng.standard_normal(dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    rows = []
    for i in range(n_slides):
        y = int(label_of[patient[i]])
        x = np.empty((n_tiles, 3 + dim), np.float32)
        x[:, 0] = 17
        x[:, 1] = np.arange(n_tiles) % 64
        x[:, 2] = np.arange(n_tiles) // 64
        x[:, 3:] = rng.standard_normal((n_tiles, dim), dtype=np.float32)
        if y:  # planted signal: 5 % of the tiles shifted by 1.5 along one direction
            sel = rng.choice(n_tiles, max(1, n_tiles // 20), replace=False)
            x[sel, 3:] += 1.5 * direction
        path = root / name / f"slide_{i:04d}" / "features.npy"
        save_npy(path, x)
        rows.append({"slide_id": f"slide_{i:04d}", "features_path": str(path),
                     "patient_id": f"P{patient[i]:04d}", "label": y})
    write_csv(csv, pd.DataFrame(rows), index=False)
    return csv


def _cohort_ok(csv: Path, n_slides: int, shape: tuple[int, int]) -> bool:
    """Whether a saved cohort has its slides, each with features of ``shape``."""
    import pandas as pd

    paths = pd.read_csv(csv)["features_path"].tolist()
    if len(paths) != n_slides:
        return False
    try:
        return all(np.load(p, mmap_mode="r").shape == shape for p in paths)
    except (OSError, ValueError):
        return False


def trainer_cfg(model: str, epochs: int, dim: int):
    """The task skeleton's trainer config with the package's model yaml."""
    from omegaconf import OmegaConf

    from rl_benchmarks.cli.main import CONF_ROOT

    model_cfg = OmegaConf.load(CONF_ROOT / "slide_level_task/cross_validation/model"
                               / f"{MODELS[model]}.yaml")
    model_cfg.in_features, model_cfg.out_features = dim, 1
    for key, value in MODEL_OVERRIDES.get(model, {}).items():
        model_cfg[key] = value
    return OmegaConf.create({
        "_target_": "rl_benchmarks.trainers.TorchTrainer",
        "batch_size": BATCH_SIZE.get(model, 16), "num_epochs": epochs, "learning_rate": 2.0e-4, "weight_decay": 0.0,
        "device": "cpu", "use_tqdm": False,
        "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True},
        "model": model_cfg,
        "criterion": {"_target_": "rl_benchmarks.losses.BCEWithLogitsLoss"},
        "metrics": {"auc": {"_target_": "rl_benchmarks.metrics.compute_binary_auc",
                            "_partial_": True}},
    })


# ------------------------------------------------------------------------------------------
# the plain reference-style baseline
def run_baseline(csv: Path, model: str, epochs: int, outer_folds: list[int], dim: int,
                 n_tiles: int) -> dict:
    import pandas as pd
    import torch
    from hydra.utils import instantiate
    from sklearn.metrics import roc_auc_score
    from torch.utils.data import DataLoader, Dataset, Subset

    from rl_benchmarks.val_schemes import generate_permutations, split_cv

    table = pd.read_csv(csv)

    class Features(Dataset):
        """Re-reads a slide at every access (memory map, first n_tiles rows), shuffles tiles."""

        def __init__(self) -> None:
            self.paths = table["features_path"].tolist()
            self.labels = table["label"].to_numpy(np.float32)
            self.patient_id = table["patient_id"].to_numpy()
            self.center_id = np.zeros(len(table))
            self.stratified = table["label"].to_numpy()

        def __len__(self) -> int:
            return len(self.paths)

        def __getitem__(self, i: int):
            x = torch.from_numpy(np.array(np.load(self.paths[i], mmap_mode="r")[:n_tiles]))
            return x[torch.randperm(len(x))], torch.tensor([self.labels[i]])

    def pad_collate(batch):
        n = max(len(x) for x, _ in batch)
        feats = torch.zeros(len(batch), n, batch[0][0].shape[1])
        mask = torch.ones(len(batch), n, 1, dtype=torch.bool)
        for j, (x, _) in enumerate(batch):
            feats[j, : len(x)], mask[j, : len(x)] = x, False
        return feats, mask, torch.stack([y for _, y in batch])

    cfg = trainer_cfg(model, epochs, dim)

    def one_run(train, val, lr, wd, n_epochs):
        _fixed_start(result)
        model_ = instantiate(cfg.model)
        opt = torch.optim.Adam(model_.parameters(), lr=lr, weight_decay=wd)
        crit = torch.nn.BCEWithLogitsLoss()
        bs = int(cfg.batch_size)
        tl = DataLoader(train, batch_size=bs, shuffle=True, drop_last=True, collate_fn=pad_collate)
        vl = DataLoader(val, batch_size=bs, shuffle=False, collate_fn=pad_collate)
        aucs, logits = [], None
        for _ in range(n_epochs):
            model_.train()
            for x, m, y in tl:
                loss = crit(model_(x, m), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            model_.eval()
            with torch.no_grad():
                out = [(model_(x, m), y) for x, m, y in vl]
            logits = torch.cat([o for o, _ in out]).numpy()[:, 0]
            labels = torch.cat([y for _, y in out]).numpy()[:, 0]
            aucs.append(roc_auc_score(labels, logits) if len(set(labels)) > 1 else np.nan)
        return aucs

    data = Features()
    grid = generate_permutations(GRID)
    start = time.perf_counter()
    result = {"test_auc": {}, "selected": {}, "inner_best_mean_auc": {}}
    plan = split_cv(data, 5, True, "patient_split", random_state=0)  # (train, test) positions
    for s in outer_folds:
        tv_idx, test_idx = plan[s]
        train_val = Subset(data, tv_idx.tolist())
        inner = [(Subset(train_val, tr.tolist()), Subset(train_val, va.tolist()))
                 for tr, va in split_cv(train_val, 5, True, "patient_split", random_state=0)]
        scores, best_epochs, stds = [], [], []
        for params in grid:
            curves = np.array([one_run(tr, va, params["learning_rate"], params["weight_decay"],
                                       epochs) for tr, va in inner])
            mean = curves.mean(axis=0)
            best_epochs.append(int(np.nanargmax(mean)))
            scores.append(float(mean[best_epochs[-1]]))
            stds.append(float(np.std(curves[:, best_epochs[-1]], ddof=1)))
        b = int(np.argmax(scores))
        test_auc = one_run(train_val, Subset(data, test_idx.tolist()),
                           grid[b]["learning_rate"], grid[b]["weight_decay"], best_epochs[b] + 1)
        key = f"repeat_1_split_{s + 1}"
        result["test_auc"][key] = test_auc[-1]
        result["selected"][key] = {**grid[b], "num_epochs": best_epochs[b] + 1}
        result["inner_best_mean_auc"][key] = scores[b]
        result.setdefault("inner_best_sd_auc", {})[key] = stds[b]
    result["wall_s"] = time.perf_counter() - start
    return result


def run_ours(csv: Path, model: str, epochs: int, outer_folds: list[int], dim: int,
             n_tiles: int, precision: str) -> dict:
    from rl_benchmarks.datasets import SlideClassificationDataset
    from rl_benchmarks.trainers.ensemble_trainer import EnsembleTrainer
    from rl_benchmarks.val_schemes import NestedCrossValidation

    # count the slide-epochs each member trains and evaluates (for the roofline floor)
    counts = {"train": 0, "eval": 0}
    fixed: dict = {}
    real_train = EnsembleTrainer.train

    def counted(self, data, train_idx, val_idx, members, num_epochs, seed, keep_state=False):
        _fixed_start(fixed)
        bs = int(self.cfg.batch_size)
        runs = int(num_epochs) * len(members)
        counts["train"] += (len(train_idx) // bs) * bs * runs
        counts["eval"] += (0 if val_idx is None else len(val_idx)) * runs
        return real_train(self, data, train_idx, val_idx, members, num_epochs, seed, keep_state)

    EnsembleTrainer.train = counted
    start = time.perf_counter()
    data = SlideClassificationDataset(None, str(csv), n_tiles=n_tiles)
    cv = NestedCrossValidation(trainer_cfg(model, epochs, dim), grid_search_params=GRID,
                               seed=0, fast=True, precision=precision, outer_folds=outer_folds)
    _, test = cv.run(data)
    return {
        "wall_s": time.perf_counter() - start,
        "fast_path": cv.used_fast_path,
        "test_auc": {k: v[-1] for k, v in test["auc"].items()},
        "selected": {k: {n: p[n] for n in ("learning_rate", "weight_decay", "num_epochs")}
                     for k, p in cv.selected_params.items()},
        "inner_best_mean_auc": {k: p["inner_score"] for k, p in cv.selected_params.items()},
        "inner_best_sd_auc": {k: p["inner_score_std"] for k, p in cv.selected_params.items()},
        "slide_epochs": counts,
        **fixed,
    }


# ------------------------------------------------------------------------------------------
# the roofline: FLOPs the fast path must compute, and the machine's matmul rate
def flops_per_slide(model: str, n_tiles: int, dim: int) -> tuple[float, float]:
    """FLOPs per slide and member that the fast path computes: (training step, evaluation).

    Counted by ``torch.utils.flop_counter`` on the meta device (nothing runs) for one slide
    of ``n_tiles`` tiles, attention counted as matmuls (the math SDPA backend, same FLOPs).
    Training = forward + backward without input gradients (the features are frozen inputs),
    evaluation = forward. The fast path's own shortcuts are counted as it runs them:
    MeanPool trains and evaluates on one mean "tile" per slide; one-output Chowder scores
    all tiles without autograd, then runs forward and backward on its n_top + n_bottom
    selected tiles (evaluation: the scoring plus the forward on the selection); TransMIL's
    PPEG runs as one 7x7 convolution with the kernels summed (49 taps, not 83).
    """
    import torch
    from hydra.utils import instantiate
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    net = instantiate(trainer_cfg(model, 1, dim).model).to("meta").train()
    name = type(net).__name__
    if name == "TransMIL" and net.pos_enc is not None:
        net.pos_enc.merge_kernels = True

    def count(fn) -> float:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            fn()
        return float(fc.get_total_flops())

    def x(n: int):
        return torch.zeros(1, n, 3 + dim, device="meta")

    def fwd(n: int) -> float:
        with torch.no_grad():
            return count(lambda: net(x(n)))

    def fwd_bwd(n: int) -> float:
        return count(lambda: net(x(n)).sum().backward())

    if name == "MeanPool":
        return fwd_bwd(1), fwd(1)
    if name == "TransMIL" and net.pos_enc is not None:
        # flop_counter over-counts the weight gradient of grouped (depthwise) convolutions
        # (it ignores the groups): count the rest, add the merged 7x7 convolution by hand,
        # 2 * C_out * C_in / groups * 49 * S * S FLOPs forward, as much again for the input
        # gradient and for the weight gradient
        conv = net.pos_enc.group_conv3
        side = math.isqrt(n_tiles - 1) + 1
        ppeg = 2.0 * conv.out_channels * conv.in_channels / conv.groups * 49 * side * side
        net.pos_enc = None
        return fwd_bwd(n_tiles) + 3 * ppeg, fwd(n_tiles) + ppeg
    if name == "Chowder" and int(net.out_features) == 1:
        k = int(net.n_top) + int(net.n_bottom)
        with torch.no_grad():
            score = count(lambda: net.score_model(x(n_tiles)[..., 3:], None))
        return score + fwd_bwd(k), score + fwd(k)
    return fwd_bwd(n_tiles), fwd(n_tiles)


def matmul_rate(dtype_name: str, n: int = 2048, reps: int = 10) -> float:
    """Best GFLOP per **CPU second** of an n x n matmul in fp32 or bf16 with the current torch
    threads (process CPU time, not wall time: on a machine shared with other jobs a
    process's CPU seconds measure its own work, its wall seconds also the others'). In a
    virtual machine whose host is busy, stolen time still counts as the guest's CPU time,
    so one measurement can read low: callers take the best of several."""
    import torch

    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    a = torch.randn(n, n).to(dtype)
    a @ a  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.process_time()
        a @ a
        best = min(best, time.process_time() - t)
    return 2 * n**3 / max(best, 1e-9) / 1e9


# ------------------------------------------------------------------------------------------
def _cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# (CPU s, wall s) when the worker started; _fixed_start() reads the clocks against it
_START: dict[str, float] = {}


def _fixed_start(out: dict) -> None:
    """Record, once, the CPU and wall seconds from the worker's start to its first training
    run: the fixed start (imports, reading the cohort table, ours: loading every slide's
    features once), which the full protocol pays once, not once per slide-epoch."""
    if "fixed_cpu_s" not in out and _START:
        out["fixed_cpu_s"] = _cpu_s() - _START["cpu"]
        out["fixed_wall_s"] = time.perf_counter() - _START["wall"]


def worker(args: argparse.Namespace) -> None:
    import torch

    from rl_benchmarks.utils.bench import peak_rss_mb

    if args.threads:
        torch.set_num_threads(args.threads)

    cpu0 = _cpu_s()
    _START.update(cpu=cpu0, wall=time.perf_counter())
    folds = [int(f) for f in args.outer_folds.split(",")]
    if args.role == "baseline":
        out = run_baseline(Path(args.csv), args.model, args.epochs, folds, args.dim, args.tiles)
    else:
        out = run_ours(Path(args.csv), args.model, args.epochs, folds, args.dim, args.tiles,
                       args.precision)
    out["peak_rss_mb"] = peak_rss_mb()
    out["cpu_s"] = _cpu_s() - cpu0
    out["wall_s"] = time.perf_counter() - _START["wall"]  # the same origin as fixed_wall_s
    Path(args.result).write_text(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="small smoke run (60 slides x 200 tiles; slow models 40 x 64, 1 epoch)")
    p.add_argument("--slides", type=int, default=400)
    p.add_argument("--tiles", type=int, default=1000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--epochs", type=int, default=2,
                   help="epochs per run on the measured subset (the protocol has 50)")
    p.add_argument("--slow-slides", type=int, default=40,
                   help="slides of the cohort of the slow models (hipt_mil, trans_mil*)")
    p.add_argument("--slow-tiles", type=int, default=1000, help="tiles per slide, slow models")
    p.add_argument("--slow-epochs", type=int, default=1, help="epochs per run, slow models")
    p.add_argument("--trans-slides", type=int, default=None,
                   help="slides of the TransMIL cohort (trans_mil*; default: --slow-slides; "
                        "at least about 30, or the patient-grouped stratified inner folds fail)")
    p.add_argument("--trans-tiles", type=int, default=None,
                   help="tiles per slide, TransMIL (default: --slow-tiles)")
    p.add_argument("--trans-epochs", type=int, default=None,
                   help="epochs per run, TransMIL (default: --slow-epochs)")
    p.add_argument("--outer-folds", default="0", help="outer folds run (0-based, of 5)")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--precision", default="fp32,bf16",
                   help="fast-path precision(s), comma-separated (fp32, bf16): one 'ours' run "
                        "each, against the same baseline run")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads of both sides (0: torch's default); 1 gives each side "
                        "one core when another job shares a 2-core machine")
    p.add_argument("--workdir", default=os.environ.get("TMPDIR", "/tmp") + "/rlb_bench_cv")
    p.add_argument("--role", choices=["baseline", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--csv", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    p.add_argument("--note", default=None,
                   help="what the machine was doing (replaces the 'shared machine' warning)")
    p.add_argument("--table-only", action="store_true",
                   help="run nothing: rebuild the table from the saved rows of earlier runs")
    args = p.parse_args()
    if args.role:
        return worker(args)
    if args.quick:
        args.slides, args.tiles, args.epochs = 60, 200, 2
        args.slow_slides, args.slow_tiles, args.slow_epochs = 40, 64, 1

    import torch

    from rl_benchmarks.utils.bench import machine_description, write_section

    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            p.error(f"--models: {m!r} is not one of {', '.join(MODELS)}")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    n_outer = len(args.outer_folds.split(","))
    precisions = [q.strip() for q in args.precision.split(",") if q.strip()]
    for q in precisions:
        if q not in ("fp32", "bf16"):
            p.error(f"--precision: {q!r} is not fp32 or bf16")

    def cohort_of(model: str) -> tuple[int, int, int]:
        """(slides, tiles, epochs) of the model's measured subset."""
        if model in TRANS_MODELS:
            return (args.trans_slides or args.slow_slides, args.trans_tiles or args.slow_tiles,
                    args.trans_epochs or args.slow_epochs)
        if model in SLOW_MODELS:
            return args.slow_slides, args.slow_tiles, args.slow_epochs
        return args.slides, args.tiles, args.epochs

    def row_file(model: str) -> Path:
        slides, tiles, _ = cohort_of(model)
        return work / f"row_{model}_cohort_{slides}x{tiles}x{args.dim}_s0.json"

    best_rates: dict[str, float] = {}
    for model in [] if args.table_only else models:
        slides, tiles, epochs = cohort_of(model)
        t0 = time.perf_counter()
        csv = generate(work, slides, tiles, args.dim)
        print(f"cohort: {csv} ({time.perf_counter() - t0:.0f} s)", flush=True)
        rates = {q: matmul_rate(q) for q in ("fp32", "bf16")}
        res = {}
        runs = [("ours", q) for q in precisions] + [("baseline", "fp32")]
        for role, q in runs:
            name = role if role == "baseline" else f"ours_{q}"
            out = work / f"{name}_{model}.json"
            cmd = [sys.executable, __file__, "--role", role, "--model", model, "--csv", str(csv),
                   "--epochs", str(epochs), "--outer-folds", args.outer_folds,
                   "--dim", str(args.dim), "--tiles", str(tiles),
                   "--precision", q, "--result", str(out), "--threads", str(args.threads)]
            subprocess.run(cmd, check=True)
            res[name] = json.loads(out.read_text())
            print(f"{model} {name}: {res[name]['wall_s']:.1f} s, CPU {res[name]['cpu_s']:.1f} s, "
                  f"test AUC {res[name]['test_auc']}, selected {res[name]['selected']}, "
                  f"peak RSS {res[name]['peak_rss_mb']:.0f} MiB", flush=True)
        # the rate before and after the runs: the best one (the machine may be shared);
        # the rows of this invocation get the best over all its measurements below
        rates = {q: max(r, matmul_rate(q)) for q, r in rates.items()}
        best_rates = {q: max(r, best_rates.get(q, 0.0)) for q, r in rates.items()}
        train_flops, eval_flops = flops_per_slide(model, tiles, args.dim)
        res["settings"] = {"epochs": epochs, "outer_folds": args.outer_folds,
                           "scale": (5 / n_outer) * (50 / epochs), "precisions": precisions,
                           "threads": args.threads, "slides": slides, "tiles": tiles,
                           "batch_size": BATCH_SIZE.get(model, 16)}
        res["roofline"] = {"gflops_per_s": rates, "train_flops": train_flops,
                           "eval_flops": eval_flops}
        row_file(model).write_text(json.dumps(res))
    for model in [] if args.table_only else models:  # the best rate of this invocation
        res = json.loads(row_file(model).read_text())
        res["roofline"]["gflops_per_s"] = dict(best_rates)
        row_file(model).write_text(json.dumps(res))
    # one row per model measured with these settings (rows of earlier invocations included)
    rows = [(m, json.loads(row_file(m).read_text())) for m in MODELS if row_file(m).is_file()]

    lines = [
        f"Machine: {machine_description()}. "
        + (args.note or "**Shared machine**: other jobs were running on the same 2 cores, so "
           "absolute times are noisy")
        + "; the ratio of each row was measured in one run.",
        "",
        "Cohorts: generated slides x tiles x features (planted signal), patient-grouped "
        "stratified folds; the slow models (HIPT-MIL, TransMIL) on a smaller cohort (see the "
        "second column). Measured subset (per row): the given outer fold(s) of 5, all 5 inner "
        "folds x 4 grid points, the given epochs per run (protocol: 50), batch 16 (HIPT-MIL: 1, "
        "as its reference config). Each side's *fixed start* (CPU seconds from its process's "
        "start to its first training run: imports, the cohort table, and for ours loading "
        "every slide's features once) is recorded apart. Full-protocol times are that fixed "
        "start once plus the rest x(5 / outer folds) x(50 / epochs) (linear in slide-epochs), "
        "**extrapolated**; a short subset inflates the weight of ours' fixed start, the "
        "full protocol amortises it.",
        "",
        "| model | slides x tiles; outer folds, epochs/run, precision, torch threads | wall s "
        "baseline / ours (measured) | wall ratio | CPU s baseline / ours | CPU ratio | full "
        "protocol, extrapolated wall: baseline / ours (CPU ratio) | fixed start CPU s "
        "baseline / ours | test AUC baseline / ours | inner mean "
        "AUC ± sd over the 5 inner folds at the selected point, baseline / ours | selected "
        "lr/wd/epochs, baseline / ours | peak RSS MiB baseline / ours |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda d: ", ".join(f"{v:.3f}" for v in d.values())  # noqa: E731
    for model, res in rows:
        b, st = res["baseline"], res["settings"]
        for q in st.get("precisions", [st.get("precision", "fp32")]):
            o = res.get(f"ours_{q}", res.get("ours"))
            lines.append(_row(model, st, q, b, o, st["scale"], fmt))
    lines += ["",
              "**Against the roofline.** Per model and precision: the FLOPs the fast path computes "
              "per training slide and per evaluated slide (per member, counted by "
              "`flops_per_slide`), the member slide-epochs it ran, the CPU seconds those FLOPs take"
              " at the machine's matmul rate measured in the same invocation (2048² matmuls, GFLOP "
              "per CPU second, the best of its measurements before and after each model's runs, "
              "fp32 or bf16 as the row: the *floor*), the ceiling on the speed-up it implies "
              "(baseline CPU s / floor), the measured CPU ratio, and the fraction of the ceiling "
              "reached (floor / ours CPU s). CPU seconds, not wall seconds: on a shared machine a "
              "process's CPU time counts its own work (on a quiet one, with all threads busy, both "
              "ratios agree). For bf16 the floor counts every FLOP at the bf16 rate, although the "
              "small layers stay float32: a lower floor, a higher ceiling, a conservative fraction."
              " The last three columns do the same for the full protocol, extrapolated (floor x "
              "scale against each side's fixed start + rest x scale).", "",
              "| model | precision | GFLOP per training slide | GFLOP per evaluated slide | "
              "train / eval slide-epochs | matmul GFLOP per CPU s | floor CPU s | ceiling | "
              "measured (CPU) | fraction of ceiling | full protocol: ceiling | full protocol: "
              "ratio (CPU) | full protocol: fraction of ceiling |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    goal = []
    for model, res in rows:
        roof, st = res.get("roofline"), res["settings"]
        if not roof:
            continue
        for q in st.get("precisions", ["fp32"]):
            o = res.get(f"ours_{q}")
            if o is None or "slide_epochs" not in o:
                continue
            b, scale = res["baseline"], st["scale"]
            n_tr, n_ev = o["slide_epochs"]["train"], o["slide_epochs"]["eval"]
            rate = roof["gflops_per_s"][q]
            floor = (n_tr * roof["train_flops"] + n_ev * roof["eval_flops"]) / (rate * 1e9)
            ceiling = b["cpu_s"] / floor
            measured = b["cpu_s"] / o["cpu_s"]
            fraction = floor / o["cpu_s"]
            b_full, o_full = full_protocol(b, scale), full_protocol(o, scale)
            full_ratio = b_full / o_full
            head = (f"| {model} | {q} | {roof['train_flops'] / 1e9:.3f} | "
                    f"{roof['eval_flops'] / 1e9:.3f} | {n_tr} / {n_ev} | {rate:.0f} | ")
            if fraction < 0.01:  # MeanPool: microseconds of FLOPs, the rest is fixed costs
                lines.append(head + f"{floor:.2f} | – (no FLOP floor: fixed costs) | "
                             f"{measured:.1f}x | – | – | {full_ratio:.1f}x | – |")
                goal.append(f"{model} {q}: no FLOP ceiling (fixed costs), 5x "
                            f"{'met' if full_ratio >= 5 else '**not met**'} ({full_ratio:.1f}x "
                            f"full protocol, {measured:.1f}x subset)")
                continue
            full_ceiling = b_full / (floor * scale)
            full_fraction = floor * scale / o_full
            lines.append(head + f"{floor:.1f} | {ceiling:.1f}x | {measured:.1f}x | "
                         f"**{fraction:.0%}** | {full_ceiling:.1f}x | {full_ratio:.1f}x | "
                         f"**{full_fraction:.0%}** |")
            five = ("met" if full_ratio >= 5 else "**not met**") if full_ceiling >= 5 else (
                f"not reachable (ceiling {full_ceiling:.1f}x)")
            goal.append(f"{model} {q}: {full_fraction:.0%} of the ceiling, full protocol "
                        f"({fraction:.0%} on the subset) "
                        f"({'met' if full_fraction >= 0.8 else '**not met**'}), 5x {five} "
                        f"({full_ratio:.1f}x)")
    lines += ["", "**Goals (>= 80 % of the ceiling; >= 5x where the ceiling allows it), judged "
              "on the full protocol (extrapolated), the measured subset beside it:** "
              + "; ".join(goal) + "."]
    lines += NOTES
    md = "\n".join(lines)
    print(md)
    if not args.no_write and not args.quick:
        write_section("cv", "## Nested cross-validation (`benchmarks/cv.py`)\n\n" + md)


def full_protocol(side: dict, scale: float, clock: str = "cpu") -> float:
    """A side's extrapolated full-protocol seconds (``clock`` "cpu" or "wall"): its fixed
    start once, plus the rest of the measured subset times ``scale`` (the rest is linear in
    slide-epochs). Rows saved before the fixed start was recorded: everything times
    ``scale`` (over-counts the fixed start)."""
    total, fixed = side[f"{clock}_s"], side.get(f"fixed_{clock}_s", 0.0)
    return fixed + (total - fixed) * scale


def _inner(res: dict) -> str:
    """Inner-CV mean val AUC at the selected point, ± its sd over the inner folds."""
    sds = res.get("inner_best_sd_auc", {})
    return ", ".join(f"{m:.3f}" + (f" ± {sds[k]:.3f}" if k in sds else "")
                     for k, m in res["inner_best_mean_auc"].items())


def _row(model: str, st: dict, q: str, b: dict, o: dict, scale: float, fmt) -> str:
    """One table row: the baseline run against one 'ours' run (same cohort, same subset)."""
    fixed = lambda side: (  # noqa: E731
        f"{side['fixed_cpu_s']:.1f}" if "fixed_cpu_s" in side else "–")
    sel = lambda d: "; ".join(  # noqa: E731
        f"{v['learning_rate']:g}/{v['weight_decay']:g}/{v['num_epochs']}" for v in d.values()
    )
    return (
        f"| {model} | {st.get('slides', '')} x {st.get('tiles', '')}; {st['outer_folds']}, "
        f"{st['epochs']}, {q}, "
        f"{st.get('threads') or 'default'} | "
        f"{b['wall_s']:.0f} / {o['wall_s']:.0f} | "
        f"**{b['wall_s'] / o['wall_s']:.1f}x** | {b['cpu_s']:.0f} / {o['cpu_s']:.0f} | "
        f"**{b['cpu_s'] / o['cpu_s']:.1f}x** | {full_protocol(b, scale, 'wall') / 3600:.2f} h / "
        f"{full_protocol(o, scale, 'wall') / 3600:.2f} h "
        f"(**{full_protocol(b, scale) / full_protocol(o, scale):.1f}x** CPU) | "
        f"{fixed(b)} / {fixed(o)} | {fmt(b['test_auc'])} / {fmt(o['test_auc'])} | "
        f"{_inner(b)} / {_inner(o)} | "
        f"{sel(b['selected'])} / {sel(o['selected'])} | "
        f"{b['peak_rss_mb']:.0f} / {o['peak_rss_mb']:.0f} |"
    )


NOTES = [
    "",
    "CPU = user + system time of the process. Ours' fixed start is loading the feature "
    "files once; its bfloat16 copy of the feature columns (bf16 rows; hence the higher "
    "peak RSS) and each training run's own set-up (building the model, stacking the "
    "members) are counted with the rest, so the extrapolation over-counts them a little. "
    "The baseline is seeded differently (it is a separate "
    "implementation), so its metrics agree with ours within fold noise, not digit for "
    "digit: the sd over the 5 inner folds in the inner-AUC column is that noise. "
    "`tests/trainers/test_ensemble*.py` and `tests/val_schemes/test_nested_cv.py` check "
    "that the fp32 fast path equals the package's plain path on the same seed for all six "
    "models, and that bf16 stays within a tolerance of fp32.",
    "",
    "**Where the time goes (fast path), and the arithmetic of each ceiling** (FLOPs per "
    "slide and member at 1000 tiles x 768, training / evaluation; `flops_per_slide`):",
    "",
    "* MeanPool trains on per-slide means: the 1000-tile work disappears (exact); its "
    "floor is microseconds, so its ceiling is not a FLOP ceiling but the fixed costs "
    "(loading, Python per step).",
    "* Chowder (0.205 / 0.201 GFLOP, the plain model 0.394 / 0.197): the fast path scores "
    "every tile without autograd and back-propagates through its 20 selected tiles only; "
    "the 4 members' 768->128 tile layers are one matmul, and the scoring skips the "
    "MaskedLinear fill of padded rows (their scores are replaced by -inf/+inf before the "
    "selection anyway). The scoring matmul itself runs at about 85 % of the 2048² rate; the "
    "rest of a step is memory passes (the batch's feature gather, the sigmoid, the top-k).",
    "* ABMIL (0.592 / 0.263 GFLOP, as the plain model): nothing to skip, so the FLOP "
    "ceiling is the plain path's distance from the matmul rate (overheads) times the bf16 "
    "rate gain; the 768->128 layer of the 4 members is one (16000 x 768) x (768 x 512) "
    "matmul forward and one for the weight gradient; the gated attention's two products are "
    "one stacked product and its tanh * sigmoid gate and score layer one fused function "
    "(tanh as 2 sigmoid(2a) - 1: float32 tanh is slow on CPUs; under bf16 the gated hidden "
    "layer and its gradient never get a float32 copy). The fused layers add their biases "
    "in the output's dtype: a float32 bias added to a bfloat16 tensor runs a slower "
    "mixed-dtype loop (measured alone at DSMIL's (8, 16000, 200) output: 206 against 84 "
    "CPU ms; no difference at ABMIL's size).",
    "* DSMIL (1.49 / 0.70 GFLOP, as the plain model): the first layers of both tile MLPs "
    "(768->200 twice) of the 4 members are one (16000 x 768) x (768 x 1600) matmul forward "
    "and one for the weight gradient, their sigmoid one pass; the rest runs as the model "
    "(vmap), under bf16 in bfloat16 (autocast) from that layer's bfloat16 output on, except "
    "the bag pooling: one (B, G x C, n) x (B, n, 768) product for all members over the "
    "shared features (under vmap each member read its own expanded copy of them).",
    "* HIPT-MIL (8.30 / 2.86 GFLOP per slide, as the plain model, batch size 1): dropout "
    "(p = 0.25) on the tile embeddings, the 3 x 1000 x 1000 attention matrices and the "
    "feed-forward layers makes every member's work its own (the masks are shared, the "
    "activations are not). The members replay their separate runs' masks (exact); the "
    "first member's masks are recorded and copied for the others, which saves drawing "
    "them (a quarter of the plain step's time is `bernoulli_`); on batches without padding "
    "the attention's `_safe_softmax` runs as the plain softmax (the same values, three "
    "passes over the attention logits fewer). Under bf16 the attention's two products run "
    "in bfloat16 with the same dropout draws: with dropout the CPU runs the math attention "
    "kernel, which computes bfloat16 inputs in float32 (about a third of the bf16 step "
    "time went to those products at the fp32 rate; the bf16 steps are about 1.3x faster "
    "for it). What remains is not matmul work: the Bernoulli draws of one member "
    "per slide (on this CPU torch's default kernel draws them on one thread; 7.7M per "
    "slide), and about ten passes over each 3M-entry attention matrix per layer "
    "(softmax, the mask multiply and their gradients, the bf16 casts). They keep it well "
    "below the matmul rate in both paths: the FLOP ceiling is not reachable by removing "
    "overheads alone.",
    "* TransMIL (reference's full PPEG): 349 / 116 GFLOP per slide in the plain model, "
    "almost all of it the three PPEG convolutions over 768 channels on the 32 x 32 grid "
    "(83 taps x 768² x 1024 = 50 GMAC forward). The fast path sums the three kernels into "
    "one 7x7 kernel (the same function; 49 taps): 226 / 75 GFLOP. The plain path's "
    "convolutions already run near the fp32 matmul rate, so the ceiling is about "
    "349 / 226 = 1.5x in fp32 and that times the bf16/fp32 rate ratio (about 2.2 here) in "
    "bf16, about 3.4x: **5x is out of reach** for the full PPEG (there is no work the "
    "protocol does not need; each member's convolutions are its own).",
    "* The TransMIL rows were measured on 30 slides x 64 tiles (an 8 x 8 grid): at 1000 tiles "
    "the plain baseline alone would take hours here. At 64 tiles the PPEG convolutions are a "
    "smaller share (13.0 / 4.3 GFLOP per slide, counted) and the per-step work on its 49M "
    "parameters (Adam, 4 members: about 9 GiB peak RSS; the fused Adam kernel updates "
    "them in one pass) a larger one, so these rows' ratios "
    "are not the 1000-tile ratios; the arithmetic above is the 1000-tile ceiling. "
    "`benchmarks/cv_step.py` (section `cv_step`) measures TransMIL's training steps at 1024 "
    "tiles, which dominate the full protocol at that size.",
    "* TransMIL with the depthwise PPEG (`ppeg: depthwise`, the original paper; not the "
    "reference's numbers): 49 / 16 GFLOP per slide, mostly the two attention blocks over "
    "1025 tokens; merging the kernels saves little there. Ceiling: the plain path's "
    "distance from the matmul rate, times the bf16 gain.",
    "* Adam: one `torch.optim.Adam` param group per member over views of the stacked "
    "weights, with torch's fused kernel where it has one (torch 2.4 and later on the CPU): "
    "one pass over weights, gradients and moments instead of about ten separate tensor ops "
    "(at TransMIL's 4 x 49M weights the separate ops took about twice the time of the 4 "
    "plain runs' default Adam). Members run one after the other (HIPT-MIL, TransMIL) take "
    "their weights by one `unbind` per step, so the backward stacks their gradients once "
    "(a select per member zero-filled a full stacked gradient each); TransMIL's merged "
    "7x7 kernel is summed in place on one copy (bit for bit the padded sum).",
    "* While the fast path trains, freed memory stays in the process (glibc mallopt, "
    "restored afterwards): without it every step page-faults its tens of MB of temporaries "
    "in anew (about 10 % of the Chowder fp32 and ABMIL bf16 step time).",
    "* `precision=bf16` (opt-in) runs the tile-level matmuls in bfloat16 (fused layers of "
    "ABMIL, Chowder and DSMIL; HIPT-MIL and TransMIL under autocast, convolutions included) "
    "with float32 master weights, Adam state and metrics. Not bit-identical to fp32.",
    "* Nothing the protocol needs is skipped: the inner validation curves, the per-epoch "
    "train/test metrics of the retrained model and all output files are computed as before.",
]


if __name__ == "__main__":
    main()
