"""The README's paper-vs-ours table and the docs' copies of report tables, generated from committed results so
they cannot drift apart."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..stats import wilson_interval

ARCHIVE = "archive"   # docs/results/archive/: earlier releases, variants, comparisons and benchmarks

# (label, path into results.json, paper value as a fraction; an AUC stays as is)
DLD_ROWS = [
    ("DLD Table I, FGSM eps 0.3: robustness", ("table1", "fgsm", "robustness"), 0.9840),
    ("DLD Table I, PGD eps 0.3: robustness", ("table1", "pgd", "robustness"), 0.9756),
    ("DLD Table I, CW-L2: robustness", ("table1", "cw", "robustness"), 0.9610),
    ("DLD Table I, adaptive eps 0.3: robustness", ("table1", "adaptive", "robustness"), 0.9562),
    ("DLD Table I, PGD: base accuracy", ("table1", "pgd", "base_accuracy"), 0.9120),
    ("DLD Table I, FGSM: ROC AUC", ("table1", "fgsm", "roc_auc"), 0.994),
    ("DLD Table I, PGD: ROC AUC", ("table1", "pgd", "roc_auc"), 0.99),
    ("DLD Table I, adaptive: ROC AUC", ("table1", "adaptive", "roc_auc"), 0.982),
    ("DLD clean false-positive rate", ("fpr",), 0.0196),
]
LAD_ROWS = [
    ("LAD Table II, FGSM on LeNet: original -> Adv. LeNet", ("table2", "fgsm"), (0.0177, 0.2167)),
    ("LAD Table II, PGD on LeNet: original -> Adv. LeNet", ("table2", "pgd"), (0.006, 0.0944)),
    ("LAD Table III, transfer FGSM: original -> FT-0.1", ("table3", "fgsm"), (0.4171, 0.4960)),
    ("LAD Table III, transfer PGD: original -> FT-0.1", ("table3", "pgd"), (0.2993, 0.3593)),
    ("LAD Table III, transfer GA: original -> FT-0.1", ("table3", "ga"), (0.9982, 0.9972)),
]


# CIFAR-10 rows: the paper has no CIFAR-10 column; its SVHN one (a different dataset) is shown, labelled, for scale
CIFAR_ROWS = [
    ("FGSM: robustness", ("table1", "fgsm", "robustness"), 0.9459),
    ("PGD: robustness", ("table1", "pgd", "robustness"), 0.7969),
    ("CW-L2: robustness", ("table1", "cw", "robustness"), 0.9941),
    ("adaptive: robustness", ("table1", "adaptive", "robustness"), 0.5132),
    ("PGD: base accuracy (F alone)", ("table1", "pgd", "base_accuracy"), 0.2259),
    ("FGSM: ROC AUC", ("table1", "fgsm", "roc_auc"), 0.971),
    ("PGD: ROC AUC", ("table1", "pgd", "roc_auc"), 0.906),
    ("adaptive: ROC AUC", ("table1", "adaptive", "roc_auc"), 0.811),
    ("clean false-positive rate", ("fpr",), 0.1002),
]
CIFAR = "CIFAR-10 (JPEG copy)"


def eps_label(eps: float) -> str:
    """An L-inf radius as people write it: 8/255 for natural images, 0.3 otherwise."""
    ticks = eps * 255
    return f"{round(ticks)}/255" if abs(ticks - round(ticks)) < 1e-4 and eps < 0.1 else f"{eps:g}"


# detector key in dld-mnist-adaptive's results.json -> (README name, the paper's robustness under its own attacks)
ADAPTIVE_ROWS = {"dld": ("DLD", "95.62% (adaptive)"), "dknn": ("Deep k-NN", "—"), "mahalanobis": ("Mahalanobis", "—"),
                 "lid": ("LID", "—")}


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _fmt(value: float, key: str) -> str:
    return f"{value:.3f}" if key == "roc_auc" else f"{100 * value:.2f}%"


def _fmt_ci(res: Any, path: tuple[str, ...]) -> str:
    """The value with its 95% interval when results.json records one beside it (`<key>_ci`)."""
    value, key = _get(res, path), path[-1]
    ci = _get(res, path[:-1]).get(f"{key}_ci") if len(path) > 1 else res.get("clean", {}).get(f"{key}_ci")
    if not ci:
        return _fmt(value, key)
    lo, hi = ci
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]" if key == "roc_auc" else _rate_ci(value, ci)


def results_table(results_dir: Path) -> str:
    """Markdown rows: paper vs ours for the committed MNIST results found under `results_dir`."""
    lines = ["| experiment | paper | ours | n | source |", "|---|---|---|---|---|"]
    dld = results_dir / "dld-mnist-table1" / "results.json"
    if dld.is_file():
        res = json.loads(dld.read_text())
        for label, path, paper in DLD_ROWS:
            n = res["table1"][path[1]]["n"] if path[0] == "table1" else res.get("clean", {}).get("n", "")
            lines.append(f"| {label} | {_fmt(paper, path[-1])} | {_fmt_ci(res, path)} | {n} "
                         f"| `{dld.parent.relative_to(results_dir.parent.parent)}` |")
    lad = results_dir / "lad-mnist" / "results.json"
    if lad.is_file():
        res = json.loads(lad.read_text())
        source = f"`{lad.parent.relative_to(results_dir.parent.parent)}`"
        for label, path, (p0, p1) in LAD_ROWS:
            if path[1] not in res[path[0]]:
                continue
            row = _get(res, path)
            lines.append(f"| {label} | {100 * p0:.2f}% -> {100 * p1:.2f}% | {100 * row['original']:.2f}% -> "
                         f"{100 * row['finetuned']:.2f}% | {row['n']} | {source} |")
        for name, row in res["table2"].items():
            if "finetuned_rerun" in row:  # the attack re-run against each model: the real white-box number
                lines.append(f"| LAD Table II, {name.upper()} re-run against each model: original -> Adv. LeNet | "
                             f"not reported | {100 * row['original_rerun']:.2f}% -> {100 * row['finetuned_rerun']:.2f}% "
                             f"| {row['rerun_n']} | {source} |")
        for table, model, group in (("table2", "Adv. LeNet", "white"), ("table3", "FT-0.1", "transfer")):
            block = res.get("baselines", {}).get(table)
            if block and "reconstruction" in block["lad_minus_control"]:
                diff, settings = block["lad_minus_control"]["reconstruction"], res["settings"]
                seeds = (len(settings["finetune_seeds"]), len(settings.get("control_seeds", [0])))
                lines.append(f"| LAD Table {'II' if table == 'table2' else 'III'}, {model} minus the same-budget "
                             f"reconstruction control, FGSM / PGD (pp, mean of {seeds[0]} / {seeds[1]} seeds) | "
                             "not reported | "
                             f"{100 * diff[group + '/fgsm']:+.2f} / {100 * diff[group + '/pgd']:+.2f} | "
                             f"{res[table]['fgsm']['n']} | {source} |")
        t4 = res["table4"]
        lines.append(f"| LAD Table IV, clean accuracy: original -> FT-0.1 | 99.13% -> 99.34% | {100 * t4['original']:.2f}% -> "
                     f"{100 * t4['ours']:.2f}% | {t4['n']} | {source} |")
        if t4.get("ga") is not None:
            lines.append(f"| LAD Table IV, clean accuracy after fine-tuning on GA | 97.23% | {100 * t4['ga']:.2f}% | "
                         f"{t4['n']} | {source} |")
        f5 = res["fig5"]
        lines.append(f"| LAD Fig. 5, success rate of generated examples at eps {f5['eps'][-1]:g} | ~100% | "
                     f"{100 * f5['success_rate'][-1]:.2f}% | {res['sets']['large_adv'] // len(f5['eps'])} | {source} |")
    adaptive = results_dir / "dld-mnist-adaptive" / "results.json"
    if adaptive.is_file():
        lines += _adaptive_rows(json.loads(adaptive.read_text()),
                                f"`{adaptive.parent.relative_to(results_dir.parent.parent)}`")
    hardening = results_dir / ARCHIVE / "dld-mnist-hardening" / "results.json"
    if hardening.is_file():
        lines += _hardening_rows(json.loads(hardening.read_text()),
                                 f"`{hardening.parent.relative_to(results_dir.parent.parent)}`")
    variants = results_dir / ARCHIVE / "dld-mnist-f-variants" / "results.json"
    if variants.is_file():
        lines += _classifier_variant_rows(json.loads(variants.read_text()),
                                          f"`{variants.parent.relative_to(results_dir.parent.parent)}`")
    lines += _cifar_rows(results_dir)
    if len(lines) == 2:
        lines.append("| (no committed results yet) | | | | |")
    return "\n".join(lines)


def _adaptive_rows(res: dict[str, Any], source: str, dataset: str = "", paper: dict[str, str] | None = None
                   ) -> list[str]:
    """Per detector: robustness under the paper's attacks -> under every attack we have (per-image worst case)."""
    eps, on = eps_label(res["settings"]["attacks"]["eps"]), f"{dataset}, " if dataset else ""
    rows = []
    for key, det in res["detectors"].items():
        name, claim = ADAPTIVE_ROWS.get(key, (key, "—"))
        claim = (paper or {}).get(key, claim)
        w0, w1 = det["paper_attacks"], det["all_attacks"]
        rows.append(f"| {name} on F, {on}eps {eps}: robustness, paper's attacks -> all our attacks (worst case) | "
                    f"{claim} | {_rate_ci(w0['robustness'], w0['robustness_ci'])} -> "
                    f"{_rate_ci(w1['robustness'], w1['robustness_ci'])} | {w1['n']} | {source} |")
    aa = res["classifier_alone"]
    robust = aa["autoattack_robust_accuracy_after"]["square"]
    rows.append(f"| F alone, {on}eps {eps}: robust accuracy, AutoAttack-style cascade (APGD-CE, APGD-T, Square) | — | "
                f"{_rate_ci(robust, wilson_interval(round(robust * aa['n']), aa['n']))} | {aa['n']} | {source} |")
    for pair in res.get("paired", []):
        if pair["first"] == "dld":
            rows.append(f"| DLD minus {ADAPTIVE_ROWS.get(pair['second'], (pair['second'],))[0]}, {on}eps {eps}: "
                        f"worst-case robustness (pp; exact McNemar p on the same images) | — | "
                        f"{100 * (pair['robustness_first'] - pair['robustness_second']):+.2f} (p {pair['mcnemar_p']:.2g})"
                        f" | {aa['n']} | {source} |")
    return rows


