"""The pruned exact k-NN ("torch") against scikit-learn's brute force: same neighbours, order, distances, verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentdefence.detectors import KNNIndex
from latentdefence.dld import DeepLatentDefence
from guard_artifact import blobs, build_artifact


def _clustered(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return 3 * torch.randn(10, 10, generator=gen)[labels] + torch.randn(n, 10, generator=gen), labels


def _pair(points: torch.Tensor, labels: torch.Tensor) -> tuple[KNNIndex, KNNIndex]:
    old, new = KNNIndex("sklearn"), KNNIndex("torch")
    for index in (old, new):
        index.add(points, labels)
    return old, new


def test_same_neighbours_in_the_same_order_as_sklearn_brute_force() -> None:
    points, labels = _clustered(20_000, 0)
    queries = torch.cat([points[:300] + 0.5 * torch.randn(300, 10), 6 * torch.randn(100, 10)])   # near and far
    old, new = _pair(points, labels)
    for k in (1, 10, 50):
        (d_old, i_old), (d_new, i_new) = old.search(queries, k), new.search(queries, k)
        assert torch.equal(i_old, i_new)
        torch.testing.assert_close(d_new, d_old, rtol=1e-6, atol=1e-6)
        assert d_new.dtype == torch.float32 and i_new.dtype == torch.int64


def test_equal_distances_rank_the_lower_index_first() -> None:
    """Between exactly equal distances scikit-learn's choice follows the rounding of its chunked matrix products
    (a duplicate may win over the original); "torch" takes the lower index. Distances and labels agree."""
    points, labels = _clustered(3_000, 1)
    points = torch.cat([points, points[:500], points[:500]])        # every one of the first 500 three times
    labels = torch.cat([labels, labels[:500], labels[:500]])
    old, new = _pair(points, labels)
    for queries, k in ((points[:200], 4), (points[:200] + 1e-3, 3)):
        dist, idx = new.search(queries, k)
        torch.testing.assert_close(dist, old.search(queries, k)[0], rtol=1e-6, atol=1e-6)
        assert torch.equal(labels[idx].sort(1).values, old.neighbour_labels(queries, k).sort(1).values)
        assert torch.equal(idx[:, :3], idx[:, :1] + torch.tensor([0, 3_000, 3_500]))
    _, idx = new.search(points[:200], 2)                            # a tie at the k-th place: the lowest two
    assert torch.equal(idx, torch.arange(200)[:, None] + torch.tensor([0, 3_000]))


def test_an_index_smaller_than_k_plus_its_sample_is_searched_exhaustively() -> None:
    old, new = _pair(*_clustered(40, 2))
    queries = torch.randn(7, 10)
    assert torch.equal(new.search(queries, 40)[1], old.search(queries, 40)[1])


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("guard") / "guard.safetensors"
    build_artifact(path)
    return path


def test_detector_verdicts_scores_and_evidence_identical_to_the_sklearn_path(artifact: Path) -> None:
    old, new = (DeepLatentDefence.load(artifact, knn_backend=b) for b in ("sklearn", "torch"))
    mixed = 0.5 * blobs(100, 4).images + 0.5 * blobs(100, 5).images.roll(1, 0)     # blends of two classes
    images = torch.cat([blobs(100, 3).images, mixed, torch.rand(20, 1, 28, 28)])
    a, b = old.predict(images), new.predict(images)
    assert torch.equal(a.is_adversarial, b.is_adversarial) and a.is_adversarial.any() and not a.is_adversarial.all()
    assert torch.equal(a.nonconformity, b.nonconformity) and torch.equal(a.credibility, b.credibility)
    assert all(torch.equal(a.per_layer[t], b.per_layer[t]) for t in a.per_layer)
    evidence_old, evidence_new = old.neighbours(images), new.neighbours(images)   # this fixture's latents tie a lot:
    for tap, (_, labels) in evidence_old.items():                                  # the same labels, ties by index
        assert torch.equal(labels.sort(1).values, evidence_new[tap][1].sort(1).values)


def test_one_pass_verdicts_and_evidence_equal_predict_and_neighbours(artifact: Path) -> None:
    det = DeepLatentDefence.load(artifact)
    images = torch.cat([blobs(30, 8).images, torch.rand(10, 1, 28, 28)])
    verdict, found = det.predict_explained(images)
    alone = det.predict(images)
    assert torch.equal(verdict.is_adversarial, alone.is_adversarial) and torch.equal(verdict.nonconformity,
                                                                                     alone.nonconformity)
    assert all(torch.equal(found[t][0], idx) and torch.equal(found[t][1], labels)
               for t, (idx, labels) in det.neighbours(images).items())
