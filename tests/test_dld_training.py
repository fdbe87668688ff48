"""Encoder training: precomputed adversarial sets against F, a learning-rate schedule, the stopping rule on
held-out images, cache keys that stay put, and F's own train/eval state left alone by the attacks inside."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentdefence.attacks import PGD
from latentdefence.attacks.base import frozen_eval
from latentdefence.dld import EncoderTrainConfig, train_encoder
from latentdefence.dld.encoders import EncoderDecoder, InsertedModel, activation_shape
from latentdefence.dld.training import EncoderValidation, TrainingLog
from latentdefence.models import StagedModel
from toy_blobs import blobs, trained_tiny_model


def _batchnorm_model() -> StagedModel:
    """A tiny classifier with batch-norm and dropout: its eval state is observable (running stats, masks)."""
    torch.manual_seed(0)
    return StagedModel([
        ("layer1", nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))),
        ("logits", nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 3))),
    ], input_shape=(1, 8, 8), num_classes=3).eval()


def test_an_attack_on_a_wrapper_restores_each_submodule_mode_not_the_wrappers() -> None:
    f = _batchnorm_model()
    ed = EncoderDecoder(activation_shape(f, "layer1"), 3, 4)
    inserted = InsertedModel(f, "layer1", ed.encoder, ed.decoder).train()
    f.eval()
    data = blobs(12, 0)
    PGD(eps=0.1, steps=2)(inserted, data.images, data.labels)
    assert inserted.training and not any(m.training for m in f.modules())
    with frozen_eval(inserted):
        assert not any(m.training for m in inserted.modules())
    assert inserted.training and ed.training and not f.training


def test_encoder_training_never_updates_a_frozen_classifiers_batchnorm_statistics() -> None:
    f = _batchnorm_model()
    before = {k: v.clone() for k, v in f.state_dict().items()}
    train_encoder(f, "layer1", blobs(48, 1), 3, EncoderTrainConfig(epochs=2, batch_size=16, steps=2, eps=0.1, width=4))
    after = f.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "F's running statistics moved during training"
    assert not f.training


def test_precomputed_sets_train_without_online_attacks_and_validation_keeps_the_best_state() -> None:
    train = blobs(90, 2)
    f = trained_tiny_model(train)
    pre = PGD(eps=0.2, steps=3)(f, train.images[:60], train.labels[:60]).images
    val = EncoderValidation(train.subset(slice(60, 90)), (PGD(eps=0.2, steps=3)(f, train.images[60:], train.labels[60:]).images,))
    config = EncoderTrainConfig(epochs=6, batch_size=10, eps=0.2, max_train=60, width=4, precomputed=("pgd",),
                                online_fraction=0.0, lr_schedule="cosine", validation=30, eval_every=6, patience=100)
    log = TrainingLog()
    ed = train_encoder(f, "layer1", train, 3, config, precomputed=[pre], validation=val, log=log)
    assert log.steps == log.planned_steps == 36 and len(log.history) == 6
    best = max(h["accuracy"] for h in log.history)
    assert log.best_accuracy == best and log.history[[h["accuracy"] for h in log.history].index(best)]["step"] == log.best_step
    from latentdefence.dld.training import validation_accuracy
    kept = validation_accuracy(InsertedModel(f, "layer1", ed.encoder, ed.decoder).eval(), val)
    assert kept == pytest.approx(best)


def test_patience_stops_training_early() -> None:
    train = blobs(60, 3)
    f = trained_tiny_model(train)
    val = EncoderValidation(train.subset(slice(40, 60)))
    config = EncoderTrainConfig(epochs=20, batch_size=10, adversarial=False, max_train=40, width=4, lr=0.0,
                                validation=20, eval_every=4, patience=2)
    log = TrainingLog()
    train_encoder(f, "layer1", train, 3, config, validation=val, log=log)
    assert log.steps == 12 and log.best_step == 4  # lr 0: nothing improves after the first check


@pytest.mark.parametrize("bad, match", [
    ({"lr_schedule": "step"}, "lr_schedule"), ({"precomputed": ("deepfool",)}, "precomputed"),
    ({"online_fraction": 0.5}, "needs precomputed"), ({"precomputed": ("pgd",), "online_fraction": 1.5}, r"\[0, 1\]"),
    ({"patience": 3}, "validation")])
def test_inconsistent_training_settings_are_rejected_at_construction(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EncoderTrainConfig(**bad)


def test_precomputed_sets_must_match_the_config_and_the_images() -> None:
    train = blobs(30, 4)
    f = trained_tiny_model(train)
    with pytest.raises(ValueError, match="precomputed sets"):
        train_encoder(f, "layer1", train, 3, EncoderTrainConfig(epochs=1, precomputed=("pgd",), online_fraction=0.0))
    with pytest.raises(ValueError, match="shape"):
        train_encoder(f, "layer1", train, 3, EncoderTrainConfig(epochs=1, precomputed=("pgd",), online_fraction=0.0),
                      precomputed=[train.images[:5]])


def test_later_fields_at_their_defaults_leave_the_cache_settings_of_earlier_runs_unchanged() -> None:
    old = EncoderTrainConfig(epochs=3, steps=3, max_train=20_000)
    assert "precomputed" not in old.cache_settings() and "lr_schedule" not in old.cache_settings()
    assert set(old.cache_settings()) == {"epochs", "batch_size", "lr", "margin", "contrastive_weight", "adversarial",
                                         "eps", "step_size", "steps", "eps_ramp", "width", "depth", "pairing",
                                         "max_train", "seed"}
    new = EncoderTrainConfig(precomputed=("pgd",), online_fraction=0.0, lr_schedule="cosine")
    assert new.cache_settings()["precomputed"] == ("pgd",) and new.cache_settings()["lr_schedule"] == "cosine"
