"""Natural images (issue 36): the CIFAR augmentation, the CIFAR-10 DLD profiles, and their smoke runs on the shared
JPEG copy where this machine has it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentdefence.experiments import experiment_config, run_experiment
from latentdefence.experiments.dld import CLASSIFIER_LATER_FIELDS, dld_config
from latentdefence.models import create_model
from latentdefence.training import TrainConfig
from latentdefence.training.augment import crop_flip

from shared_data import requires_cifar10


def test_crop_flip_keeps_every_image_a_shifted_possibly_mirrored_copy_of_itself() -> None:
    images = torch.rand(64, 3, 8, 8)
    out = crop_flip(images, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(len(images)):
        candidates = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(2)) for c in candidates)
    flipped = sum(not torch.equal(out[i], images[i]) for i in range(len(images)))
    assert flipped > 32        # most images moved (1 in 50 stays put by chance)
    again = crop_flip(images, torch.Generator().manual_seed(0), pad=2)
    assert torch.equal(out, again)


def test_crop_flip_mirrors_about_half_the_images() -> None:
    images = torch.arange(4.0).view(1, 1, 1, 4).repeat(400, 1, 1, 1)
    out = crop_flip(images, torch.Generator().manual_seed(1), pad=0)
    mirrored = int((out[:, 0, 0, 0] == 3).sum())
    assert 150 < mirrored < 250 and torch.equal(out[out[:, 0, 0, 0] == 0], images[: 400 - mirrored])


def test_augment_is_a_checked_choice_and_stays_out_of_old_cache_keys() -> None:
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(augment="mixup")  # type: ignore[arg-type]
    assert "augment" not in TrainConfig().key_settings()
    assert TrainConfig(augment="crop_flip").key_settings()["augment"] == "crop_flip"
    mnist = dld_config("cpu").classifier.key_settings()
    assert not set(CLASSIFIER_LATER_FIELDS) & set(mnist)   # MNIST stages keep the keys they were built under


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_cifar10_profiles_follow_the_papers_svhn_recipe(profile: str) -> None:
    config = experiment_config("dld-cifar10-table1", profile)
    assert config.dataset == "cifar10" and config.taps == ("stem", "layer1") and config.latent_dim == 100
    assert config.k == 10 and config.target_fpr == 0.10
    assert config.n_calibration == (100 if profile == "smoke" else 750)
    assert config.attacks.eps == pytest.approx(8 / 255) and config.encoder.eps == pytest.approx(8 / 255)
    assert config.classifier.arch == "preact_resnet18" and config.classifier.augment == "crop_flip"
    model = create_model(config.classifier.arch, **config.classifier.model_kwargs())
    assert set(config.taps) <= set(model.tap_names)
    adaptive = experiment_config("dld-cifar10-adaptive", profile)
    assert adaptive.dld.dataset == "cifar10" and adaptive.dknn_taps == config.taps
    assert adaptive.attacks.eps == pytest.approx(8 / 255)


def test_paper_profile_is_wong_et_al_preact_resnet18() -> None:
    c = experiment_config("dld-cifar10-table1", "paper").classifier
    assert (c.width, c.epochs, c.adversarial, c.optimizer, c.lr, c.schedule) == (None, 15, "fgsm_rs", "sgd", 0.2,
                                                                               "onecycle")
    assert sum(p.numel() for p in create_model("preact_resnet18").parameters()) == pytest.approx(11.17e6, rel=0.01)


@requires_cifar10
@pytest.mark.slow
def test_dld_cifar10_smoke_run_labels_the_jpeg_copy_and_the_svhn_column(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTDEFENCE_RUNS", str(tmp_path / "runs"))
    results = run_experiment("dld-cifar10-table1", "smoke", tmp_path / "out")
    assert results["data"]["lossy"] is True and len(results["data"]["sha256"]) == 2
    assert results["dataset_sizes"]["calibration"] == 100 and set(results["table1"]) == {"fgsm", "pgd", "cw",
                                                                                          "adaptive"}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "CIFAR10 (JPEG copy)" in report and "SVHN column (a different dataset" in report
    assert (tmp_path / "out" / "detector.safetensors").is_file()