def _rate_ci(rate: float, ci: Any) -> str:
    """A rate in percent with its 95% interval: "25.00% [17.6, 34.2]"."""
    return f"{100 * rate:.2f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _cifar_rows(results_dir: Path) -> list[str]:
    """DLD's Table I on CIFAR-10 (the paper's SVHN column beside it, labelled) and its adaptive evaluation."""
    rows: list[str] = []
    table1 = results_dir / "dld-cifar10-table1" / "results.json"
    if table1.is_file():
        res = json.loads(table1.read_text())
        source = f"`{table1.parent.relative_to(results_dir.parent.parent)}`"
        eps = eps_label(res["settings"]["attacks"]["eps"])
        for label, path, paper in CIFAR_ROWS:
            n = res["table1"][path[1]]["n"] if path[0] == "table1" else res.get("dataset_sizes", {}).get("clean_eval", "")
            rows.append(f"| DLD Table I on {CIFAR}, eps {eps}, {label} | SVHN: {_fmt(paper, path[-1])} | "
                        f"{_fmt_ci(res, path)} | {n} | {source} |")
    adaptive = results_dir / "dld-cifar10-adaptive" / "results.json"
    if adaptive.is_file():
        rows += _adaptive_rows(json.loads(adaptive.read_text()),
                               f"`{adaptive.parent.relative_to(results_dir.parent.parent)}`", CIFAR,
                               {"dld": "SVHN: 51.32% (adaptive)"})
    return rows


