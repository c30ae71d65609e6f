"""Helpers for benchmark scripts: machine description, peak RSS, and a section writer
for ``BENCHMARKS.md`` (each benchmark owns one section between markers)."""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import platform
import re
import resource
from pathlib import Path

from rl_benchmarks.paths import REPO_ROOT

BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
_HEADER = (
    "# Benchmarks\n\n"
    "Each section is written by the script named in its title (`python benchmarks/<name>.py`).\n"
    "Figures are ratios measured in one run unless said otherwise; single times on a shared\n"
    "machine are noise.\n"
)


def real_data_root() -> Path:
    """The real slides and tiles: ``$RLB_REAL_DATA``, else ``../shared/data`` beside the
    repository (as ``.ci/run`` sets it). Not checked: callers say what they miss."""
    return Path(os.environ.get("RLB_REAL_DATA") or REPO_ROOT.parent / "shared" / "data")


def command_line(script: str, argv: list[str],
                 local: tuple[str, ...] = ("--data", "--workdir")) -> str:
    """``python <script> <argv>`` as run, without the options that name this machine's
    paths (``local``, with their values): the command a report quotes."""
    import shlex

    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in local:
            skip = True
        elif not a.startswith(tuple(f"{o}=" for o in local)):
            kept.append(a)
    return " ".join(["python", script, *map(shlex.quote, kept)])


def machine_description() -> str:
    """One line: CPU model, cores, RAM, torch version and threads, date."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except Exception:  # pragma: no cover
        mem = "RAM unknown"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem}, {gpu}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); {_dt.date.today().isoformat()}"
    )


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_section(name: str, markdown: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section ``name`` of BENCHMARKS.md, under a file lock."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    lock = path.with_suffix(".lock")
    with open(lock, "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        text = path.read_text() if path.exists() else _HEADER
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _m: block, text)
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
