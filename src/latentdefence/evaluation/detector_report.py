"""A detector evaluation as a person reads it: report.md (worst case per detector, attack by attack, the budgets,
the sanity checks' warnings) and its figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._io import save_figure
from .compare import paired_lines


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _ci(ci: Sequence[float]) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def report(results: Mapping[str, Any], *, title: str | None = None, notes: Sequence[str] = ()) -> str:
    """report.md: per detector a table of attacks and worst cases, F alone, the sanity checks, the budgets."""
    tm = results["threat_model"]
    lines = [f"# {title or 'Detector evaluation'}", "", *notes, "" if notes else "",
             f"Threat model: {tm['norm']}, eps {tm['eps']:g}, untargeted, white-box; {results['n']} images attacked; "
             f"version `{results['version']}`. Robustness = classified correctly, or misclassified and flagged. "
             "SR = undetected success rate (misclassified and not flagged); SR@FPR thresholds come from the clean "
             "calibration images only. Intervals: Wilson 95%.", ""]
    if results.get("resumed"):
        lines += [f"Resumed: the attack stages {', '.join(results['resumed'])} were loaded from an interrupted run of "
                  "this evaluation, with the random state after each, so these are the uninterrupted run's results.",
                  ""]
    if results["warnings"]:
        lines += ["**Warnings (operating points and sanity checks):**", "", *[f"* WARNING: {w}" for w in results["warnings"]], ""]
    else:
        lines += ["No warnings: every operating point is one the calibration set can keep, and the sanity checks "
                  "found nothing (details below).", ""]
    for name, res in results["detectors"].items():
        threshold = "none recorded" if res["threshold"] is None else f"{res['threshold']:g}"
        lines += [f"## {name}", "", f"Clean FP {_pct(res['clean']['fpr'])}% (n {res['clean']['n']}), threshold "
                  f"{threshold}.", "",
                  "| attack | robustness [95% CI] | SR | SR@1% FPR | SR@5% FPR | ROC AUC | AUC per layer |",
                  "|---|---|---|---|---|---|---|"]
        for attack, row in res["attacks"].items():
            layers = ", ".join(f"{k} {v['roc_auc']:.3f}" for k, v in row["per_layer"].items())
            sr = row["sr_at_fpr"]
            lines.append(f"| {attack} | {_pct(row['robustness'])} {_ci(row['robustness_ci'])} | "
                         f"{_pct(row['undetected_success_rate'])} | {_pct(sr['0.01']['sr']) if '0.01' in sr else ''} | "
                         f"{_pct(sr['0.05']['sr']) if '0.05' in sr else ''} | {row['roc_auc']:.3f} | {layers} |")
        for key, label in (("paper_attacks", "worst case, paper's attacks"),
                           ("all_attacks", "worst case, all attacks")):
            w = res[key]
            sr = w["sr_at_fpr"]
            lines.append(f"| **{label}** | **{_pct(w['robustness'])}** {_ci(w.get('robustness_ci', (0, 1)))} | "
                         f"{_pct(w['undetected_success_rate'])} | {_pct(sr['0.01']) if '0.01' in sr else ''} | "
                         f"{_pct(sr['0.05']) if '0.05' in sr else ''} | | |")
        lines.append("")
        if res.get("skipped"):
            lines += ["Not run: " + "; ".join(f"{k} ({v})" for k, v in res["skipped"].items()) + ".", ""]
    aa = results["classifier_alone"]["autoattack_robust_accuracy_after"]
    lines += ["## F alone, AutoAttack-style cascade", "", "| after | robust accuracy |", "|---|---|"]
    lines += [f"| {k} | {_pct(v)} |" for k, v in aa.items()]
    lines += [""] + paired_lines(results) + _sanity_lines(results) + _budget_check_lines(results) + _budget_lines(results)
    if results.get("wall_time_s"):
        lines += ["Wall time (s): " + ", ".join(f"{k} {v}" for k, v in results["wall_time_s"].items())
                  + f"; total {sum(results['wall_time_s'].values()):.0f} s.", ""]
    return "\n".join(lines)


def _sanity_lines(results: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, s in results["sanity"].items():
        more, sweep, gf, tr = s["more_iterations"], s["eps_sweep"], s["gradient_free"], s["transfer_vs_white_box"]
        lines += [f"## Sanity checks: {name} (first {s['n']} images)", "",
                  f"* more steps: {more['attack']} {_pct(more['budget'])}% at the budget, "
                  f"{_pct(more['double_steps_and_restarts'])}% with twice the steps and restarts (must not rise).",
                  "* robustness against eps (`robustness_vs_eps.png`, should fall to ~0): " + ", ".join(
                      f"{e:g}: {100 * r:.1f}%" for e, r in zip(sweep["eps"], sweep["detector"]))
                  + " (F alone under PGD: " + ", ".join(f"{100 * r:.1f}%" for r in sweep["classifier_alone"]) + ")."]
        if gf.get("only_square") is not None:
            lines.append(f"* gradient-free: Square on F + detector broke {gf['only_square']} image(s) no gradient "
                         "attack broke (must be 0).")
        if tr["white_box"] is not None:
            lines.append(f"* transfer: attacks on F alone leave {_pct(tr['f_alone'])}%, detector-aware attacks "
                         f"{_pct(tr['white_box'])}% (F alone must not be lower).")
        if "transfer" in s:
            t = s["transfer"]
            lines.append(f"* transfer from {t['source']} (its own PGD robust accuracy "
                         f"{100 * t['source_pgd_robust_accuracy']:.1f}%): robustness {_pct(t['robustness_transfer'])}% "
                         f"vs {_pct(t['robustness_white_box'])}% white-box.")
        sg = s["surrogate_gradients"]
        lines.append("* surrogate gradients: " + ("no `surrogate_score`" if sg is None else
                     f"zero or not finite on {100 * sg['vanished_fraction']:.0f}% of images (warn above 50%)."))
        lines.append("")
    return lines


def _budget_check_lines(results: Mapping[str, Any]) -> list[str]:
    if "budget_check" not in results:
        return ["Budget check not run (`budget_check=True` re-runs every attack at twice the steps and restarts).", ""]
    lines = ["## Budget check: every attack at twice the steps and restarts, same images", "",
             "| detector | worst case at the budget | at 2x | change (pp) | images only 2x broke |",
             "|---|---|---|---|---|"]
    for name, c in results["budget_check"].items():
        lines.append(f"| {name} | {_pct(c['robustness'])} {_ci(c['robustness_ci'])} | {_pct(c['robustness_doubled'])} "
                     f"{_ci(c['robustness_doubled_ci'])} | {100 * c['change']:+.2f} | {c['newly_broken']} / {c['n']} "
                     f"({_pct(c['newly_broken'] / c['n'])}% {_ci(c['newly_broken_ci'])}) |")
    return lines + ["", "A version's budget is enough when doubling it changes robustness by < 0.5 point.", ""]


def _budget_lines(results: Mapping[str, Any]) -> list[str]:
    """The three versions' budgets side by side, and this run's."""
    versions = {**results["versions"], **({} if results["version"] in results["versions"]
                                          else {results["version"]: results["budget"]})}
    lines = ["## Versions and budgets", "",
             "Attacks: PGD on F; AutoAttack-style cascade on F (APGD-CE, APGD-T, Square under L-inf); the DLD "
             "paper's adaptive attack (DLD with encoder-decoders); guide-point soft k-NN (k-NN detectors); selective "
             "and orthogonal PGD (detectors with `surrogate_score`); Square on F + detector (L-inf). This run: "
             f"`{results['version']}`.", "",
             "| setting | " + " | ".join(versions) + " |", "|---|" + "---|" * len(versions)]
    for key in results["budget"]:
        vals = [v[key] for v in versions.values()]
        fmt = [", ".join(f"{x:.3g}" for x in v) if isinstance(v, (list, tuple))
               else f"{v:.3g}" if isinstance(v, float) else str(v) for v in vals]
        lines.append(f"| {key} | " + " | ".join(fmt) + " |")
    return lines + [""]


def write_figures(out: Path, results: Mapping[str, Any]) -> None:
    """Robustness against eps per checked detector, and each detector's ROC under each attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, s in results["sanity"].items():
        sweep = s["eps_sweep"]
        ax.plot(sweep["eps"], [100 * r for r in sweep["detector"]], "o-", label=f"F + {name}, {sweep['attack']}")
    if results["sanity"]:
        sweep = next(iter(results["sanity"].values()))["eps_sweep"]
        ax.plot(sweep["eps"], [100 * r for r in sweep["classifier_alone"]], "s--", label="F alone, PGD")
    ax.set(xlabel=f"eps ({results['threat_model']['norm']})", ylabel="robustness (%)",
           title="Robustness against eps (should reach ~0)")
    if ax.lines:                                       # no sanity checks run: an empty figure, no legend
        ax.legend(fontsize=7)
    save_figure(fig, out / "robustness_vs_eps.png", tight_layout=True)
    dets = results["detectors"]
    fig, axes = plt.subplots(1, len(dets), figsize=(4.5 * len(dets), 4.2), squeeze=False)
    for ax, (name, res) in zip(axes[0], dets.items()):
        for attack, row in res["attacks"].items():
            if row["roc"]["fpr"]:
                ax.plot(row["roc"]["fpr"], row["roc"]["tpr"], label=f"{attack} ({row['roc_auc']:.3f})")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(xlabel="FPR (clean)", ylabel="TPR (misclassified adv.)", title=f"{name} ROC")
        if len(ax.lines) > 1:
            ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, out / "roc.png", tight_layout=True)
    _worst_case_vs_fpr(out, results)


