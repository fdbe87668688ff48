"""A classifier guarded by a calibrated detector (Deep Latent Defence, or any registered one), loaded from one
artifact.

```python
from latentdefence.serving import GuardedClassifier
guard = GuardedClassifier.load("guard.safetensors")      # classifier + encoders + indexes + threshold
out = guard.predict(images)      # .label .probabilities .is_adversarial .credibility .nonconformity .per_layer
```
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import git_revision, sha256_file
from ..detectors.base import ConformalDetector, Detection
from ..detectors.registry import load_artifact
from ..models import TappedModel
from ..training import save_checkpoint
from ..validation import InputValidationError, check_images


class InputError(InputValidationError):
    """An input the guarded model cannot answer; `status` is the HTTP code a server gives it."""

    def __init__(self, message: str, status: int = 422, argument: str = "request") -> None:
        ValueError.__init__(self, message)
        self.argument = argument
        self.status = status


@dataclass(frozen=True)
class GuardedPrediction:
    """The classifier's answer and the detector's verdict for a batch."""

    label: torch.Tensor                    # (N,) int64: F's class
    probabilities: torch.Tensor            # (N, K) softmax of F's logits
    is_adversarial: torch.Tensor           # (N,) bool: summed non-conformity > threshold
    credibility: torch.Tensor              # (N,) conformal p-value in (0, 1]; low is suspicious
    nonconformity: torch.Tensor            # (N,) summed over encoders (Eq. 8)
    per_layer: dict[str, torch.Tensor]     # tap -> (N,) non-conformity of that layer

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per input (each tensor converted once, not per element)."""
        per_layer = {tap: v.double().tolist() for tap, v in self.per_layer.items()}
        columns = zip(self.label.tolist(), self.probabilities.tolist(), self.is_adversarial.tolist(),
                      self.credibility.double().tolist(), self.nonconformity.double().tolist())
        return [{"label": label, "probabilities": probs, "is_adversarial": flag, "credibility": cred,
                 "nonconformity": score, "per_layer": {tap: v[i] for tap, v in per_layer.items()}}
                for i, (label, probs, flag, cred, score) in enumerate(columns)]


