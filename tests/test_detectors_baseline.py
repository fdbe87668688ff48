"""Baseline detectors (Deep k-NN, Mahalanobis, LID): the shared contract, what each separates, surrogates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from latentdefence.attacks import FGSM, PGD
from latentdefence.data.base import ImageDataset
from latentdefence.detectors import (DeepKNN, LIDDetector, LogisticCombiner, MahalanobisDetector,
                                     clean_noisy_adversarial, create_detector, detector_entry, list_detectors)
from latentdefence.detectors import ConformalDetector, KNNDetector, KNNIndex, nonconformity, soft_nonconformity
from latentdefence.models import StagedModel
from toy_blobs import blobs, tiny_model, trained_tiny_model

# Every registered detector with the small settings it registered, so a new one is tested at once.
FACTORIES = {name: (lambda m, name=name: create_detector(name, m, **detector_entry(name).examples[0]))
             for name in list_detectors()}


def test_the_registry_holds_dld_and_every_baseline() -> None:
    assert {"dld", "dknn", "mahalanobis", "lid"} <= set(FACTORIES)
    with pytest.raises(KeyError, match="unknown detector 'nope'; choose one of"):
        create_detector("nope", None)


def test_registries_find_what_installed_packages_name_by_entry_point() -> None:
    """No hand-kept module list: DLD (a package above the registry) and the experiment pipelines are found through
    the entry points pyproject.toml declares, in an interpreter that imported neither."""
    import subprocess
    import sys

    code = ("import sys; from latentdefence.detectors import list_detectors; "
            "from latentdefence.experiments.registry import list_pipelines; "
            "before = 'latentdefence.dld' in sys.modules; print(before, list_detectors(), list_pipelines())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False ['dknn', 'dld', 'lid', 'mahalanobis'] ") and "'lad-paper-numbers'" in out


@pytest.fixture(scope="module")
def setup() -> tuple[StagedModel, ImageDataset, ImageDataset, ImageDataset]:
    train = blobs(600, 0)
    return trained_tiny_model(train), train, blobs(150, 1), blobs(150, 2)


@pytest.fixture(scope="module", params=list(FACTORIES))
def detector(request, setup) -> ConformalDetector:
    model, train, cal, _ = setup
    return FACTORIES[request.param](model).fit(train).calibrate(cal, target_fpr=0.05)


@pytest.fixture(scope="module")
def probes(setup) -> torch.Tensor:
    """Clean test images, PGD examples against F (eps 0.3), uniform noise, and blends of the two."""
    model, _, _, test = setup
    noise = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    attack = PGD(eps=0.3, steps=20, generator=torch.Generator().manual_seed(6))
    adv = attack(model, test.images[:40], test.labels[:40]).images
    return torch.cat([test.images[40:80], adv, noise, 0.5 * test.images[80:120] + 0.5 * noise])


def test_contract_signs_and_clean_false_positives(detector, setup) -> None:
    model, _, _, test = setup
    out = detector.predict(test.images)
    with torch.no_grad():
        assert torch.equal(out.predicted, model(test.images).argmax(1))
    assert out.is_adversarial.float().mean() <= 0.12
    assert torch.equal(detector.decision_function(test.images) < 0, out.is_adversarial)
    assert torch.allclose(detector.score_samples(test.images), -out.nonconformity.float())
    assert ((out.credibility > 0) & (out.credibility <= 1)).all()
    assert all(v.shape == (len(test),) for v in out.per_layer.values()) and len(out.per_layer) >= 2
    if not isinstance(detector, KNNDetector):      # the regression saw fooled pairs and learnt to tell them apart
        assert detector.lr_examples_ >= 20 and detector.lr_train_auc_ > 0.9


def test_calibration_refuses_a_target_its_images_cannot_keep_and_reports_its_promise(detector, setup) -> None:
    """Issue 37: 10 calibration images at target 0.001 promised 0.0 and gave 8% held out. n images promise at best
    1/(n+1); below that the call is refused by name before scoring; the report gives the interval and the bound."""
    _, _, cal, test = setup
    import copy

    trial = copy.copy(detector)
    with pytest.raises(ValueError, match=r"target_fpr 0.001 cannot be kept with 10 calibration image\(s\).*"
                                         r"1/\(n\+1\) = 0.09091; use at least 999 calibration images"):
        trial.calibrate(cal.subset(slice(0, 10)), target_fpr=0.001)
    with pytest.raises(ValueError, match="no finite calibration set can promise 0"):
        trial.calibrate(cal, target_fpr=0.0)
    report = trial.calibrate(cal.subset(slice(0, 10)), target_fpr=0.1).calibration_report()
    assert report["n"] == 10 and report["held_out_fpr_bound"] == pytest.approx(2 / 11)
    lo, hi = report["calibration_fpr_ci"]
    assert lo <= report["calibration_fpr"] <= 0.1 < hi


def test_a_k_nn_detector_that_can_flag_nothing_says_so_when_calibrated(setup) -> None:
    """Issue 36: on CIFAR-10 the paper's recipe left 11.6% of the calibration images at Eq. 8's maximum (every neighbour
    disagreeing), so a 10% threshold sat at the top and flagged nothing, silently. Now a warning names it."""
    from latentdefence.detectors import DeepKNN

    model, train, cal, _ = setup
    one_class = ImageDataset(train.images, torch.full_like(train.labels, 2), "blobs", "train")  # neighbours all say 2
    det = DeepKNN(model, ("layer1", "layer2"), k=5).fit(one_class)
    assert det.max_score() == 10.0
    with pytest.warns(RuntimeWarning, match=r"DeepKNN can flag nothing: .*% of the calibration images already score "
                                            r"the maximal 10"):
        det.calibrate(cal, target_fpr=0.1)
    assert det.calibration_report()["can_flag"] is False and not det.predict(cal.images).is_adversarial.any()
    assert FACTORIES["dknn"](model).fit(train).calibrate(cal, target_fpr=0.1).calibration_report()["can_flag"]


def test_the_conformal_bound_holds_on_held_out_scores_over_many_small_calibrations() -> None:
    """Over 4,000 seeded draws of 20 calibration scores, the held-out FP averages at most the reported bound."""
    from latentdefence.detectors.base import calibrate_threshold

    gen = torch.Generator().manual_seed(0)
    rates = []
    for _ in range(4000):
        cal, fresh = torch.randn(20, generator=gen), torch.randn(200, generator=gen)
        rates.append(float((fresh > calibrate_threshold(cal, 0.05)).float().mean()))
    mean = sum(rates) / len(rates)
    assert mean <= (1 + 1) / 21 + 0.005 and mean > 0.05      # 0.05 itself is not kept at n = 20; the bound is


def test_flags_attacked_and_off_manifold_inputs(detector, setup) -> None:
    model, _, _, test = setup
    clean_rate = detector.predict(test.images).is_adversarial.float().mean()
    adv = PGD(eps=0.3, steps=20, generator=torch.Generator().manual_seed(8))(model, test.images[:60], test.labels[:60])
    assert adv.success.sum() >= 30
    fooled = adv.images[adv.success]
    assert detector.predict(fooled).is_adversarial.float().mean() >= max(0.7, clean_rate + 0.5)
    if not isinstance(detector, KNNDetector):  # the k-NN vote judges F's class, not density: noise can be "consistent"
        noise = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(7))
        assert detector.predict(noise).is_adversarial.all()


def test_surrogate_is_differentiable_and_tracks_the_exact_score(detector, setup, probes) -> None:
    model, _, _, _ = setup
    with torch.no_grad():
        classes = model(probes).argmax(1)
    x = probes.clone().requires_grad_(True)
    other = (classes + 1) % 3                  # what an attacker asks: the score if F said another class
    toward = detector.surrogate_score(x, other)
    grad, = torch.autograd.grad(toward.sum(), x)
    assert torch.isfinite(grad).all()
    low, top = (1e-3, len(detector.indexes_) * detector.k - 1e-3) if isinstance(detector, KNNDetector) else (-float("inf"), float("inf"))
    live = (toward.detach() > low) & (toward.detach() < top)  # k-NN: where the vote is not saturated
    assert live.float().mean() > 0.25 and (grad.flatten(1).abs().sum(1)[live] > 0).all()
    surrogate = detector.surrogate_score(x, classes)
    assert surrogate.shape == (len(probes),)
    exact = detector.nonconformity(probes)[1].float()
    flagged = exact > exact.median()
    if isinstance(detector, KNNDetector):     # the exact vote ties at 0 on most probes, the surrogate grades them:
        assert roc_auc_score(flagged.numpy(), surrogate.detach().numpy()) > 0.9     # it still ranks the high votes first
        assert (surrogate.detach() - exact).abs().median() < 0.5                      # and is near the vote itself
    else:
        assert spearmanr(surrogate.detach().numpy(), exact.numpy()).statistic > 0.85
    if not isinstance(detector, KNNDetector):  # no pre-processing: the surrogate is the exact logit
        assert torch.allclose(surrogate.detach(), exact, atol=1e-4, rtol=1e-4)


def test_bad_input_and_order_of_calls(detector, setup) -> None:
    model, train, _, _ = setup
    x = train.images[:4]
    for bad in (x[0], x.to(torch.int64), x.clone().fill_(float("nan"))):
        with pytest.raises(ValueError, match="images"):
            detector.predict(bad)
    for classes in (torch.zeros(3, dtype=torch.int64), torch.zeros(4)):
        with pytest.raises(ValueError, match="classes"):
            detector.surrogate_score(x, classes)
    fresh = type(detector)(model)
    with pytest.raises(RuntimeError, match="fit"):
        fresh.nonconformity(x)
    with pytest.raises(RuntimeError, match="fit"):
        fresh.surrogate_score(x, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(KeyError, match="unknown tap"):
        type(detector)(model, ("nope",)).fit(train)


def test_deep_knn_indexes_a_seeded_subset_of_raw_activations(setup) -> None:
    model, train, _, _ = setup
    det = DeepKNN(model, ("layer1", "layer2"), k=5, max_train=100, seed=3).fit(train)
    assert {t: len(i) for t, i in det.indexes_.items()} == {"layer1": 100, "layer2": 100}
    assert det.indexes_["layer1"].embeddings.shape == (100, 4 * 4 * 4)
    again = DeepKNN(model, ("layer1", "layer2"), k=5, max_train=100, seed=3).fit(train)
    assert torch.equal(det.indexes_["layer2"].labels, again.indexes_["layer2"].labels)
    z = det.latents(train.images[:7])
    assert z["layer2"].shape == (7, 32) and z["layer2"].requires_grad is False  # F frozen, images not tracked
    pred, score, per = det.nonconformity(train.images[:7])
    assert torch.equal(score, per["layer1"] + per["layer2"]) and score.max() <= 2 * det.k
    with pytest.raises(ValueError, match="fewer than k"):
        DeepKNN(model, ("layer1",), k=20, max_train=10).fit(train)


def test_soft_nonconformity_is_eq8_in_the_cold_limit_and_pulls_toward_the_class() -> None:
    index = KNNIndex()
    index.add(torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]]), torch.tensor([0, 0, 0, 1, 1, 1]))
    queries = torch.tensor([[0.9], [6.2], [11.6]])
    classes = torch.tensor([1, 0, 1])
    exact = nonconformity(index.neighbour_labels(queries, 3), classes).float()
    cold = soft_nonconformity(queries, index, classes, k=3, temperature=1e-3, candidates=6)
    assert torch.allclose(cold, exact, atol=1e-3)
    q = torch.tensor([[5.0]], requires_grad=True)
    warm = soft_nonconformity(q, index, torch.tensor([1]), k=3, temperature=0.3, candidates=6)
    grad, = torch.autograd.grad(warm.sum(), q)
    assert grad.item() < 0                     # moving toward class 1's points (right) lowers the score
    with pytest.raises(ValueError, match="temperature"):
        soft_nonconformity(queries, index, classes, k=3, temperature=0.0)


def test_soft_nonconformity_has_a_gradient_in_a_pure_neighbourhood() -> None:
    """All 2k nearest points share the query's class: the other class still enters (it once did not, and the
    surrogate's gradient was exactly zero on ~90% of clean images)."""
    index = KNNIndex()
    index.add(torch.cat([torch.linspace(0, 1, 8), torch.linspace(3, 4, 8)])[:, None], torch.tensor([0] * 8 + [1] * 8))
    q = torch.tensor([[0.5]], requires_grad=True)
    score = soft_nonconformity(q, index, torch.tensor([0]), k=2, temperature=0.5, candidates=4)
    grad, = torch.autograd.grad(score.sum(), q)
    assert 0 < score.item() < 0.5 and grad.item() > 0      # moving right, toward class 1, raises the score


