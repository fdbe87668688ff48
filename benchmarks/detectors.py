"""Baseline detectors (Deep k-NN, Mahalanobis, LID) with their defaults on MNIST: cost, memory, a sanity check.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detectors.py [--checkpoint docs/results/dld-mnist-table1/classifier]
     [--n 500] [--batch 256] [--only dknn mahalanobis lid]
Reference measured in the same run, beside each detector: F alone on the same batch (guarded / plain ratio);
times are the fastest of 2 runs after a warm-up (`best_of` of benchmarks/detect.py).

Per detector: fit time, what it holds in memory, guarded-inference time per batch, surrogate forward +
backward time per batch of 100, then on `--n` test images (calibrated at 2% FP on the 750 calibration
images of `data.calibration_split`): clean FP, and for FGSM / PGD-20 at eps 0.3 crafted
against F alone (not detector-aware, so not a robustness figure) the share of misclassified examples
flagged and the ROC AUC of misclassified adversarial vs clean test images; for Mahalanobis and LID also
the logistic regression's in-sample AUC on its own training pairs; and how closely each surrogate follows the
exact score (Spearman) and where its gradient vanishes.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from scipy.stats import spearmanr

os.environ.setdefault("LATENTDEFENCE_PROGRESS", "0")

from detect import best_of  # noqa: E402  (benchmarks/detect.py, beside this file)
from latentdefence.attacks import FGSM, PGD  # noqa: E402
from latentdefence.data import load_dataset  # noqa: E402
from latentdefence.detectors import DeepKNN, LIDDetector, MahalanobisDetector  # noqa: E402
from latentdefence.detectors import ConformalDetector  # noqa: E402
from latentdefence.stats import roc_auc  # noqa: E402
from latentdefence.data import calibration_split  # noqa: E402
from latentdefence.training import load_checkpoint  # noqa: E402

DETECTORS: dict[str, Callable[..., ConformalDetector]] = {
    "dknn": DeepKNN, "mahalanobis": MahalanobisDetector, "lid": LIDDetector}


def held_bytes(det: ConformalDetector) -> int:
    """What the fitted detector keeps beside F: indexes, Gaussians or the LID reference."""
    if isinstance(det, DeepKNN):
        return sum(index.nbytes() for index in det.indexes_.values())
    held = [*getattr(det, "means_", {}).values(), *getattr(det, "precisions_", {}).values(),
            *getattr(det, "reference_", {}).values()]
    return sum(t.numel() * t.element_size() for t in held)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="docs/results/dld-mnist-table1/classifier")
    parser.add_argument("--n", type=int, default=500, help="test images evaluated")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--only", nargs="+", default=list(DETECTORS), choices=list(DETECTORS))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_checkpoint(args.checkpoint)[0].eval()
    splits = load_dataset("mnist")
    cal, test = calibration_split(splits.test)
    test = test.head(args.n)
    adversarial = {"fgsm": FGSM(eps=0.3)(model, test.images, test.labels),
                   "pgd20": PGD(eps=0.3, steps=20, generator=torch.Generator().manual_seed(0))(
                       model, test.images, test.labels)}
    x = test.images[:args.batch]
    print(f"torch threads {torch.get_num_threads()}")
    for name in args.only:
        det = DETECTORS[name](model)
        start = time.perf_counter()
        det.fit(splits.train).calibrate(cal, target_fpr=0.02)
        fit = time.perf_counter() - start
        with torch.no_grad():
            plain = best_of(lambda: model(x), repeats=2)                         # the reference, same moment
        guarded = best_of(lambda: det.nonconformity(x), repeats=2)
        xs, cs = test.images[:100].clone().requires_grad_(True), test.labels[:100]
        surrogate = best_of(lambda: torch.autograd.grad(det.surrogate_score(xs, cs).sum(), xs), repeats=2)
        clean = det.predict(test.images)
        if hasattr(det, "lr_train_auc_"):
            print(f"{name}: logistic regression on {det.lr_examples_} fooled training images (+ clean and noisy twins), "
                  f"in-sample AUC adversarial vs their clean originals {det.lr_train_auc_:.3f}; weights on standardised "
                  + ", ".join(f"{t} {w:+.2f}" for t, w in zip(det.taps_, det.combiner_.coef_.tolist())))
        print(f"{name}: fit+calibrate {fit:.1f} s, holds {held_bytes(det) / 2**20:.1f} MiB, guarded {1e3 * guarded:.0f} ms "
              f"per {args.batch} ({guarded / plain:.1f}x F's {1e3 * plain:.0f} ms), surrogate fwd+bwd {1e3 * surrogate:.0f} ms per 100; "
              f"clean FP {clean.is_adversarial.float().mean():.3f} (threshold {det.threshold_:.3g})")
        probes = torch.cat([test.images[:100], adversarial["pgd20"].images[adversarial["pgd20"].success]]).requires_grad_(True)
        with torch.no_grad():
            classes = model(probes).argmax(1)
        soft = det.surrogate_score(probes, classes)
        flat = torch.autograd.grad(soft.sum(), probes)[0].flatten(1).abs().sum(1) == 0
        rho = spearmanr(soft.detach().numpy(), det.nonconformity(probes.detach())[1].float().numpy()).statistic
        print(f"  surrogate vs exact score on 100 clean + the fooled PGD-20 images, at F's class: Spearman {rho:.3f}; "
              f"zero gradient on {flat[:100].float().mean():.2f} of clean, {flat[100:].float().mean():.2f} of adversarial")
        for attack, result in adversarial.items():
            out = det.predict(result.images)
            wrong = result.success
            print(f"  {attack} eps 0.3 (against F only): {int(wrong.sum())}/{len(wrong)} misclassified, "
                  f"{out.is_adversarial[wrong].float().mean():.3f} of them flagged, "
                  f"AUC {roc_auc(out.nonconformity[wrong].float(), clean.nonconformity.float()):.3f}")


if __name__ == "__main__":
    main()
