"""One table and one figure from several `evaluate_detectors` runs (detector variants, baselines), refused unless
the runs share the threat model, budget, images and classifier: a comparison across different evaluations decides
nothing. Runs on different classifiers (F variants) compare only when asked, each beside its own F alone."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._io import atomic_path, git_revision, save_figure, write_json
from .classifiers import mcnemar_p_value

# what two runs must agree on to be compared; `classifier_alone` (F's seeded cascade on the attacked images) is the
# fingerprint of F and the images together
SHARED = ("threat_model", "budget", "n", "seed", "dataset_sizes", "classifier_alone")


def load_run(path: str | Path) -> dict[str, Any]:
    """A run's results.json (a folder or the file itself), with a clear error when it is not one."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no results.json (an `evaluate-detector` or `dld-mnist-adaptive` output)")
    try:
        res = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from err
    missing = [key for key in (*SHARED, "detectors") if key not in res]
    if missing:
        raise ValueError(f"{file}: not a detector evaluation (missing {', '.join(missing)})")
    return res


def compare_runs(runs: Mapping[str, Mapping[str, Any]], same_classifier: bool = True) -> dict[str, Any]:
    """Per run and detector: clean FP, grey-box PGD, the worst case (interval, strongest attack) at the calibrated and
    re-judged FP rates. `same_classifier=False` admits runs on different classifiers (same threat model, budget,
    seed and image counts), each row then read against its own run's F alone."""
    if not runs:
        raise ValueError("compare_runs needs at least one run")
    shared = SHARED if same_classifier else tuple(key for key in SHARED if key != "classifier_alone")
    (first_label, first), *rest = runs.items()
    for label, res in rest:
        for key in shared:
            if res[key] != first[key]:
                raise ValueError(f"runs {first_label!r} and {label!r} differ in {key!r}: not the same evaluation "
                                 "(threat model, budget, images and classifier must match)")
    rows = []
    for label, res in runs.items():
        for name, det in res["detectors"].items():
            worst = det["all_attacks"]
            rows.append({"run": label, "detector": name, "clean_fpr": det["clean"]["fpr"],
                         "threshold": det["threshold"], "pgd": det["attacks"].get("pgd", {}).get("robustness"),
                         "robustness": worst["robustness"], "robustness_ci": worst["robustness_ci"],
                         "strongest": worst["strongest"], "sr_at_fpr": worst["sr_at_fpr"],
                         "sr_at_fpr_ci": worst["sr_at_fpr_ci"], "params": _params(res, name),
                         "git_revision": res.get("git_revision"), "broken_images": worst.get("broken_images")})
    pair_with_first_run(rows, first_label)
    alone = {label: _classifier_alone(res) for label, res in runs.items()}
    return {"runs": list(runs), "rows": rows, "fprs": _shared_fprs(rows), "n": first["n"],
            "threat_model": first["threat_model"],
            "version": first.get("version"), "budget": first["budget"], "same_classifier": same_classifier,
            "classifier_alone": alone[first_label] if same_classifier else alone,
            "within_runs": {label: res["paired"] for label, res in runs.items() if res.get("paired")}}


def pair_with_first_run(rows: list[dict[str, Any]], first_label: str) -> None:
    """Each later row against the first run's row of the same detector, by an exact McNemar test on the per-image
    worst case (the same images, checked), when both runs recorded which images were broken. On different
    classifiers the pair compares whole defences, F and detector together."""
    reference = {r["detector"]: r for r in rows if r["run"] == first_label and r["broken_images"] is not None}
    for r in rows:
        ref = reference.get(r["detector"])
        if r["run"] == first_label or ref is None or r["broken_images"] is None:
            continue
        here, there = set(r["broken_images"]), set(ref["broken_images"])
        r["versus_first"] = {"broken_only_here": len(here - there), "broken_only_in_first": len(there - here),
                             "mcnemar_p": mcnemar_p_value(len(here - there), len(there - here))}


