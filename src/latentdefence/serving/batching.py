"""Server-side micro-batching: requests that arrive together share one forward pass, off the event loop."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Job:
    images: torch.Tensor                   # (n, C, H, W) of one request
    future: asyncio.Future
    queued: float                          # loop time when submitted


@dataclass(frozen=True)
class Batched(Generic[T]):
    """One request's results and how its batch went (the server reports these as Server-Timing)."""

    results: list[T]
    wait_s: float                          # from submit until its batch started
    run_s: float                           # the batch's call of fn
    batch_images: int                      # images in that batch, all requests together


class MicroBatcher(Generic[T]):
    """Coalesce concurrent `submit` calls into calls of `fn` on at most `max_batch` images.

    `fn(images (B, C, H, W)) -> B results` runs in one worker thread, one batch at a time (inference
    owns the cores; the event loop keeps accepting and decoding requests meanwhile). A batch waits at most
    `max_wait_ms` after its first request for others to join; a request larger than `max_batch` runs alone.
    """

    def __init__(self, fn: Callable[[torch.Tensor], Sequence[T]], max_batch: int = 64,
                 max_wait_ms: float = 2.0) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.batches = 0                   # successful calls of fn so far
        self.requests = 0                  # requests those calls answered

    async def start(self) -> None:
        """Start the batching task (call inside the running loop)."""
        self._jobs: collections.deque[_Job] = collections.deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop taking batches; requests still queued get an error."""
        self._task.cancel()
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(RuntimeError("server shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, images: torch.Tensor) -> Batched[T]:
        """Results for images (n, C, H, W), computed in some batch together with other requests."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.append(_Job(images, future, loop.time()))
        self._wakeup.set()
        return await future

    async def call(self, fn: Callable[..., R], *args: object) -> R:
        """`fn(*args)` on the inference thread, between batches (work on the model that must not race inference)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _take(self) -> list[_Job]:
        jobs = [self._jobs.popleft()]
        n = len(jobs[0].images)
        while self._jobs and n + len(self._jobs[0].images) <= self.max_batch:
            job = self._jobs.popleft()
            jobs.append(job)
            n += len(job.images)
        return jobs

    def _queued(self) -> int:
        return sum(len(job.images) for job in self._jobs)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._queued() < self.max_batch and self.max_wait_ms > 0:
                await asyncio.sleep(self.max_wait_ms / 1000)     # bounded wait for others to join
            jobs = self._take()
            batch = torch.cat([j.images for j in jobs])
            started = loop.time()
            try:
                results = await loop.run_in_executor(self._executor, self.fn, batch)
            except Exception as err:  # one failing batch answers its requests with the error; the server goes on
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            run_s = loop.time() - started
            self.batches += 1
            self.requests += len(jobs)
            start = 0
            for job in jobs:
                stop = start + len(job.images)
                if not job.future.done():          # a request whose client went away is cancelled
                    job.future.set_result(Batched(list(results[start:stop]), started - job.queued, run_s, len(batch)))
                start = stop
