"""A converted-dataset cache: slow-to-decode sources (MATLAB, JPEG) stored once as uint8 .npz."""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from .._io import atomic_path
from .base import default_cache_dir

UInt8Pair = tuple[np.ndarray, np.ndarray]


def cache_dir() -> Path:
    """Folder holding converted datasets: `default_cache_dir()/datasets`, read when called."""
    return default_cache_dir() / "datasets"


def source_key(name: str, sources: Iterable[Path], **params: object) -> str:
    """A cache key `name-<hash>` that changes when any source file's size or mtime, or a parameter, changes."""
    stats = []
    for path in sources:
        st = Path(path).stat()
        stats.append([str(Path(path).resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"sources": stats, "params": params}, sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def cached_uint8(key: str, build: Callable[[], UInt8Pair]) -> UInt8Pair:
    """(images uint8, labels) from `cache_dir()/<key>.npz`, else from `build()`, then written atomically.

    A corrupt cache file is rebuilt; a cache that cannot be written (read-only or full disk) only
    warns, since the cache is a speed-up and the built arrays are still good.
    """
    path = cache_dir() / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                images, labels = npz["images"], npz["labels"]
            if images.dtype == np.uint8 and images.shape[:1] == labels.shape[:1]:
                return images, labels
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # unreadable cache: rebuild it below
    images, labels = build()
    if images.dtype != np.uint8 or images.shape[:1] != labels.shape[:1]:
        raise ValueError(f"{key}: build() must return uint8 images and one label per image, got "
                         f"{images.dtype} {images.shape} and {labels.shape}")
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, images=images, labels=labels)
    except OSError as err:
        warnings.warn(f"could not write dataset cache {path} ({err}); continuing without it",
                      RuntimeWarning, stacklevel=2)
    return images, labels
