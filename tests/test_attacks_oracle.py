"""Our attacks against torchattacks 3.5.1 (test-only oracle) on the tiny seeded model and a fixed batch."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from test_attacks_fixtures import one_thread, targets_for, tiny_batch, tiny_model  # noqa: F401 (autouse)

from latentdefence.attacks import APGD, APGDT, FGSM, JSMA, PGD, CarliniWagnerL2

torchattacks = pytest.importorskip("torchattacks")

N = 64
TOL = 0.08        # "within a few points": 5 of 64 images


def oracle_success(adv: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (tiny_model()(adv).argmax(1) != labels).float().mean().item()


def test_fgsm_matches_oracle() -> None:
    x, y = tiny_batch(N)
    ours = FGSM(eps=0.08)(tiny_model(), x, y)
    theirs = oracle_success(torchattacks.FGSM(tiny_model(), eps=0.08)(x, y), y)
    assert abs(ours.success_rate - theirs) <= 1 / N          # deterministic: same images up to float ties
    assert ours.norms.max() <= 0.08 + 1e-6


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_matches_oracle_and_stays_in_ball(norm: str) -> None:
    x, y = tiny_batch(N)
    eps, alpha = (0.08, 0.01) if norm == "linf" else (0.8, 0.1)
    ours = PGD(eps=eps, step_size=alpha, steps=20, norm=norm, generator=torch.Generator().manual_seed(0))(
        tiny_model(), x, y)
    oracle = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    torch.manual_seed(0)
    theirs = oracle_success(oracle(tiny_model(), eps=eps, alpha=alpha, steps=20)(x, y), y)
    assert 0.1 < theirs < 0.95, "batch/eps chosen so the comparison means something"
    assert abs(ours.success_rate - theirs) <= TOL
    assert ours.norms.max() <= eps + 1e-5
    assert ours.images.min() >= 0 and ours.images.max() <= 1


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_matches_oracle(loss: str) -> None:
    x, y = tiny_batch(N)
    ours = APGD(eps=0.08, steps=20, loss=loss, generator=torch.Generator().manual_seed(0))(tiny_model(), x, y)
    theirs = oracle_success(torchattacks.APGD(tiny_model(), eps=0.08, steps=20, loss=loss, seed=0)(x, y), y)
    assert 0.1 < theirs < 0.95
    assert abs(ours.success_rate - theirs) <= TOL
    assert ours.norms.max() <= 0.08 + 1e-5


def test_apgdt_matches_oracle() -> None:
    x, y = tiny_batch(N)
    ours = APGDT(eps=0.08, steps=15, n_target_classes=3, generator=torch.Generator().manual_seed(0))(
        tiny_model(), x, y)
    theirs = oracle_success(torchattacks.APGDT(tiny_model(), eps=0.08, steps=15, n_classes=4, seed=0)(x, y), y)
    assert abs(ours.success_rate - theirs) <= TOL


def test_apgd_ce_then_apgd_t_at_autoattacks_standard_budget_match_oracle() -> None:
    """AutoAttack's standard budget (100 steps, 9 targets), APGD-T on what APGD-CE left, as its cascade does."""
    x, y = tiny_batch(N // 2)
    eps = 0.06
    Run = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def robust_after_both(ce: Run, targeted: Run) -> float:
        with torch.no_grad():
            left = tiny_model()(ce(x, y)).argmax(1) == y
        adv = targeted(x[left], y[left])
        with torch.no_grad():
            return (tiny_model()(adv).argmax(1) == y[left]).float().sum().item() / len(y)

    ours = robust_after_both(
        lambda a, b: APGD(eps, 100, generator=torch.Generator().manual_seed(0))(tiny_model(), a, b).images,
        lambda a, b: APGDT(eps, 100, n_target_classes=9, generator=torch.Generator().manual_seed(0))(
            tiny_model(), a, b).images)
    theirs = robust_after_both(torchattacks.APGD(tiny_model(), eps=eps, steps=100, loss="ce", seed=0),
                               torchattacks.APGDT(tiny_model(), eps=eps, steps=100, n_classes=10, seed=0))
    assert 0.1 < theirs < 0.9, "eps chosen so the comparison means something"
    assert abs(ours - theirs) <= 2 / len(y), (ours, theirs)


def test_apgd_is_at_least_pgd() -> None:
    """APGD's point: no weaker than PGD at the same budget."""
    x, y = tiny_batch(N)
    pgd = PGD(eps=0.06, step_size=0.01, steps=20, generator=torch.Generator().manual_seed(0))(tiny_model(), x, y)
    apgd = APGD(eps=0.06, steps=20, generator=torch.Generator().manual_seed(0))(tiny_model(), x, y)
    assert apgd.success_rate >= pgd.success_rate - 1 / N


def test_cw_smaller_than_oracle_and_always_succeeds() -> None:
    x, y = tiny_batch(32)
    ours = CarliniWagnerL2(steps=100, binary_search_steps=5, initial_const=0.1)(tiny_model(), x, y)
    adv = torchattacks.CW(tiny_model(), c=10, steps=100, lr=0.01)(x, y)     # generous fixed c
    with torch.no_grad():
        ok = tiny_model()(adv).argmax(1) != y
    their_l2 = (adv - x).flatten(1).norm(dim=1)
    assert ours.success_rate >= 0.99
    assert ok.float().mean() >= 0.8
    both = ok & ours.success
    assert ours.norms[both].mean() <= 1.10 * their_l2[both].mean()
    assert ours.norms[ours.success].mean() <= 1.10 * their_l2[ok].mean()


def test_cw_targeted_and_confidence() -> None:
    x, y = tiny_batch(16)
    t = targets_for(y)
    plain = CarliniWagnerL2(steps=60, binary_search_steps=4, initial_const=0.1, lr=0.05, targeted=True)(
        tiny_model(), x, y, t)
    sure = CarliniWagnerL2(steps=60, binary_search_steps=4, initial_const=0.1, lr=0.05, targeted=True,
                           confidence=2.0)(tiny_model(), x, y, t)
    assert plain.success_rate >= 0.9 and sure.success_rate >= 0.9
    with torch.no_grad():
        logits = tiny_model()(sure.images)[sure.success]
    t_ok = t[sure.success]
    gap = logits.gather(1, t_ok[:, None]).squeeze(1) - logits.scatter(1, t_ok[:, None], -1e9).amax(1)
    assert (gap >= 2.0 - 1e-3).all()
    both = plain.success & sure.success
    assert plain.norms[both].mean() < sure.norms[both].mean()


def test_cw_failed_samples_come_back_unchanged() -> None:
    x, y = tiny_batch(8)
    result = CarliniWagnerL2(steps=5, binary_search_steps=1, initial_const=1e-4)(tiny_model(), x, y)
    assert torch.equal(result.images[~result.success], x[~result.success])


def test_jsma_respects_gamma_and_reaches_targets() -> None:
    x, y = tiny_batch(24)
    t = targets_for(y)
    gamma = 0.25
    result = JSMA(theta=1.0, gamma=gamma)(tiny_model(), x, y, t)
    assert (result.norms <= gamma * x[0].numel()).all()
    changed = (result.images != x).flatten(1).sum(1)
    assert (changed <= gamma * x[0].numel()).all()
    assert (result.images >= x).all()                       # theta > 0 only increases
    assert result.success_rate >= 0.6
    assert torch.equal(result.predictions[result.success], t[result.success])


def test_jsma_matches_oracle_success() -> None:
    x, y = tiny_batch(8)
    t = targets_for(y)
    ours = JSMA(theta=1.0, gamma=0.25)(tiny_model(), x, y, t)
    adv = torchattacks.JSMA(tiny_model(), theta=1.0, gamma=0.25)(x, y)   # its default target: (y + 1) % 10
    with torch.no_grad():
        theirs = (tiny_model()(adv).argmax(1) == t).float().mean().item()
    assert ours.success_rate >= theirs - 2 / 8
