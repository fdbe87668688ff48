"""The processes one detector evaluation is split over (issue 40): torch.distributed, as training uses it.

Launched by torchrun (`torchrun --nproc-per-node N --no-python -- latentdefence evaluate-detector ...`; several
machines through torchrun's rendezvous, no code change), each process attacks its own block of the evaluation
images with every attack, then the blocks are gathered in image order so every process holds the whole run's
adversarial images.
Random numbers are drawn per image (`attacks.ImageStreams`, through `Draws`), so the outcome for an image does not
depend on which process attacked it, nor with which other images: N processes give one process's results. The
sanity checks' attacks are split the same way.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ..attacks import ImageStreams

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
        """Rank 0: the process that writes the report."""
        return self.rank == 0

    @contextmanager
    def leader_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (building and caching what it needs), then the others (loading it), so the
        processes never train the same stage at once into one cache (training in the block must run in each process
        alone: `training.distributed.alone()`, or DDP would wait for the processes held at the barrier)."""
        if not self.leader:
            dist.barrier()
        yield
        if self.leader:
            dist.barrier()

    def splits(self, n: int, batch_size: int) -> bool:
        """Whether n images in batches of `batch_size` give every process at least one batch."""
        return -(-n // batch_size) >= self.world_size

    def rows(self, n: int, batch_size: int) -> slice:
        """This process's block of n images: a contiguous run of whole batches of `batch_size` (the counts differing
        by at most one), so every batch holds the images it holds in one process and gives the same bits."""
        batches = -(-n // batch_size)
        if not self.splits(n, batch_size):
            raise ValueError(f"{self.world_size} processes need at least as many batches: {n} images at batch size "
                             f"{batch_size} make {batches}; lower the batch size to at most {n // self.world_size}")
        first, last = self.rank * batches // self.world_size, (self.rank + 1) * batches // self.world_size
        return slice(first * batch_size, min(last * batch_size, n))

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

    def _all(self, value: T) -> list[T]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out


def torchrun_command(nproc: int, arguments: Sequence[str]) -> list[str]:
    """The command that runs `latentdefence ARGUMENTS` in `nproc` processes on this machine under torchrun (the `--`
    keeps torchrun from reading the command's options, e.g. `--n`, as its own)."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "--no-python",
            "--", sys.executable, "-c", "from latentdefence.cli import main; main()", *arguments]


@dataclass(frozen=True)
class Draws:
    """Where an evaluation's attacks draw random numbers and which images this process attacks."""

    seed: int
    generator: torch.Generator            # kept with each stage for resuming
    workers: Workers | None
    batch_size: int                       # the attacks' batches; a process's block is whole batches

    def streams(self, stage: str) -> ImageStreams:
        """Stage `stage`'s per-image random numbers (the same for an image in any batch, block or process)."""
        return ImageStreams(self.seed, stage)

    def stage_generator(self, stage: str) -> torch.Generator:
        """A torch.Generator for stage `stage`, for an attack that cannot draw per image: seeded by seed, stage and
        this process's rank, so its draws depend on the batches (and blocks) it sees."""
        rank = self.workers.rank if self.workers else 0
        digest = hashlib.sha256(f"{self.seed}/{stage}/{rank}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2 ** 63 - 1))

    def mine(self, n: int) -> slice:
        """This process's block of the n evaluation images."""
        return self.workers.rows(n, self.batch_size) if self.workers else slice(None)

    def stage(self, name: str) -> str:
        """A stage's name in the resume folder: each process keeps its own block's."""
        return f"{name}@{self.workers.rank}of{self.workers.world_size}" if self.workers else name

    def whole(self, part: torch.Tensor) -> torch.Tensor:
        """Every process's block of a stage's images, in image order."""
        return self.workers.gather(part) if self.workers else part

    def split(self, attack: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
              images: torch.Tensor, labels: torch.Tensor, starts: torch.Tensor | None = None) -> torch.Tensor:
        """`attack(images, labels, starts)` on this process's block, every process's blocks gathered in image order;
        when the images make fewer batches than there are processes, every process attacks all of them (the same
        bits, no speed-up)."""
        if self.workers is None or not self.workers.splits(len(images), self.batch_size):
            return attack(images, labels, starts)
        block = self.mine(len(images))
        return self.whole(attack(images[block], labels[block], None if starts is None else starts[block]))

    def total(self, value: float) -> float:
        """The sum of every process's `value`."""
        return self.workers.total(value) if self.workers else value

    def image_mean(self, values: torch.Tensor) -> float:
        """The mean of a per-image quantity (this process's block of it) over every process's images."""
        return self.total(float(values.float().sum())) / self.total(float(len(values)))
