"""Keep freed heap memory in the process while a tight training loop runs.

Why: the fast nested CV allocates and frees the same tens-of-MB temporaries (gathered
tiles, per-member activations, gradients) at every step. glibc serves blocks above its
mmap threshold with fresh ``mmap`` pages and returns them on ``free``, so every step pays
one page fault per 4 KiB touched, which costs about as much as the elementwise work
itself. Inside :func:`keep_freed_memory` large blocks come from the heap and freed memory
stays there for reuse; on exit the defaults are restored and the unused heap is returned
to the system. Elsewhere than on glibc (macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Iterator

# mallopt parameters (glibc malloc.h) and the defaults restored on exit
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_lock = threading.Lock()
_depth = 0


@functools.cache
def _libc():
    """glibc's ``mallopt``/``malloc_trim`` holder, or None where they are missing (looked
    up once: ``find_library`` runs ``ldconfig``)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 (both must exist: glibc)
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """Within the block, serve large allocations from the heap and keep freed memory for
    reuse (no per-step page faults). Yields whether the setting could be applied. Nested
    uses are fine; the outermost exit restores glibc's defaults and trims the heap."""
    global _depth
    libc = _libc()
    applied = False
    with _lock:
        if libc is not None:
            if _depth == 0:
                applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(
                    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
                )
            else:
                applied = True
            _depth += 1
    try:
        yield applied
    finally:
        with _lock:
            if libc is not None:
                _depth -= 1
                if _depth == 0:
                    libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                    libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM)
                    libc.malloc_trim(0)
