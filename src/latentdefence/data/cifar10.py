"""CIFAR-10 from the official python release (`cifar-10-batches-py`, or its `cifar-10-python.tar.gz`) or from a
class-folder copy (such as the lossy JPEG copy in `shared/data/cifar10-jpeg`, which is labelled as such)."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import sha256_file
from .base import DatasetFileError, ImageDataset, Splits, default_data_dir
from .cache import cached_uint8, source_key
from .folder import list_member_names, load_image_folder, split_source
from .safe_pickle import load_numpy_pickle

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BATCH_DIR = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
JPEG_COPY_NOTE = ("CIFAR-10 (JPEG copy): decoded from JPEG re-encodings (quality ~75, 4:2:0), not the original "
                  "pixels; not comparable digit for digit with published CIFAR-10 numbers")
WHERE_TO_PUT = (f"put the official python release there ({BATCH_DIR}/ or {ARCHIVE} from "
                "https://www.cs.toronto.edu/~kriz/cifar.html), or a class-folder copy (train/ and test/, folders or "
                ".tar); pass its folder as data_dir / --data-dir or set LATENTDEFENCE_DATA_DIR")


def parse_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) from one pickled batch: {b'data': (N, 3072) uint8 in
    channel-major order, b'labels': N ints}."""
    try:
        batch = load_numpy_pickle(blob, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DatasetFileError(f"{where}: not a CIFAR-10 batch pickle ({type(err).__name__}: {err})") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DatasetFileError(f"{where}: expected a dict with b'data' and b'labels', found {found}")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DatasetFileError(f"{where}: b'data' is {getattr(data, 'dtype', type(data).__name__)} {shape}, "
                               "expected uint8 (N, 3072)")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DatasetFileError(f"{where}: b'labels' must be {data.shape[0]} integers in 0..9, got shape "
                               f"{labels.shape}" + (f", range {labels.min()}..{labels.max()}" if labels.size else ""))
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32)), labels.astype(np.int64)


def _read_members(source: Path, names: tuple[str, ...]) -> list[tuple[bytes, str]]:
    """Each named batch's bytes, from the batch folder or from inside the release archive."""
    if source.is_dir():
        paths = [source / n for n in names]
        for path in paths:
            if not path.is_file():
                raise DatasetFileError(f"{path}: missing from the CIFAR-10 python release")
        return [(p.read_bytes(), str(p)) for p in paths]
    try:
        with tarfile.open(source) as tar:
            out = []
            for n in names:
                try:
                    handle = tar.extractfile(f"{BATCH_DIR}/{n}")
                except KeyError:
                    raise DatasetFileError(f"{source}: no member {BATCH_DIR}/{n}") from None
                out.append((handle.read() if handle else b"", f"{source}!{BATCH_DIR}/{n}"))
            return out
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DatasetFileError(f"{source}: not a readable tar.gz ({err})") from err


def read_batches(source: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The named batches concatenated in order."""
    parts = [parse_batch(blob, where) for blob, where in _read_members(source, names)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _batch_files(source: Path) -> list[Path]:
    return [source / n for n in (*TRAIN_BATCHES, TEST_BATCH)] if source.is_dir() else [source]


def load_cifar10_batches(source: Path) -> Splits:
    """The official release: 50,000 train (data_batch_1..5, in order) and 10,000 test images."""
    files = _batch_files(source)
    for path in files:
        if not path.is_file():
            raise DatasetFileError(f"{path}: missing from the CIFAR-10 python release")

    def split(names: tuple[str, ...], part: str) -> ImageDataset:
        images, labels = cached_uint8(source_key(f"cifar10-{part}", files), lambda: read_batches(source, names))
        return ImageDataset(torch.from_numpy(images).float().div_(255.0), torch.from_numpy(labels), "cifar10", part)
    return Splits(split(TRAIN_BATCHES, "train"), split((TEST_BATCH,), "test"),
                  {"format": BATCH_DIR, "root": str(source), "lossy": False,
                   "sha256": {p.name: sha256_file(p) for p in files}})


def find_cifar10(root: Path) -> tuple[str, Path]:
    """("batches", path) for the official release or ("folder", path) for a class-folder copy under `root`."""
    for candidate in (root / BATCH_DIR, root):
        if (candidate / TRAIN_BATCHES[0]).is_file():
            return "batches", candidate
    if (root / ARCHIVE).is_file():
        return "batches", root / ARCHIVE
    for candidate in (root / "cifar10-jpeg", root):
        if any((candidate / f).exists() for f in ("train", "train.tar")):
            return "folder", candidate
    raise DatasetFileError(f"{root}: no CIFAR-10 here; {WHERE_TO_PUT}")


def load_cifar10(root: Path | None = None) -> Splits:
    """CIFAR-10 (50k train / 10k test, (N, 3, 32, 32) in [0, 1]) from `root` or $LATENTDEFENCE_DATA_DIR.

    A class-folder copy must have exactly CIFAR-10's ten class folders; it loads with the standard label order and
    its provenance says it is a lossy JPEG copy when its files are JPEGs (every number on it says so).
    """
    root = Path(root) if root is not None else default_data_dir()
    if root is None:
        raise DatasetFileError(f"cifar10: no data folder given; {WHERE_TO_PUT}")
    if not root.is_dir():
        raise DatasetFileError(f"{root}: no such folder; {WHERE_TO_PUT}")
    kind, source = find_cifar10(root)
    if kind == "batches":
        return load_cifar10_batches(source)
    splits = load_image_folder(source, classes=CLASSES, name="cifar10")
    for part in (splits.train, splits.test):
        if part.images.shape[1:] != (3, 32, 32):
            raise DatasetFileError(f"{source}: {part.split} images are {tuple(part.images.shape[1:])}, "
                                   "CIFAR-10's are (3, 32, 32)")
    provenance: dict[str, Any] = {**splits.provenance, "format": "class-folder", "lossy": _is_jpeg(source)}
    if provenance["lossy"]:
        provenance["note"] = JPEG_COPY_NOTE
    return Splits(splits.train, splits.test, provenance)


def _is_jpeg(source: Path) -> bool:
    """Whether a class-folder copy holds JPEG files (checked on the train split's name list, not its bytes)."""
    return any(name.lower().endswith((".jpg", ".jpeg")) for name in list_member_names(split_source(source, "train")))
