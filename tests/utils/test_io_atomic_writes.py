"""A crash while writing never leaves a half-written output (outputs go to a temporary file, then are renamed).

Each writer of ``rl_benchmarks.utils.io`` is made to fail between writing and renaming
(an exception inside the block, a failing ``os.fsync`` or ``os.replace``, a writer that
fails half-way) and, in a subprocess, killed with SIGKILL mid-write. The target must then
be absent or hold its old complete content; after an exception no temporary file is left.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rl_benchmarks.utils import io

ROOT = Path(__file__).resolve().parents[2]
OLD = b"old complete content\n"


class Boom(RuntimeError):
    pass


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _write_half_then_fail(f, data: bytes | str):
    f.write(data[: len(data) // 2])
    f.flush()
    raise Boom("crash in the middle of the write")


class _DiskFull:
    """A file whose writes stop half-way with ENOSPC (what a full disk does)."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, "No space left on device (simulated)")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _disk_full(monkeypatch):
    real = os.fdopen
    monkeypatch.setattr(io.os, "fdopen", lambda *a, **kw: _DiskFull(real(*a, **kw)))


class _HalfFrame:
    """Stands for a DataFrame whose ``to_csv`` fails half-way through."""

    def to_csv(self, f, **kwargs):
        _write_half_then_fail(f, "a,b\n1,2\n3,4\n")


def _fail_inside_block(kind: str, path: Path) -> None:
    """Run writer ``kind`` on ``path`` so that it raises before the rename."""
    if kind == "atomic_open":
        with io.atomic_open(path, "wb") as f:
            _write_half_then_fail(f, b"new content that is longer than the old one\n" * 10)
    elif kind == "write_csv":
        io.write_csv(path, _HalfFrame())
    elif kind == "save_npy":
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(np, "save", lambda f, a, **kw: _write_half_then_fail(f, b"\x93NUMPY" * 50))
            io.save_npy(path, np.arange(10))
    elif kind == "write_json":
        with pytest.MonkeyPatch.context() as mp:
            _disk_full(mp)
            try:
                io.write_json(path, {"a": list(range(100))})
            except OSError as err:
                raise Boom(str(err)) from err
    else:  # pragma: no cover
        raise AssertionError(kind)


def _write_ok(kind: str, path: Path) -> None:
    if kind == "atomic_open":
        with io.atomic_open(path, "wb") as f:
            f.write(b"new\n")
    elif kind == "write_csv":
        io.write_csv(path, pd.DataFrame({"a": [1, 2]}), index=False)
    elif kind == "save_npy":
        io.save_npy(path, np.arange(3))
    elif kind == "write_json":
        io.write_json(path, {"a": 1})


KINDS = ["atomic_open", "write_csv", "save_npy", "write_json"]


@pytest.mark.parametrize("existing", [True, False], ids=["over-old-file", "new-file"])
@pytest.mark.parametrize("kind", KINDS)
def test_exception_while_writing_keeps_old_content_and_no_temp(kind, existing, tmp_path):
    path = tmp_path / "out.data"
    if existing:
        path.write_bytes(OLD)
    with pytest.raises(Boom):
        _fail_inside_block(kind, path)
    assert _files(tmp_path) == (["out.data"] if existing else [])
    if existing:
        assert path.read_bytes() == OLD


@pytest.mark.parametrize("kind", KINDS)
def test_disk_full_mid_write(kind, tmp_path, monkeypatch):
    path = tmp_path / "out.data"
    path.write_bytes(OLD)
    _disk_full(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        _write_ok(kind, path)
    monkeypatch.undo()
    assert path.read_bytes() == OLD
    assert _files(tmp_path) == ["out.data"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
@pytest.mark.parametrize("kind", KINDS)
def test_crash_between_write_and_rename(kind, failing, tmp_path, monkeypatch):
    """os.fsync (after the data is written) or os.replace (the rename) fails."""
    path = tmp_path / "out.data"
    path.write_bytes(OLD)

    def fail(*args, **kwargs):
        raise OSError(f"simulated {failing} failure")

    monkeypatch.setattr(io.os, failing, fail)
    with pytest.raises(OSError, match=f"simulated {failing}"):
        _write_ok(kind, path)
    monkeypatch.undo()
    assert path.read_bytes() == OLD
    assert _files(tmp_path) == ["out.data"]


@pytest.mark.parametrize("kind", KINDS)
def test_successful_write_replaces_and_leaves_one_file(kind, tmp_path):
    path = tmp_path / "sub" / "out.data"  # the folder is created
    _write_ok(kind, path)
    assert _files(path.parent) == ["out.data"]
    if kind == "write_json":
        assert json.loads(path.read_text()) == {"a": 1}
    elif kind == "save_npy":
        assert np.load(path, allow_pickle=False).tolist() == [0, 1, 2]
    elif kind == "write_csv":
        assert pd.read_csv(path)["a"].tolist() == [1, 2]
    else:
        assert path.read_bytes() == b"new\n"


def test_keyboard_interrupt_also_cleans_up(tmp_path):
    path = tmp_path / "out.data"
    path.write_bytes(OLD)
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_open(path, "wb") as f:
            f.write(b"partial")
            raise KeyboardInterrupt
    assert path.read_bytes() == OLD and _files(tmp_path) == ["out.data"]


_CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    import pandas as pd
    from rl_benchmarks.utils import io

    kind, path = sys.argv[1], sys.argv[2]

    class Stall:
        # a payload whose writing stops half-way until the process is killed
        def to_csv(self, f, **kw):
            f.write("a,b\\n1,2\\n"); f.flush(); print("ready", flush=True); time.sleep(60)

    def stall(f, *a, **kw):
        f.write(b"\\x93NUMPY partial"); f.flush(); print("ready", flush=True); time.sleep(60)

    if kind == "atomic_open":
        with io.atomic_open(path, "wb") as f:
            stall(f)
    elif kind == "write_csv":
        io.write_csv(path, Stall())
    elif kind == "save_npy":
        np.save = stall
        io.save_npy(path, np.arange(3))
    elif kind == "write_json":
        def slow_dumps(*a, **kw):
            print("ready", flush=True); time.sleep(60)
        io.json.dumps = slow_dumps
        io.write_json(path, {"a": 1})
""")


@pytest.mark.parametrize("existing", [True, False], ids=["over-old-file", "new-file"])
@pytest.mark.parametrize("kind", KINDS)
def test_sigkill_mid_write_never_exposes_a_partial_file(kind, existing, tmp_path):
    """SIGKILL runs no cleanup: the target is still old (or absent); only a hidden
    ``.<name>.*.tmp`` may remain, which no reader takes for the output."""
    path = tmp_path / "out.data"
    if existing:
        path.write_bytes(OLD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, kind, str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    if existing:
        assert path.read_bytes() == OLD
    else:
        assert not path.exists()
    leftovers = [n for n in _files(tmp_path) if n != "out.data"]
    assert all(n.startswith(".out.data.") and n.endswith(".tmp") for n in leftovers)
