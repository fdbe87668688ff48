"""Classifiers side by side under one attack on the same images: accuracies with intervals, and paired (McNemar)
tests against the first, which have far more power than two overlapping intervals when the images are shared."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import write_comparison_files
from ..attacks.base import Attack, attack_in_batches
from ..stats import wilson_interval
from .metrics import batched_predict


def mcnemar_p_value(only_first: int, only_second: int) -> float:
    """Exact two-sided McNemar test: under "no difference" each discordant image is a fair coin."""
    if only_first < 0 or only_second < 0:
        raise ValueError(f"discordant counts must be >= 0, got {only_first} and {only_second}")
    n, k = only_first + only_second, min(only_first, only_second)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def compare_classifiers(models: Mapping[str, nn.Module], images: torch.Tensor, labels: torch.Tensor,
                        make_attack: Callable[[], Attack], batch_size: int = 500) -> dict[str, Any]:
    """Clean and attacked accuracy (95% Wilson intervals) per model, and each model against the first, paired.
    `make_attack` builds a fresh attack per model, so a seeded random start is the same for each."""
    if not models:
        raise ValueError("compare_classifiers needs at least one model")
    n = len(labels)
    rows: list[dict[str, Any]] = []
    robust: dict[str, torch.Tensor] = {}
    for name, model in models.items():
        clean = batched_predict(model, images, batch_size) == labels
        attacked = attack_in_batches(model, make_attack(), images, labels, batch_size=batch_size)
        robust[name] = attacked.predictions == labels
        k = int(robust[name].sum())
        rows.append({"name": name, "clean_accuracy": float(clean.float().mean()), "robust_accuracy": k / n,
                     "robust_accuracy_ci": list(wilson_interval(k, n))})
    first = next(iter(models))
    for row in rows[1:]:
        here, ref = robust[row["name"]], robust[first]
        only_here, only_ref = int((here & ~ref).sum()), int((ref & ~here).sum())
        row["versus_first"] = {"robust_only_here": only_here, "robust_only_in_first": only_ref,
                               "mcnemar_p": mcnemar_p_value(only_here, only_ref)}
    return {"n": n, "reference": first, "rows": rows}


def write_classifier_comparison(comparison: Mapping[str, Any], settings: Mapping[str, Any],
                                out_dir: str | Path) -> Path:
    """results.json (with the settings, git revision and machine) and report.md in `out_dir`; returns it."""
    return write_comparison_files(out_dir, comparison, settings, classifier_report(comparison, settings))


def classifier_report(comparison: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """Markdown: one row per model; the paired columns say whether it differs from the first."""
    lines = [f"# Classifiers under one attack (n {comparison['n']})", "",
             "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()), "",
             f"| model | clean | robust [95% CI] | robust only here / only in {comparison['reference']} "
             "| McNemar p |", "|---|---|---|---|---|"]
    for r in comparison["rows"]:
        lo, hi = r["robust_accuracy_ci"]
        paired = r.get("versus_first")
        pair = (f"{paired['robust_only_here']} / {paired['robust_only_in_first']} | {paired['mcnemar_p']:.2g}"
                if paired else "(reference) | —")
        lines.append(f"| {r['name']} | {100 * r['clean_accuracy']:.2f} | {100 * r['robust_accuracy']:.2f} "
                     f"[{100 * lo:.1f}, {100 * hi:.1f}] | {pair} |")
    lines += ["", "Same images and the same seeded attack for every model. p < 0.05: a measured difference; "
              "otherwise none was measured, whatever the point estimates say.", ""]
    return "\n".join(lines)
