"""The one ``torch.distributed`` helper of the package, for processes launched by
``torchrun`` (NCCL on GPUs, gloo on CPU): feature extraction and iBOT pre-training.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in each process; without it
(``WORLD_SIZE`` unset or 1) everything here is a no-op and :class:`DistInfo` describes a
single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from rl_benchmarks.utils.device import resolve_torch_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its global ``rank``, the ``world_size``, its
    ``local_rank`` on the node and, when the caller resolved one, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes shared files and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Several processes (a process group was joined)."""
        return self.world_size > 1


def env_ranks() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (0, 1, 0 without)."""
    try:
        return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError as e:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK environment variables: {e}") from e


def _join(device_type: str) -> None:
    """Join the default process group (NCCL for CUDA, gloo otherwise) once per process."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")


def init_from_env(device_type: str = "cpu") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); the caller places
    its own models (``device`` stays the CPU default). Used by feature extraction."""
    rank, world, local = env_ranks()
    if world <= 1:
        return DistInfo()
    _join(device_type)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def setup_distributed(device: Any = "auto") -> DistInfo:
    """Resolve this process's device (a bare ``"cuda"``/``"auto"`` is ``cuda:LOCAL_RANK``),
    make it the current CUDA device, and join the process group when WORLD_SIZE > 1. Used
    by pre-training, where each process trains on its own device."""
    rank, world, local = env_ranks()
    dev = resolve_torch_device(device, local_rank=local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1:
        _join(dev.type)
    return DistInfo(rank, world, local, dev)


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op when alone)."""
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def all_gather_objects(info: DistInfo, obj: Any) -> list:
    """Gather a picklable object from every rank (a list, rank order); [obj] when alone."""
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def shutdown(info: DistInfo) -> None:
    """Leave the process group (no-op when alone or already left)."""
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
