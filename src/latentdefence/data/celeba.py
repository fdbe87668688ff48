"""CelebA smile / no-smile (the LAD paper's face task) from the published aligned JPEGs and text lists."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .._progress import track
from .base import DatasetFileError, ImageDataset, Splits
from .cache import cached_uint8, source_key

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"
TRAIN_PARTITION, TEST_PARTITION = 0, 2  # 1 (validation) is not used


def read_smiling(path: Path) -> dict[str, int]:
    """Filename -> 1 (Smiling) / 0 (not) from `list_attr_celeba.txt`: count, 40 names, then `file v1 .. v40`."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetFileError(f"{path}: unreadable ({err})") from err
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise DatasetFileError(f"{path}: expected an image count on line 1 and attribute names on line 2")
    names = lines[1].split()
    if "Smiling" not in names:
        raise DatasetFileError(f"{path}: no 'Smiling' among the attribute names on line 2")
    column = names.index("Smiling") + 1
    rows = [line.split() for line in lines[2:] if line.strip()]
    if len(rows) != int(lines[0]):
        raise DatasetFileError(f"{path}: line 1 says {int(lines[0])} images, found {len(rows)} rows")
    smiling: dict[str, int] = {}
    for number, row in enumerate(rows, start=3):
        if len(row) != len(names) + 1 or row[column] not in ("1", "-1"):
            raise DatasetFileError(f"{path}: line {number} should be a filename and {len(names)} values "
                                   f"of 1/-1, got {' '.join(row)[:80]!r}")
        smiling[row[0]] = int(row[column] == "1")
    return smiling


def read_partition(path: Path) -> dict[str, int]:
    """Filename -> partition (0 train, 1 validation, 2 test) from `list_eval_partition.txt`."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetFileError(f"{path}: unreadable ({err})") from err
    partition: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        row = line.split()
        if not row:
            continue
        if len(row) != 2 or row[1] not in ("0", "1", "2"):
            raise DatasetFileError(f"{path}: line {number} should be '<file> 0|1|2', got {line[:80]!r}")
        partition[row[0]] = int(row[1])
    return partition


def read_face(path: Path, image_size: int) -> np.ndarray:
    """A (3, S, S) uint8 face: the centred square crop (178x178 of the 178x218 aligned image), resized.

    A greyscale image, or one whose short side is below S, is not a CelebA face: it is rejected by name,
    never silently converted or upscaled.
    """
    try:
        with Image.open(path) as raw:
            mode, bands = raw.mode, len(raw.getbands())
            img = raw.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:  # Pillow's errors for missing, truncated or bad JPEGs
        raise DatasetFileError(f"{path}: unreadable image ({err})") from err
    if mode != "RGB":
        raise DatasetFileError(f"{path}: a {mode} image with {bands} channel(s); CelebA faces are RGB")
    width, height = img.size
    if min(width, height) < image_size:
        raise DatasetFileError(f"{path}: {height}x{width} (HxW) image is smaller than the {image_size}x{image_size} "
                               "asked for (CelebA aligned faces are 218x178); it would have to be upscaled")
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)  # (S, S, 3) -> (3, S, S)


def decode_faces(paths: list[Path], labels: list[int], image_size: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode JPEGs in threads (Pillow releases the GIL while decoding) into (N, 3, S, S) uint8."""
    images = np.empty((len(paths), 3, image_size, image_size), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        faces = pool.map(lambda p: read_face(p, image_size), paths)
        for i, face in enumerate(track(faces, f"celeba-smile {split}", total=len(paths))):
            images[i] = face
    return images, np.asarray(labels, dtype=np.int64)


def load_celeba_split(root: Path, files: list[str], smiling: dict[str, int], image_size: int,
                      split: str) -> ImageDataset:
    """One split, decoded once and then read from the converted cache."""
    paths = [root / IMAGE_DIR / name for name in files]
    for path in paths:
        if not path.is_file():
            raise DatasetFileError(f"{path}: missing image listed in {root / PARTITION_FILE}")
    labels = [smiling[name] for name in files]
    key = source_key(f"celeba-smile-{split}", [root / ATTR_FILE, root / PARTITION_FILE, *paths],
                     image_size=image_size)
    images, y = cached_uint8(key, lambda: decode_faces(paths, labels, image_size, split))
    return ImageDataset(torch.from_numpy(images).float().div_(255.0), torch.from_numpy(y.astype(np.int64)),
                        "celeba-smile", split)


def load_celeba_smile(root: Path, image_size: int = 64, limit_train: int | None = None,
                      limit_test: int | None = None) -> Splits:
    """Smiling (1) vs not (0) faces: train = official partition 0, test = partition 2 (validation unused).

    Each 178x218 aligned image is centre-cropped to 178x178 and resized to `image_size` (64 suits CPU
    budgets; the LAD paper used 128x128 DLIB face crops). `limit_*` keep the first n files of a split,
    in file order, to cap memory (162,770 train faces at 64 px take 8 GB as float32).
    """
    root = Path(root)
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    for limit in (limit_train, limit_test):
        if limit is not None and limit < 0:
            raise ValueError(f"limits must be None or >= 0, got {limit}")
    for path in (root / ATTR_FILE, root / PARTITION_FILE, root / IMAGE_DIR):
        if not path.exists():
            raise DatasetFileError(f"{path}: missing; expected CelebA's published layout under {root}")
    smiling = read_smiling(root / ATTR_FILE)
    partition = read_partition(root / PARTITION_FILE)
    unlabelled = sorted(set(partition) - set(smiling))
    if unlabelled:
        raise DatasetFileError(f"{root / ATTR_FILE}: no attributes for {len(unlabelled)} files listed in "
                               f"{root / PARTITION_FILE}, e.g. {unlabelled[0]}")
    files = sorted(partition)
    train = [f for f in files if partition[f] == TRAIN_PARTITION][:limit_train]
    test = [f for f in files if partition[f] == TEST_PARTITION][:limit_test]
    return Splits(train=load_celeba_split(root, train, smiling, image_size, "train"),
                  test=load_celeba_split(root, test, smiling, image_size, "test"))
