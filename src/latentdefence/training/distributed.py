"""DistributedDataParallel under torchrun: gloo on CPU, NCCL on GPU; a no-op in one process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_ALONE: ContextVar[bool] = ContextVar("train_alone", default=False)


@contextmanager
def alone() -> Iterator[None]:
    """Training inside the block runs in this process alone even under torchrun (e.g. one process builds the stages
    an evaluation split over the processes then loads)."""
    token = _ALONE.set(True)
    try:
        yield
    finally:
        _ALONE.reset(token)


def init_distributed() -> DistInfo:
    """Join the torchrun job if launched by one (WORLD_SIZE > 1) and not inside `alone()`, else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or _ALONE.get():
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


def shard(batch_indices: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's equal share of a global batch (the global batch must divide by world size)."""
    if info.world_size == 1:
        return batch_indices
    if len(batch_indices) % info.world_size:
        raise ValueError(f"batch of {len(batch_indices)} does not split evenly over {info.world_size} processes")
    return batch_indices.view(info.world_size, -1)[info.rank]
