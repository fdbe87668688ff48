"""Natural images (issue 36): the CIFAR augmentation, the CIFAR-10 DLD profiles, and their smoke runs on the shared
JPEG copy where this machine has it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentdefence.experiments import experiment_config, run_experiment
from latentdefence.experiments.dld_config import CLASSIFIER_LATER_FIELDS, dld_config
from latentdefence.models import create_model
from latentdefence.training import TrainConfig
from latentdefence.training.augment import crop_flip

from shared_data import requires_cifar10


@pytest.fixture()
def out_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private stage cache (LATENTDEFENCE_RUNS) and the folder a run writes to."""
    monkeypatch.setenv("LATENTDEFENCE_RUNS", str(tmp_path / "runs"))
    return tmp_path / "out"


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
def test_dld_cifar10_smoke_run_labels_the_jpeg_copy_and_the_svhn_column(out_dir: Path) -> None:
    results = run_experiment("dld-cifar10-table1", "smoke", out_dir)
    assert results["data"]["lossy"] is True and len(results["data"]["sha256"]) == 2
    assert results["dataset_sizes"]["calibration"] == 100 and set(results["table1"]) == {"fgsm", "pgd", "cw",
                                                                                          "adaptive"}
    report = (out_dir / "report.md").read_text()
    assert "CIFAR10 (JPEG copy)" in report and "SVHN column (a different dataset" in report
    assert (out_dir / "detector.safetensors").is_file()


def test_an_rgb_32x32_detector_serves_with_its_own_input_shape(tmp_path: Path) -> None:
    """A CIFAR-shaped DLD artifact (PreAct ResNet-18 at 1/8 width, taps stem and layer1): /v1/model and the v2
    metadata give (3, 32, 32); an RGB PNG is classified as in-process; a greyscale one is refused by name."""
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from latentdefence.dld import DeepLatentDefence, EncoderTrainConfig, train_encoder
    from latentdefence.serving import GuardedClassifier
    from latentdefence.serving.app import ServeConfig, create_app
    from toy_blobs import blobs

    torch.manual_seed(0)
    gray = blobs(120, 0, size=32)
    data = type(gray)(gray.images.repeat(1, 3, 1, 1), gray.labels, "blobs-rgb", "train")
    model = create_model("preact_resnet18", num_classes=3, width=0.125).eval()
    cfg = EncoderTrainConfig(epochs=1, batch_size=40, adversarial=False, width=4, depth=2)
    encoders = {tap: train_encoder(model, tap, data, latent_dim=4, config=cfg) for tap in ("stem", "layer1")}
    det = DeepLatentDefence(model, ("stem", "layer1"), k=5, latent_dim=4, encoders=encoders, batch_size=64)
    det.fit(data).calibrate(data, target_fpr=0.1)
    det.save(tmp_path / "rgb.safetensors", metadata={"dataset": "blobs-rgb", "threat_model": {"norm": "linf",
                                                                                             "eps": 8 / 255}})
    guard = GuardedClassifier.load(tmp_path / "rgb.safetensors")
    with TestClient(create_app(guard, ServeConfig(audit_db=tmp_path / "audit.sqlite", model_name="rgb"))) as client:
        assert client.get("/v1/model").json()["input_shape"] == [3, 32, 32]
        inputs = client.get("/v2/models/rgb").json()["inputs"]
        assert {tuple(i["shape"]) for i in inputs} == {(-1, 3, 32, 32)}
        pixels = (data.images[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        buf = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buf, format="PNG")
        served = client.post("/v1/predict", content=buf.getvalue(), headers={"content-type": "image/png"}).json()
        expected = guard.predict(torch.from_numpy(pixels).permute(2, 0, 1).float().unsqueeze(0) / 255)
        assert served["predictions"][0]["label"] == int(expected.label[0])
        buf = io.BytesIO()
        Image.fromarray(pixels[..., 0], "L").save(buf, format="PNG")
        refused = client.post("/v1/predict", content=buf.getvalue(), headers={"content-type": "image/png"})
        assert refused.status_code == 422 and "the model expects 3" in refused.text


@requires_cifar10
@pytest.mark.slow
def test_recipe_screening_smoke_judges_every_row_on_held_out_training_images(out_dir: Path) -> None:
    results = run_experiment("cifar10-recipes", "smoke", out_dir)
    rows = results["rows"]
    assert [r["arch"] for r in rows] == ["dld_svhn", "dld_svhn", "preact_resnet18", "preact_resnet18"]
    for r in rows:
        lo, hi = r["clean_ci"]
        assert r["n_eval"] == 64 and lo <= r["clean_accuracy"] <= hi and r["pgd_accuracy"] <= r["clean_accuracy"]
        assert r["trained"] == (lo > 0.15) and r["train_seconds"] > 0
    report = (out_dir / "report.md").read_text()
    assert "CIFAR-10 (JPEG copy)" in report and (out_dir / "recipes.png").is_file()
    again = run_experiment("cifar10-recipes", "smoke", out_dir.parent / "again")     # judged once, then read back
    assert [r["pgd_accuracy"] for r in again["rows"]] == [r["pgd_accuracy"] for r in rows]