def paired_within_run(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Exact McNemar tests on one run's images: each detector's worst case against F alone (PGD and the cascade), and
    the first detector (DLD in the DLD runs) against each other detector; needs the per-image outcomes."""
    alone = results.get("classifier_alone_broken_images")
    broken = {name: det["all_attacks"].get("broken_images") for name, det in results["detectors"].items()}
    pairs = [(name, "F alone") for name in broken] + [(first, other) for first in list(broken)[:1]
                                                       for other in list(broken)[1:]]
    outcomes = {**broken, "F alone": alone}
    rows = []
    for a, b in pairs:
        if outcomes[a] is None or outcomes[b] is None:
            continue
        only_a, only_b = set(outcomes[a]) - set(outcomes[b]), set(outcomes[b]) - set(outcomes[a])
        n = results["classifier_alone"]["n"]
        rows.append({"first": a, "second": b, "robustness_first": 1 - len(outcomes[a]) / n,
                     "robustness_second": 1 - len(outcomes[b]) / n, "broken_only_first": len(only_a),
                     "broken_only_second": len(only_b), "mcnemar_p": mcnemar_p_value(len(only_a), len(only_b))})
    return rows


def paired_lines(results: Mapping[str, Any]) -> list[str]:
    """Markdown: the within-run paired tests (`paired_within_run`), or nothing when the run has none."""
    rows = results.get("paired") or []
    if not rows:
        return []
    lines = ["## Paired on the same images (exact McNemar)", "",
             "Worst case over all attacks per image; F alone: broken by PGD or the cascade. p < 0.05 is a measured "
             "difference; otherwise there is no measurable difference at this n.", "",
             "| first | second | robustness first / second | broken only by first's attacks / only second's | "
             "McNemar p |", "|---|---|---|---|---|"]
    lines += [f"| {r['first']} | {r['second']} | {100 * r['robustness_first']:.1f}% / {100 * r['robustness_second']:.1f}% "
              f"| {r['broken_only_first']} / {r['broken_only_second']} | {r['mcnemar_p']:.2g} |" for r in rows]
    return lines + [""]


def _classifier_alone(res: Mapping[str, Any]) -> dict[str, Any]:
    """F's robustness under the run's AutoAttack-style cascade (the lowest after any stage)."""
    alone = res["classifier_alone"]
    return {"robustness": min(alone["autoattack_robust_accuracy_after"].values()), "n": alone["n"]}


def _alone_lines(comparison: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(label, robustness) of F alone: one line, or one per run when the runs have different classifiers."""
    alone = comparison["classifier_alone"]
    if comparison.get("same_classifier", True):
        return [("F alone", alone["robustness"])]
    return [(f"F alone ({label})", value["robustness"]) for label, value in alone.items()]


def _shared_fprs(rows: list[dict[str, Any]]) -> list[str]:
    """The re-judged operating points (keys of `sr_at_fpr`) every row has, in increasing order."""
    shared = set.intersection(*(set(r["sr_at_fpr"]) for r in rows))
    if not shared:
        raise ValueError("the runs share no re-judged operating point (sr_at_fpr): evaluate them with common fprs")
    return sorted(shared, key=float)


def _params(res: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The DLD settings a row differs by (taps, k, latent size, encoder epochs), when the run records them."""
    source = res.get("detector_source", {})
    params = source.get("params") if name == "dld" else None
    if not params:
        return None
    return {"taps": len(params["taps"]), "k": params["k"], "latent_dim": params["latent_dim"],
            "encoder_epochs": (params.get("training") or {}).get("epochs")}


def write_comparison(comparison: Mapping[str, Any], out_dir: str | Path) -> Path:
    """results.json, report.md and worst_case_vs_fpr.png in `out_dir`; returns it."""
    return write_comparison_folder(comparison, out_dir, comparison_report(comparison),
                                   lambda path: _figure(comparison, path), "worst_case_vs_fpr.png")


def write_comparison_folder(comparison: Mapping[str, Any], out_dir: str | Path, report_text: str,
                            draw: Callable[[Path], None], figure_name: str) -> Path:
    """A comparison's folder: results.json (with the git revision), report.md and its figure; returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {**comparison, "git_revision": git_revision()})
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(report_text)
    draw(out / figure_name)
    return out


def comparison_report(comparison: Mapping[str, Any]) -> str:
    """Markdown: one row per run and detector, the worst case over every attack with its Wilson interval."""
    tm, fprs = comparison["threat_model"], comparison["fprs"]
    same = "the same budget, images and classifier in every run (checked)" if comparison.get("same_classifier", True) \
        else "the same budget and image counts in every run (checked), each run on its own classifier"
    at_headers = [f"{'worst case at' if i == 0 else 'at'} {100 * float(key):g}% FP" for i, key in enumerate(fprs)]
    lines = ["# Detectors under the same detector-aware evaluation", "",
             f"Threat model {tm['norm']}, eps {tm['eps']:g}; {comparison['n']} images; version "
             f"`{comparison['version']}`; {same}. Worst case "
             "= per image, any attack that makes F wrong without the detector flagging it. At "
             f"{' and '.join(f'{100 * float(key):g}%' for key in fprs)} FP the kept "
             "iterates (aimed at the calibrated threshold) are re-judged, not re-optimised: upper bounds.", "",
             "| run | detector | taps / k / latent / encoder epochs | clean FP % | PGD on F % | worst case % [95% CI] "
             f"| strongest | {' | '.join(at_headers)} |", "|---|---|---|---|---|---|---|" + "---|" * len(fprs)]
    for r in comparison["rows"]:
        p = r["params"]
        design = f"{p['taps']} / {p['k']} / {p['latent_dim']} / {p['encoder_epochs']}" if p else "—"
        pgd = f"{100 * r['pgd']:.2f}" if r["pgd"] is not None else "—"
        lo, hi = r["robustness_ci"]
        at = " | ".join(f"{100 * (1 - r['sr_at_fpr'][key]):.2f}" for key in fprs)
        lines.append(f"| {r['run']} | {r['detector']} | {design} | {100 * r['clean_fpr']:.2f} | {pgd} | "
                     f"{100 * r['robustness']:.2f} [{100 * lo:.1f}, {100 * hi:.1f}] | {r['strongest']} | {at} |")
    for label, robustness in _alone_lines(comparison):
        lines.append(f"| {label} | — | — | — | — | {100 * robustness:.2f} (AutoAttack-style cascade) "
                     f"| — |{' — |' * len(fprs)}")
    paired = [r for r in comparison["rows"] if "versus_first" in r]
    if paired:
        first = comparison["runs"][0]
        whole = "" if comparison.get("same_classifier", True) else "; each run on its own F, so F and detector together"
        lines += ["", f"Paired against `{first}` (the same detector, the same images{whole}): images broken in the "
                  "worst case by one run only, and the exact McNemar test; p < 0.05 is a measured difference.", "",
                  f"| run | detector | broken only here | broken only in {first} | McNemar p |", "|---|---|---|---|---|"]
        lines += [f"| {r['run']} | {r['detector']} | {r['versus_first']['broken_only_here']} | "
                  f"{r['versus_first']['broken_only_in_first']} | {r['versus_first']['mcnemar_p']:.2g} |" for r in paired]
    within = comparison.get("within_runs", {})
    if within:
        lines += ["", "Within each run that recorded them (same F, same images): each detector against F alone, "
                  "exact McNemar.", "", "| run | first | second | robustness first / second | broken only by first's "
                  "attacks / only second's | McNemar p |", "|---|---|---|---|---|---|"]
        lines += [f"| {label} | {r['first']} | {r['second']} | {100 * r['robustness_first']:.2f} / "
                  f"{100 * r['robustness_second']:.2f} | {r['broken_only_first']} / {r['broken_only_second']} | "
                  f"{r['mcnemar_p']:.2g} |" for label, pairs in within.items() for r in pairs]
    return "\n".join(lines) + "\n"


def _figure(comparison: Mapping[str, Any], path: Path) -> None:
    """Worst-case robustness (95% CI) against the clean FP rate, per row; F alone as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(6, 4))
    fprs = comparison["fprs"]
    for r in comparison["rows"]:   # the calibrated point and the re-judged ones, in order of FP rate
        points = sorted([(100 * r["clean_fpr"], 1 - r["robustness"],
                          [1 - r["robustness_ci"][1], 1 - r["robustness_ci"][0]])]
                        + [(100 * float(key), r["sr_at_fpr"][key], r["sr_at_fpr_ci"][key]) for key in fprs])
        x, sr, ci = (list(v) for v in zip(*points))
        y = [100 * (1 - s) for s in sr]
        err = [[max(0.0, 100 * (c[1] - s)) for s, c in zip(sr, ci)],     # robustness = 1 - SR: bars swap sides
               [max(0.0, 100 * (s - c[0])) for s, c in zip(sr, ci)]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"F + {r['detector']} ({r['run']})")
    for (label, robustness), style in zip(_alone_lines(comparison), ("--", ":", "-.", (0, (1, 3)), (0, (5, 5)))):
        ax.axhline(100 * robustness, ls=style, color="grey", label=f"{label} (cascade)")
    ticks = sorted({2.0, *(100 * float(key) for key in fprs)})
    rejudged = " and ".join(f"{100 * float(key):g}" for key in fprs)
    ax.set(xscale="log", xlabel=f"clean false-positive rate (%; {rejudged}: re-judged, not re-optimised)",
           xticks=ticks, xticklabels=[f"{t:g}" for t in ticks], ylabel="worst-case robustness (%)",
           title=f"Against attackers who know the detector (n {comparison['n']})")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=6)
    save_figure(fig, path, tight_layout=True)
