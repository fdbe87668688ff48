"""The processes one detector evaluation is split over (issue 40): torch.distributed, as training uses it.

Launched by torchrun (`torchrun --nproc-per-node N --no-python -- latentdefence evaluate-detector ...`; several
machines through torchrun's rendezvous, no code change), each process attacks its own block of the evaluation
images with every attack, then the blocks are gathered in image order so every process holds the whole run's
adversarial images.
Random numbers are drawn per image (`attacks.ImageStreams`), so the outcome for an image does not depend on which
process attacked it, nor with which other images: N processes give one process's results.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Workers:
    """This process's place among `world_size` evaluating processes (a torch.distributed process group)."""

    rank: int
    world_size: int

    @classmethod
    def from_environment(cls) -> Workers | None:
        """Under torchrun (WORLD_SIZE > 1): join the process group (gloo on CPU, NCCL when CUDA is there) and say
        where this process stands; otherwise None (one process evaluates everything)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def leader(self) -> bool:
        """Rank 0: the process that runs the sanity checks and writes the report."""
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This process's block of n images: contiguous, sizes differing by at most one."""
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def gather(self, part: torch.Tensor) -> torch.Tensor:
        """Every process's block, concatenated in rank order (so in image order), on every process."""
        parts = self._all(part.detach().cpu())
        return torch.cat(parts).to(part.device)

    def total(self, value: float) -> float:
        """The sum of every process's `value` (e.g. counts of robust images)."""
        return float(sum(self._all(float(value))))

    def check_same(self, value: str, what: str) -> None:
        """Refuse to go on unless every process holds the same `value` (e.g. a digest of the detectors it evaluates:
        processes that fitted different detectors would each attack another one)."""
        values = self._all(value)
        if len(set(values)) > 1:
            raise RuntimeError(f"the {len(values)} processes hold different {what}: ranks "
                               f"{[r for r, v in enumerate(values) if v != values[0]]} differ from rank 0")

    def from_leader(self, compute: Callable[[], T]) -> T:
        """`compute()` run by rank 0 only, its result handed to every process (work not worth splitting)."""
        box: list[Any] = [compute() if self.leader else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _all(self, value: T) -> list[T]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

