"""A sweep's progress, shared by its jobs through one append-only event file.

Why a file: the jobs of a sweep run in the launching process (basic launcher), in local
worker processes (joblib, ``submitit_local``) or on cluster nodes (``submitit_slurm``);
the only thing they share is the sweep folder. Each job appends a ``start`` and an ``end``
event (one JSON line each, written with ``O_APPEND`` in a single ``write``) to
``<sweep dir>/sweep_progress.jsonl``, and after its end event prints one progress line
computed from the file: experiments done, skipped (already completed), failed, running and
waiting, with an ETA. Events carry the id of the launch, so re-running a sweep into the
same folder counts only the new launch.

:class:`SweepOutcome` is what one job returns; :func:`summary_lines` turns the outcomes
into the end-of-sweep summary (failures with their cause) and :func:`exit_code` into the
sweep's exit code.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROGRESS_NAME = "sweep_progress.jsonl"
SUMMARY_NAME = "sweep_summary.json"

#: Statuses of a finished job.
DONE, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclass
class SweepOutcome:
    """What one job of a sweep did: its index and overrides, ``status`` (done, skipped,
    failed), the command's exit ``code``, the one-line ``cause`` of a failure and the wall
    time in seconds."""

    index: int
    overrides: list[str]
    status: str
    code: int = 0
    cause: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The job's overrides as typed on a command line."""
        return " ".join(self.overrides) or "(defaults)"


def _append(path: Path, event: dict[str, Any]) -> None:
    """Append one JSON line in a single ``write`` (O_APPEND: concurrent jobs do not mix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(event, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_events(path: str | os.PathLike, launch: str | None = None) -> list[dict[str, Any]]:
    """The events of the progress file (those of ``launch`` only, when given); a torn
    last line (a job killed while writing) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and (launch is None or event.get("launch") == launch):
            events.append(event)
    return events


@dataclass(frozen=True)
class ProgressLog:
    """The progress file of one launch of a sweep of ``total`` jobs; ``parallel`` is how
    many jobs the launcher runs at once (for the ETA; 0: estimate from the running jobs)."""

    path: str
    launch: str
    total: int
    parallel: int = 0

    def start(self, index: int, overrides: Sequence[str]) -> None:
        """Record that job ``index`` started."""
        _append(Path(self.path), {"launch": self.launch, "event": "start", "job": index,
                                  "overrides": list(overrides), "t": time.time(),
                                  "pid": os.getpid(), "host": socket.gethostname()})

    def end(self, outcome: SweepOutcome) -> None:
        """Record job ``outcome``."""
        _append(Path(self.path), {"launch": self.launch, "event": "end", "job": outcome.index,
                                  "t": time.time(), **asdict(outcome)})

    def state(self) -> ProgressState:
        """Counts and ETA of this launch, read from the file."""
        return ProgressState.of(read_events(self.path, self.launch), self.total, self.parallel)


@dataclass
class ProgressState:
    """Where a launch stands: counts per status, running and waiting jobs, ETA (seconds,
    None until a job has run)."""

    total: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    running: int = 0
    eta_s: float | None = None

    @property
    def finished(self) -> int:
        """Jobs that ended, whatever their status."""
        return self.done + self.skipped + self.failed

    @property
    def waiting(self) -> int:
        """Jobs not started yet."""
        return max(self.total - self.finished - self.running, 0)

    @classmethod
    def of(cls, events: Iterable[dict[str, Any]], total: int, parallel: int = 0) -> ProgressState:
        """The state after ``events`` (one launch's). The ETA is the mean wall time of the
        jobs that ran (skipped ones excluded) times the jobs left, divided by the number of
        jobs run at once (``parallel``, else the running count)."""
        started: set[int] = set()
        ended: dict[int, dict[str, Any]] = {}
        for e in events:
            if e.get("event") == "start":
                started.add(int(e["job"]))
            elif e.get("event") == "end":
                ended[int(e["job"])] = e
        state = cls(total=total)
        ran = []
        for e in ended.values():
            status = e.get("status")
            if status == DONE:
                state.done += 1
            elif status == SKIPPED:
                state.skipped += 1
            else:
                state.failed += 1
            if status != SKIPPED:
                ran.append(float(e.get("seconds") or 0.0))
        state.running = len(started - set(ended))
        left = max(total - len(ended), 0)
        if left == 0:
            state.eta_s = 0.0
        elif ran:
            width = parallel if parallel > 0 else max(state.running, 1)
            state.eta_s = sum(ran) / len(ran) * math.ceil(left / width)
        return state

    def line(self) -> str:
        """One progress line, e.g. ``5/8 finished (3 done, 1 skipped, 1 failed), 2 running,
        1 waiting, ETA 1m10s``."""
        eta = "ETA ?" if self.eta_s is None else f"ETA {format_seconds(self.eta_s)}"
        return (f"{self.finished}/{self.total} finished ({self.done} done, {self.skipped} "
                f"skipped, {self.failed} failed), {self.running} running, {self.waiting} "
                f"waiting, {eta}")


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``4000`` -> ``1h06m40s``."""
    s = int(round(max(seconds, 0.0)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def summary_lines(outcomes: Sequence[SweepOutcome], seconds: float, name: str = "sweep") -> list[str]:
    """The end-of-sweep summary: the counts, then every failure with its cause."""
    counts = {s: sum(o.status == s for o in outcomes) for s in (DONE, SKIPPED, FAILED)}
    lines = [f"{name}: {len(outcomes)} experiments in {format_seconds(seconds)}: "
             f"{counts[DONE]} done, {counts[SKIPPED]} skipped (already completed), "
             f"{counts[FAILED]} failed"]
    for o in sorted(outcomes, key=lambda o: o.index):
        if o.status == FAILED:
            lines.append(f"  failed #{o.index} [{o.label}]: {o.cause or f'exit code {o.code}'}")
    return lines


def exit_code(outcomes: Sequence[SweepOutcome]) -> int:
    """0 when every job succeeded (done or skipped), else the largest job exit code (1: the
    work failed, 2: bad input), at least 1."""
    failed = [o for o in outcomes if o.status == FAILED]
    return max([1, *(o.code for o in failed)]) if failed else 0


def write_summary(sweep_dir: str | os.PathLike, outcomes: Sequence[SweepOutcome], seconds: float,
                  extra: dict[str, Any] | None = None) -> Path:
    """``<sweep dir>/sweep_summary.json``: every job's outcome (written atomically)."""
    from rl_benchmarks.utils import io

    path = Path(sweep_dir) / SUMMARY_NAME
    io.write_json(path, {"seconds": seconds, "exit_code": exit_code(outcomes), **(extra or {}),
                         "jobs": [asdict(o) for o in sorted(outcomes, key=lambda o: o.index)]})
    return path
