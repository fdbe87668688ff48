"""The detector contract every detector shares (DLD and the baselines): `Detection`, the `Detector` protocol
attacks rely on, `ConformalDetector` (calibrate / predict / score_samples / decision_function over an abstract
``nonconformity``), the conformal threshold and credibility, and the detector registry.

A new detector subclasses `ConformalDetector`, implements ``nonconformity`` (and ``surrogate_score`` for attacks
that know it), and registers itself with `register_detector`; the contract tests then cover it.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from ..data.base import ImageDataset
from ..models import TappedModel, create_model
from ..stats import wilson_interval
from ..validation import (InputTypeError, InputValidationError, artifact_field, check_finite_tensors, check_images,
                          check_labels, check_number, model_dtype)


def calibrate_threshold(scores: torch.Tensor, target_fpr: float) -> float:
    """Smallest observed score t with fraction(scores > t) <= target_fpr; inputs scoring above t are flagged.

    With integer scores (Eq. 8) ties make the achieved rate at most, not exactly, the target.
    """
    scores = _check_scores(scores, "calibration scores").to(torch.float64)
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    ordered = torch.sort(scores, descending=True).values
    allowed = math.floor(target_fpr * len(ordered) + 1e-9)           # false positives we may make
    return float(ordered[allowed])


def check_attainable_fpr(target_fpr: float, n: int, name: str = "target_fpr") -> None:
    """Refuse a target no calibration set of n clean images can keep: a conformal threshold promises at best
    1 / (n + 1) false positives on new clean inputs (issue 37: 10 images at target 0.001 gave 8% held out)."""
    if n < 1 or target_fpr * (n + 1) < 1 - 1e-9:
        need = "no finite calibration set can promise 0" if target_fpr <= 0 else \
            f"use at least {math.ceil(1 / target_fpr - 1 - 1e-9)} calibration images"
        raise InputValidationError(name, f"{target_fpr:g} cannot be kept with {n} calibration image(s): the "
                                   f"least false-positive rate they can promise is 1/(n+1) = {1 / (n + 1):.4g}; {need} "
                                   f"or a target >= {1 / (n + 1):.4g}")


def credibility(scores: torch.Tensor, calibration_scores: torch.Tensor) -> torch.Tensor:
    """Conformal p-value per input: (1 + #{calibration >= score}) / (n + 1); low means suspicious."""
    scores = _check_scores(scores, "scores").to(torch.float64)
    cal = torch.sort(_check_scores(calibration_scores, "calibration scores").to(torch.float64)).values
    at_least = len(cal) - torch.searchsorted(cal, scores, right=False)  # count of cal >= score
    return (1.0 + at_least) / (len(cal) + 1.0)


def _check_scores(scores: torch.Tensor, name: str) -> torch.Tensor:
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor, got shape {tuple(scores.shape)}")
    if scores.is_floating_point() and not torch.isfinite(scores).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return scores.detach().cpu()


@dataclass(frozen=True)
class Detection:
    """What the detector says about a batch of inputs."""

    predicted: torch.Tensor                  # (N,) F's class
    is_adversarial: torch.Tensor             # (N,) bool: nonconformity > threshold_
    credibility: torch.Tensor                # (N,) conformal p-value; low is suspicious
    nonconformity: torch.Tensor              # (N,) the score thresholded (DLD: Eq. 8 summed over encoders)
    per_layer: dict[str, torch.Tensor]       # tap -> (N,) that layer's score (DLD: beta_N of Eq. 8)
    probabilities: torch.Tensor | None = None  # (N, K) softmax of F's logits, where the detector has them

    def select(self, rows: torch.Tensor) -> "Detection":
        """The rows picked by a mask or index."""
        return Detection(self.predicted[rows], self.is_adversarial[rows], self.credibility[rows],
                         self.nonconformity[rows], {k: v[rows] for k, v in self.per_layer.items()},
                         None if self.probabilities is None else self.probabilities[rows])


class Verdict(Protocol):
    """The least a detector's ``predict`` must return (a `Detection` has more): what attacks and
    `evaluate_detector` read."""

    @property
    def predicted(self) -> torch.Tensor: ...         # (N,) F's class

    @property
    def is_adversarial(self) -> torch.Tensor: ...    # (N,) bool

    @property
    def nonconformity(self) -> torch.Tensor: ...     # (N,) higher = more suspicious


def evaded(verdict: Verdict, labels: torch.Tensor) -> torch.Tensor:
    """(N,) bool, the one success rule of an attack on F + detector: F misclassifies and the detector does not
    flag (robustness is its complement; `attacks.attack_success` is the rule on F alone)."""
    return (verdict.predicted != labels) & ~verdict.is_adversarial.bool()


class Evaluable(Protocol):
    """The least a detector needs to be evaluated (`evaluation.evaluate_detectors`) and attacked: the classifier F it
    guards and a verdict; attacks that need more (a surrogate, latents) check for it and say why they skip."""

    @property
    def classifier(self) -> nn.Module: ...           # read-only, so a detector holding a TappedModel fits

    def predict(self, images: torch.Tensor) -> Verdict: ...


class Detector(Evaluable, Protocol):
    """What gradient attacks need from a detector (every `ConformalDetector` with a ``surrogate_score``; a user's own
    detector too)."""

    def surrogate_score(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor: ...


_Self = TypeVar("_Self", bound="ConformalDetector")


class ConformalDetector(ABC):
    """The contract every detector shares (DLD and the baselines in `latentdefence.detectors`).

    A subclass implements ``fit(train)`` and ``nonconformity(images) -> (F's predictions (N,), score (N,),
    per-layer scores)`` with higher scores more suspicious; this class turns it into a threshold calibrated on clean
    held-out data, conformal credibility, ``predict``, ``score_samples`` and ``decision_function``, and the parts of
    an artifact every detector shares (F's weights and registry name, the calibration).
    """

    classifier: TappedModel

    @abstractmethod
    def fit(self: _Self, train: ImageDataset) -> _Self:
        """Learn what clean training data looks like to this detector (indexes, class statistics, ...)."""

    @abstractmethod
    def nonconformity(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(F's predictions (N,), score (N,), per-layer scores): the subclass's detector score."""

    def calibrate(self: _Self, calibration: ImageDataset, target_fpr: float = 0.02) -> _Self:
        """Threshold with at most `target_fpr` of the clean calibration set flagged (DLD Section IV-B)."""
        check_number("target_fpr", target_fpr, low=0.0, high=1.0, high_open=True)
        if not isinstance(calibration, ImageDataset):
            raise InputTypeError("calibration", f"must be an ImageDataset of clean images, got {type(calibration).__name__}")
        self.check_images(calibration.images)            # bad images are named first, then what n can promise
        check_attainable_fpr(target_fpr, len(calibration))
        _, scores, _ = self.nonconformity(calibration.images)
        self.calibration_scores_ = scores
        self.threshold_ = calibrate_threshold(scores, target_fpr)
        self.target_fpr_ = target_fpr
        top = self.max_score()
        if top is not None and self.threshold_ >= top:   # ties at the top: a detector that can flag nothing
            at_top = float((scores >= top).float().mean())
            warnings.warn(f"{type(self).__name__} can flag nothing: {100 * at_top:.1f}% of the calibration images "
                          f"already score the maximal {top:g} (more than the target {100 * target_fpr:g}%), so the "
                          "threshold sits at the top; its latent spaces do not separate the classes (raise k for "
                          "a finer score, or train the encoders longer)", RuntimeWarning, stacklevel=2)
        return self

    def max_score(self) -> float | None:
        """The largest score this detector can give (a bounded score, such as Eq. 8's), else None."""
        return None

    def calibration_report(self) -> dict[str, Any]:
        """What the calibration promises: the FP rate on its own images with its Wilson 95% interval, and the
        conformal bound on a new exchangeable clean input's flag probability, (floor(target n) + 1) / (n + 1)."""
        self._check_fitted("threshold_")
        n = len(self.calibration_scores_)
        flagged = int((self.calibration_scores_ > self.threshold_).sum())
        top = self.max_score()
        return {"n": n, "target_fpr": self.target_fpr_, "calibration_fpr": flagged / n,
                "can_flag": top is None or self.threshold_ < top,
                "calibration_fpr_ci": wilson_interval(flagged, n),
                "held_out_fpr_bound": (math.floor(self.target_fpr_ * n + 1e-9) + 1) / (n + 1)}

    def predict(self, images: torch.Tensor) -> Detection:
        """F's class, the adversarial flag, credibility and per-layer scores per input."""
        self._check_fitted("threshold_")
        return self._verdict(*self.nonconformity(images))

    def _verdict(self, predicted: torch.Tensor, score: torch.Tensor, per_layer: dict[str, torch.Tensor],
                 probabilities: torch.Tensor | None = None) -> Detection:
        return Detection(predicted, score > self.threshold_, credibility(score, self.calibration_scores_),
                         score, per_layer, probabilities)

    def score_samples(self, images: torch.Tensor) -> torch.Tensor:
        """-(score): higher is more normal."""
        return -self.nonconformity(images)[1].to(torch.float32)

    def decision_function(self, images: torch.Tensor) -> torch.Tensor:
        """threshold_ - score: negative means flagged as adversarial."""
        self._check_fitted("threshold_")
        return self.threshold_ + self.score_samples(images)

    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        """`images` checked against F's input (`validation.check_images`), in F's dtype; else an error naming why."""
        return check_images(images, shape=getattr(self.classifier, "input_shape", None),
                            dtype=model_dtype(self.classifier))

    def _check_fitted(self, attr: str) -> None:
        if not hasattr(self, attr):
            step = "calibrate()" if attr == "threshold_" else "fit()"
            raise RuntimeError(f"{type(self).__name__} is not ready: call {step} first")

    def _artifact(self) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
        """What every detector artifact holds: F's weights and registry name, the calibration if done."""
        tensors = {f"classifier.{k}": v for k, v in self.classifier.state_dict().items()}
        if hasattr(self, "threshold_"):
            tensors["calibration_scores"] = self.calibration_scores_
        meta = {"threshold": getattr(self, "threshold_", None), "target_fpr": getattr(self, "target_fpr_", None),
                "classifier": {"arch": getattr(self.classifier, "arch", None),
                               "arch_kwargs": getattr(self.classifier, "arch_kwargs", {})}}
        return tensors, meta

    @staticmethod
    def _artifact_classifier(path: str | Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, object],
                             classifier: TappedModel | None) -> TappedModel:
        """F with the saved weights: the given module, else rebuilt from the registry by name."""
        if classifier is None:
            arch = artifact_field(path, meta, "classifier", Mapping)
            if not arch.get("arch"):
                raise ValueError(f"{path}: no classifier architecture recorded; pass classifier=")
            classifier = create_model(arch["arch"], **arch.get("arch_kwargs", {}))
        check_finite_tensors(path, tensors, "classifier.")
        try:
            classifier.load_state_dict(strip_prefix(tensors, "classifier."))
        except RuntimeError as err:
            raise InputValidationError(f"{path}: classifier weights", f"do not fit the classifier ({err})") from err
        return classifier

    def _restore_calibration(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, object],
                             path: str | Path = "artifact") -> None:
        """The saved threshold, target FPR and calibration scores, each checked and checked against each other:
        the scores within what this detector can give, the threshold the one they give at the target FPR."""
        threshold = meta.get("threshold")
        if threshold is None:
            return
        self.threshold_ = check_number(f"{path}: metadata field 'threshold'", threshold)
        self.target_fpr_ = check_number(f"{path}: metadata field 'target_fpr'", meta.get("target_fpr"),
                                        low=0.0, high=1.0, high_open=True)
        scores = tensors.get("calibration_scores")
        if scores is None or scores.ndim != 1 or len(scores) == 0 or not torch.isfinite(scores.double()).all():
            raise InputValidationError(f"{path}: tensor 'calibration_scores'",
                                       "must be a non-empty, finite 1-D tensor in a calibrated artifact")
        top = self.max_score()
        if top is not None and not 0 <= float(scores.min()) <= float(scores.max()) <= top:
            raise InputValidationError(f"{path}: tensor 'calibration_scores'",
                                       f"holds scores in [{float(scores.min()):g}, {float(scores.max()):g}], outside the "
                                       f"[0, {top:g}] this detector can give: its scores or its settings were edited")
        expected = calibrate_threshold(scores, self.target_fpr_)
        if self.threshold_ != expected:
            raise InputValidationError(f"{path}: metadata fields 'threshold' and 'target_fpr'",
                                       f"disagree with the calibration scores: threshold {self.threshold_:g} is not "
                                       f"{expected:g}, the one they give at target_fpr {self.target_fpr_:g}")
        self.calibration_scores_ = scores


def check_classes(images: torch.Tensor, classes: torch.Tensor, num_classes: int | None = None) -> None:
    """`classes` must be int64 (B,) for images (B, C, H, W) (a surrogate score's candidate classes)."""
    check_labels(classes, images.shape[0], num_classes, name="classes")



def strip_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def state_for(module: nn.Module, tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """`module`'s state dict read from keys `prefix + key`, by the keys it expects: exact even when a prefix is a
    dotted tap that extends another (`encoder.layer1.` and `encoder.layer1.1.`)."""
    expected = list(module.state_dict())
    missing = [k for k in expected if prefix + k not in tensors]
    if missing:
        raise KeyError(f"no tensors {[prefix + k for k in missing[:3]]}{' ...' if len(missing) > 3 else ''}")
    return {k: tensors[prefix + k] for k in expected}
