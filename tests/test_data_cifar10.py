"""CIFAR-10 (official python release, class-folder copies) and users' own class-folder datasets, on files written
here in the published formats; the shared JPEG copy where this machine has it."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentdefence.data import DatasetFileError, load_dataset
from latentdefence.data import cifar10 as cifar10_module
from latentdefence.data import folder as folder_module
from latentdefence.data.cifar10 import CLASSES, load_cifar10

from published_formats import Python2Pickler, cifar_batch_bytes, tar_folder, write_cifar10_release
from shared_data import CIFAR10_JPEG, SHARED_DATA, requires_cifar10


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty dataset cache and no default data folder."""
    monkeypatch.setenv("LATENTDEFENCE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LATENTDEFENCE_DATA_DIR", raising=False)
    return tmp_path / "cache"


def as_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float() / 255


# ---- the official python release ---------------------------------------------------------------

def test_cifar10_release_loads_every_batch_in_order_with_channel_major_pixels(tmp_path: Path) -> None:
    written = write_cifar10_release(tmp_path)
    splits = load_dataset("cifar10", tmp_path)
    assert splits.train.images.shape == (20, 3, 32, 32) and splits.test.images.shape == (6, 3, 32, 32)
    assert torch.equal(splits.train.images, as_float(written["train_images"]))   # batches 1..5 in order
    assert splits.train.labels.tolist() == written["train_labels"].tolist()
    assert torch.equal(splits.test.images, as_float(written["test_images"]))
    assert splits.train.name == "cifar10" and splits.provenance["format"] == "cifar-10-batches-py"
    assert splits.provenance["lossy"] is False
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    assert splits.provenance["sha256"]["data_batch_3"] == hashlib.sha256(batch.read_bytes()).hexdigest()


def test_cifar10_release_pixel_layout_is_red_plane_first(tmp_path: Path) -> None:
    """The published row is 1024 red, then 1024 green, then 1024 blue values, each plane row-major."""
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_release(tmp_path)
    row = np.zeros((1, 3072), dtype=np.uint8)
    row[0, 0], row[0, 1024 + 33], row[0, 2048 + 1023] = 200, 100, 50   # red (0,0), green (1,1), blue (31,31)
    (folder / "test_batch").write_bytes(cifar_batch_bytes(row.reshape(1, 3, 32, 32), [7], "testing batch 1 of 1"))
    image = load_cifar10(tmp_path).test.images[0]
    assert image[0, 0, 0] == pytest.approx(200 / 255) and image[1, 1, 1] == pytest.approx(100 / 255)
    assert image[2, 31, 31] == pytest.approx(50 / 255) and int((image > 0).sum()) == 3


