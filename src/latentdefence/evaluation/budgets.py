"""The budget check across runs: one detector evaluation at a cheaper and a larger budget (e.g. `quick`, then
`standard`), paired on the images both attacked. It says whether the cheaper budget was already enough: images only
the larger budget broke, by an exact McNemar test (p < 0.05: the cheaper budget's robustness was too high)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._io import save_figure
from ..stats import wilson_interval
from .compare import pair_with_first_run, write_comparison_folder

# what two budgets of one evaluation must share: the ball, the seed, the training and calibration sets, the detectors
SAME_EVALUATION = ("threat_model", "seed")


def compare_budgets(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per run and detector, the worst case on the first n images (n: the smallest run's; every run attacks the
    test split's images in order) and, against the first run, the images broken by one budget only; refused unless
    the runs share threat model, seed, training and calibration sizes, detectors and each detector's threshold."""
    if len(runs) < 2:
        raise ValueError("a budget check needs at least two runs (the cheaper budget first)")
    (first_label, first), *rest = runs.items()
    for label, res in rest:
        _check_same_evaluation(first_label, first, label, res)
    n = min(int(res["n"]) for res in runs.values())
    rows = []
    for label, res in runs.items():
        broken = {name: _first(det["all_attacks"].get("broken_images"), n, label, name)
                  for name, det in res["detectors"].items()}
        broken["F alone"] = _first(res.get("classifier_alone_broken_images"), n, label, "F alone")
        for name, images in broken.items():
            rows.append({"run": label, "detector": name, "broken_images": images,
                         "robustness": 1 - len(images) / n, "robustness_ci": list(wilson_interval(n - len(images), n))})
    pair_with_first_run(rows, first_label)
    return {"runs": list(runs), "n": n, "threat_model": first["threat_model"], "seed": first["seed"],
            "budgets": {label: res["budget"] for label, res in runs.items()},
            "versions": {label: res.get("version") for label, res in runs.items()},
            "git_revisions": {label: res.get("git_revision") for label, res in runs.items()}, "rows": rows}


def _check_same_evaluation(first_label: str, first: Mapping[str, Any], label: str, res: Mapping[str, Any]) -> None:
    """Refuse runs that are not one evaluation at two budgets."""
    differ = [key for key in SAME_EVALUATION if res[key] != first[key]]
    sizes = ("train", "calibration")
    differ += [f"dataset_sizes.{k}" for k in sizes if res["dataset_sizes"].get(k) != first["dataset_sizes"].get(k)]
    if list(res["detectors"]) != list(first["detectors"]):
        differ.append(f"detectors ({', '.join(first['detectors'])} vs {', '.join(res['detectors'])})")
    else:
        differ += [f"{name}'s threshold" for name, det in res["detectors"].items()
                   if det["threshold"] != first["detectors"][name]["threshold"]]
    if differ:
        raise ValueError(f"runs {first_label!r} and {label!r} differ in {', '.join(differ)}: not one evaluation at "
                         "two budgets")
    if res["budget"] == first["budget"]:
        raise ValueError(f"runs {first_label!r} and {label!r} have the same budget: compare them without "
                         "--different-budgets")


def _first(images: list[int] | None, n: int, label: str, name: str) -> list[int]:
    """The broken images among the first n."""
    if images is None:
        raise ValueError(f"run {label!r} did not record which images {name} lost (re-run it with this version)")
    return sorted(i for i in images if i < n)


def write_budget_comparison(comparison: Mapping[str, Any], out_dir: str | Path) -> Path:
    """results.json, report.md and robustness_by_budget.png in `out_dir`; returns it."""
    return write_comparison_folder(comparison, out_dir, budget_report(comparison),
                                   lambda path: _figure(comparison, path), "robustness_by_budget.png")


def budget_report(comparison: Mapping[str, Any]) -> str:
    """Markdown: each detector's worst case per budget on the shared images, and the paired test against the first."""
    first, n, tm = comparison["runs"][0], comparison["n"], comparison["threat_model"]
    lines = ["# Budget check: was the cheaper budget enough?", "",
             f"Threat model {tm['norm']}, eps {tm['eps']:g}; the first {n} test images, attacked in every run; the "
             "same detectors and thresholds (checked). Worst case = per image, any attack that makes F wrong without "
             "the detector flagging it; F alone: broken by PGD or the AutoAttack-style cascade. Paired against "
             f"`{first}` by an exact McNemar test: p < 0.05 with images broken only by the larger budget means the "
             "cheaper budget over-stated robustness; otherwise there is no measurable difference at this n.", "",
             "| run | version | budget (steps x restarts, targets, Square queries) | git |", "|---|---|---|---|"]
    for label in comparison["runs"]:
        b = comparison["budgets"][label]
        lines.append(f"| {label} | {comparison['versions'][label]} | detector-aware {b['steps']} x {b['restarts']}, "
                     f"guide-point targets {b['n_targets']}, PGD on F {b['pgd_steps']} x {b['pgd_restarts']}, "
                     f"APGD {b['autoattack_steps']} steps / {b['autoattack_targets']} targets, Square "
                     f"{b['square_queries']}, paper's adaptive {b['adaptive_steps']} + {b['centroid_steps']} steps | "
                     f"{(comparison['git_revisions'][label] or '')[:7]} |")
    lines += ["", f"| detector | {' | '.join(f'{r} % [95% CI]' for r in comparison['runs'])} | broken only by the "
              f"larger budget / only by `{first}` | McNemar p |", "|---|" + "---|" * len(comparison["runs"]) + "---|---|"]
    for name in dict.fromkeys(r["detector"] for r in comparison["rows"]):
        mine = [r for r in comparison["rows"] if r["detector"] == name]
        cells = [f"{100 * r['robustness']:.1f} [{100 * r['robustness_ci'][0]:.1f}, {100 * r['robustness_ci'][1]:.1f}]"
                 for r in mine]
        pairs = [r["versus_first"] for r in mine if "versus_first" in r]
        only = "; ".join(f"{p['broken_only_here']} / {p['broken_only_in_first']}" for p in pairs)
        p_values = "; ".join(f"{p['mcnemar_p']:.2g}" for p in pairs)
        lines.append(f"| {name} | {' | '.join(cells)} | {only} | {p_values} |")
    return "\n".join(lines) + "\n"


def _figure(comparison: Mapping[str, Any], path: Path) -> None:
    """Worst-case robustness (95% CI) per detector, one marker per budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["detector"] for r in comparison["rows"]))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(comparison["runs"])
    for i, label in enumerate(comparison["runs"]):
        mine = {r["detector"]: r for r in comparison["rows"] if r["run"] == label}
        x = [j + (i - (len(comparison["runs"]) - 1) / 2) * width for j in range(len(names))]
        y = [100 * mine[name]["robustness"] for name in names]
        err = [[y_ - 100 * mine[name]["robustness_ci"][0] for y_, name in zip(y, names)],
               [100 * mine[name]["robustness_ci"][1] - y_ for y_, name in zip(y, names)]]
        ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, label=label)
    ax.set(xticks=range(len(names)), xticklabels=names, ylabel="worst-case robustness (%)",
           title=f"Budget check on the first {comparison['n']} images")
    ax.legend(fontsize=7)
    save_figure(fig, path, tight_layout=True)
