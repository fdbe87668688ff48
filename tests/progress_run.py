"""Run by tests/test_progress.py in a terminal (a pty) and through a pipe: the real CLI trains a classifier for one
epoch, then a user's detector is evaluated; what a person sees is checked from outside."""

from __future__ import annotations

import sys

import torch
from test_attacks_fixtures import synthetic, tiny_model
from test_detector_eval import TINY, SoftmaxDetector

from latentdefence.cli import app
from latentdefence.evaluation import ThreatModel, evaluate_detectors

torch.set_num_threads(1)
app(["train", "--limit", "300", "--val-size", "100", "--epochs", "1", "--batch-size", "20", "--adversarial", "none",
     "--out", sys.argv[1]], standalone_mode=False)
x, y = synthetic(24, seed=11)
cal, _ = synthetic(64, seed=12)
evaluate_detectors({"softmax": SoftmaxDetector(tiny_model()).calibrate(cal)}, x, y, ThreatModel("linf", 0.1),
                   "tiny", budget=TINY, calibration=cal, sanity=())