HARDENING_ROWS = {"dld": "DLD (cpu profile)", "dld_hardened": "DLD, encoders hardened on detector-aware attacks"}


def _hardening_rows(res: dict[str, Any], source: str) -> list[str]:
    """Per DLD variant: the worst case over every attack, with its interval and clean FP (issue 24)."""
    rows = []
    for key, det in res["detectors"].items():
        w, fp = det["all_attacks"], det["clean"]["fpr"]
        rows.append(f"| {HARDENING_ROWS.get(key, key)} on F, eps {res['threat_model']['eps']:g}, clean FP "
                    f"{100 * fp:.2f}%: worst case over all attacks | 95.62% (adaptive) | "
                    f"{_rate_ci(w['robustness'], w['robustness_ci'])} | {w['n']} | {source} |")
    return rows


def _classifier_variant_rows(res: dict[str, Any], source: str) -> list[str]:
    """DLD and F alone on each classifier of a `compare-evaluations --different-classifiers` run but the first (the
    cpu profile's, whose rows `_adaptive_rows` already gives)."""
    eps, first = res["threat_model"]["eps"], res["runs"][0]
    rows = []
    for r in res["rows"]:
        if r["detector"] != "dld" or r["run"] == first:
            continue
        alone = res["classifier_alone"][r["run"]]["robustness"]
        rows.append(f"| DLD on the {r['run']}, eps {eps:g}, clean FP {100 * r['clean_fpr']:.2f}%: worst case over all "
                    f"attacks (F alone under the cascade: {100 * alone:.2f}%) | 95.62% (adaptive) | "
                    f"{_rate_ci(r['robustness'], r['robustness_ci'])} | {res['n']} | {source} |")
    return rows


