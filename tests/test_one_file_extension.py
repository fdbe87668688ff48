"""Issue 39's promise, checked end to end: a detector and an attack written in one file (`example_plugin.py`)
reach every caller with no edit anywhere else: the registries, `evaluate-detector` (the new attack runs on every
detector it applies to, the new detector is attacked by everything that applies), the served model, and the
leaderboard. It runs in a fresh interpreter, so the example's registrations stay out of the other tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER = ROOT / "docs" / "results" / "dld-mnist-table1" / "classifier"

SCRIPT = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import example_plugin                                                   # the user's one file
from fastapi.testclient import TestClient
from typer.testing import CliRunner
from latentdefence.attacks import list_attacks
from latentdefence.cli import app
from latentdefence.data import load_dataset
from latentdefence.detectors import create_detector, list_detectors
from latentdefence.evaluation.leaderboard import collect, library_detectors, render
from latentdefence.data import calibration_split
from latentdefence.serving import GuardedClassifier
from latentdefence.serving.app import ServeConfig, create_app
from latentdefence.training import load_checkpoint

tmp, out = Path(sys.argv[2]), {}
out["registered"] = ["max-softmax-example" in list_detectors(), "sign-noise-example" in list_attacks(on="detector")]
cal, _ = calibration_split(load_dataset("mnist").test, 750, 0)
detector = create_detector("max-softmax-example", load_checkpoint(sys.argv[3])[0]).fit(None).calibrate(cal)
detector.save(tmp / "mine.safetensors")
evaluation = tmp / "results" / "mine-mnist-adaptive"
done = CliRunner().invoke(app, ["evaluate-detector", str(tmp / "mine.safetensors"), "--version", "quick", "--n", "6",
                                "--out", str(evaluation), "--stages", str(tmp / "stages")])
out["cli"] = [done.exit_code, done.output[-500:]]
results = json.loads((evaluation / "results.json").read_text())
mine = results["detectors"]["max-softmax-example"]
out["attacks"], out["skipped"] = sorted(mine["attacks"]), mine.get("skipped", {})
guard = GuardedClassifier.load(tmp / "mine.safetensors")
with TestClient(create_app(guard, ServeConfig(audit_db=tmp / "audit.sqlite"))) as client:
    out["served"] = client.get("/v1/model").json()["kind"]
    out["predicted"] = len(client.post("/v1/predict", json={"images": cal.images[:3].tolist()}).json()["predictions"])
(tmp / "results" / "catalog.toml").write_text('[[folder]]\npath = "mine-mnist-adaptive"\nquestion = "release"\n'
                                              'about = "Mine."\ncommand = "latentdefence evaluate-detector"\n'
                                              'provenance = "Here."\n')
page = render(collect(tmp / "results", tmp / "leaderboard.md"), library_detectors())
out["leaderboard"] = [line for line in page.splitlines() if "max-softmax-example" in line]
print(json.dumps(out))
"""


@pytest.mark.skipif(not CLASSIFIER.with_suffix(".safetensors").is_file(), reason="the committed MNIST classifier "
                    "(docs/results/dld-mnist-table1/classifier) is not in this checkout")
def test_a_detector_and_an_attack_in_one_file_reach_every_caller(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(Path(__file__).parent), str(tmp_path), str(CLASSIFIER)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["registered"] == [True, True]
    assert out["cli"][0] == 0, out["cli"][1]
    assert "sign-noise-example" in out["attacks"] and {"selective", "orthogonal", "square"} <= set(out["attacks"])
    assert "guide_points" in out["skipped"] and "adaptive_paper" not in out["attacks"]   # not k-NN, not DLD
    assert out["served"] == "max-softmax-example" and out["predicted"] == 3
    assert out["leaderboard"] and out["leaderboard"][0].startswith("| 1 | max-softmax-example |")
