"""Training steps at full slide size: the fast path's members against separate plain runs.

    .venv/bin/python benchmarks/cv_step.py                       # TransMIL, both PPEGs
    .venv/bin/python benchmarks/cv_step.py --models abmil,dsmil --tiles 1000 --steps 2

``benchmarks/cv.py`` runs the whole nested-CV protocol, which for TransMIL at 1000 tiles
takes hours in the plain baseline on a 2-core CPU; its TransMIL rows therefore use 64-tile
slides. This script measures what dominates the full protocol at full size: the training
steps. For each model and precision, on generated slides of ``--tiles`` tiles (a full
``sqrt`` grid for TransMIL's PPEG), it times (CPU seconds of this process):

* **plain**: the 4 grid points (lr {1e-3, 1e-4} x wd {0, 1e-4}) as 4 separate runs of the
  package's model, one after the other, ``--steps`` Adam steps of ``--batch`` slides each
  (the features already in memory: model and optimizer only, no I/O);
* **ours**: the same 4 members as one ``EnsembleTrainer`` run over the same slides (one
  epoch of ``--steps`` batches, no validation; its set-up is counted).

It reports the ratio, the fast path's FLOPs per training slide (``cv.flops_per_slide``),
the floor they imply on the matmul rate measured in the same invocation, the ceiling
(plain / floor) and the fraction of it reached (floor / ours).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv  # noqa: E402  (benchmarks/cv.py: configs, FLOP counts, matmul rate)

MEMBERS = [(1.0e-3, 0.0), (1.0e-3, 1.0e-4), (1.0e-4, 0.0), (1.0e-4, 1.0e-4)]


def cohort(n_slides: int, n_tiles: int, dim: int, seed: int = 0):
    """Generated slides as a ``Preloaded`` (no padding), half of them positive."""
    import torch

    from rl_benchmarks.trainers.ensemble_trainer import Preloaded

    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(n_slides, n_tiles, 3 + dim, generator=gen)
    feats[..., 0] = 17
    feats[..., 1] = (torch.arange(n_tiles) % 64).float()
    feats[..., 2] = (torch.arange(n_tiles) // 64).float()
    labels = (torch.arange(n_slides) % 2).float().view(-1, 1)
    mask = torch.zeros(n_slides, n_tiles, 1, dtype=torch.bool)
    return Preloaded(feats, mask, labels)


def plain_runs(cfg, data, batch: int, steps: int) -> float:
    """CPU seconds of the 4 members as separate plain runs (model + Adam, no I/O)."""
    import torch
    from hydra.utils import instantiate

    from rl_benchmarks.utils.seed import set_seed

    crit = torch.nn.BCEWithLogitsLoss()
    start = cv._cpu_s()
    for lr, wd in MEMBERS:
        set_seed(0)
        model = instantiate(cfg.model).train()
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
        for s in range(steps):
            rows = slice(s * batch, (s + 1) * batch)
            loss = crit(model(data.features[rows], None), data.labels[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return cv._cpu_s() - start


def ours_run(cfg, data, precision: str, steps: int, batch: int) -> float:
    """CPU seconds of the 4 members as one fast-path run (one epoch, no validation)."""
    from rl_benchmarks.trainers.ensemble_trainer import EnsembleTrainer

    start = cv._cpu_s()
    EnsembleTrainer(cfg, precision).train(data, list(range(steps * batch)), None, MEMBERS, 1,
                                          seed=0)
    return cv._cpu_s() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="trans_mil,trans_mil_dw",
                   help=f"comma-separated, of {', '.join(cv.MODELS)}")
    p.add_argument("--tiles", type=int, default=1024, help="tiles per slide (1024: 32 x 32)")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--batch", type=int, default=4, help="slides per step")
    p.add_argument("--steps", type=int, default=1, help="training steps per run")
    p.add_argument("--precision", default="fp32,bf16")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--note", default=None, help="what the machine was doing")
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = p.parse_args()

    import torch

    from rl_benchmarks.utils.bench import machine_description, write_section

    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in cv.MODELS:
            p.error(f"--models: {m!r} is not one of {', '.join(cv.MODELS)}")
    precisions = [q.strip() for q in args.precision.split(",") if q.strip()]
    for q in precisions:
        if q not in ("fp32", "bf16"):
            p.error(f"--precision: {q!r} is not fp32 or bf16")
    n_slides = args.batch * args.steps
    data = cohort(n_slides, args.tiles, args.dim)
    rates = {q: cv.matmul_rate(q) for q in ("fp32", "bf16")}
    rows = []
    for model in models:
        cfg = cv.trainer_cfg(model, 1, args.dim)
        cfg.batch_size = args.batch
        train_flops, _ = cv.flops_per_slide(model, args.tiles, args.dim)
        plain = plain_runs(cfg, data, args.batch, args.steps)
        print(f"{model} plain: {plain:.1f} CPU s", flush=True)
        for q in precisions:
            ours = ours_run(cfg, data, q, args.steps, args.batch)
            print(f"{model} ours {q}: {ours:.1f} CPU s ({plain / ours:.2f}x)", flush=True)
            rows.append((model, q, train_flops, plain, ours))
        # measured again after each model: the best of all (a busy VM host can make one
        # measurement read low, see cv.matmul_rate)
        rates = {q: max(r, cv.matmul_rate(q)) for q, r in rates.items()}

    lines = [
        f"Machine: {machine_description()}. "
        + (args.note or "**Shared machine**: other jobs may have run on the same cores")
        + f". Generated slides of {args.tiles} tiles x {args.dim} features; each run "
        f"{args.steps} step(s) of {args.batch} slides; 4 members (the lr x wd grid). "
        "Plain: 4 separate runs of the package's model with torch.optim.Adam, one after the "
        "other; ours: one EnsembleTrainer run of the 4 members (set-up included). Model and "
        "optimizer only (features in memory, no validation). CPU seconds of the process; "
        "the floor is the fast path's FLOPs (`cv.flops_per_slide`) at the matmul rate "
        "measured in the same invocation (the best of its measurements before and after "
        "each model, fp32 or bf16 as the row).",
        "",
        "| model | precision | GFLOP per training slide (fast path) | CPU s plain / ours | "
        "ratio | matmul GFLOP per CPU s | floor CPU s | ceiling | fraction of ceiling |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, q, train_flops, plain, ours in rows:
        floor = n_slides * len(MEMBERS) * train_flops / (rates[q] * 1e9)
        lines.append(
            f"| {model} | {q} | {train_flops / 1e9:.1f} | {plain:.1f} / {ours:.1f} | "
            f"**{plain / ours:.2f}x** | {rates[q]:.0f} | {floor:.1f} | {plain / floor:.2f}x | "
            f"**{floor / ours:.0%}** |")
    lines += [
        "",
        "The full protocol's cost is these steps times its slide-epochs, plus the "
        "evaluation passes (forward only) and a fixed start, so these ratios are what the "
        "TransMIL rows of the `cv` section tend to at this slide size.",
    ]
    md = "\n".join(lines)
    print(md)
    if not args.no_write:
        write_section("cv_step", "## Training steps at full slide size (`benchmarks/cv_step.py "
                      f"--models {args.models} --tiles {args.tiles} --batch {args.batch} "
                      f"--steps {args.steps}`)\n\n" + md)


if __name__ == "__main__":
    main()
