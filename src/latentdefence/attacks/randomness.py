"""Random numbers drawn per image (`ImageStreams`), so that an attack's result on an image does not depend on which
other images share its batch, its shard or its process.

Why: a sharded evaluation (`evaluation.workers`) must give one process's per-image outcomes. A `torch.Generator`
hands out numbers in call order, so an image's random start depends on how many images were drawn for before it.
Here every draw is a counter-based hash (no state but a counter) of

* the seed and a salt (the evaluation stage),
* the image itself (its float32 pixels: the clean image an attack was called on),
* the attack calls it is nested in (`scope`, opened by every attack call) and how many draws that call made before.

An attack call makes the same sequence of draw calls for an image wherever it runs: an image takes part in a draw
only while it is still being attacked, and a loop only stops early when no image is left (every attack here keeps
to that rule). Hashes work on 31-bit lanes held in int64, so no product overflows and results are the same on
every platform.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

_MASK = 0x7FFFFFFF


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A bijective 31-bit integer hash, element-wise on int64 (each product stays below 2**62)."""
    x = x & _MASK
    x = ((x >> 15) ^ x) * 0x2C1B3C6D & _MASK
    x = ((x >> 12) ^ x) * 0x297A2D39 & _MASK
    return (x >> 15) ^ x


def _mix_int(x: int) -> int:
    """`_mix` on one Python int."""
    return int(_mix(torch.tensor(x, dtype=torch.int64)))


def _hash_text(text: str) -> int:
    """A stable 31-bit hash of a string (Python's own `hash` is salted per process)."""
    value = 0x12345
    for byte in text.encode():
        value = _mix_int(value * 31 + byte)
    return value


def image_keys(images: torch.Tensor) -> torch.Tensor:
    """(N,) int64: a 31-bit hash of each image's float32 pixels (the same image always gets the same key)."""
    bits = images.detach().to("cpu", torch.float32).contiguous().flatten(1).view(torch.int32).to(torch.int64)
    position = torch.arange(bits.shape[1], dtype=torch.int64)
    lanes = _mix((bits & _MASK) ^ _mix(position * 0x9E3779B1 + (bits >> 31 & 1)))
    return _mix(lanes.sum(1) & _MASK)


class ImageStreams:
    """Per-image random numbers for attacks, passed where an attack takes `generator`.

    Args:
        seed: the evaluation's seed.
        salt: what separates streams that would otherwise coincide, e.g. the evaluation stage ("pgd", "selective").

    Attacks call `uniform`, `normal` or `integers` with the clean images the draw is for (or their keys); each
    attack call opens a `scope`, so nested attacks and repeated calls on other batches start from the same place.
    """

    def __init__(self, seed: int, salt: str = "") -> None:
        self.seed = int(seed)
        self.salt = salt
        self._scopes: list[tuple[int, int]] = [(_hash_text(f"{seed}/{salt}"), 0)]   # (scope hash, draws made)

    def __repr__(self) -> str:
        return f"ImageStreams(seed={self.seed}, salt={self.salt!r})"

    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """A nested attack call: its own counter from 0, the enclosing one restored afterwards."""
        outer = self._scopes[-1][0]
        self._scopes.append((_mix_int(outer ^ _hash_text(name)), 0))
        try:
            yield
        finally:
            self._scopes.pop()

    def uniform(self, images: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
        """U[0, 1) float32 shaped (N, *shape) (default: like `images`), row i from image i's stream."""
        return self._uniform(image_keys(images), self._per_image(images, shape))

    def normal(self, images: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
        """Standard normal float32 shaped (N, *shape) (default: like `images`), by Box-Muller from two draws."""
        keys, shape = image_keys(images), self._per_image(images, shape)      # the pixels hashed once for both draws
        u1, u2 = self._uniform(keys, shape).double(), self._uniform(keys, shape).double()
        return (torch.sqrt(-2 * torch.log1p(-u1)) * torch.cos(2 * math.pi * u2)).float()

    def integers(self, high: int, keys: torch.Tensor, shape: Sequence[int] = ()) -> torch.Tensor:
        """Integers in [0, high) shaped (len(keys), *shape), row i from the stream of key i (`image_keys`)."""
        if not 0 < high < 2 ** 31:
            raise ValueError(f"high must be in 1..2**31-1, got {high}")
        return (self._bits(keys, tuple(shape)) * high) >> 31

    def _uniform(self, keys: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return (self._bits(keys, shape) >> 7).float() / 2 ** 24

    def _per_image(self, images: torch.Tensor, shape: Sequence[int] | None) -> tuple[int, ...]:
        return tuple(images.shape[1:]) if shape is None else tuple(shape)

    def _bits(self, keys: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """(len(keys), *shape) int64 of 31 random bits each: the next draw of every key's stream in this scope."""
        scope, count = self._scopes[-1]
        self._scopes[-1] = (scope, count + 1)
        draw = _mix_int(scope ^ _mix_int(count * 0x9E3779B1 + 1))
        element = _mix(torch.arange(math.prod(shape), dtype=torch.int64) * 0x61C88647 + draw)
        rows = _mix(keys.to("cpu", torch.int64) ^ draw)
        return _mix(rows[:, None] ^ element[None, :]).view(len(keys), *shape)


Randomness = torch.Generator | ImageStreams | None   # what an attack's `generator` may be (None: torch's global RNG)


def call_scope(generator: Randomness, name: str) -> AbstractContextManager[None]:
    """The scope one attack call draws in (`ImageStreams.scope`); nothing for a torch.Generator."""
    return generator.scope(name) if isinstance(generator, ImageStreams) else nullcontext()


def uniform_like(images: torch.Tensor, generator: Randomness) -> torch.Tensor:
    """U[0, 1) shaped like `images` (on its device and dtype): per image from `ImageStreams`, else from `generator`."""
    if isinstance(generator, ImageStreams):
        return generator.uniform(images).to(images)
    return torch.rand(images.shape, generator=generator).to(images)


def normal_like(images: torch.Tensor, generator: Randomness) -> torch.Tensor:
    """Standard normal shaped like `images`: per image from `ImageStreams`, else from `generator`."""
    if isinstance(generator, ImageStreams):
        return generator.normal(images).to(images)
    return torch.randn(images.shape, generator=generator).to(images)
