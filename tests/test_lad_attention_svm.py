"""LAD attention SVM: attention normalisation, separation, and a normal pointing from source to target."""

from __future__ import annotations

import pytest
import torch

from latentdefence.lad.attention_svm import AttentionSVM, TargetBoundaries

FAST = {"epochs": 150, "lr": 0.05}


def toy(n: int = 40, d: int = 16, gap: float = 3.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two linearly separable clouds of non-negative latents (like ReLU features), differing in feature 2."""
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(2 * n, d, generator=g)
    y = torch.arange(2 * n) % 2
    z[y == 1, 2] += gap
    return z, y


def test_attention_is_positive_and_sums_to_one() -> None:
    z, y = toy()
    beta = AttentionSVM(**FAST).fit(z, y).attention(z)
    assert beta.shape == z.shape
    assert (beta > 0).all()
    torch.testing.assert_close(beta.sum(dim=1), torch.ones(z.shape[0]))


def test_svm_separates_a_separable_set() -> None:
    z, y = toy()
    svm = AttentionSVM(**FAST).fit(z, y)
    assert (svm.predict(z) == y).all()
    assert torch.equal(svm.classes_, torch.tensor([0, 1]))
    assert svm.coef_.shape == (16,) and svm.boundary_normal_.norm().item() == pytest.approx(1.0)


@pytest.mark.parametrize("eps", [0.1, 1.0, 3.0])
def test_moving_along_the_normal_raises_the_target_score(eps: float) -> None:
    z, y = toy()
    svm = AttentionSVM(**FAST).fit(z, y)
    source = z[y == 0]
    moved = source + eps * svm.direction(source)
    assert (svm.decision_function(moved) > svm.decision_function(source)).all()


def test_large_steps_cross_to_the_target() -> None:
    z, y = toy()
    svm = AttentionSVM(**FAST).fit(z, y)
    source = z[y == 0]
    assert (svm.predict(source + 20 * svm.direction(source)) == 1).all()


def test_margin_units_put_the_median_source_on_the_boundary_at_boundary_eps() -> None:
    z, y = toy(n=200, gap=2.0)
    z[:, 2] += 0.5 * torch.rand(len(z), generator=torch.Generator().manual_seed(3))  # spread the distances
    svm = AttentionSVM(**FAST, boundary_eps=10.0).fit(z, y)
    source = z[y == 0]

    def crossed(eps: float) -> float:
        return (svm.decision_function(source + eps * svm.direction(source)) > 0).float().mean().item()

    assert crossed(0.0) == 0.0
    assert 0.3 <= crossed(10.0) <= 0.7          # about half of the source latents reach it at boundary_eps
    assert crossed(30.0) == 1.0


def test_classifier_units_put_the_median_source_where_the_classifier_flips() -> None:
    z, y = toy(n=200, gap=2.0)
    z[:, 2] += 0.5 * torch.rand(len(z), generator=torch.Generator().manual_seed(3))

    def head(latents: torch.Tensor) -> torch.Tensor:   # a "classifier" that flips further out than the SVM
        return torch.stack([torch.zeros(len(latents)), 8.0 * (latents[:, 2] - 2.2)], dim=1)

    with pytest.raises(ValueError, match="needs head"):
        TargetBoundaries(**FAST, eps_scale="classifier").fit(z, y)
    bounds = TargetBoundaries(**FAST, eps_scale="classifier", boundary_eps=10.0).fit(z, y, head=head)
    source = z[y == 0]
    sources, targets = torch.zeros(len(source), dtype=torch.long), torch.ones(len(source), dtype=torch.long)

    def flipped(eps: float) -> float:
        return (head(source + eps * bounds.direction(source, sources, targets)).argmax(1) != 0).float().mean().item()

    assert flipped(0.0) == 0.0 and 0.3 <= flipped(10.0) <= 0.7 and flipped(40.0) == 1.0


def test_latent_units_step_eps_along_the_unit_normal_under_uniform_attention() -> None:
    z, y = toy()
    svm = AttentionSVM(**FAST, eps_scale="latent").fit(z, y)
    assert svm.step_scale_.item() == 1.0
    svm.conv_weight_, svm.conv_bias_ = torch.zeros_like(svm.conv_weight_), torch.zeros_like(svm.conv_bias_)
    torch.testing.assert_close(svm.direction(z[:3]), svm.boundary_normal_.expand(3, -1))
    with pytest.raises(ValueError, match="eps_scale"):
        AttentionSVM(eps_scale="pixels").fit(z, y)


def test_saved_boundaries_keep_their_eps_scale(tmp_path) -> None:
    from latentdefence.lad.attention_svm import load_boundaries, save_boundaries

    z, y = toy()
    bounds = TargetBoundaries(**FAST, boundary_eps=5.0).fit(z, y)
    save_boundaries(tmp_path / "b.safetensors", bounds)
    loaded, _ = load_boundaries(tmp_path / "b.safetensors")
    sources, targets = y, 1 - y
    assert loaded.eps_scale == "margin" and loaded.boundary_eps == 5.0
    torch.testing.assert_close(loaded.direction(z, sources, targets), bounds.direction(z, sources, targets))


@pytest.mark.parametrize("strategy", ["pairwise", "one_vs_rest"])
def test_boundaries_toward_every_class(strategy: str) -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(60) % 3
    z = torch.rand(60, 12, generator=g)
    z[torch.arange(60), y * 4] += 3.0  # class c lights up feature 4c
    bounds = TargetBoundaries(strategy=strategy, **FAST).fit(z, y)
    sources = y.clone()
    targets = (y + 1) % 3
    before = bounds.target_scores(z, sources, targets)
    after = bounds.target_scores(z + 1.0 * bounds.direction(z, sources, targets), sources, targets)
    assert (after > before).all()
    restored = TargetBoundaries.from_tensors(bounds.to_tensors(), strategy=strategy, **FAST)
    torch.testing.assert_close(restored.target_scores(z, sources, targets), before)


def test_errors_name_the_problem() -> None:
    z, y = toy()
    with pytest.raises(RuntimeError, match="not fitted"):
        AttentionSVM().decision_function(z)
    with pytest.raises(ValueError, match="exactly two classes"):
        AttentionSVM(**FAST).fit(z, torch.zeros(len(y), dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        AttentionSVM(**FAST).fit(torch.full_like(z, float("nan")), y)
    with pytest.raises(ValueError, match="odd"):
        AttentionSVM(kernel_size=2).fit(z, y)
    svm = AttentionSVM(**FAST).fit(z, y)
    with pytest.raises(ValueError, match="fitted on 16"):
        svm.attention(torch.rand(3, 5))
    with pytest.raises(KeyError, match="no boundary from class 0 to class 0"):
        TargetBoundaries(**FAST).fit(z, y).estimator(0, 0)
