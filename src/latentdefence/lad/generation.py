"""LAD's boundary-guided generation (Zhou et al., Section III-B b, c): z' = z + eps * beta * d, x_hat = G(z').

eps scaling: the step is eps * (D * beta * d) (see `AttentionSVM.direction`). beta sums to 1 over the
D features, so D * beta is 1 on average and, under uniform attention, the step is eps * d: eps is then a
distance in latent units along the unit normal d. This is what makes the paper's range 0.1-20 meaningful
for LeNet's 500-d fc1 (docs/lad.md shows the success rates it gives).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from .._io import load_tensors, save_tensors
from ..data.base import ImageDataset
from ..evaluation.metrics import batched_predict
from ..models.taps import TappedModel
from .attention_svm import TargetBoundaries
from .generator import LatentGenerator, extract_latents, generate, latent_head


@dataclass(frozen=True)
class GeneratedSet:
    """Generated images with their provenance; labels are the ORIGINAL classes (what a human still sees)."""

    images: torch.Tensor              # (N, C, H, W) in [0, 1]
    labels: torch.Tensor              # (N,) original label of the source image
    targets: torch.Tensor             # (N,) class the latent was pushed toward
    eps: torch.Tensor                 # (N,) float64 perturbation strength
    source_index: torch.Tensor        # (N,) row of the source image in the dataset it came from
    latent_predictions: torch.Tensor  # (N,) f_p(z'), the classifier's head on the perturbed latent
    image_predictions: torch.Tensor   # (N,) f(G(z')), the classifier on the generated image

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def success(self) -> torch.Tensor:
        """Untargeted success: the classifier no longer gives the original label."""
        return self.image_predictions != self.labels

    @property
    def consistent(self) -> torch.Tensor:
        """Eq. 3 holds: f_p(z') == f(G(z')); where it fails, G(z') exposes a blind spot."""
        return self.latent_predictions == self.image_predictions

    def as_dataset(self, name: str = "lad") -> ImageDataset:
        """Images with their original labels, ready for Eq. 4 fine-tuning or evaluation."""
        return ImageDataset(self.images, self.labels, name, "generated")

    def select(self, rows: torch.Tensor) -> "GeneratedSet":
        """The rows picked by a mask or index (e.g. one eps)."""
        return GeneratedSet(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save as safetensors (no pickle)."""
        save_tensors(path, {f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "GeneratedSet":
        """Load a set written by `save`."""
        tensors, _ = load_tensors(path)
        missing = {f.name for f in fields(cls)} - set(tensors)
        if missing:
            raise ValueError(f"{path}: not a generated set, missing {sorted(missing)}")
        return cls(**{f.name: tensors[f.name] for f in fields(cls)})

    @staticmethod
    def concat(sets: Sequence["GeneratedSet"]) -> "GeneratedSet":
        """One set holding all rows of `sets`, in order."""
        return GeneratedSet(**{f.name: torch.cat([getattr(s, f.name) for s in sets]) for f in fields(GeneratedSet)})


def every_other_target(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, targets): each row repeated once per class other than its label (the paper's Large Adv. plan)."""
    classes = torch.arange(num_classes)
    rows = torch.arange(labels.shape[0]).repeat_interleave(num_classes - 1)     # (N * (K-1),)
    targets = torch.stack([classes[classes != y] for y in labels.tolist()]).flatten() if len(labels) else rows
    return rows, targets


def perturb(z: torch.Tensor, boundaries: TargetBoundaries, sources: torch.Tensor, targets: torch.Tensor,
            eps: float) -> torch.Tensor:
    """z' = z + eps * (D * beta * d), per sample toward its target."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return z + eps * boundaries.direction(z, sources, targets)


def generate_set(classifier: TappedModel, tap: str, generator: LatentGenerator, boundaries: TargetBoundaries,
                 data: ImageDataset, index: torch.Tensor, eps_values: Sequence[float]) -> GeneratedSet:
    """Push every image data[index] toward every other class at every eps; record Eq. 3 and success."""
    subset = data.subset(index)
    rows, targets = every_other_target(subset.labels, classifier.num_classes)
    z = extract_latents(classifier, tap, subset.images)[rows]
    sources = subset.labels[rows]
    parts = []
    for eps in eps_values:
        z_new = perturb(z, boundaries, sources, targets, float(eps))
        images = generate(generator, z_new)
        eps_column = torch.full((len(rows),), float(eps), dtype=torch.float64)
        parts.append(GeneratedSet(images, sources, targets, eps_column, index[rows],
                                  latent_head(classifier, tap)(z_new).argmax(1), batched_predict(classifier, images)))
    return GeneratedSet.concat(parts)


def _rate(mask: torch.Tensor) -> float | None:
    return float(mask.float().mean().item()) if mask.numel() else None


def success_by_eps(generated: GeneratedSet, num_classes: int) -> dict[str, list]:
    """Fig. 5's numbers per eps: success rate overall and per source class, targeted success, Eq. 3 rate."""
    eps_values = torch.unique(generated.eps).tolist()
    parts = [generated.select(generated.eps == eps) for eps in eps_values]
    return {
        "eps": eps_values,
        "success_rate": [_rate(p.success) for p in parts],
        "targeted_success_rate": [_rate(p.image_predictions == p.targets) for p in parts],
        "consistency_rate": [_rate(p.consistent) for p in parts],
        "per_class_success_rate": [[_rate(p.success[p.labels == c]) for c in range(num_classes)] for p in parts],
    }


def transition(classifier: TappedModel, tap: str, generator: LatentGenerator, boundaries: TargetBoundaries,
               image: torch.Tensor, label: int, target: int, eps_values: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Figs. 4 and 6: one image pushed toward `target` at each eps -> (images (E, C, H, W), predictions (E,))."""
    z = extract_latents(classifier, tap, image.unsqueeze(0))                    # (1, D)
    step = boundaries.direction(z, torch.tensor([label]), torch.tensor([target]))
    z_all = torch.cat([z + float(eps) * step for eps in eps_values])           # (E, D)
    images = generate(generator, z_all)
    return images, batched_predict(classifier, images)
