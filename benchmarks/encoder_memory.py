"""Peak memory of loading a registered encoder from local weights, fp32 vs bf16 (issue 18).

A random fp32 checkpoint laid out like the published file (timm keys) is written as
``model.safetensors`` tensor by tensor (never the whole model in memory), then each loading
path runs in a fresh process and reports its peak RSS above the process's baseline (after
imports):

* ``registry fp32`` / ``registry bf16``: ``create_extractor(name, weights_path=...,
  precision=...)`` (meta-device build, tensors cast one at a time, ``assign=True``);
* ``naive bf16``: ``timm.create_model`` (random fp32 init) + ``load_file`` (a full fp32
  state dict) + ``load_state_dict`` + ``.to(bfloat16)``, the usual recipe, for comparison.

    .venv/bin/python benchmarks/encoder_memory.py                     # uni (303M), ~2 min
    .venv/bin/python benchmarks/encoder_memory.py --encoder h_optimus_0   # 1.1B: 4.2 GiB file, ~9 GiB RAM
    .venv/bin/python benchmarks/encoder_memory.py --encoder h_optimus_0 --skip-naive  # ~4.5 GiB RAM
    .venv/bin/python benchmarks/encoder_memory.py --no-write          # print only

Results go to the ``encoder_memory`` section of BENCHMARKS.md (``encoder_memory_<name>`` for
another encoder).
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MODES = ("registry fp32", "registry bf16", "naive bf16")


def write_random_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> int:
    """Write a float32 safetensors file of random tensors, one tensor in memory at a time."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        n = 4 * int(torch.Size(shape).numel())
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    gen = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for shape in shapes.values():
            f.write((torch.randn(shape, generator=gen) * 0.02).numpy().tobytes())
    return offset


def child(mode: str, name: str, path: str) -> dict:
    """Load ``path`` as ``name`` by ``mode`` in this process; peak RSS above the baseline."""
    import timm  # noqa: F401 - imported before the baseline is taken

    from rl_benchmarks.models.feature_extractors import create_extractor
    from rl_benchmarks.models.feature_extractors.encoder_build import build_module
    from rl_benchmarks.models.feature_extractors.encoders import ENCODERS
    from rl_benchmarks.utils.bench import peak_rss_mb

    base = peak_rss_mb()
    t0 = time.perf_counter()
    if mode.startswith("registry"):
        ext = create_extractor(name, weights_path=path, precision=mode.split()[1])
        dtypes = sorted({str(p.dtype) for p in ext.parameters()})
    else:
        from safetensors.torch import load_file

        model = build_module(ENCODERS[name])  # random fp32 init, as timm.create_model does
        model.load_state_dict(load_file(path), strict=True)
        model = model.to(torch.bfloat16)
        dtypes = sorted({str(p.dtype) for p in model.parameters()})
    return {"mode": mode, "extra_mb": peak_rss_mb() - base, "seconds": time.perf_counter() - t0,
            "dtypes": dtypes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="uni", help="registered timm encoder (default uni)")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--skip-naive", action="store_true",
                    help="skip the naive recipe (it needs about twice the fp32 weights in RAM)")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "NAME", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    from rl_benchmarks.models.feature_extractors.encoder_build import expected_shapes
    from rl_benchmarks.models.feature_extractors.encoders import ENCODERS
    from rl_benchmarks.utils.bench import machine_description, write_section

    spec = ENCODERS[args.encoder]
    if spec.kind != "timm":
        print(f"{args.encoder}: this benchmark writes timm checkpoints; pick a timm encoder",
              file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="rlb_enc_mem_") as tmp:
        path = Path(tmp) / "model.safetensors"
        nbytes = write_random_safetensors(path, expected_shapes(args.encoder))
        print(f"{args.encoder}: wrote {nbytes / 2**20:.0f} MiB of fp32 weights")
        for mode in [m for m in MODES if not (args.skip_naive and m.startswith("naive"))]:
            out = subprocess.run([sys.executable, __file__, "--child", mode, args.encoder, str(path)],
                                 capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
                return out.returncode
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(res)
            print(f"{mode:14s} +{res['extra_mb']:8.0f} MiB  {res['seconds']:6.1f} s  {res['dtypes']}")
    rows = [f"## encoder_memory{'' if args.encoder == 'uni' else ' (' + args.encoder + ')'}: loading an "
            "encoder in fp32 and bf16 (`benchmarks/encoder_memory.py`)", "",
            f"Encoder `{args.encoder}` ({spec.params:,} parameters; weights {nbytes / 2**20:.0f} MiB "
            f"in fp32). {machine_description()}", "",
            "| loading | extra peak RSS (MiB) | × fp32 weights | seconds | weight dtype |",
            "|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['mode']} | {r['extra_mb']:.0f} | {r['extra_mb'] * 2**20 / nbytes:.2f} | "
                    f"{r['seconds']:.1f} | {', '.join(r['dtypes'])} |")
    rows += ["", "registry: meta-device build, each tensor cast to the run's dtype as it is read, "
             "`load_state_dict(assign=True)`. naive: random fp32 init + full fp32 state dict, then "
             "`.to(bfloat16)`. Peak RSS is per process (a fresh one per row); seconds are noisy "
             "on a shared machine. Command: `python benchmarks/encoder_memory.py"
             + (f" --encoder {args.encoder}" if args.encoder != "uni" else "")
             + (" --skip-naive" if args.skip_naive else "") + "`"]
    if not args.no_write:
        write_section("encoder_memory" + ("" if args.encoder == "uni" else f"_{args.encoder}"), "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
