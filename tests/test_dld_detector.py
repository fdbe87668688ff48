"""Encoder training, pruning, the detector end to end, its artifact, and the adaptive attack's box."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from latentdefence.data.base import ImageDataset
from latentdefence.dld import (CentroidAttack, DeepLatentDefence, EncoderDecoder, EncoderTrainConfig, EnsembleModel,
                               InsertedModel, adaptive_attack, load_encoders, prune_mask, pruned_embeddings, save_encoders,
                               train_encoder)
from latentdefence.models import HookedModel, StagedModel
from toy_blobs import blobs as _blobs, tiny_model as _tiny_model, trained_tiny_model

TAPS = ("layer1", "layer2")


@pytest.fixture(scope="module")
def trained() -> tuple[StagedModel, ImageDataset, dict[str, EncoderDecoder]]:
    train = _blobs(240, 0)
    model = trained_tiny_model(train)
    cfg = EncoderTrainConfig(epochs=6, batch_size=60, lr=0.01, eps=0.1, steps=2, step_size=0.05, eps_ramp=0.5, width=4)
    eds = {tap: train_encoder(model, tap, train, latent_dim=3, config=cfg) for tap in TAPS}
    return model, train, eds


def test_training_leaves_the_classifier_untouched_and_learns(trained) -> None:
    model, train, eds = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    cfg = EncoderTrainConfig(epochs=1, batch_size=120, steps=1, width=4, eps=0.1)
    train_encoder(model, "layer1", train, 3, cfg)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    with torch.no_grad():
        acc = (InsertedModel(model, "layer2", eds["layer2"].encoder, eds["layer2"].decoder)(train.images)
               .argmax(1) == train.labels).float().mean()
    assert acc > 0.9


def test_prune_mask_keeps_correct_points_only() -> None:
    assert prune_mask(torch.tensor([0, 1, 2, 1]), torch.tensor([0, 2, 2, 1])).tolist() == [True, False, True, True]


def test_pruned_embeddings_drop_what_the_inserted_model_misclassifies(trained) -> None:
    model, train, eds = trained
    flipped = ImageDataset(train.images, (train.labels + 1) % 3, "blobs")   # every label now wrong...
    mixed = ImageDataset(torch.cat([train.images[:30], flipped.images[:30]]),
                         torch.cat([train.labels[:30], flipped.labels[:30]]))
    out = pruned_embeddings(model, eds, mixed, batch_size=16)
    for tap in TAPS:
        z, y, positions = out[tap]
        assert z.shape[1] == 3 and len(y) <= 30                              # ...so none of them survives
        assert len(y) >= 25 and bool((positions < 30).all())                 # the kept ones cite their rows
        assert torch.equal(mixed.labels[positions], y)


@pytest.fixture(scope="module")
def detector(trained) -> DeepLatentDefence:
    model, train, eds = trained
    det = DeepLatentDefence(model, TAPS, k=5, latent_dim=3, encoders=eds, batch_size=50)
    return det.fit(train).calibrate(_blobs(150, 1), target_fpr=0.1)


def test_detector_flags_off_manifold_inputs_but_few_clean(detector) -> None:
    clean = _blobs(150, 2)
    out = detector.predict(clean.images)
    assert (out.predicted == clean.labels).float().mean() > 0.9
    assert out.is_adversarial.float().mean() <= 0.2
    assert set(out.per_layer) == set(TAPS)
    assert torch.equal(out.nonconformity, out.per_layer["layer1"] + out.per_layer["layer2"])
    pred, score, _ = detector.nonconformity(clean.images)
    assert score.max() <= 2 * detector.k and score.min() >= 0
    dec = detector.decision_function(clean.images)
    assert torch.equal(dec < 0, out.is_adversarial)
    assert ((out.credibility > 0) & (out.credibility <= 1)).all()


def test_detector_needs_fit_and_calibration(trained) -> None:
    model, _, _ = trained
    det = DeepLatentDefence(model, TAPS)
    with pytest.raises(RuntimeError, match="fit"):
        det.score_samples(torch.zeros(1, 1, 8, 8))
    with pytest.raises(KeyError, match="unknown tap"):
        DeepLatentDefence(model, ("nope",), encoders={}).fit(_blobs(9, 0))


def test_artifact_round_trip_gives_identical_predictions(detector, tmp_path: Path) -> None:
    path = tmp_path / "dld.safetensors"
    detector.save(path)
    loaded = DeepLatentDefence.load(path, classifier=_tiny_model())
    x = _blobs(60, 3).images
    a, b = detector.predict(x), loaded.predict(x)
    assert torch.equal(a.predicted, b.predicted) and torch.equal(a.nonconformity, b.nonconformity)
    assert torch.equal(a.is_adversarial, b.is_adversarial) and loaded.threshold_ == detector.threshold_
    assert not hasattr(loaded, "encoders_") or all(not hasattr(e, "decoder") for e in loaded.encoders_.values())
    with pytest.raises(ValueError, match="architecture"):
        DeepLatentDefence.load(path)


def test_adaptive_attack_stays_in_the_eps_ball_and_box(trained, detector) -> None:
    model, train, eds = trained
    x, y = train.images[:30], train.labels[:30]
    eps = 0.15
    result = adaptive_attack(model, eds, detector.centroids(), x, y, eps=eps, step_size=0.05, steps=5,
                             centroid=CentroidAttack(eps=eps, alpha2=15.0, steps=5, step_size=0.05))
    assert (result.images - x).abs().max() <= eps + 1e-6
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert torch.equal(result.predictions != y, result.success)


def test_centroid_attack_keeps_only_misclassified_starts_and_moves_toward_centroids(trained, detector) -> None:
    model, train, eds = trained
    x, y = train.images[:12], train.labels[:12]
    start = (x + 0.3 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    attack = CentroidAttack(eps=0.3, alpha1=0.0, alpha2=1.0, steps=10, step_size=0.02)
    encoders = {t: ed.encoder for t, ed in eds.items()}
    result = attack(model, encoders, detector.centroids(), x, start, y)
    with torch.no_grad():
        wrong = model(start).argmax(1) != y
    assert torch.equal(result.images[~wrong], start[~wrong])
    assert (result.images - x).abs().max() <= 0.3 + 1e-6


def test_artifacts_written_before_depth_and_pairing_still_load(detector, tmp_path: Path) -> None:
    import copy

    from latentdefence._io import load_tensors, save_tensors

    old = copy.copy(detector)
    old.training = EncoderTrainConfig(epochs=1)
    path = tmp_path / "old.safetensors"
    old.save(path)
    tensors, meta = load_tensors(path)
    for spec in meta["encoders"].values():
        del spec["depth"]                                   # what an earlier release wrote
    for key in ("depth", "pairing"):
        del meta["params"]["training"][key]
    save_tensors(path, tensors, meta)
    loaded = DeepLatentDefence.load(path, classifier=_tiny_model())
    assert loaded.training.pairing == "legacy" and loaded.training.depth == 1
    x = _blobs(30, 4).images
    assert torch.equal(loaded.predict(x).nonconformity, detector.predict(x).nonconformity)


def test_normalised_combine_trades_the_two_terms_as_alpha2_grows(trained, detector) -> None:
    model, train, eds = trained
    x, y = train.images[:24], train.labels[:24]
    start = (x + 0.2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    encoders = nn.ModuleDict({t: ed.encoder for t, ed in eds.items()})
    targets = (y + 1) % 3

    def agreement(alpha2: float, combine: str) -> float:
        """Fraction of pixels whose step follows the pure-CE step (alpha2 = 0)."""
        steps = []
        for a2 in (0.0, alpha2):
            att = CentroidAttack(eps=1.0, alpha1=1.0, alpha2=a2, steps=1, step_size=0.01, combine=combine)
            stepped, _ = att._step(model, encoders, detector.centroids(), start, x, y, targets)
            steps.append(torch.sign(stepped - start))
        return float((steps[0] == steps[1]).float().mean())

    curve = [agreement(a, "normalised") for a in (0.25, 1.0, 4.0, 1e4)]
    assert curve == sorted(curve, reverse=True) and curve[0] > curve[-1] + 0.1, curve
    assert agreement(1.0, "normalised") > agreement(1e4, "normalised")
    with pytest.raises(ValueError, match="combine"):
        CentroidAttack(combine="mean")


def test_ensemble_is_log_mean_softmax(trained) -> None:
    model, train, eds = trained
    x = train.images[:5]
    with torch.no_grad():
        probs = [model(x).softmax(1)] + [InsertedModel(model, t, e.encoder, e.decoder)(x).softmax(1)
                                         for t, e in eds.items()]
        expected = torch.stack(probs).mean(0).log()
        assert torch.allclose(EnsembleModel(model, eds)(x), expected, atol=1e-5)


def test_taps_before_pooling_train_detect_attack_and_round_trip(tmp_path: Path) -> None:
    train = _blobs(120, 0)
    model = trained_tiny_model(train)
    taps = ("layer1.1", "layer1", "layer2")              # layer 1's ReLU (4x8x8) before its max-pool, and after it
    cfg = EncoderTrainConfig(epochs=2, batch_size=60, lr=0.01, eps=0.1, steps=1, step_size=0.05, width=4)
    eds = {tap: train_encoder(model, tap, train, latent_dim=3, config=cfg) for tap in taps}
    assert eds["layer1.1"].shape == (4, 8, 8)
    det = DeepLatentDefence(model, taps, k=5, latent_dim=3, encoders=eds, batch_size=50).fit(train)
    det.calibrate(_blobs(90, 1), target_fpr=0.1)
    x, y = _blobs(30, 2).images, _blobs(30, 2).labels
    out = det.predict(x)
    assert set(out.per_layer) == set(taps)
    torch.testing.assert_close(out.predicted, model(x).argmax(1))
    det.save(tmp_path / "d.safetensors")
    loaded = DeepLatentDefence.load(tmp_path / "d.safetensors", classifier=model)
    assert torch.equal(loaded.predict(x).nonconformity, out.nonconformity)
    save_encoders(str(tmp_path / "e.safetensors"), eds)
    reread = load_encoders(str(tmp_path / "e.safetensors"))
    assert all(torch.equal(reread[t].state_dict()[k], v) for t in taps for k, v in eds[t].state_dict().items())
    result = adaptive_attack(model, eds, det.centroids(), x, y, eps=0.1, step_size=0.05, steps=2,
                             centroid=CentroidAttack(eps=0.1, alpha2=1.0, steps=2, step_size=0.05))
    assert (result.images - x).abs().max() <= 0.1 + 1e-6


def test_a_users_hooked_model_with_dotted_submodule_taps_is_guarded() -> None:
    train = _blobs(120, 0)
    hooked = HookedModel(trained_tiny_model(train), ["stages.layer1.1", "stages.layer2"], (1, 8, 8), 3)
    cfg = EncoderTrainConfig(epochs=1, batch_size=60, eps=0.1, steps=1, step_size=0.05, width=4)
    eds = {tap: train_encoder(hooked, tap, train, latent_dim=3, config=cfg) for tap in hooked.tap_names}
    det = DeepLatentDefence(hooked, hooked.tap_names, k=5, latent_dim=3, encoders=eds).fit(train)
    det.calibrate(_blobs(60, 1), target_fpr=0.1)
    out = det.predict(_blobs(20, 2).images)
    assert set(out.per_layer) == {"stages.layer1.1", "stages.layer2"} and len(out.predicted) == 20
