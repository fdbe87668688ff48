"""Issue 38 item 6: a verdict's neighbours as training images. A detector cites the training rows its indexes hold,
the artifact carries them (checked at load), older artifacts get them back by matching, and the review console
shows each layer's neighbours from the cited training set."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from guard_artifact import blobs, build_artifact
from latentdefence.cli import app as cli_app
from latentdefence.data import load_dataset
from latentdefence.dld import DeepLatentDefence
from latentdefence.serving import GuardedClassifier
from latentdefence.serving.app import ServeConfig, create_app
from latentdefence.serving.auth import AccessConfig

ADMIN = {"authorization": "Bearer admin"}


def _write_folder(root: Path) -> None:
    """The serving fixture's blobs as a class-folder dataset of 8-bit greyscale PNGs."""
    for split, data in (("train", blobs(240, 0)), ("test", blobs(30, 1))):
        for i, (image, label) in enumerate(zip(data.images, data.labels)):
            folder = root / split / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:04d}.png")


@pytest.fixture(scope="module")
def cited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a DLD artifact fitted on a class-folder dataset, that dataset's folder)."""
    root = tmp_path_factory.mktemp("evidence")
    _write_folder(root / "data")
    path = root / "guard.safetensors"
    build_artifact(path, load_dataset("folder", root / "data", mode="L").train)
    return path, root / "data"


def test_fit_cites_the_training_rows_each_index_holds_and_the_artifact_keeps_them(cited: tuple[Path, Path]) -> None:
    path, data = cited
    train = load_dataset("folder", data, mode="L").train
    det = DeepLatentDefence.load(path)
    assert det.evidence_source_ == {"dataset": "folder", "split": "train"}
    for tap, index in det.indexes_.items():
        rows = det.index_rows_[tap]
        assert len(rows) == len(index) == len(train) - det.pruned_[tap] and bool((rows.diff() > 0).all())
        assert torch.equal(train.labels[rows], index.labels)              # each point is the image it cites
    head = train.head(100)                                                 # a head keeps the split's rows
    assert torch.equal(head.subset(torch.tensor([5, 7])).source_rows(), torch.tensor([5, 7]))


def test_an_artifact_written_before_citations_gets_them_back_by_matching_or_is_refused(
        cited: tuple[Path, Path], tmp_path: Path) -> None:
    path, data = cited
    det = DeepLatentDefence.load(path)
    expected = {tap: rows.clone() for tap, rows in det.index_rows_.items()}
    del det.index_rows_, det.evidence_source_
    old = tmp_path / "old.safetensors"
    det.save(old)
    assert not hasattr(DeepLatentDefence.load(old), "index_rows_")        # loads, cites nothing
    out = tmp_path / "recovered.safetensors"
    result = CliRunner().invoke(cli_app, ["dld", "cite-training", str(old), "--out", str(out), "--dataset", "folder",
                                          "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    recovered = DeepLatentDefence.load(out)
    assert all(torch.equal(recovered.index_rows_[tap], expected[tap]) for tap in expected)
    with pytest.raises(ValueError, match="was not built from"):
        DeepLatentDefence.load(old).recover_citations(blobs(240, 9))       # another training set
    refused = CliRunner().invoke(cli_app, ["dld", "cite-training", str(old), "--out", str(old)])
    assert refused.exit_code == 2 and "input of this command" in refused.output


def test_the_console_shows_each_layers_neighbours_from_the_cited_training_set(cited: tuple[Path, Path],
                                                                               tmp_path: Path) -> None:
    path, data = cited
    guard = GuardedClassifier.load(path)
    citations = guard.citations
    assert citations is not None
    config = ServeConfig(audit_db=tmp_path / "audit.sqlite", show_neighbours=True, data_dir=str(data),
                         access=AccessConfig(api_key="admin", admin_key="admin"))
    train = load_dataset("folder", data, mode="L").train
    odd = 0.5 * blobs(40, 4).images + 0.5 * blobs(40, 5).images.roll(1, 0)
    with TestClient(create_app(guard, config)) as client:
        predictions = client.post("/v1/predict?explain=true", json={"images": odd.tolist()},
                                  headers=ADMIN).json()["predictions"]
        flagged = next(p for p in predictions if p["is_adversarial"])
        for tap, evidence in flagged["neighbours"].items():
            assert evidence["rows"] == citations[tap][evidence["indices"]].tolist()
        card = client.get("/v1/model", headers=ADMIN).json()
        page = client.get("/review", headers=ADMIN).text
    assert card["cited_training_set"] == {"dataset": "folder", "split": "train"}
    record = page.split(f'id="record-{flagged["audit_id"]}"')[1].split("</tr>")[0]
    strips = record.split('class="neighbours"')[1:]
    assert len(strips) == len(citations)                             # one strip per layer
    for tap, strip in zip(flagged["neighbours"], strips):
        rows = flagged["neighbours"][tap]["rows"]
        assert f'rows {" ".join(map(str, rows))}"' in strip
        encoded = strip.split("base64,")[1].split('"')[0]
        shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))), dtype=np.float32) / 255
        expected = torch.cat(list(train.images[rows]), dim=2)[0].numpy()  # the k neighbours side by side
        np.testing.assert_allclose(shown, expected, atol=1 / 510)


def test_showing_neighbours_of_an_artifact_that_cites_nothing_fails_at_start_saying_why(tmp_path: Path) -> None:
    det = build_artifact(tmp_path / "guard.safetensors")
    del det.index_rows_, det.evidence_source_
    det.save(tmp_path / "old.safetensors")
    with pytest.raises(ValueError, match="cites no training images.*cite-training"):
        create_app(GuardedClassifier.load(tmp_path / "old.safetensors"),
                   ServeConfig(audit_db=tmp_path / "audit.sqlite", show_neighbours=True))

