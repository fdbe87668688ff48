"""Any registered detector can be served (issue 39, item 3): its saved artifact loads through the registry into
`GuardedClassifier` and the service, which reports its kind, answers, audits what it flags, and explains with
neighbours where the detector keeps them."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from guard_artifact import TAPS, artifact, blobs  # noqa: F401 (shared fixture)

from latentdefence.detectors import create_detector, detector_entry, list_detectors
from latentdefence.detectors.registry import load_artifact
from latentdefence.serving import GuardedClassifier
from latentdefence.serving.app import ServeConfig, create_app


@pytest.fixture(scope="module", params=list_detectors())
def saved(request: pytest.FixtureRequest, artifact: Path, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
          ) -> tuple[str, Path]:
    """(registry name, artifact) of each registered detector, fitted on the served LeNet's training blobs."""
    name = request.param
    classifier = GuardedClassifier.load(artifact).classifier
    settings = dict(detector_entry(name).examples[0])
    if "taps" in inspect.signature(detector_entry(name).factory).parameters:
        settings["taps"] = TAPS
    torch.manual_seed(0)
    detector = create_detector(name, classifier, **settings).fit(blobs(600, 0)).calibrate(blobs(150, 1), 0.1)
    path = tmp_path_factory.mktemp(name) / f"{name}.safetensors"
    detector.save(path)
    return name, path


def test_every_registered_detectors_artifact_loads_by_its_own_kind(saved: tuple[str, Path]) -> None:
    name, path = saved
    kind, detector = load_artifact(path)
    assert kind == name and hasattr(detector, "threshold_")


def test_the_service_guards_with_any_registered_detector(saved: tuple[str, Path], tmp_path: Path) -> None:
    name, path = saved
    guard = GuardedClassifier.load(path)
    x = torch.cat([blobs(8, 3).images, torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))])
    expected = guard.predict(x)
    with TestClient(create_app(guard, ServeConfig(audit_db=tmp_path / "audit.sqlite"))) as client:
        card = client.get("/v1/model").json()
        assert card["kind"] == name and card["taps"] and (card["k"] is None) == (not guard.explains)
        rows = client.post("/v1/predict", params={"explain": "true"}, json={"images": x.tolist()}).json()["predictions"]
        assert [r["label"] for r in rows] == expected.label.tolist()
        assert [r["is_adversarial"] for r in rows] == expected.is_adversarial.tolist()
        audited = {r["id"] for r in client.get("/v1/audit", params={"limit": 1000}).json()}
        assert audited == {r["audit_id"] for r in rows if r["is_adversarial"]}
        assert all(bool(r["neighbours"]) == guard.explains for r in rows)
        infer = client.post("/v2/models/guard/infer", json={"inputs": [{"name": "images", "shape": list(x.shape),
                                                                         "datatype": "FP32",
                                                                         "data": x.flatten().tolist()}]})
        assert infer.status_code == 200, infer.text


def test_the_knn_backend_option_applies_to_dld_and_is_named_elsewhere(saved: tuple[str, Path]) -> None:
    name, path = saved
    if name == "dld":
        assert GuardedClassifier.load(path, knn_backend="sklearn").info()["knn_backend"] == "sklearn"
        return
    with pytest.raises(ValueError, match="knn_backend applies to DLD artifacts only"):
        GuardedClassifier.load(path, knn_backend="sklearn")


def test_a_file_no_registered_detector_wrote_is_refused_by_name(tmp_path: Path) -> None:
    from latentdefence._io import save_tensors

    path = tmp_path / "other.safetensors"
    save_tensors(path, {"w": torch.zeros(2)}, {"format": "someone-else/3"})
    with pytest.raises(ValueError, match="not the artifact of a registered detector .*someone-else/3"):
        GuardedClassifier.load(path)
