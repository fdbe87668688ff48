"""Small files in the exact published formats of SVHN, CIFAR-10 and CelebA, written by the tests themselves."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def write_svhn_mat(path: Path, labels: Sequence[int], seed: int = 0) -> np.ndarray:
    """An SVHN .mat file as published: X (32, 32, 3, N) uint8, y (N, 1) double with 10 for digit 0."""
    x = np.random.default_rng(seed).integers(0, 256, (32, 32, 3, len(labels)), dtype=np.uint8)
    scipy.io.savemat(str(path), {"X": x, "y": np.asarray(labels, dtype=np.float64).reshape(-1, 1)})
    return x


def write_svhn_dir(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """`train_32x32.mat` and `test_32x32.mat` with labels 1..10 cycling, in `root`."""
    root.mkdir(parents=True, exist_ok=True)
    write_svhn_mat(root / "train_32x32.mat", [i % 10 + 1 for i in range(n_train)], seed)
    write_svhn_mat(root / "test_32x32.mat", [i % 10 + 1 for i in range(n_test)], seed + 1)
    return root


def write_celeba(root: Path, files: Sequence[tuple[str, int, int]]) -> Path:
    """Aligned 178x218 JPEGs (blue centre square, red 20-pixel bands above and below; a smiling face a
    little brighter) with `list_attr_celeba.txt` and `list_eval_partition.txt`; files are
    (name, partition 0/1/2, Smiling +1/-1)."""
    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    smiling = CELEBA_ATTRIBUTES.index("Smiling")
    attr_lines = [str(len(files)), " ".join(CELEBA_ATTRIBUTES) + " "]
    for name, _part, smile in files:
        img = Image.new("RGB", (178, 218), (220, 0, 0))
        img.paste((0, 60 if smile > 0 else 0, 200), (0, 20, 178, 198))
        img.save(root / "img_align_celeba" / name, quality=95)
        values = [-1] * len(CELEBA_ATTRIBUTES)
        values[smiling] = smile
        attr_lines.append(name + " " + " ".join(f"{v:2d}" for v in values))
    (root / "list_attr_celeba.txt").write_text("\n".join(attr_lines) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p, _ in files))
    return root


def celeba_files(n_train: int, n_test: int) -> list[tuple[str, int, int]]:
    """File list for `write_celeba`: alternating smiles, train then test partitions."""
    return [(f"{i + 1:06d}.jpg", 0 if i < n_train else 2, 1 if i % 2 else -1) for i in range(n_train + n_test)]


class Python2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickles as Python 2's cPickle wrote CIFAR-10's batches (protocol 2): bytes as Python 2 `str`
    (SHORT_BINSTRING / BINSTRING, read back as bytes with encoding='bytes'), numpy's array rebuilder under its
    old name `numpy.core.multiarray._reconstruct`."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes

    def save_global(self, obj: object, name: str | None = None) -> None:
        if obj is np.ndarray.__reduce__(np.zeros(0))[0]:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch[type(len)] = save_global  # builtin functions such as _reconstruct


def cifar_batch_bytes(images: np.ndarray, labels: Sequence[int], batch_label: str) -> bytes:
    """One batch file as published: {b'batch_label', b'labels', b'data': (N, 3072) uint8 channel-major,
    b'filenames'}."""
    buf = io.BytesIO()
    Python2Pickler(buf, protocol=2).dump({
        b"batch_label": batch_label.encode(), b"labels": [int(v) for v in labels],
        b"data": np.ascontiguousarray(images.reshape(len(images), 3072)),
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))]})
    return buf.getvalue()


def write_cifar10_release(root: Path, n_per_batch: int = 4, n_test: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """`root/cifar-10-batches-py/` with data_batch_1..5, test_batch and batches.meta, tiny; returns the
    (N, 3, 32, 32) uint8 images and labels written (train in batch order, then test)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_x, train_y = [], []
    for b in range(1, 6):
        x = rng.integers(0, 256, (n_per_batch, 3, 32, 32), dtype=np.uint8)
        y = [(b + i) % 10 for i in range(n_per_batch)]
        (folder / f"data_batch_{b}").write_bytes(cifar_batch_bytes(x, y, f"training batch {b} of 5"))
        train_x.append(x)
        train_y += y
    test_x = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    test_y = [i % 10 for i in range(n_test)]
    (folder / "test_batch").write_bytes(cifar_batch_bytes(test_x, test_y, "testing batch 1 of 1"))
    buf = io.BytesIO()
    Python2Pickler(buf, protocol=2).dump({b"num_cases_per_batch": n_per_batch, b"num_vis": 3072, b"label_names": [
        c.encode() for c in ("airplane automobile bird cat deer dog frog horse ship truck").split()]})
    (folder / "batches.meta").write_bytes(buf.getvalue())
    return {"train_images": np.concatenate(train_x), "train_labels": np.asarray(train_y),
            "test_images": test_x, "test_labels": np.asarray(test_y)}


def tar_folder(folder: Path, archive: Path, mode: str = "w") -> Path:
    """`folder` packed into `archive` under its own name (as `tar cf archive -C parent folder`)."""
    with tarfile.open(archive, mode) as tar:
        tar.add(folder, arcname=folder.name)
    return archive
