"""k-NN backends, Eq. 8 non-conformity on a hand-made index, calibration and credibility."""

from __future__ import annotations

import pytest
import torch

from latentdefence.detectors import KNNIndex, calibrate_threshold, credibility, nonconformity


def _line_index(backend: str) -> KNNIndex:
    index = KNNIndex(backend)
    points = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    index.add(points, torch.tensor([0, 0, 0, 1, 1, 1]))
    return index


@pytest.mark.parametrize("backend", ["torch", "sklearn", "faiss", "faiss-hnsw"])
def test_search_returns_euclidean_neighbours_in_order(backend: str) -> None:
    dist, idx = _line_index(backend).search(torch.tensor([[0.9], [11.6]]), k=2)
    assert idx.tolist() == [[1, 0], [5, 4]]
    assert dist.flatten().tolist() == pytest.approx([0.1, 0.9, 0.4, 0.6], abs=1e-5)
    assert dist.dtype == torch.float32 and idx.dtype == torch.int64


def test_hnsw_neighbour_labels_agree_with_exact_search_on_clustered_latents() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (20_000,), generator=gen)
    points = 3 * torch.randn(10, 10, generator=gen)[labels] + torch.randn(20_000, 10, generator=gen)
    queries = points[:500] + 0.5 * torch.randn(500, 10, generator=gen)
    exact, approx = KNNIndex("sklearn"), KNNIndex("faiss-hnsw")
    for index in (exact, approx):
        index.add(points, labels)
    _, idx_exact = exact.search(queries, 10)
    _, idx_approx = approx.search(queries, 10)
    recall = sum(len(set(a) & set(b)) for a, b in zip(idx_exact.tolist(), idx_approx.tolist())) / idx_exact.numel()
    assert recall >= 0.95
    label_agreement = (exact.neighbour_labels(queries, 10).sort(1).values ==
                       approx.neighbour_labels(queries, 10).sort(1).values).float().mean()
    assert label_agreement >= 0.98
    assert approx.nbytes() > exact.embeddings.numel() * 4


def test_nonconformity_counts_neighbours_disagreeing_with_the_prediction() -> None:
    index = _line_index("sklearn")
    queries = torch.tensor([[1.0], [6.5], [11.0]])            # 6.5: neighbours 2, 10, 1, 11 at k=4
    labels = index.neighbour_labels(queries, k=4)
    beta = nonconformity(labels, torch.tensor([0, 0, 0]))
    assert beta.tolist() == [1, 2, 3]
    assert nonconformity(labels, torch.tensor([1, 1, 1])).tolist() == [3, 2, 1]


def test_index_rejects_bad_inputs_with_named_problems() -> None:
    index = KNNIndex()
    with pytest.raises(RuntimeError, match="empty"):
        index.search(torch.zeros(1, 2), 1)
    with pytest.raises(ValueError, match="NaN"):
        index.add(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="int64"):
        index.add(torch.zeros(2, 2), torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match="backend"):
        KNNIndex("annoy")
    index.add(torch.zeros(3, 2), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="k must be"):
        index.search(torch.zeros(1, 2), 4)


def test_calibration_reaches_the_target_rate_on_synthetic_scores() -> None:
    gen = torch.Generator().manual_seed(0)
    cal, fresh = torch.randn(2000, generator=gen), torch.randn(200_000, generator=gen)
    threshold = calibrate_threshold(cal, target_fpr=0.05)
    assert (cal > threshold).float().mean().item() == pytest.approx(0.05, abs=1 / 2000)
    assert (fresh > threshold).float().mean().item() == pytest.approx(0.05, abs=0.01)
    assert threshold == pytest.approx(1.645, abs=0.08)       # the N(0, 1) 95% quantile


def test_calibration_with_integer_ties_never_exceeds_the_target() -> None:
    scores = torch.tensor([0] * 90 + [1] * 6 + [5] * 4)
    threshold = calibrate_threshold(scores, target_fpr=0.05)
    assert threshold == 1.0 and (scores > threshold).float().mean().item() == pytest.approx(0.04)
    assert calibrate_threshold(scores, target_fpr=0.0) == 5.0


def test_credibility_is_the_conformal_p_value() -> None:
    cal = torch.tensor([0.0, 1.0, 1.0, 2.0])
    p = credibility(torch.tensor([0.0, 1.0, 1.5, 3.0]), cal)
    assert p.tolist() == pytest.approx([5 / 5, 4 / 5, 2 / 5, 1 / 5])


def test_calibration_rejects_nan_and_bad_rates() -> None:
    with pytest.raises(ValueError, match="NaN"):
        calibrate_threshold(torch.tensor([0.0, float("nan")]), 0.1)
    with pytest.raises(ValueError, match="target_fpr"):
        calibrate_threshold(torch.tensor([0.0, 1.0]), 1.0)
