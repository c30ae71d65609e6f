"""The one torch.distributed helper (extraction and pre-training share it)."""

from __future__ import annotations

import socket

import pytest
import torch

from rl_benchmarks.utils import distributed as d


def _clear(monkeypatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)


def test_one_class_everywhere():
    from rl_benchmarks.extraction import slides
    from rl_benchmarks.pretraining import train

    assert slides.dist_utils is d and train.DistInfo is d.DistInfo
    assert train.setup_distributed is d.setup_distributed


def test_single_process_is_a_no_op(monkeypatch):
    _clear(monkeypatch)
    for info in (d.init_from_env("cpu"), d.setup_distributed("cpu")):
        assert info == d.DistInfo() and info.is_main and not info.enabled
        assert info.device == torch.device("cpu")
        d.barrier(info)
        assert d.all_gather_objects(info, {"a": 1}) == [{"a": 1}]
        d.shutdown(info)
    assert not torch.distributed.is_initialized()


def test_env_ranks_and_bad_env(monkeypatch):
    _clear(monkeypatch)
    assert d.env_ranks() == (0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert d.env_ranks() == (3, 4, 1)
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        d.env_ranks()


def test_setup_distributed_gpu_without_cuda(monkeypatch):
    from rl_benchmarks.utils import device

    _clear(monkeypatch)
    monkeypatch.setattr(device, "_cuda_count", lambda: 0)
    with pytest.raises(ValueError, match="CUDA is not available"):
        d.setup_distributed("cuda")


def test_frozen():
    info = d.DistInfo(rank=1, world_size=2)
    assert not info.is_main and info.enabled
    with pytest.raises(AttributeError):
        info.rank = 0  # type: ignore[misc]


def _worker(rank: int, world: int, port: int, queue) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = d.setup_distributed("cpu") if rank else d.init_from_env("cpu")
    gathered = d.all_gather_objects(info, f"from {info.rank}")
    d.barrier(info)
    d.shutdown(info)
    queue.put((rank, info.rank, info.world_size, info.local_rank, info.enabled, gathered,
               torch.distributed.is_initialized()))


@pytest.mark.slow
def test_two_gloo_processes_gather_in_rank_order():
    """Both entry points join the same gloo group; gather returns rank order; shutdown
    leaves the group."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = sorted(queue.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    finally:  # a failed worker must not leave the other waiting in the group
        for p in procs:
            if p.is_alive():
                p.kill()
    for rank, (r, info_rank, world, local, enabled, gathered, still) in enumerate(results):
        assert (r, info_rank, world, local, enabled) == (rank, rank, 2, rank, True)
        assert gathered == ["from 0", "from 1"]
        assert not still