def _worst_case_vs_fpr(out: Path, results: Mapping[str, Any]) -> None:
    """worst_case_vs_fpr.png: each detector's worst case (95% CI) at the calibrated threshold and re-judged at each
    SR@FPR operating point (the same kept iterates, not re-attacked there), beside F alone."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, res in results["detectors"].items():
        w = res["all_attacks"]
        points = sorted([(float(f), 1 - r, w["sr_at_fpr_ci"][f]) for f, r in w["sr_at_fpr"].items()]
                        + [(res["clean"]["calibration_fpr"], w["robustness"],
                            (1 - w["robustness_ci"][1], 1 - w["robustness_ci"][0]))])
        x = [100 * p[0] for p in points]
        y = [100 * p[1] for p in points]
        err = [[100 * max(0.0, p[1] - (1 - p[2][1])) for p in points], [100 * max(0.0, 1 - p[2][0] - p[1])
                                                                        for p in points]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"F + {name}")
    broken = results.get("classifier_alone_broken_images")
    alone = 1 - len(broken) / results["n"] if broken is not None else \
        min(results["classifier_alone"]["autoattack_robust_accuracy_after"].values())
    ax.axhline(100 * alone, ls="--", color="grey", label="F alone (PGD and the cascade)")
    ax.set_xscale("symlog", linthresh=1.0)          # linear below 1%: a threshold that flags nothing sits at 0
    ax.set(xlabel="clean false-positive rate on the calibration images (%)",
           ylabel="worst-case robustness (%)", title=f"Against attackers who know the detector (n {results['n']})")
    ax.legend(fontsize=7)
    save_figure(fig, out / "worst_case_vs_fpr.png", tight_layout=True)


