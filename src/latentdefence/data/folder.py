"""Users' own image datasets in the class-folder ("ImageFolder") layout: `<split>/<class>/<image>`.

Each split is a folder or a plain tar file (`train/` or `train.tar`, `test/` or `test.tar`) under one root.
Class names are the sorted folder names unless given; every image must decode to the same size (nothing is
silently resized). Decoded once into the uint8 cache, so a second load takes seconds.
"""

from __future__ import annotations

import functools
import io
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from .._io import sha256_file
from .._progress import track
from .base import DatasetFileError, ImageDataset, Splits
from .cache import cached_uint8, source_key

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".webp", ".tif", ".tiff")
MODES = {"RGB": 3, "L": 1}
Member = tuple[str, str, Callable[[], bytes]]   # (class name, file name, read its bytes)


def split_source(root: Path, split: str) -> Path:
    """`root/<split>` (a folder) or `root/<split>.tar`, whichever exists; an error naming both otherwise."""
    folder, tar = root / split, root / f"{split}.tar"
    if folder.is_dir():
        return folder
    if tar.is_file():
        return tar
    raise DatasetFileError(f"{root}: no '{split}/' folder or '{split}.tar' file; expected the class-folder layout "
                           f"{split}/<class>/<image> (as a folder or a tar)")


def _folder_members(folder: Path) -> Iterator[Member]:
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                yield class_dir.name, path.name, path.read_bytes


def _tar_members(path: Path) -> Iterator[Member]:
    try:
        with tarfile.open(path) as tar:
            for info in tar:
                parts = PurePosixPath(info.name).parts
                if not info.isfile() or PurePosixPath(info.name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if len(parts) != 3:
                    raise DatasetFileError(f"{path}: member {info.name!r} is not <split>/<class>/<image>")
                handle = tar.extractfile(info)
                yield parts[1], parts[2], functools.partial(bytes, handle.read() if handle is not None else b"")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DatasetFileError(f"{path}: not a readable tar file ({err})") from err


def list_members(source: Path) -> list[Member]:
    """Every image of a split, ordered by class folder, then file name (the order a tar of the folder keeps)."""
    members = list(_tar_members(source) if source.is_file() else _folder_members(source))
    members.sort(key=lambda m: (m[0], m[1]))
    if not members:
        raise DatasetFileError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in <class>/ folders")
    return members


def decode_image(blob: bytes, where: str, mode: str) -> np.ndarray:
    """One image as (C, H, W) uint8 in `mode` ("RGB" or "L"); a file that does not decode is an error naming it."""
    try:
        with Image.open(io.BytesIO(blob)) as img:
            img.load()
            pixels = np.asarray(img.convert(mode), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetFileError(f"{where}: unreadable image ({err})") from err
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def decode_split(source: Path, classes: Sequence[str], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, C, H, W) uint8, labels (N,) int64) of one split; labels index `classes`."""
    members = list_members(source)
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({m[0] for m in members} - set(index))
    if unknown:
        raise DatasetFileError(f"{source}: class folder(s) {unknown} are not among the classes {list(classes)}")
    first = decode_image(members[0][2](), f"{source}/{members[0][0]}/{members[0][1]}", mode)
    images = np.empty((len(members), *first.shape), dtype=np.uint8)

    def decode(member: Member) -> np.ndarray:
        where = f"{source}/{member[0]}/{member[1]}"
        image = decode_image(member[2](), where, mode)
        if image.shape != first.shape:
            raise DatasetFileError(f"{where}: image is {image.shape[1]}x{image.shape[2]} (HxW), the split's first "
                                   f"is {first.shape[1]}x{first.shape[2]}; resize your images to one size first")
        return image
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # Pillow decodes without the GIL
        for i, image in enumerate(track(pool.map(decode, members), f"decode {source.name}", total=len(members))):
            images[i] = image
    return images, np.asarray([index[m[0]] for m in members], dtype=np.int64)


def list_member_names(source: Path) -> list[str]:
    """Every image's `<class>/<file>` name in a split (folder or tar), without reading the images."""
    if source.is_dir():
        return [f"{c.name}/{p.name}" for c in sorted(d for d in source.iterdir() if d.is_dir())
                for p in sorted(c.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    try:
        with tarfile.open(source) as tar:
            parts = [PurePosixPath(n).parts for n in tar.getnames()]
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DatasetFileError(f"{source}: not a readable tar file ({err})") from err
    return [f"{p[1]}/{p[2]}" for p in parts if len(p) == 3 and PurePosixPath(p[2]).suffix.lower() in IMAGE_SUFFIXES]


def class_names(source: Path) -> list[str]:
    """The sorted class folder names of a split (torchvision's ImageFolder convention)."""
    return sorted({name.split("/")[0] for name in list_member_names(source)})


def _source_files(source: Path) -> list[Path]:
    return [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())


def load_split(source: Path, classes: Sequence[str], mode: str, name: str, split: str) -> ImageDataset:
    """One split, decoded once and then read from the converted cache."""
    key = source_key(f"{name}-{split}", _source_files(source), classes=list(classes), mode=mode)
    images, labels = cached_uint8(key, lambda: decode_split(source, classes, mode))
    return ImageDataset(torch.from_numpy(images).float().div_(255.0), torch.from_numpy(labels.astype(np.int64)),
                        name, split)


def load_image_folder(root: Path, classes: Sequence[str] | None = None, mode: str = "RGB",
                      name: str = "folder", order_seed: int | None = 0) -> Splits:
    """Train and test splits from `root/{train,test}` (folders or tars) of `<class>/<image>` files.

    `classes` fixes the label order (default: the train split's sorted folder names); `mode` is "RGB" (3 channels)
    or "L" (greyscale). Files are read class by class, so each split is then permuted with `order_seed` (None keeps
    the class-sorted order): any prefix (`head(n)`, a validation tail) is then a random sample of every class.
    A tar split's sha256 is recorded in the provenance (a folder's files are too many to list).
    """
    root = Path(root)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    if not root.is_dir():
        raise DatasetFileError(f"{root}: no such folder; expected {root}/train and {root}/test in the class-folder "
                               "layout (<split>/<class>/<image>, each split a folder or a .tar)")
    train_src, test_src = split_source(root, "train"), split_source(root, "test")
    names = list(classes) if classes is not None else class_names(train_src)
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"classes must be distinct names, at least one, got {names}")
    splits = {split: shuffled(load_split(src, names, mode, name, split), order_seed)
              for split, src in (("train", train_src), ("test", test_src))}
    files = {src.name: sha256_file(src) for src in (train_src, test_src) if src.is_file()}
    return Splits(splits["train"], splits["test"], {"format": "class-folder", "root": str(root), "classes": names,
                                                    "order_seed": order_seed, "sha256": files})


def shuffled(data: ImageDataset, seed: int | None) -> ImageDataset:
    """`data` in a seeded random order (unchanged when seed is None); the loaded split, so its rows count from 0."""
    if seed is None:
        return data
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return ImageDataset(data.images[order], data.labels[order], data.name, data.split)