def test_mahalanobis_fits_class_means_and_the_tied_covariance(setup) -> None:
    from sklearn.covariance import EmpiricalCovariance

    model, train, _, _ = setup
    det = MahalanobisDetector(model, ("layer2",), lr_samples=200, max_train=None).fit(train)
    rest = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[200:])
    with torch.no_grad():
        f = model.features(rest.images, "layer2").mean(dim=(2, 3)).double()
    means = torch.stack([f[rest.labels == c].mean(0) for c in range(3)])
    assert torch.allclose(det.means_["layer2"].double(), means, atol=1e-5)
    precision = EmpiricalCovariance(assume_centered=True).fit((f - means[rest.labels]).numpy()).precision_
    assert np.allclose(det.precisions_["layer2"].numpy(), precision, rtol=1e-3, atol=1e-3 * np.abs(precision).max())


def test_mahalanobis_preprocessing_moves_each_layer_toward_its_closest_class(setup) -> None:
    model, train, cal, test = setup
    plain = MahalanobisDetector(model, lr_samples=200).fit(train)
    noisy = MahalanobisDetector(model, lr_samples=200, noise=0.005).fit(train).calibrate(cal, 0.05)
    _, before = plain._scores(test.images[:60])
    _, after = noisy._scores(test.images[:60])
    assert (after < before).float().mean() > 0.9      # one signed step down each layer's distance gradient
    assert noisy.predict(test.images).is_adversarial.float().mean() <= 0.12
    with pytest.raises(ValueError, match="noise"):
        MahalanobisDetector(model, noise=-1.0, lr_samples=200).fit(train)


