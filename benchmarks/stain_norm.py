"""Stain-normalisation overhead as a fraction of extraction time (issue 19).

Times, on the same batch of real 224-px H&E tiles (the crc tiles of RLB_REAL_DATA, or
generated H&E-like tiles without them): Macenko and Reinhard normalisation of the batch
(:mod:`rl_benchmarks.slides.stain`) against the ViT forward pass that follows it in extraction
(a random-init ViT-B/16 by default, the Phikon architecture; ``--arch`` for another timm
name). The ratio normaliser / (normaliser + model) is the share of extraction time that stain
normalisation adds; both run in the same process, one after the other, ``--repeats`` times.

Run: ``.venv/bin/python benchmarks/stain_norm.py [--batch 32] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from rl_benchmarks.slides import stain  # noqa: E402
from rl_benchmarks.utils.bench import machine_description, real_data_root, write_section  # noqa: E402


def tiles(n: int) -> tuple[np.ndarray, str]:
    from PIL import Image

    folder = real_data_root() / "tiles" / "crc_he_9class"
    paths = sorted(p for p in folder.glob("*/*") if p.suffix in (".tif", ".png"))
    if paths:
        imgs = [np.asarray(Image.open(p).convert("RGB").resize((224, 224))) for p in paths]
        return np.stack([imgs[i % len(imgs)] for i in range(n)]), f"{len(paths)} real crc tiles"
    rng = np.random.default_rng(0)
    od = rng.gamma(2.0, 0.3, size=(n, 224, 224, 2)) @ np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
    return np.clip(240 * np.exp(-od) - 1, 0, 255).astype(np.uint8), "generated H&E-like tiles"


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--arch", default="vit_base_patch16_224")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = ap.parse_args(argv)
    import timm

    batch, source = tiles(args.batch)
    x = torch.from_numpy(batch)
    model = timm.create_model(args.arch, pretrained=False, num_classes=0).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def forward(t: torch.Tensor) -> None:
        with torch.no_grad():
            model((t.permute(0, 3, 1, 2).float() / 255 - mean) / std)

    rows = []
    t_model = best(lambda: forward(x), args.repeats)
    for method in stain.METHODS:
        target = stain.fit_target(method, batch[0])
        t_norm = best(lambda target=target: stain.normalize(x, target), args.repeats)
        rows.append((method, t_norm, t_model, t_norm / (t_norm + t_model)))
    lines = [
        f"Machine: {machine_description()}",
        f"Batch: {args.batch} tiles of 224 px ({source}); model {args.arch} fp32 (random init); "
        f"best of {args.repeats}.",
        "",
        "| normaliser | normalise (tiles/s) | model (tiles/s) | share of extraction time |",
        "|---|---|---|---|",
    ]
    lines += [f"| {m} | {args.batch / tn:.0f} | {args.batch / tm:.1f} | {share:.1%} |" for m, tn, tm, share in rows]
    text = "## Stain normalisation overhead (`benchmarks/stain_norm.py`)\n\n" + "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("stain_norm", text)


if __name__ == "__main__":
    main()
