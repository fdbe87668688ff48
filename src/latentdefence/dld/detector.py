"""The Deep Latent Defence detector, read like a scikit-learn estimator (cf. LocalOutlierFactor).

``fit`` trains (or takes) the encoder-decoders, keeps only the encoders and builds one pruned k-NN
index per encoder; ``calibrate`` learns the threshold on held-out clean data; ``predict`` flags inputs
whose summed non-conformity (Eq. 8 over all encoders) exceeds it.

Signs: ``score_samples`` = -(summed non-conformity), higher is more normal; ``decision_function`` =
``threshold_ - nonconformity``, negative means flagged (as in scikit-learn's outlier detectors). For a
ROC with adversarial examples as positives use ``-decision_function`` (or the non-conformity itself).

The contract itself (calibrate / predict / score_samples / decision_function over a ``nonconformity``
score) is ``latentdefence.detectors.base.ConformalDetector``; ``KNNDetector`` adds Eq. 8 over one k-NN index
per tap (DLD and Deep k-NN build on it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import git_revision, load_tensors, module_device, save_tensors
from ..data.base import ImageDataset
from ..detectors.base import check_classes, state_for
from ..detectors.knn import KNNIndex
from ..detectors.knn_detector import KNNDetector
from ..detectors.nonconformity import soft_nonconformity
from ..detectors.registry import register_detector
from ..models import TapModules, TappedModel, create_model
from ..validation import InputValidationError, artifact_field, check_count, check_finite_tensors
from .encoders import EncoderDecoder, make_encoder
from .pruning import pruned_embeddings
from .training import EncoderTrainConfig, train_encoder

FORMAT = "latentdefence.dld/1"


def _in_order(found: torch.Tensor, labels: torch.Tensor, index: KNNIndex, tolerance: float, tap: str) -> torch.Tensor:
    """Positions (M,) in `found` (N, d) of the index's points, matched in order, greedily, embedding and label alike
    (two training images with one embedding and label are interchangeable evidence: either may be cited)."""
    a, b = found.numpy(), index.embeddings.numpy()
    limit = tolerance * (1 + np.abs(b).max(1))
    mine, theirs = labels.tolist(), index.labels.tolist()
    out: list[int] = []
    for i, row in enumerate(a):
        j = len(out)
        if j < len(b) and mine[i] == theirs[j] and np.abs(row - b[j]).max() <= limit[j]:
            out.append(i)
    if len(out) < len(b):
        raise ValueError(f"tap {tap!r}: only {len(out)} of the {len(b)} indexed embeddings match these training "
                         "images in order: the index was not built from them")
    return torch.tensor(out, dtype=torch.int64)


@register_detector("dld", examples=({"taps": ("layer1", "layer2"), "k": 10, "latent_dim": 3, "training": EncoderTrainConfig(
    epochs=6, batch_size=60, lr=0.01, eps=0.1, steps=2, step_size=0.05, eps_ramp=0.5, width=4)},))
class DeepLatentDefence(KNNDetector):
    """Deep Latent Defence (Zizzo et al., arXiv:1910.03334): encoders on F's layers + latent k-NN.

    Args:
        classifier: the (adversarially trained) classifier F; never modified.
        taps: layers given an encoder (paper: layers 1-3 on MNIST, 1-2 on SVHN).
        k: neighbours per encoder (paper: 10).
        latent_dim: embedding size (paper: 10 MNIST, 100 SVHN).
        training: encoder-decoder training settings.
        encoders: already-trained encoder-decoders per tap; when given, `fit` skips training.
        knn_backend, knn_algorithm: see `KNNIndex`.
        batch_size: inference batch size.

    A classifier built by ``create_model`` records its registry name, so ``load`` can rebuild it.
    """

    ARTIFACT_FORMAT = FORMAT                 # what `detectors.registry.load_artifact` recognises it by

    metadata_: dict[str, Any]    # what a loaded artifact carried; absent on a detector fitted here

    def __init__(self, classifier: TappedModel, taps: Sequence[str] = ("layer1", "layer2", "layer3"), *,
                 k: int = 10, latent_dim: int = 10, training: EncoderTrainConfig | None = None,
                 encoders: Mapping[str, EncoderDecoder] | None = None, knn_backend: str = "torch",
                 knn_algorithm: str = "brute", batch_size: int = 256) -> None:
        self.classifier = classifier
        self.taps = taps
        self.k = k
        self.latent_dim = latent_dim
        self.training = training
        self.encoders = encoders
        self.knn_backend = knn_backend
        self.knn_algorithm = knn_algorithm
        self.batch_size = batch_size

    # -- learning -------------------------------------------------------------------------------
    def fit(self, train: ImageDataset) -> "DeepLatentDefence":
        """Train encoders (unless given), keep the encoders only, index pruned training embeddings."""
        check_count("k", self.k)
        taps = list(self.taps)
        if not taps:
            raise ValueError("DeepLatentDefence needs at least one tap")
        for tap in taps:
            self.classifier.check_tap(tap)
        eds = dict(self.encoders) if self.encoders is not None else {
            tap: train_encoder(self.classifier, tap, train, self.latent_dim, self.training or EncoderTrainConfig())
            for tap in taps}
        missing = [t for t in taps if t not in eds]
        if missing:
            raise KeyError(f"no encoder-decoder given for taps {missing}")
        eds = {tap: eds[tap].to(module_device(self.classifier)) for tap in taps}
        data = pruned_embeddings(self.classifier, eds, train, self.batch_size)
        self.encoders_ = TapModules({tap: eds[tap].encoder for tap in taps}).eval()
        self.encoder_specs_ = {tap: eds[tap].spec() for tap in taps}
        self._build_indexes({tap: (z, y) for tap, (z, y, _) in data.items()})
        self.cite(train, {tap: positions for tap, (_, _, positions) in data.items()})
        self.pruned_ = {tap: len(train) - len(data[tap][1]) for tap in taps}
        return self

    def recover_citations(self, train: ImageDataset, tolerance: float = 1e-4) -> "DeepLatentDefence":
        """`cite` for an artifact written before `fit` recorded its rows: each index holds, in order, the embeddings
        of the training images the pruning kept, so each is matched to the next image of `train` with the same
        embedding (to `tolerance`, relative); an index that was not built from `train` is refused by name."""
        self._check_fitted("indexes_")
        found: dict[str, list[torch.Tensor]] = {tap: [] for tap in self.indexes_}
        for i in range(0, len(train), self.batch_size):
            for tap, z in self._forward(train.images[i:i + self.batch_size])[1].items():
                found[tap].append(z)
        self.cite(train, {tap: _in_order(torch.cat(found[tap]), train.labels, index, tolerance, tap)
                          for tap, index in self.indexes_.items()})
        return self

    # -- inference -----------------------------------------------------------------------------
    def _project(self, tap: str, activation: torch.Tensor) -> torch.Tensor:
        return self.encoders_[tap](activation)

    def surrogate_score(self, images: torch.Tensor, classes: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
        """Smooth summed non-conformity (B,) if F predicted `classes` (B,): `soft_nonconformity` (Eq. 8 with soft
        k-NN membership and a pull toward the class) per encoder, summed as the detector sums; attacks minimise it."""
        check_classes(images, classes, self.classifier.num_classes)
        return torch.stack([soft_nonconformity(z, self.indexes_[tap], classes.to(z.device), self.k, temperature)
                            for tap, z in self.latents(images).items()]).sum(0)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path, metadata: Mapping[str, Any] | None = None) -> None:
        """One atomic safetensors file: F's and the encoders' weights, indexes, calibration (if done); JSON metadata.

        `metadata` (e.g. dataset, threat model) is added to what a loaded detector carried (`metadata_`),
        with the git revision that wrote the file; servers report it (`latentdefence serve`, GET /v1/model).
        """
        self._check_fitted("indexes_")
        tensors, meta = self._artifact()
        for tap, enc in self.encoders_.items():
            tensors.update({f"encoder.{tap}.{k}": v for k, v in enc.state_dict().items()})
            tensors[f"index.{tap}.embeddings"] = self.indexes_[tap].embeddings
            tensors[f"index.{tap}.labels"] = self.indexes_[tap].labels
            if hasattr(self, "index_rows_"):
                tensors[f"index.{tap}.rows"] = self.index_rows_[tap].to(torch.int32)
        if hasattr(self, "index_rows_"):
            meta["evidence"] = self.evidence_source_
        meta.update({"format": FORMAT, "params": self.params, "encoders": self.encoder_specs_,
                     "pruned": self.pruned_, "indexed": {tap: len(index) for tap, index in self.indexes_.items()},
                     "calibration": ({"k": self.k, "n": len(self.calibration_scores_)}
                                     if hasattr(self, "threshold_") else None),
                     "metadata": {**getattr(self, "metadata_", {}), **(metadata or {}), "git_revision": git_revision()}})
        save_tensors(path, tensors, meta)

    @property
    def params(self) -> dict[str, object]:
        """Constructor settings as JSON-friendly values, saved in the artifact and recorded by experiments."""
        return {"taps": list(self.taps), "k": self.k, "latent_dim": self.latent_dim,
                "training": asdict(self.training) if self.training else None, "knn_backend": self.knn_backend,
                "knn_algorithm": self.knn_algorithm, "batch_size": self.batch_size}

    @classmethod
    def load(cls, path: str | Path, classifier: TappedModel | None = None,
             knn_backend: str | None = None) -> "DeepLatentDefence":
        """Rebuild a saved detector; F comes from the registry by name unless `classifier` is given.

        `knn_backend` replaces the saved one (e.g. "faiss-hnsw" for approximate, faster search).
        """
        tensors, meta = load_tensors(path)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a DLD detector artifact (format {meta.get('format')!r})")
        params = dict(artifact_field(path, meta, "params", Mapping),
                      **({"knn_backend": knn_backend} if knn_backend else {}))
        classifier = cls._artifact_classifier(path, tensors, meta, classifier)
        specs = artifact_field(path, meta, "encoders", Mapping)
        _check_params(path, params, specs, classifier)
        training = _training_config(params.pop("training", None))
        det = cls(classifier, **{**params, "training": training})
        det.encoder_specs_ = specs
        device = next(classifier.parameters()).device
        det.encoders_ = TapModules({tap: _encoder(path, tap, spec, tensors).to(device)
                                    for tap, spec in specs.items()}).eval()
        det.pruned_ = artifact_field(path, meta, "pruned", Mapping)
        det._build_indexes(_indexes(path, tensors, meta.get("indexed"), det.pruned_, list(specs),
                                    classifier.num_classes, det.latent_dim, det.k))
        rows = _index_rows(path, tensors, meta.get("evidence"), {tap: len(det.indexes_[tap]) for tap in specs})
        if rows is not None:                                # absent from artifacts written before evidence existed
            det.index_rows_, det.evidence_source_ = rows
        det.metadata_ = dict(meta.get("metadata") or {})  # absent from artifacts written before it existed
        _check_calibrated_with(path, meta.get("calibration"), det.k, tensors.get("calibration_scores"))
        det._restore_calibration(tensors, meta, path)
        return det


def _training_config(saved: Mapping[str, Any] | None) -> EncoderTrainConfig | None:
    """The saved settings; artifacts older than the `pairing` setting were trained with legacy pairing."""
    return EncoderTrainConfig(**{"pairing": "legacy", **saved}) if saved else None


def _check_params(path: str | Path, params: Mapping[str, Any], specs: Mapping[str, Any],
                  classifier: TappedModel) -> None:
    """The saved settings a detector needs, checked at load time (not at the first predict), each by name."""
    field = f"{path}: metadata field"
    check_count(f"{field} 'params.k'", params.get("k"))
    check_count(f"{field} 'params.batch_size'", params.get("batch_size", 256))
    taps = params.get("taps")
    if not isinstance(taps, (list, tuple)) or not taps or not all(isinstance(t, str) for t in taps):
        raise InputValidationError(f"{field} 'params.taps'", f"must be a non-empty list of layer names, got {taps!r}")
    for tap in (*taps, *specs):
        try:
            classifier.check_tap(tap)
        except KeyError as err:
            raise InputValidationError(f"{field} 'params.taps'", str(err.args[0])) from None
    if not specs or set(specs) != set(taps):
        raise InputValidationError(f"{field} 'encoders'", f"must hold one encoder per tap {list(taps)}, got {list(specs)}")


def _indexes(path: str | Path, tensors: Mapping[str, torch.Tensor], recorded: Any, pruned: Mapping[str, Any],
             taps: list[str], num_classes: int, latent_dim: int, k: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each tap's indexed embeddings and labels, checked against the rest of the artifact before any search: finite
    (latent_dim)-wide embeddings, one label in [0, classes) each, at least k of them, as many as recorded ("indexed",
    or for older artifacts: indexed + pruned the same training-set size for every tap)."""
    check_finite_tensors(path, tensors, "encoder.")
    check_finite_tensors(path, tensors, "index.")
    if set(pruned) != set(taps) or not all(isinstance(v, int) and v >= 0 for v in pruned.values()):
        raise InputValidationError(f"{path}: metadata field 'pruned'", f"must give a count >= 0 for each tap {taps}, "
                                   f"got {dict(pruned)}")
    data = {}
    for tap in taps:
        z, y = _tensor(path, tensors, f"index.{tap}.embeddings"), _tensor(path, tensors, f"index.{tap}.labels")
        name = f"{path}: tensor 'index.{tap}.labels'"
        if z.ndim != 2 or z.shape[1] != latent_dim:
            raise InputValidationError(f"{path}: tensor 'index.{tap}.embeddings'",
                                       f"must be (N, {latent_dim}) for latent_dim {latent_dim}, got {tuple(z.shape)}")
        if y.dtype != torch.int64 or y.shape != (len(z),):
            raise InputValidationError(name, f"must be int64 ({len(z)},), got {y.dtype} {tuple(y.shape)}")
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < num_classes:
            raise InputValidationError(name, f"holds labels in [{int(y.min())}, {int(y.max())}], outside the "
                                       f"classifier's {num_classes} classes")
        if isinstance(recorded, Mapping) and recorded.get(tap) != len(y):
            raise InputValidationError(name, f"holds {len(y)} points but the artifact recorded {recorded.get(tap)} for "
                                       f"tap {tap!r}: the index was edited or swapped with another tap's")
        if len(y) < k:
            raise InputValidationError(name, f"holds {len(y)} points, fewer than k={k}")
        data[tap] = (z, y)
    totals = {tap: len(data[tap][1]) + int(pruned[tap]) for tap in data}
    if len(set(totals.values())) > 1:
        raise InputValidationError(f"{path}: metadata field 'pruned'", f"contradicts the indexes: indexed + pruned "
                                   f"should be the one training-set size for every tap, got {totals}")
    return data