def test_lid_estimate_grows_with_the_dimension_of_the_data() -> None:
    gen = torch.Generator().manual_seed(0)
    det = LIDDetector(None, k=20)  # type: ignore[arg-type]  # only the estimator is exercised
    for dim in (2, 8):
        basis = torch.linalg.qr(torch.randn(16, dim, generator=gen))[0]             # (16, dim) orthonormal
        det.reference_ = {"t": torch.rand(500, dim, generator=gen) @ basis.T}
        lid = det._layer_score("t", (0.1 + 0.8 * torch.rand(50, dim, generator=gen)) @ basis.T)  # inside the cube
        assert 0.5 * dim < lid.median() < 2.0 * dim


def test_logistic_training_set_keeps_fooled_pairs_with_matched_noise(setup) -> None:
    model, train, _, _ = setup
    data = train.head(120)
    clean, noisy, adv = clean_noisy_adversarial(model, data, FGSM(eps=0.3), seed=1, batch_size=50)
    assert clean.shape == noisy.shape == adv.shape and 0 < len(clean) <= len(data)
    with torch.no_grad():
        assert (model(adv).argmax(1) != model(clean).argmax(1)).all()
    assert ((noisy - clean).flatten(1).norm(dim=1) <= (adv - clean).flatten(1).norm(dim=1) + 1e-4).all()
    with pytest.raises(ValueError, match="fooled F on only 0"):
        clean_noisy_adversarial(model, data, FGSM(eps=0.0))
    with pytest.raises(ValueError, match="both"):
        LogisticCombiner().fit(torch.randn(10, 2), torch.zeros(10, dtype=torch.int64))


