"""Detector-aware attacks on detectors whose answer is known, Square's threat model, the AutoAttack cascade."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from latentdefence.attacks import (PGD, AutoAttack, GuidePointAttack, KeepBest, OrthogonalPGD, SelectivePGD, Square,
                                   attack_entry, create_attack, list_attacks, perturbation_norm)
from latentdefence.data.base import ImageDataset
from latentdefence.detectors import Detection, KNNIndex, nonconformity
from latentdefence.dld import DeepLatentDefence, EncoderTrainConfig, train_encoder
from test_attacks_fixtures import tiny_batch, tiny_model
from toy_blobs import blobs, trained_tiny_model


class NeverFlags:
    """A detector that flags nothing: attacking F + it is attacking F."""

    def __init__(self, classifier: nn.Module) -> None:
        self.classifier = classifier

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Detection:
        pred = self.classifier(images).argmax(1)
        zeros = torch.zeros(len(images))
        return Detection(pred, zeros.bool(), zeros + 1, zeros, {})

    def surrogate_score(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).sum(1) * 0


@pytest.mark.parametrize("attack", [SelectivePGD(0.08, 0.01, 20, generator=torch.Generator().manual_seed(0)),
                                    OrthogonalPGD(0.08, 0.01, 20, generator=torch.Generator().manual_seed(0))])
def test_with_a_detector_that_flags_nothing_the_attack_matches_pgd(attack) -> None:
    model = tiny_model()
    x, y = tiny_batch(64)
    pgd = PGD(0.08, 0.01, 20, generator=torch.Generator().manual_seed(0))(model, x, y).success_rate
    result = attack(NeverFlags(model), x, y)
    assert 0.1 < pgd < 0.95
    assert result.success_rate >= pgd - 0.05
    assert (result.norms <= 0.08 + 1e-6).all() and result.images.min() >= 0 and result.images.max() <= 1
    with torch.no_grad():
        assert torch.equal(result.success, model(result.images).argmax(1) != y)


def test_a_start_that_already_evades_is_kept() -> None:
    model = tiny_model()
    x, y = tiny_batch(64)
    pgd = PGD(0.08, 0.01, 20, generator=torch.Generator().manual_seed(0))(model, x, y)
    result = SelectivePGD(0.08, 0.001, 1)(NeverFlags(model), x, y, starts=pgd.images)
    assert result.success[pgd.success].all()
    with pytest.raises(ValueError, match="starts must be shaped like images"):
        SelectivePGD(0.08)(NeverFlags(model), x, y, starts=x[:3])


class ToyKNN:
    """F reads pixel 0 only (class 1 iff it exceeds 0.45); the detector's k-NN reads all four pixels.

    Training points sit at 0.3 (class 0) and 0.6 (class 1) in every pixel, so the class-1 guides are reachable
    with eps 0.35, while an attack on F alone moves pixel 0 only and lands among class-0 points (flagged)."""

    k = 5

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.classifier = nn.Linear(4, 2)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.tensor([[-10.0, 0, 0, 0], [10.0, 0, 0, 0]]))
            self.classifier.bias.copy_(torch.tensor([4.5, -4.5]))
        self.classifier = nn.Sequential(nn.Flatten(), self.classifier)
        points = torch.cat([0.3 + 0.03 * torch.randn(50, 4, generator=gen), 0.6 + 0.03 * torch.randn(50, 4, generator=gen)])
        index = KNNIndex()
        index.add(points, torch.arange(100) // 50)
        self.indexes_ = {"pixels": index}
        self.threshold_ = 2

    def latents(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pixels": images.flatten(1)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Detection:
        pred = self.classifier(images).argmax(1)
        score = nonconformity(self.indexes_["pixels"].neighbour_labels(images.flatten(1), self.k), pred)
        return Detection(pred, score > self.threshold_, torch.ones(len(images)), score, {})


def test_guide_point_attack_evades_a_toy_knn_where_attacking_f_alone_is_flagged() -> None:
    det = ToyKNN()
    x = (0.3 + 0.03 * torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    y = torch.zeros(16, dtype=torch.long)
    pgd = PGD(0.35, 0.05, 20, random_start=False)(det.classifier, x, y)
    assert pgd.success.all() and det.predict(pgd.images).is_adversarial.all()
    result = GuidePointAttack(0.35, 0.05, 20, n_targets=1, check_every=2)(det, x, y)
    assert result.success.all()
    out = det.predict(result.images)
    assert (out.predicted == 1).all() and not out.is_adversarial.any()
    assert (perturbation_norm(result.images - x, "linf") <= 0.35 + 1e-6).all()


class Scripted:
    """Replays fixed decisions: each predict() call returns the next (predicted, flagged, score) triple."""

    def __init__(self, script: list[tuple[list[int], list[bool], list[float]]]) -> None:
        self.classifier = nn.Identity()
        self.script = iter(script)

    def predict(self, images: torch.Tensor) -> SimpleNamespace:
        pred, flagged, score = next(self.script)
        return SimpleNamespace(predicted=torch.tensor(pred), is_adversarial=torch.tensor(flagged),
                               nonconformity=torch.tensor(score))


def test_keep_best_never_trades_an_evading_iterate_for_a_flagged_or_correct_one() -> None:
    y = torch.tensor([0, 0, 0])
    det = Scripted([([0, 0, 0], [False] * 3, [0.0] * 3),            # clean: all correct
                    ([1, 1, 0], [False, True, False], [3.0, 9.0, 0.0]),   # 0 evades, 1 flagged, 2 correct
                    ([1, 1, 1], [True, False, False], [9.0, 2.0, 5.0]),   # 0 flagged now, 1 and 2 evade
                    ([1, 0, 1], [False, False, False], [1.0, 0.0, 7.0])])  # 0 evades lower; 1 correct; 2 higher
    x = torch.zeros(3, 1, 1, 1)
    best = KeepBest(det, x, y)
    rows = torch.arange(3)
    for value in (1.0, 2.0, 3.0):
        best.update(torch.full((3, 1, 1, 1), value), rows)
    assert best.evaded.tolist() == [True, True, True]
    assert best.images.flatten().tolist() == [3.0, 2.0, 2.0]      # lowest score among evading iterates
    assert best.predictions.tolist() == [1, 1, 1]


def _masked(model: nn.Module) -> nn.Module:
    """F behind an input quantiser with zero gradient: gradient attacks see nothing, scores are intact."""
    class Quantised(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model
            self.grad_calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.grad_calls += int(torch.is_grad_enabled() and x.requires_grad)
            return self.inner(torch.round(x * 8) / 8)
    return Quantised()


def test_square_stays_in_the_ball_needs_no_gradient_and_breaks_a_masked_model() -> None:
    masked = _masked(tiny_model())
    x, y = tiny_batch(32)
    pgd = PGD(0.15, 0.02, 20, generator=torch.Generator().manual_seed(0))(masked, x, y)
    masked.grad_calls = 0
    result = Square(0.15, 300, generator=torch.Generator().manual_seed(0))(masked, x, y)
    assert masked.grad_calls == 0
    assert (result.norms <= 0.15 + 1e-6).all() and result.images.min() >= 0 and result.images.max() <= 1
    assert result.success_rate >= pgd.success_rate + 0.3


def test_autoattack_books_only_still_robust_inputs_and_never_loses_a_break() -> None:
    model = tiny_model()
    x, y = tiny_batch(32)
    result, robust_after = AutoAttack(0.08, 10, n_target_classes=2, square_queries=50,
                                      generator=torch.Generator().manual_seed(0)).evaluate(model, x, y)
    values = list(robust_after.values())
    assert list(robust_after) == ["clean", "apgd-ce", "apgd-t", "square"]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(1 - result.success_rate)
    assert (result.norms <= 0.08 + 1e-6).all()


@pytest.fixture(scope="module")
def tiny_dld() -> tuple[DeepLatentDefence, ImageDataset]:
    train = blobs(240, 0)
    model = trained_tiny_model(train)
    cfg = EncoderTrainConfig(epochs=6, batch_size=60, lr=0.01, eps=0.1, steps=2, step_size=0.05, eps_ramp=0.5, width=4)
    eds = {tap: train_encoder(model, tap, train, latent_dim=3, config=cfg) for tap in ("layer1", "layer2")}
    det = DeepLatentDefence(model, ("layer1", "layer2"), k=5, latent_dim=3, encoders=eds).fit(train)
    return det.calibrate(blobs(90, 1), target_fpr=0.05), blobs(30, 2)


def test_dld_surrogate_is_eq8_at_low_temperature_and_has_gradient(tiny_dld) -> None:
    det, test = tiny_dld
    pred, score, _ = det.nonconformity(test.images)
    x = test.images.clone().requires_grad_(True)
    soft = det.surrogate_score(x, pred, temperature=1e-4)
    gap = (soft.detach() - score.float()).abs()
    assert gap.mean() < 0.05 and gap.max() <= 0.5 + 1e-3      # a tie at the k-th distance counts half
    grad, = torch.autograd.grad(det.surrogate_score(x, (pred + 1) % 3).sum(), x)
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()


@pytest.mark.parametrize("name", list_attacks(on="detector"))
def test_every_registered_detector_attack_returns_evasions_dld_confirms(name, tiny_dld) -> None:
    """The contract of an attack on F + detector, for every one registered: inputs and F untouched, success =
    F wrong and the detector's own `predict` not flagging, perturbations inside the ball."""
    det, test = tiny_dld
    example = {**attack_entry(name).examples[0], "eps": 0.4}
    attack = create_attack(name, **example)
    before = {k: v.clone() for k, v in det.classifier.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in det.classifier.parameters()]
    x, y = test.images.clone(), test.labels.clone()
    result = attack(det, x, y)
    assert torch.equal(x, test.images) and torch.equal(y, test.labels)
    assert all(torch.equal(before[k], v) for k, v in det.classifier.state_dict().items())
    assert not det.classifier.training
    assert all(g is None and p.grad is None or torch.equal(g, p.grad) for g, p in zip(grads, det.classifier.parameters()))
    out = det.predict(result.images)
    evaded = (out.predicted != test.labels) & ~out.is_adversarial
    assert torch.equal(result.success, evaded)
    assert (result.norms <= 0.4 + 1e-6).all() and ((result.images >= 0) & (result.images <= 1)).all()


def test_the_registry_holds_the_detector_aware_attacks() -> None:
    assert {"selective", "orthogonal", "guide_points", "detector_square"} <= set(list_attacks(on="detector"))
    assert isinstance(create_attack("selective", eps=0.1), SelectivePGD)


@pytest.mark.parametrize("name", list_attacks(on="detector"))
def test_every_detector_attack_batches_large_calls(name, tiny_dld) -> None:
    """Issue 37: detector-aware attacks run in batches of `batch_size` too; success is still the detector's own."""
    det, test = tiny_dld
    attack = create_attack(name, **{**attack_entry(name).examples[0], "eps": 0.4})
    attack.batch_size = 5
    x, y = test.images[:12], test.labels[:12]
    result = attack(det, x, y)
    out = det.predict(result.images)
    assert result.images.shape == x.shape
    assert torch.equal(result.success, (out.predicted != y) & ~out.is_adversarial)
