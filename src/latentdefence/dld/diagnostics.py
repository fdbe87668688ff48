"""Why a DLD detector does or does not separate: per encoder, how well F still classifies with A_N inserted,
how well the latent k-NN alone classifies, and where the two disagree on adversarial examples (issue 17)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..data.base import ImageDataset
from ..evaluation.metrics import accuracy
from ..models import TappedModel
from ..detectors.knn_detector import KNNDetector
from .encoders import EncoderDecoder, InsertedModel


def inserted_accuracy(classifier: TappedModel, tap: str, ed: EncoderDecoder, images: torch.Tensor,
                      labels: torch.Tensor, batch_size: int = 500) -> float:
    """Accuracy of F with the encoder-decoder A_N inserted at `tap` (what encoder training optimises)."""
    return accuracy(InsertedModel(classifier, tap, ed.encoder, ed.decoder), images, labels, batch_size)


def knn_majority(detector: KNNDetector, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """F's predictions (N,) and, per tap, the majority label (N,) of the k nearest indexed training points."""
    preds: list[torch.Tensor] = []
    votes: dict[str, list[torch.Tensor]] = {tap: [] for tap in detector.indexes_}
    for i in range(0, len(images), batch_size):
        pred, latents = detector.embed(images[i:i + batch_size])
        preds.append(pred)
        for tap, z in latents.items():
            votes[tap].append(detector.indexes_[tap].neighbour_labels(z, detector.k).mode(dim=1).values)
    return torch.cat(preds), {tap: torch.cat(v) for tap, v in votes.items()}


def agreement_table(labels: torch.Tensor, f_pred: torch.Tensor, knn_pred: torch.Tensor) -> dict[str, int]:
    """The 2x2 counts of F right/wrong x latent k-NN majority right/wrong."""
    f_ok, k_ok = f_pred == labels, knn_pred == labels
    return {"f_right_knn_right": int((f_ok & k_ok).sum()), "f_right_knn_wrong": int((f_ok & ~k_ok).sum()),
            "f_wrong_knn_right": int((~f_ok & k_ok).sum()), "f_wrong_knn_wrong": int((~f_ok & ~k_ok).sum())}


def encoder_diagnostics(classifier: TappedModel, encoders: Mapping[str, EncoderDecoder], detector: KNNDetector,
                        clean: ImageDataset, attack_sets: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, object]:
    """Per tap: F-with-A_N accuracy (clean and each attack set), latent k-NN accuracy on clean images, and the
    2x2 agreement table on each attack set."""
    _, clean_votes = knn_majority(detector, clean.images)
    attack_votes = {name: knn_majority(detector, adv["images"]) for name, adv in attack_sets.items()}
    out: dict[str, object] = {}
    for tap in detector.indexes_:
        out[tap] = {
            "inserted_accuracy": {"clean": inserted_accuracy(classifier, tap, encoders[tap], clean.images, clean.labels),
                                  **{name: inserted_accuracy(classifier, tap, encoders[tap], adv["images"], adv["labels"])
                                     for name, adv in attack_sets.items()}},
            "knn_accuracy_clean": float((clean_votes[tap] == clean.labels).float().mean()),
            "agreement": {name: agreement_table(attack_sets[name]["labels"], pred, votes[tap])
                          for name, (pred, votes) in attack_votes.items()}}
    return out
