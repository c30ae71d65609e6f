"""keep_freed_memory: freed large blocks stay in the process inside the block (no page
faults on reuse) and go back to the system after it."""

import platform
import sys

import numpy as np
import psutil
import pytest

from rl_benchmarks.utils import memory

glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


@pytest.mark.skipif(not glibc, reason="the setting exists in glibc only")
def test_freed_block_is_kept_inside_and_released_after():
    size = 256 * 2**20

    def alloc_free() -> float:
        a = np.ones(size, dtype=np.uint8)  # touches every page
        peak = _rss_mb()
        del a
        return peak - _rss_mb()  # how much RSS the free gave back

    assert alloc_free() > 200  # default glibc: a block this large is mmapped and unmapped
    with memory.keep_freed_memory() as applied:
        assert applied
        with memory.keep_freed_memory() as nested:  # nesting keeps the setting
            assert nested
        assert alloc_free() < 50  # kept in the heap for the next step
        inside = _rss_mb()
    assert memory._depth == 0
    assert _rss_mb() < inside - 200  # trimmed on exit
    assert alloc_free() > 200  # defaults restored


def test_no_libc_is_a_no_op(monkeypatch):
    monkeypatch.setattr(memory, "_libc", lambda: None)
    with memory.keep_freed_memory() as applied:
        assert applied is False
    assert memory._depth == 0


def test_decorator_applies_during_the_call():
    """The fast nested CV decorates EnsembleTrainer.train with it."""
    from rl_benchmarks.trainers.ensemble_trainer import EnsembleTrainer

    @memory.keep_freed_memory()
    def depth() -> int:
        return memory._depth

    assert depth() == (1 if glibc else 0) and memory._depth == 0
    assert depth() == (1 if glibc else 0)  # the decorator re-enters on every call
    assert EnsembleTrainer.train.__wrapped__ is not None
