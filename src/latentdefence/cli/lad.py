"""`latentdefence lad ...`: LAD's steps one at a time (the whole pipeline is `latentdefence reproduce lad-*`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..validation import check_output
from .errors import cli_errors

app = typer.Typer(help="Latent Adversarial Defence: generator, boundaries, generation, fine-tuning, evaluation.",
                  no_args_is_help=True)

DATASET = typer.Option("mnist", help="mnist (embedded) | mnist-idx | svhn | cifar10 | folder | celeba-smile")
DATA_DIR = typer.Option(None, help="Folder with the dataset's files (not for embedded mnist).")
TAP = typer.Option("fc1", help="Fully connected layer whose output is the latent z = phi(x).")


def _echo(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@app.command("train-generator")
def train_generator_cmd(
    classifier: Path = typer.Option(..., help="Classifier checkpoint (from `latentdefence train`)."),
    out: Path = typer.Option(Path("runs/lad/generator.safetensors"), help="Where to write the generator."),
    dataset: str = DATASET, data_dir: Optional[Path] = DATA_DIR, tap: str = TAP,
    architecture: str = typer.Option("mnist", help="Generator architecture: mnist | svhn | celeba (Tables XI/XIII/XV)."),
    width: float = typer.Option(1.0, help="Channel multiplier (1 = the paper's widths)."),
    epochs: int = 1000, batch_size: int = 128, lr: float = 1e-3,
    p: int = typer.Option(2, help="Eq. 2's norm: 1 or 2."),
    limit: Optional[int] = typer.Option(None, help="Train on the first N training images only."),
    seed: int = 0,
) -> None:
    """Fit G (Eq. 2) from the classifier's latents to images; print train/test reconstruction MSE."""
    with cli_errors():
        check_output(out, "file", [classifier])
        from ..data import load_dataset
        from ..lad.generator import (GeneratorConfig, create_generator, extract_latents, reconstruction_mse,
                                     save_generator, train_generator)
        from ..training import load_checkpoint

        model, _ = load_checkpoint(classifier)
        splits = load_dataset(dataset, data_dir)
        train = splits.train.head(limit)
        z = extract_latents(model, tap, train.images)
        sized = {"image_size": int(train.images.shape[-1])} if architecture == "celeba" else {}
        gen = create_generator(architecture, latent_dim=z.shape[1], width=width, **sized)
        train_generator(gen, z, train.images, GeneratorConfig(epochs, batch_size, lr, p, seed))
        metrics = {"train_mse": reconstruction_mse(gen, train, z),
                   "test_mse": reconstruction_mse(gen, splits.test, extract_latents(model, tap, splits.test.images))}
        save_generator(out, gen, {**metrics, "tap": tap, "classifier": str(classifier)})
        _echo({"generator": out, **metrics})


@app.command("boundary")
def boundary_cmd(
    classifier: Path = typer.Option(..., help="Classifier checkpoint."),
    out: Path = typer.Option(Path("runs/lad/boundaries.safetensors"), help="Where to write the boundaries."),
    dataset: str = DATASET, data_dir: Optional[Path] = DATA_DIR, tap: str = TAP,
    per_class: int = typer.Option(20, help="Labelled test images per class used to fit (paper: 20-200 per pair)."),
    strategy: str = typer.Option("pairwise", help="pairwise (one SVM per source/target) | one_vs_rest"),
    epochs: int = 300, lr: float = 0.01, l2: float = 1e-3, kernel_size: int = 3, seed: int = 0,
    eps_scale: str = typer.Option("classifier", help="classifier: eps=boundary-eps takes the median latent to where "
                                  "the classifier flips | margin: to the SVM boundary | latent: raw latent units"),
    boundary_eps: float = typer.Option(10.0, help="The eps that reaches the median flip (classifier) or boundary (margin)."),
) -> None:
    """Fit attention-SVM boundaries toward every class on a few labelled test latents."""
    with cli_errors():
        check_output(out, "file", [classifier])
        import torch

        from ..data import load_dataset
        from ..lad.attention_svm import TargetBoundaries, save_boundaries
        from ..lad.finetune import per_class_sample
        from ..lad.generator import extract_latents, latent_head
        from ..training import load_checkpoint

        model, _ = load_checkpoint(classifier)
        test = load_dataset(dataset, data_dir).test
        index = per_class_sample(test.labels, torch.arange(len(test)), per_class, torch.Generator().manual_seed(seed))
        bounds = TargetBoundaries(strategy=strategy, kernel_size=kernel_size, l2=l2, epochs=epochs, lr=lr, seed=seed,
                                  eps_scale=eps_scale, boundary_eps=boundary_eps)
        bounds.fit(extract_latents(model, tap, test.images[index]), test.labels[index], head=latent_head(model, tap))
        save_boundaries(out, bounds, {"fit_indices": index.tolist(), "tap": tap})
        _echo({"boundaries": out, "pairs": len(bounds.estimators_), "fit_images": len(index)})


