"""`latentdefence data`: inspect a dataset and build its converted cache before a long run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import typer

from ..data import DATASETS, ImageDataset, Splits, default_cache_dir, load_dataset
from ..data.cache import cache_dir
from .errors import cli_errors

app = typer.Typer(help="Inspect datasets and prepare their converted caches.", no_args_is_help=True)

DatasetOpt = typer.Option("mnist", "--dataset", help=f"one of: {', '.join(DATASETS)}")
DataDirOpt = typer.Option(None, "--data-dir", help="folder with the downloaded files (all but mnist)")
ImageSizeOpt = typer.Option(None, "--image-size", help="celeba-smile only: face side in pixels (default 64)")
ExtraOpt = typer.Option(False, "--extra", help="svhn only: append extra_32x32.mat to train")


def _load(dataset: str, data_dir: Path | None, image_size: int | None, extra: bool) -> Splits:
    """Load through `load_dataset`; a problem the user can fix becomes a message and exit code 2."""
    kw: dict[str, Any] = {}
    if image_size is not None:
        kw["image_size"] = image_size
    if extra:
        kw["extra"] = True
    with cli_errors():
        if image_size is not None and dataset != "celeba-smile":
            raise ValueError("--image-size applies to celeba-smile only")
        if extra and dataset != "svhn":
            raise ValueError("--extra applies to svhn only")
        splits = load_dataset(dataset, data_dir, **kw)
    return splits


def _describe(part: ImageDataset) -> str:
    """One line: size, image shape and per-class counts."""
    counts = torch.bincount(part.labels).tolist() if len(part) else []
    shape = tuple(part.images.shape[1:])
    return f"{part.split}: {len(part)} images of shape {shape}, class counts {dict(enumerate(counts))}"


@app.command()
def info(dataset: str = DatasetOpt, data_dir: Path | None = DataDirOpt, image_size: int | None = ImageSizeOpt,
         extra: bool = ExtraOpt) -> None:
    """Print a dataset's name, split sizes, image shape and class counts."""
    splits = _load(dataset, data_dir, image_size, extra)
    typer.echo(dataset)
    for part in (splits.train, splits.test):
        typer.echo(f"  {_describe(part)}")


@app.command()
def prepare(dataset: str = DatasetOpt, data_dir: Path | None = DataDirOpt, image_size: int | None = ImageSizeOpt,
            extra: bool = ExtraOpt) -> None:
    """Load a dataset once so its converted cache exists, and print where it is."""
    _load(dataset, data_dir, image_size, extra)
    files = sorted(cache_dir().glob(f"{dataset}-*.npz"))
    if files:
        for path in files:
            typer.echo(f"cached: {path}")
    else:
        typer.echo(f"{dataset}: read from its source files each time (no converted cache); "
                   f"cache folder {default_cache_dir()}")
