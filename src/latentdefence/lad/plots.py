"""LAD's figures as PNG: image grids (Figs. 3, 4, 6), success rate vs eps (Fig. 5), accuracy vs eps (Fig. 7)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .._io import save_figure  # noqa: E402




def image_grid(path: str | os.PathLike[str], rows: Sequence[torch.Tensor], row_labels: Sequence[str],
               titles: Sequence[Sequence[str]] | None = None, title: str = "") -> None:
    """One row of images (K, C, H, W) per entry of `rows`, each labelled; optional text above every image."""
    if len(rows) != len(row_labels) or not rows:
        raise ValueError(f"{len(rows)} rows but {len(row_labels)} row labels")
    cols = max(r.shape[0] for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.1 * cols + 1.2, 1.25 * len(rows)), squeeze=False)
    for i, images in enumerate(rows):
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= images.shape[0]:
                ax.axis("off")
                continue
            img = images[j].detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()  # (H, W, C)
            ax.imshow(img.squeeze(2) if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=1)
            if titles is not None and j < len(titles[i]):
                ax.set_title(titles[i][j], fontsize=8)
        axes[i][0].set_ylabel(row_labels[i], fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def success_heatmap(path: str | os.PathLike[str], fig5: Mapping[str, list]) -> None:
    """Fig. 5: attack success rate per source class (rows) and eps (columns); white = high."""
    rates = np.array([[np.nan if r is None else r for r in col] for col in fig5["per_class_success_rate"]]).T
    fig, ax = plt.subplots(figsize=(0.7 * len(fig5["eps"]) + 2, 0.4 * rates.shape[0] + 1.5))
    im = ax.imshow(rates, cmap="gray", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(fig5["eps"])), [f"{e:g}" for e in fig5["eps"]])
    ax.set_yticks(range(rates.shape[0]))
    ax.set_xlabel("eps")
    ax.set_ylabel("source class")
    ax.set_title("LAD attack success rate (overall: " + ", ".join(f"{r:.2f}" for r in fig5["success_rate"]) + ")",
                 fontsize=8)
    fig.colorbar(im, ax=ax)
    save_figure(fig, path)


def accuracy_vs_eps(path: str | os.PathLike[str], fig7: Mapping[str, Any]) -> None:
    """Fig. 7: clean accuracy of each FT-eps model, and accuracy on the Large Adv. sets, against eps."""
    eps = fig7["eps"]
    clean = fig7["clean_accuracy"]
    adv = fig7["adversarial_accuracy"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(eps, clean["finetuned"], "s-", color="tab:blue", label="FT-eps, clean test")
    ax.axhline(clean["original"], color="tab:blue", ls=":", label="original, clean test")
    ax.plot(eps, adv["original"], "-", color="tab:red", alpha=0.5, label="original, Large Adv.")
    ax.plot(eps, adv["adv_model"], "-", color="tab:red", label="Adv. model, Large Adv.")
    ax.set_xlabel("eps")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    save_figure(fig, path)