@app.command("generate")
def generate_cmd(
    classifier: Path = typer.Option(..., help="Classifier checkpoint."),
    generator: Path = typer.Option(..., help="Generator from `lad train-generator`."),
    boundaries: Path = typer.Option(..., help="Boundaries from `lad boundary`."),
    out: Path = typer.Option(Path("runs/lad/generated.safetensors"), help="Where to write the generated set."),
    eps: list[float] = typer.Option([0.1, 2.0, 5.0, 7.0, 10.0, 15.0, 20.0], help="Perturbation strengths (repeat)."),
    per_class: int = typer.Option(50, help="Test images per class, each pushed toward every other class."),
    dataset: str = DATASET, data_dir: Optional[Path] = DATA_DIR, tap: str = TAP, seed: int = 0,
) -> None:
    """z' = z + eps * beta * d, x_hat = G(z') from test images the boundaries never saw; print Fig. 5's rates."""
    with cli_errors():
        check_output(out, "file", [classifier, generator, boundaries])
        import torch

        from ..data import load_dataset
        from ..lad.attention_svm import load_boundaries
        from ..lad.finetune import per_class_sample, used_indices
        from ..lad.generation import generate_set, success_by_eps
        from ..lad.generator import load_generator
        from ..training import load_checkpoint

        model, _ = load_checkpoint(classifier)
        gen, _ = load_generator(generator)
        bounds, _ = load_boundaries(boundaries)
        test = load_dataset(dataset, data_dir).test
        pool = torch.arange(len(test))
        pool = pool[~torch.isin(pool, used_indices([boundaries]))]
        index = per_class_sample(test.labels, pool, per_class, torch.Generator().manual_seed(seed))
        generated = generate_set(model, tap, gen, bounds, test, index, eps)
        generated.save(out)
        _echo({"generated": out, "n": len(generated), **success_by_eps(generated, model.num_classes)})


@app.command("finetune")
def finetune_cmd(
    classifier: Path = typer.Option(..., help="Classifier checkpoint to fine-tune."),
    generated: Path = typer.Option(..., help="Generated set from `lad generate`."),
    out: Path = typer.Option(Path("runs/lad/finetuned"), help="Checkpoint path for the fine-tuned model."),
    eps: Optional[float] = typer.Option(None, help="Use only the generated images of this eps (FT-eps)."),
    dataset: str = DATASET, data_dir: Optional[Path] = DATA_DIR,
    epochs: int = 10, batch_size: int = 64, lr: float = 1e-4,
    alpha: float = typer.Option(0.5, help="Eq. 4's weight on the clean loss."), seed: int = 0,
) -> None:
    """Adversarially fine-tune with Eq. 4 on clean training batches + generated images (original labels)."""
    with cli_errors():
        check_output(out, "checkpoint", [classifier, generated])
        from ..data import load_dataset
        from ..lad.finetune import FinetuneConfig, finetune
        from ..lad.generation import GeneratedSet
        from ..training import load_checkpoint, save_checkpoint

        model, _ = load_checkpoint(classifier)
        adv = GeneratedSet.load(generated)
        adv = adv if eps is None else adv.select(adv.eps == eps)
        if len(adv) == 0:
            raise ValueError(f"{generated} holds no images with eps={eps}")
        tuned = finetune(model, load_dataset(dataset, data_dir).train, adv.as_dataset(),
                         FinetuneConfig(epochs, batch_size, lr, alpha, seed))
        path = save_checkpoint(out, tuned, {"finetuned_on": str(generated), "eps": eps, "alpha": alpha})
        _echo({"checkpoint": path, "generated_images": len(adv)})


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: Path = typer.Argument(..., help="Classifier checkpoint."),
    generated: Optional[Path] = typer.Option(None, help="Accuracy on this generated set (original labels)."),
    exclude: list[Path] = typer.Option([], help="Boundaries/generated files whose test images to leave out (repeat)."),
    dataset: str = DATASET, data_dir: Optional[Path] = DATA_DIR,
) -> None:
    """Accuracy on a generated set, or on the clean test images not used to build boundaries or sets."""
    with cli_errors():
        import torch

        from ..data import load_dataset
        from ..evaluation.metrics import accuracy
        from ..lad.finetune import used_indices
        from ..lad.generation import GeneratedSet
        from ..training import load_checkpoint

        model, _ = load_checkpoint(checkpoint)
        if generated is not None:
            data = GeneratedSet.load(generated).as_dataset()
        else:
            test = load_dataset(dataset, data_dir).test
            keep = ~torch.isin(torch.arange(len(test)), used_indices(exclude))
            data = test.subset(keep)
        _echo({"checkpoint": checkpoint, "n": len(data), "accuracy": accuracy(model, data.images, data.labels)})
