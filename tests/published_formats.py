"""Small files in the exact published formats of SVHN and CelebA, written by the tests themselves."""

from __future__ import annotations

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