def test_artifact_round_trip_gives_identical_scores(detector, setup, tmp_path) -> None:
    _, _, _, test = setup
    path = tmp_path / "detector.safetensors"
    detector.save(path)
    loaded = type(detector).load(path, classifier=tiny_model())
    a, b = detector.predict(test.images), loaded.predict(test.images)
    assert torch.equal(a.predicted, b.predicted) and torch.equal(a.is_adversarial, b.is_adversarial)
    assert torch.allclose(a.nonconformity.float(), b.nonconformity.float()) and loaded.threshold_ == detector.threshold_
    classes = a.predicted[:20]
    assert torch.allclose(detector.surrogate_score(test.images[:20], classes),
                          loaded.surrogate_score(test.images[:20], classes), atol=1e-5)
    with pytest.raises(ValueError, match="architecture"):
        type(detector).load(path)                         # the toy model is not in the registry
    other = LIDDetector if isinstance(detector, MahalanobisDetector) else MahalanobisDetector
    with pytest.raises(ValueError, match="not a MahalanobisDetector|not a LIDDetector"):
        other.load(path, classifier=tiny_model())
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match="not a readable"):
        type(detector).load(tmp_path / "broken.safetensors", classifier=tiny_model())


def test_descending_the_surrogate_lowers_the_exact_score(detector, setup) -> None:
    model, _, _, test = setup
    adv = PGD(eps=0.3, steps=20, generator=torch.Generator().manual_seed(8))(model, test.images[:60], test.labels[:60])
    x0 = adv.images[adv.success]
    classes = adv.predictions[adv.success]                # keep F's (wrong) class, hide it from the detector
    x = x0.clone()
    for _ in range(10):
        x.requires_grad_(True)
        grad, = torch.autograd.grad(detector.surrogate_score(x, classes).sum(), x)
        x = (x.detach() - 0.01 * grad.sign()).clamp(0, 1)
    before, after = detector.nonconformity(x0)[1].float(), detector.nonconformity(x)[1].float()
    assert after.mean() < before.mean() and (after <= before).float().mean() > 0.6


def test_a_detector_without_fit_cannot_be_built() -> None:
    """`fit` is part of the contract every caller relies on, so a subclass that forgets it fails at once."""
    class ScoresOnly(ConformalDetector):
        def nonconformity(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
            return images.new_zeros(len(images)).long(), images.new_zeros(len(images)), {}

    with pytest.raises(TypeError, match="fit"):
        ScoresOnly()