class GuardedClassifier:
    """F plus its calibrated detector: every prediction comes with the detector's verdict.

    Args:
        detector: a fitted and calibrated detector (`DeepLatentDefence`, or any registered `ConformalDetector`).
        source: where it was loaded from (reported by `info`).
        kind: its registry name (reported by `info`; found from the class when not given).
    """

    def __init__(self, detector: ConformalDetector, source: str | None = None, kind: str | None = None) -> None:
        if not hasattr(detector, "threshold_"):
            raise ValueError("the detector is not calibrated: call calibrate() before guarding a model with it")
        self.detector = detector
        self.source = source
        self.kind = kind or type(detector).__name__

    @classmethod
    def load(cls, path: str | Path, knn_backend: str | None = None, classifier: TappedModel | None = None,
             public_key: str | Path | None = None) -> "GuardedClassifier":
        """Load a calibrated detector artifact of any registered detector (`DeepLatentDefence.save`,
        `DeepKNN.save`, ...); `knn_backend` overrides a DLD artifact's saved k-NN backend.

        With `public_key`, only an artifact signed by that key (`signing.sign_artifact`) loads, and only if the
        file is still the signed one after loading (so it cannot be swapped between the check and the read).
        """
        options = {} if knn_backend is None else {"knn_backend": knn_backend}
        if public_key is None:
            return cls(*_load(path, classifier, options))
        from ..signing import SignatureError, verify_artifact

        signed = verify_artifact(path, public_key)
        guard = cls(*_load(path, classifier, options))
        if sha256_file(path) != signed:
            raise SignatureError(str(path), "changed while it was being loaded; refusing it")
        return guard

    @property
    def explains(self) -> bool:
        """Whether the detector keeps training neighbours to show as evidence (the k-NN detectors)."""
        return hasattr(self.detector, "predict_explained")

    @property
    def citations(self) -> dict[str, torch.Tensor] | None:
        """Per tap, the training-set row of each indexed point, when the detector cites its training images."""
        return getattr(self.detector, "index_rows_", None)

    @property
    def cited_training_set(self) -> dict[str, str] | None:
        """{"dataset", "split"} the citations count rows of (`data.load_dataset` names), else None."""
        return getattr(self.detector, "evidence_source_", None)

    @property
    def classifier(self) -> TappedModel:
        return self.detector.classifier

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.classifier.input_shape
        return c, h, w

    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        """`images` as float32 (N, C, H, W) of F's input shape, finite, in [0, 1] on CPU; else an InputError (422)
        naming why (`validation.check_images`, the check every entry point shares)."""
        try:
            images = check_images(images, shape=self.input_shape)
        except InputValidationError as err:
            raise InputError(str(err)) from err
        return images.detach().to("cpu", torch.float32)

    def predict(self, images: torch.Tensor) -> GuardedPrediction:
        """Class, probabilities and the detector's verdict for images (N, C, H, W) in [0, 1]."""
        images = self.check_images(images)
        return self._prediction(self.detector.predict(images), images)

    def predict_with_evidence(self, images: torch.Tensor
                              ) -> tuple[GuardedPrediction, list[dict[str, dict[str, list[int]]]]]:
        """`predict`, and `explain` for the flagged images only (in order), from one forward pass and one k-NN
        search: what the server audits."""
        images = self.check_images(images)
        if not self.explains:                  # a detector without neighbours: verdicts only
            det = self.detector.predict(images)
            return self._prediction(det, images), [{} for _ in det.is_adversarial.nonzero()]
        det, found = self.detector.predict_explained(images)   # type: ignore[attr-defined]
        flagged = det.is_adversarial.nonzero().flatten()
        return self._prediction(det, images), _evidence({tap: (idx[flagged], labels[flagged])
                                                         for tap, (idx, labels) in found.items()}, self.citations)

    def explain(self, images: torch.Tensor) -> list[dict[str, dict[str, list[int]]]]:
        """Per image, per layer, the k nearest indexed training points: {"indices": [...], "labels": [...]} (empty
        for a detector that keeps no neighbours)."""
        images = self.check_images(images)
        if not self.explains:
            return [{} for _ in range(len(images))]
        return _evidence(self.detector.neighbours(images), self.citations)   # type: ignore[attr-defined]

    def _prediction(self, det: Detection, images: torch.Tensor) -> GuardedPrediction:
        """The answer of one batch; F's probabilities from its own forward pass where the detector kept none."""
        probabilities = det.probabilities
        if probabilities is None:              # detectors scoring features, not logits (Mahalanobis, LID)
            with torch.no_grad():
                probabilities = self.classifier(images).softmax(1).cpu()
        return GuardedPrediction(det.predicted, probabilities, det.is_adversarial, det.credibility,
                                 det.nonconformity, det.per_layer)

    def __call__(self, images: torch.Tensor) -> GuardedPrediction:
        return self.predict(images)

    def info(self) -> dict[str, Any]:
        """What a user of the service may know about the guarded model (GET /v1/model)."""
        det = self.detector
        meta = getattr(det, "metadata_", {})
        cal = det.calibration_scores_
        return {
            "artifact": self.source,
            "artifact_sha256": sha256_file(self.source) if self.source and Path(self.source).is_file() else None,
            "architecture": getattr(self.classifier, "arch", None) or type(self.classifier).__name__,
            "input_shape": list(self.input_shape), "num_classes": int(self.classifier.num_classes),
            "dataset": meta.get("dataset"), "threat_model": meta.get("threat_model"),
            "kind": self.kind, "taps": _taps(det), "k": getattr(det, "k", None) if self.explains else None,
            "knn_backend": getattr(det, "knn_backend", None), "cited_training_set": self.cited_training_set,
            "threshold": det.threshold_, "target_fpr": det.target_fpr_,
            "calibration_fpr": float((cal > det.threshold_).double().mean()), "calibration_size": int(len(cal)),
            "git_revision": meta.get("git_revision"), "metadata": meta, "server_git_revision": git_revision(),
        }

    def export_classifier(self, path: str | Path) -> Path:
        """Write F alone as a plain checkpoint (`training.load_checkpoint` reads it); returns the weights file."""
        if not getattr(self.classifier, "arch", None):
            raise ValueError("the classifier has no registry name; save its state_dict() yourself")
        return save_checkpoint(path, self.classifier, {"exported_from": self.source,
                                                       "detector_threshold": self.detector.threshold_})


def _load(path: str | Path, classifier: TappedModel | None, options: dict[str, Any]
          ) -> tuple[ConformalDetector, str, str]:
    """(detector, source, registry name) of an artifact; a k-NN option for another detector is named."""
    try:
        kind, detector = load_artifact(path, classifier=classifier, **options)
    except TypeError as err:
        if options:
            raise ValueError(f"{path}: {', '.join(options)} applies to DLD artifacts only ({err})") from err
        raise
    return detector, str(path), kind


def _taps(detector: ConformalDetector) -> list[str]:
    """The layers the detector reads: DLD's encoders, else the taps it was fitted on."""
    for name in ("encoders_", "taps_", "taps"):
        taps = getattr(detector, name, None)
        if taps:
            return [str(tap) for tap in (taps.keys() if hasattr(taps, "keys") else taps)]
    return []


def _evidence(found: dict[str, tuple[torch.Tensor, torch.Tensor]], rows: Mapping[str, torch.Tensor] | None
              ) -> list[dict[str, dict[str, list[int]]]]:
    """Per-tap (indices (N, k), labels (N, k)) as one {"indices", "labels"} dict per image and tap, with "rows" (the
    neighbours' rows in the cited training set) when the detector cites its training images."""
    lists = {tap: (idx.tolist(), labels.tolist(), rows[tap][idx].tolist() if rows else None)
             for tap, (idx, labels) in found.items()}
    count = len(next(iter(lists.values()))[0]) if lists else 0
    return [{tap: {"indices": idx[i], "labels": labels[i], **({"rows": cited[i]} if cited is not None else {})}
             for tap, (idx, labels, cited) in lists.items()} for i in range(count)]