# The rows the README shows: the current releases' answers (every row: docs/results/README.md).
HEADLINE = ("DLD Table I, PGD eps 0.3: robustness", "DLD clean false-positive rate", "DLD on F, eps 0.3:",
            "F alone, eps 0.3:", "LAD Table II, PGD re-run against each model",
            "LAD Table II, Adv. LeNet minus the same-budget reconstruction control",
            "DLD Table I on CIFAR-10 (JPEG copy), eps 8/255, PGD: robustness", "DLD on F, CIFAR-10", "Deep k-NN on F, CIFAR-10",
            "F alone, CIFAR-10", "DLD minus F alone, CIFAR-10", "DLD minus Deep k-NN, CIFAR-10")


def headline_table(results_dir: Path) -> str:
    """The README's short table: the `HEADLINE` rows of `results_table`, in its order."""
    lines = results_table(results_dir).splitlines()
    return "\n".join(lines[:2] + [row for row in lines[2:] if row.startswith(tuple(f"| {h}" for h in HEADLINE))])


def replace_block(text: str, name: str, body: str, where: Path | str = "text") -> str:
    """`text` with the lines between `<!-- NAME:start -->` and `<!-- NAME:end -->` replaced by `body`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"{where}: markers {start} / {end} not found once each, in that order")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def update_readme(readme: Path, results_dir: Path, check: bool = False, headline: bool = False) -> bool:
    """Rewrite the block between the markers with every row (or the `headline` ones); with check=True only report
    whether it is current."""
    text = readme.read_text()
    table = headline_table(results_dir) if headline else results_table(results_dir)
    return rewrite(readme, text, replace_block(text, "results", table, readme), check)


def rewrite(path: Path, old: str, new: str, check: bool) -> bool:
    """The generated-file rule: with `check`, whether `path` (holding `old`) is current; else write `new` where it
    differs, and report it current."""
    if check:
        return new == old
    if new != old:
        path.write_text(new)
    return True


EXCERPT = re.compile(r"(<!-- excerpt: (?P<source>\S+) table (?P<n>\d+) -->\n)(?P<body>.*?)(<!-- /excerpt -->)", re.S)


def report_tables(text: str) -> list[str]:
    """The markdown tables of a report, in order (each a run of lines starting with '|')."""
    tables: list[list[str]] = []
    previous = False
    for line in text.splitlines():
        row = line.startswith("|")
        if row and not previous:
            tables.append([])
        if row:
            tables[-1].append(line)
        previous = row
    return ["\n".join(t) + "\n" for t in tables]


def sync_excerpts(doc: Path, root: Path, check: bool = False) -> bool:
    """Fill each `<!-- excerpt: REPORT table N -->` block of `doc` with table N (from 1) of REPORT (relative to
    `root`); with check=True only report whether every block is current."""
    text = doc.read_text()

    def table(match: re.Match[str]) -> str:
        source, n = root / match["source"], int(match["n"])
        if not source.is_file():
            raise ValueError(f"{doc}: excerpt names {match['source']}, which does not exist")
        tables = report_tables(source.read_text())
        if not 1 <= n <= len(tables):
            raise ValueError(f"{doc}: excerpt asks for table {n} of {match['source']}, which has {len(tables)}")
        return match[1] + tables[n - 1] + match[5]

    return rewrite(doc, text, EXCERPT.sub(table, text), check)