def test_cifar10_reads_the_release_archive_and_the_batch_folder_itself(tmp_path: Path) -> None:
    written = write_cifar10_release(tmp_path / "unpacked")
    archive = tar_folder(tmp_path / "unpacked" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz", "w:gz")
    from_archive = load_cifar10(archive.parent)
    assert torch.equal(from_archive.train.images, as_float(written["train_images"]))
    assert list(from_archive.provenance["sha256"]) == ["cifar-10-python.tar.gz"]
    inside = load_cifar10(tmp_path / "unpacked" / "cifar-10-batches-py")
    assert torch.equal(inside.test.images, as_float(written["test_images"]))


def test_cifar10_second_load_reads_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_cifar10(write_cifar10_release(tmp_path) and tmp_path)

    def must_not_decode(*_: object) -> None:
        raise AssertionError("decoded again instead of reading the cache")
    monkeypatch.setattr(cifar10_module, "read_batches", must_not_decode)
    assert torch.equal(load_cifar10(tmp_path).train.images, first.train.images)


def test_cifar10_from_the_data_dir_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10_release(tmp_path)
    monkeypatch.setenv("LATENTDEFENCE_DATA_DIR", str(tmp_path))
    assert len(load_dataset("cifar10").train) == 20


def test_cifar10_absent_says_where_to_put_the_release(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LATENTDEFENCE_DATA_DIR"):
        load_dataset("cifar10")
    with pytest.raises(DatasetFileError, match="cifar-10-batches-py.*cifar-10-python.tar.gz"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DatasetFileError, match="no such folder"):
        load_dataset("cifar10", tmp_path / "nowhere")


def test_cifar10_missing_batch_is_named(tmp_path: Path) -> None:
    write_cifar10_release(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DatasetFileError, match="data_batch_4: missing"):
        load_cifar10(tmp_path)


def py2(obj: object) -> bytes:
    """`obj` pickled as Python 2 wrote the release (bytes as `str`)."""
    buf = io.BytesIO()
    Python2Pickler(buf).dump(obj)
    return buf.getvalue()


class Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


@pytest.mark.parametrize("payload, match", [
    (py2({b"data": Exploit(), b"labels": []}), "refusing to unpickle builtins.print"),
    (b"not a pickle at all", "not a CIFAR-10 batch pickle"),
    (py2([1, 2, 3]), "expected a dict with b'data' and b'labels'"),
    (py2({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}), "expected uint8"),
    (py2({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}), "integers in 0..9"),
    (py2({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "must be 2 integers"),
])
def test_cifar10_hostile_or_damaged_batches_are_refused_by_name(tmp_path: Path, payload: bytes, match: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    write_cifar10_release(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(payload)
    with pytest.raises(DatasetFileError, match=match) as err:
        load_cifar10(tmp_path)
    assert "data_batch_2" in str(err.value) and "pwned" not in capsys.readouterr().out


# ---- class folders (ImageFolder layout) --------------------------------------------------------

def write_folder(root: Path, split: str, classes: dict[str, int], size: tuple[int, int] = (8, 6),
                 mode: str = "RGB", seed: int = 0) -> dict[str, list[np.ndarray]]:
    """PNG files (lossless, so pixels compare exactly) under root/split/<class>/; returns them by class."""
    rng, out = np.random.default_rng(seed), {}
    for name, count in classes.items():
        (root / split / name).mkdir(parents=True, exist_ok=True)
        out[name] = []
        for i in range(count):
            shape = (size[0], size[1], 3) if mode == "RGB" else size
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode).save(root / split / name / f"{i:03d}.png")
            out[name].append(pixels)
    return out


@pytest.mark.parametrize("packed", [False, True], ids=["folders", "tars"])
def test_folder_dataset_labels_follow_sorted_class_names_and_pixels_survive(tmp_path: Path, packed: bool) -> None:
    train = write_folder(tmp_path, "train", {"zebra": 2, "ant": 3, "moth": 1})
    write_folder(tmp_path, "test", {"ant": 1, "moth": 1, "zebra": 1}, seed=1)
    if packed:
        for split in ("train", "test"):
            tar_folder(tmp_path / split, tmp_path / f"{split}.tar")
            (tmp_path / split).rename(tmp_path / f"{split}-unpacked")
    splits = load_dataset("folder", root=tmp_path, order_seed=None)
    assert splits.provenance["classes"] == ["ant", "moth", "zebra"]
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 2, 2] and splits.train.images.shape == (6, 3, 8, 6)
    expected = torch.from_numpy(train["zebra"][1].transpose(2, 0, 1)).float() / 255
    assert torch.equal(splits.train.images[5], expected)
    assert sorted(splits.provenance["sha256"]) == (["test.tar", "train.tar"] if packed else [])


def test_folder_dataset_is_shuffled_by_default_so_a_prefix_samples_every_class(tmp_path: Path) -> None:
    write_folder(tmp_path, "train", {"a": 20, "b": 20})
    write_folder(tmp_path, "test", {"a": 1, "b": 1})
    ordered = load_dataset("folder", root=tmp_path, order_seed=None).train
    shuffled = load_dataset("folder", root=tmp_path).train
    assert ordered.labels[:20].tolist() == [0] * 20
    assert set(shuffled.labels[:10].tolist()) == {0, 1}
    assert sorted(map(tuple, shuffled.images.flatten(1).tolist())) == sorted(map(tuple, ordered.images.flatten(1).tolist()))


def test_folder_dataset_given_classes_fix_the_order_and_greyscale_gives_one_channel(tmp_path: Path) -> None:
    write_folder(tmp_path, "train", {"cat": 1, "dog": 1}, mode="L")
    write_folder(tmp_path, "test", {"cat": 1, "dog": 1}, mode="L")
    splits = load_dataset("folder", root=tmp_path, classes=["dog", "cat"], mode="L", order_seed=None)
    assert splits.train.labels.tolist() == [1, 0] and splits.train.images.shape == (2, 1, 8, 6)


def test_folder_dataset_second_load_reads_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(tmp_path, "train", {"a": 2, "b": 2})
    write_folder(tmp_path, "test", {"a": 1})
    first = load_dataset("folder", root=tmp_path)

    def must_not_decode(*_: object) -> None:
        raise AssertionError("decoded again instead of reading the cache")
    monkeypatch.setattr(folder_module, "decode_split", must_not_decode)
    assert torch.equal(load_dataset("folder", root=tmp_path).train.images, first.train.images)


def test_folder_dataset_errors_name_what_is_wrong(tmp_path: Path) -> None:
    write_folder(tmp_path, "train", {"a": 1, "b": 1})
    with pytest.raises(DatasetFileError, match="no 'test/' folder or 'test.tar'"):
        load_dataset("folder", root=tmp_path)
    write_folder(tmp_path, "test", {"a": 1, "c": 1})
    with pytest.raises(DatasetFileError, match=r"class folder\(s\) \['c'\] are not among"):
        load_dataset("folder", root=tmp_path)
    write_folder(tmp_path / "other", "train", {"a": 1}, size=(8, 6))
    write_folder(tmp_path / "other", "test", {"a": 1}, size=(8, 6))
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "other" / "train" / "a" / "zz.png")
    with pytest.raises(DatasetFileError, match=r"zz.png: image is 5x5 .* first is 8x6"):
        load_dataset("folder", root=tmp_path / "other")
    (tmp_path / "other" / "train" / "a" / "zz.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetFileError, match="zz.png: unreadable image"):
        load_dataset("folder", root=tmp_path / "other")
    with pytest.raises(ValueError, match="mode must be one of"):
        load_dataset("folder", root=tmp_path / "other", mode="CMYK")


def test_cifar10_from_a_class_folder_copy_is_labelled_lossy_when_jpeg(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for name in CLASSES:
            (tmp_path / split / name).mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / split / name / "0000.jpg")
    splits = load_cifar10(tmp_path)
    assert splits.provenance["lossy"] is True and "JPEG copy" in splits.provenance["note"]
    assert sorted(splits.train.labels.tolist()) == list(range(10))


# ---- the shared JPEG copy ----------------------------------------------------------------------

@requires_cifar10
def test_shared_cifar10_jpeg_copy_loads_whole_with_its_checksums() -> None:
    splits = load_dataset("cifar10", SHARED_DATA)
    assert splits.train.images.shape == (50_000, 3, 32, 32) and splits.test.images.shape == (10_000, 3, 32, 32)
    assert torch.bincount(splits.train.labels).tolist() == [5000] * 10
    assert torch.bincount(splits.test.labels).tolist() == [1000] * 10
    sums = dict(line.split()[::-1] for line in (CIFAR10_JPEG / "SHA256SUMS").read_text().splitlines())
    assert splits.provenance["sha256"] == sums and splits.provenance["lossy"] is True
    means = splits.test.images.mean((0, 2, 3))            # the copy's README: 0.4941 / 0.4851 / 0.4504
    assert means.tolist() == pytest.approx([0.4941, 0.4851, 0.4504], abs=2e-4)
