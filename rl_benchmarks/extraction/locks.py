"""Lock files, so that two runs on one output folder never work on the same item.

A lock is a file created with ``os.open(O_CREAT | O_EXCL)`` (atomic on local file systems
and NFSv3+) that holds the owner's pid, host name and start time as JSON. A lock whose
owner is on this host and no longer alive is stale (its run was killed) and is taken over;
a lock held by a live process, or by a process on another host (whose liveness cannot be
checked from here), is respected. Taking over a stale lock happens under a short
``fcntl.flock`` guard in the same folder, so that two runs never both take it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = socket.gethostname()


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock: pid and host (``"?"`` when the file cannot be read)."""

    pid: int
    host: str

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"


def read_owner(path: Path) -> LockOwner | None:
    """The owner recorded in lock file ``path``; None when there is no such file."""
    try:
        info = json.loads(path.read_text())
        return LockOwner(int(info["pid"]), str(info["host"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return LockOwner(-1, "?")  # being written, or damaged: treated as live


def is_alive(owner: LockOwner) -> bool:
    """False only when the owner is known dead: on this host and no process ``pid``."""
    if owner.host != HOST or owner.pid <= 0:
        return True
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@contextlib.contextmanager
def _guard(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``<folder>/.locks.guard`` (no-op where flock is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(folder / ".locks.guard", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "host": HOST, "since": time.time()}, f)
    return True


def try_lock(path: str | os.PathLike) -> LockOwner | None:
    """Take lock ``path``; None when taken (or already ours), else the live owner.

    A stale lock (owner dead on this host) is removed and taken."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _create(path):
        return None
    owner = read_owner(path)
    if owner == LockOwner(os.getpid(), HOST):
        return None
    if owner is not None and is_alive(owner):
        return owner
    with _guard(path.parent):  # re-check and take over under the guard
        owner = read_owner(path)
        if owner is not None and is_alive(owner):
            return owner
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if _create(path):
            return None
    return read_owner(path) or LockOwner(-1, "?")


def release(path: str | os.PathLike) -> None:
    """Remove lock ``path`` if this process holds it."""
    path = Path(path)
    if read_owner(path) == LockOwner(os.getpid(), HOST):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def wait_lock(path: str | os.PathLike, poll: float = 0.5, on_wait=None) -> None:
    """Take lock ``path``, waiting while a live run holds it (``on_wait(owner)`` is called
    once, when the wait starts)."""
    told = False
    while (owner := try_lock(path)) is not None:
        if not told and on_wait is not None:
            on_wait(owner)
            told = True
        time.sleep(poll)