def _index_rows(path: str | Path, tensors: Mapping[str, torch.Tensor], source: Any, indexed: Mapping[str, int]
                ) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """Each tap's training-set rows (int64, one per indexed point, >= 0) and the split they cite, checked by name;
    None for an artifact written before detectors cited their training images."""
    present = [tap for tap in indexed if f"index.{tap}.rows" in tensors]
    if not present and source is None:
        return None
    if not isinstance(source, Mapping) or not all(isinstance(source.get(f), str) for f in ("dataset", "split")):
        raise InputValidationError(f"{path}: metadata field 'evidence'", "must name the cited training set as "
                                   f"{{'dataset': str, 'split': str}}, got {source!r}")
    out = {}
    for tap, n in indexed.items():
        rows = _tensor(path, tensors, f"index.{tap}.rows")
        if rows.dtype != torch.int32 or rows.shape != (n,) or (n and int(rows.min()) < 0):
            raise InputValidationError(f"{path}: tensor 'index.{tap}.rows'", f"must be int32 ({n},) rows >= 0 of the "
                                       f"cited training set, got {rows.dtype} {tuple(rows.shape)}")
        out[tap] = rows.to(torch.int64)
    return out, {"dataset": source["dataset"], "split": source["split"]}


def _check_calibrated_with(path: str | Path, recorded: Any, k: int, scores: torch.Tensor | None) -> None:
    """The k and calibration-set size the scores were computed with (recorded since artifacts carry digests) are the
    loaded detector's: scores from another k put the threshold on another scale."""
    if not isinstance(recorded, Mapping) or scores is None:
        return
    if recorded.get("n") != scores.numel():
        raise InputValidationError(f"{path}: tensor 'calibration_scores'", f"holds {scores.numel()} scores but the "
                                   f"calibration recorded {recorded.get('n')}: the scores (or their dtype) were edited")
    if recorded.get("k") != k:
        raise InputValidationError(f"{path}: metadata field 'params.k'", f"is {k} but the calibration scores were "
                                   f"computed with k={recorded.get('k')}: k was edited")


def _tensor(path: str | Path, tensors: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in tensors:
        raise InputValidationError(f"{path}: tensor {key!r}", "is missing from the artifact")
    return tensors[key]


def _encoder(path: str | Path, tap: str, spec: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> nn.Module:
    """An encoder rebuilt from its saved spec; artifacts older than `depth` hold depth-1 encoders."""
    try:
        enc = make_encoder(spec["shape"], spec["latent_dim"], spec["width"], spec.get("depth", 1))
        enc.load_state_dict(state_for(enc, tensors, f"encoder.{tap}."))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise InputValidationError(f"{path}: encoder {tap!r}", f"cannot be rebuilt from its spec and weights ({err})") from err
    return enc
