"""LAD ablation (issue 13): which factor decides whether Eq. 4 fine-tuning on LAD's generated examples helps.

One row per setting, each a LeNet fine-tuned (Eq. 4) on one set and scored on FGSM and PGD only (JSMA, CW and GA
are too slow to repeat per row): clean accuracy, the paper's white-box reading (sets crafted on the ORIGINAL
LeNet), the real white-box number (FGSM/PGD re-run against the fine-tuned model) and transfer (sets crafted on
the black CNN). Same-budget controls (reconstructions at eps 0, the clean source images, plain PGD and FGSM
examples) sit in the same table, so every row reads as "minus control". Settings upstream of the generated sets
(a generator trained longer, a more accurate LeNet) are LAD builds of their own (`upstream_rows`). Everything reuses
the LAD run's cached stages (`build_lad`); `run_lad_ablation(lad_config("cpu"), out_dir)` writes results.json and
report.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_path, environment_info, git_revision, jsonable as _jsonable, write_json
from ..data.base import ImageDataset
from ..evaluation.metrics import batched_predict
from ..lad.finetune import FinetuneConfig, eps_label
from ..lad.generation import GeneratedSet
from ..lad.generator import GeneratorConfig
from ..training.loop import TrainConfig
from .lad import EvalSets, accuracy_at, control_sets, eval_sets, headline, pipeline_config, score, set_statistics
from .lad_config import LadConfig
from .lad_stages import LadBuild, build_lad
from .registry import register_pipeline


@dataclass(frozen=True)
class Row:
    """One ablation row: a fine-tuning set (built from the LAD run) and the fine-tuning settings it uses."""

    factor: str
    name: str
    make: Callable[[LadBuild], tuple[dict[str, Any], GeneratedSet | ImageDataset]]
    finetune: dict[str, Any] | None = None    # FinetuneConfig overrides
    boundary_eps: float | None = None         # a different eps unit (new boundaries and sets)
    pair_clean: bool = False                  # Eq. 4 literally: clean half = each image's own source
    model: str | None = None                  # cache name, to share the main run's models (default: from `name`)

    @property
    def key(self) -> str:
        return self.model or f"ablation-{self.name}"


def _small(b: LadBuild) -> tuple[dict[str, Any], GeneratedSet]:
    return b.keys["small"], b.small


def _large(eps: float | None) -> Callable[[LadBuild], tuple[dict[str, Any], GeneratedSet]]:
    """Large Adv. at one eps (all eps when None)."""
    def make(b: LadBuild) -> tuple[dict[str, Any], GeneratedSet]:
        if eps is None:
            return {**b.keys["large"], "only_eps": "all"}, b.large
        return b.keys["large"], b.large.select(b.large.eps == eps)  # the main run's FT-eps keys
    return make


def _where(base: Callable[[LadBuild], tuple[dict[str, Any], GeneratedSet]], name: str,
           keep: Callable[[LadBuild, GeneratedSet], torch.Tensor]) -> Callable[[LadBuild], tuple[dict[str, Any], GeneratedSet]]:
    """The rows of `base`'s set that `keep` selects (a mask or index), named for the cache key."""
    def make(b: LadBuild) -> tuple[dict[str, Any], GeneratedSet]:
        settings, generated = base(b)
        return {**settings, "keep": name}, generated.select(keep(b, generated))
    return make


def _quarter(b: LadBuild, g: GeneratedSet) -> torch.Tensor:
    """Every fourth row (all eps and targets stay represented)."""
    return torch.arange(0, len(g), 4)


def _misclassified(b: LadBuild, g: GeneratedSet) -> torch.Tensor:
    return g.success


def _eq3_fails(b: LadBuild, g: GeneratedSet) -> torch.Tensor:
    return ~g.consistent


def _nearest_target(b: LadBuild, g: GeneratedSet) -> torch.Tensor:
    """Two-class reading: each source pushed only toward the class LeNet ranks second on the source image."""
    with torch.no_grad():
        logits = b.classifier(b.splits.test.images[g.source_index])
    second = logits.scatter(1, g.labels[:, None], -float("inf")).argmax(1)
    return g.targets == second


def _first_flip(b: LadBuild, g: GeneratedSet) -> torch.Tensor:
    """Per-sample eps: for each (source, target) pair, the smallest eps whose image LeNet misclassifies."""
    order = torch.argsort(g.eps, stable=True)
    seen: set[tuple[int, int]] = set()
    keep = []
    for row in order[g.success[order]].tolist():
        pair = (int(g.source_index[row]), int(g.targets[row]))
        if pair not in seen:
            seen.add(pair)
            keep.append(row)
    return torch.tensor(sorted(keep), dtype=torch.long)


def rows(long_epochs: int = 10) -> list[Row]:
    """The ablation's rows, grouped by factor (the first two are the paper's Table II and III models); the longer
    fine-tuning rows run `long_epochs` epochs (`LadConfig.long_epochs`)."""
    big = {"lr": 1e-3, "epochs": long_epochs}
    return [
        Row("paper setting", "Adv: Small Adv., all eps (Table II model)", _small, model="Adv"),
        Row("paper setting", "FT-0.1: Large Adv. eps 0.1 (Table III model)", _large(0.1), model="FT-0.1"),
        Row("boundary eps", "FT-10: Large Adv. eps 10 only", _large(10.0), model="FT-10"),
        Row("boundary eps", "FT-20: Large Adv. eps 20 only", _large(20.0), model="FT-20"),
        Row("boundary eps", "Small Adv., eps unit halved (boundary_eps 5)", _small, boundary_eps=5.0),
        Row("set size", "Small Adv., every 4th example", _where(_small, "quarter", _quarter)),
        Row("set size", "Large Adv., all eps", _large(None)),
        Row("alpha", "Small Adv., alpha 0.25", _small, {"alpha": 0.25}),
        Row("alpha", "Small Adv., alpha 0.75", _small, {"alpha": 0.75}),
        Row("lr / epochs", f"Small Adv., {long_epochs} epochs", _small, {"epochs": long_epochs}),
        Row("lr / epochs", "Small Adv., lr 1e-3", _small, {"lr": 1e-3}),
        Row("lr / epochs", f"Small Adv., lr 1e-3, {long_epochs} epochs", _small, big),
        Row("near boundary", "Small Adv., only examples LeNet misclassifies", _where(_small, "misclassified",
                                                                                    _misclassified)),
        Row("near boundary", "Small Adv., only Eq. 3 failures", _where(_small, "eq3_fails", _eq3_fails)),
        Row("near boundary", "Large Adv., all eps, only misclassified", _where(_large(None), "misclassified",
                                                                             _misclassified)),
        Row("near boundary", f"Large Adv., all eps, only misclassified, lr 1e-3, {long_epochs} epochs",
            _where(_large(None), "misclassified", _misclassified), big),
        Row("per-sample eps", "Large Adv., first flipping eps per (source, target)",
            _where(_large(None), "first_flip", _first_flip)),
        Row("targets", "Small Adv., one target per source (LeNet's runner-up class)",
            _where(_small, "nearest_target", _nearest_target)),
        Row("Eq. 4 pairing", "Small Adv., clean half = each image's own source", _small, pair_clean=True),
    ]


@dataclass(frozen=True)
class Upstream:
    """A setting upstream of the generated sets (how G or LeNet is trained): a LAD build of its own, whose Table II
    and III models and same-budget controls are scored against that build's own original LeNet and attack sets."""

    factor: str
    name: str
    overrides: dict[str, Any]  # LadConfig overrides

    def config(self, base: LadConfig) -> LadConfig:
        return replace(base, **self.overrides)


# Further Eq. 2 phases at a decaying lr (the profile's G stops at test MSE 0.0093 after 8 epochs at lr 1e-3), and a
# LeNet trained longer with a cosine schedule; chosen from their own training numbers, before any fine-tuning result.
GENERATOR_REFINE = (GeneratorConfig(epochs=12, lr=1e-3, seed=1), GeneratorConfig(epochs=8, lr=3e-4, seed=2),
                    GeneratorConfig(epochs=6, lr=1e-4, seed=3))
PAPER_LENET = TrainConfig(epochs=15, batch_size=64, schedule="cosine")


def upstream_rows(refine: tuple[GeneratorConfig, ...] = GENERATOR_REFINE,
                  lenet: TrainConfig = PAPER_LENET) -> list[Upstream]:
    """The generator-quality and LeNet-accuracy rows (the paper's G: test MSE 0.0077; its LeNet: 99.13%)."""
    return [
        Upstream("generator quality", "G trained longer (lr decayed)", {"generator_refine": refine}),
        Upstream("LeNet accuracy", "LeNet trained longer (its own G, sets and attacks)", {"classifier": lenet}),
        Upstream("LeNet accuracy + generator quality", "LeNet trained longer, its G trained longer",
                 {"classifier": lenet, "generator_refine": refine}),
    ]


def _upstream(b: LadBuild, sets: EvalSets, row: Upstream, names: tuple[str, ...]) -> dict[str, Any]:
    """`row`'s build: its G's MSE, its original LeNet's scores, its Table II/III models beside their controls (seed 0),
    and the Table II model minus each control over the profile's fine-tuning and control seeds."""
    config = row.config(b.config)
    u = build_lad(config, b.splits)
    own = sets if u.keys["classifier"] == b.keys["classifier"] else eval_sets(u, names, None, config.rerun_per_class)
    first = config.large_eps[0]
    rows = [_scored_row(u, own, row.factor, "Adv: Small Adv. (Table II model)", "Adv", u.keys["small"], u.small,
                        config.finetune)[0],
            _scored_row(u, own, row.factor, f"FT-{eps_label(first)}: Large Adv. (Table III model)",
                        f"FT-{eps_label(first)}", u.keys["large"], u.large.select(u.large.eps == first),
                        config.finetune)[0]]
    for control, (settings, data) in control_sets(u, u.small, u.keys["small"]).items():
        rows.append(_scored_row(u, own, row.factor, f"control: {control}", f"Adv-{control}", settings, data,
                                config.finetune)[0])
    generator = {k: u.generator_metrics[k] for k in ("train_mse", "test_mse", "epochs", "phases")
                 if k in u.generator_metrics}
    return {"factor": row.factor, "name": row.name, "overrides": _jsonable(row.overrides), "generator": generator,
            "original": {"scores": score(u.classifier, own)}, "rows": rows,
            "table2_seeds": headline(u, own, "Adv", u.keys["small"], u.small)}  # Adv and controls at every seed


def _finetune_config(config: LadConfig, row: Row) -> FinetuneConfig:
    return replace(config.finetune, **(row.finetune or {}), pair_clean=row.pair_clean)


def _model(b: LadBuild, name: str, settings: dict[str, Any], data: GeneratedSet | ImageDataset,
           cfg: FinetuneConfig) -> torch.nn.Module:
    """Fine-tune on `data` (a generated set pairs with its own sources when cfg.pair_clean)."""
    if isinstance(data, GeneratedSet):
        clean = (ImageDataset(b.splits.test.images[data.source_index], data.labels, "source", "test")
                 if cfg.pair_clean else None)
        return b.tuned(name, settings, data.as_dataset(), cfg, clean)
    return b.tuned(name, settings, data, cfg)


def _scored_row(b: LadBuild, sets: EvalSets, factor: str, name: str, key: str, settings: dict[str, Any],
                data: GeneratedSet | ImageDataset, cfg: FinetuneConfig) -> tuple[dict[str, Any], torch.nn.Module | None]:
    """A row's record (set statistics, scores, wall time) and its fine-tuned model (cached as `key`); a row whose
    set is empty (e.g. a profile without that eps) is recorded as skipped."""
    start = time.perf_counter()
    if len(data) == 0:
        return {"factor": factor, "name": name, "finetune": asdict(cfg), "set": {"n": 0}, "scores": None,
                "skipped": "empty fine-tuning set"}, None
    model = _model(b, key, settings, data, cfg)
    stats = set_statistics(b, data) if isinstance(data, GeneratedSet) else _plain_statistics(b, data)
    return ({"factor": factor, "name": name, "finetune": asdict(cfg), "set": stats, "scores": score(model, sets, cfg.seed),
             "wall_time_s": time.perf_counter() - start}, model)


def _plain_statistics(b: LadBuild, data: ImageDataset) -> dict[str, Any]:
    """Size and the fraction LeNet misclassifies, for control sets (no single source image to measure from)."""
    wrong = batched_predict(b.classifier, data.images) != data.labels
    return {"n": len(data), "misclassified": float(wrong.double().mean())}


def run_lad_ablation(config: LadConfig, out_dir: str | Path, data: Any = None,
                     strong_budget: dict[str, Any] | None = None, weak_eps: float = 0.1,
                     upstream: list[Upstream] | None = None) -> dict[str, Any]:
    """Every row of `rows()`, the same-budget controls (at the profile's budget and at `strong_budget`, default lr 1e-3
    for `config.long_epochs` epochs), the headline rows and controls again under FGSM/PGD at `weak_eps` (the
    attack-strength factor), and the `upstream` builds (default `upstream_rows()`: a better generator, a more
    accurate LeNet)."""
    start = time.perf_counter()
    revision = git_revision()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    strong_budget = strong_budget or {"lr": 1e-3, "epochs": config.long_epochs}
    b = build_lad(config, data)
    sets = eval_sets(b, ("fgsm", "pgd"), None, config.rerun_per_class)
    results: list[dict[str, Any]] = []
    weak_models: dict[str, torch.nn.Module] = {}  # re-scored at the weaker attack eps
    builds = {config.boundary_eps: b}
    for row in rows(config.long_epochs):
        eps = row.boundary_eps or config.boundary_eps
        if eps not in builds:
            builds[eps] = build_lad(replace(config, boundary_eps=eps), b.splits)
        settings, generated = row.make(builds[eps])
        record, model = _scored_row(b, sets, row.factor, row.name, row.key, settings, generated,
                                    _finetune_config(config, row))
        results.append(record)
        if row.factor == "paper setting" and model is not None:
            weak_models[row.name] = model
    for label, overrides in (("profile budget", {}), (_budget_name(strong_budget), strong_budget)):
        cfg = replace(config.finetune, **overrides)
        for control, (settings, data_) in control_sets(b, b.small, b.keys["small"]).items():
            record, model = _scored_row(b, sets, f"control ({label})", f"{control} (same budget as Small Adv.)",
                                        f"Adv-{control}", settings, data_, cfg)  # the main run's control keys
            results.append(record)
            if not overrides and model is not None:
                weak_models[f"control: {control}"] = model
    weak = replace(config.attack, fgsm_eps=weak_eps, pgd_eps=weak_eps)
    weak_sets = eval_sets(b, ("fgsm", "pgd"), weak, config.rerun_per_class)
    weak_rows = [{"name": "original LeNet", "scores": score(b.classifier, weak_sets)}]
    weak_rows += [{"name": name, "scores": score(model, weak_sets)} for name, model in weak_models.items()]
    upstream_results = [_upstream(b, sets, row, ("fgsm", "pgd"))
                        for row in (upstream_rows() if upstream is None else upstream)]
    report = {"experiment": f"lad-{config.dataset}-ablation", "profile": config.profile,
              "original": {"scores": score(b.classifier, sets)}, "generator": b.generator_metrics, "rows": results,
              "attack_strength": {"eps": weak_eps, "rows": weak_rows}, "upstream": upstream_results,
              "not_run": NOT_RUN, "settings": _jsonable(asdict(config)), "strong_budget": strong_budget,
              "git_revision": revision, "environment": environment_info(),
              "wall_time_s": time.perf_counter() - start}
    write_json(out / "results.json", report)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render_ablation(report))
    return report


def _budget_name(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in overrides.items())


NOT_RUN = {
    "JSMA / CW / GA per row": "too slow to repeat per row; the main run reports them for the headline models",
}


def _pp(x: float) -> str:
    return f"{100 * x:+.1f}"


def _cell(scores: dict[str, Any], base: dict[str, Any], group: str, name: str | None = None) -> str:
    """'accuracy (change vs the original LeNet, pp)'."""
    now = scores[group] if name is None else scores[group][name]
    ref = base[group] if name is None else base[group][name]
    return f"{100 * now['accuracy']:.2f} ({_pp(now['accuracy'] - ref['accuracy'])})"


def _table(rows: list[dict[str, Any]], base: dict[str, Any], with_set: bool) -> list[str]:
    head = "| factor | setting | n | LeNet wrong |" if with_set else "| model |"
    lines = [head + " clean | white FGSM (fixed) | white PGD (fixed) | white FGSM (re-run) | white PGD (re-run) "
             "| transfer FGSM | transfer PGD |",
             "|" + "---|" * (head.count("|") - 1 + 7)]
    for row in rows:
        s = row["scores"]
        if s is None:
            lines.append(f"| {row['factor']} | {row['name']} | 0 | — |" + " skipped: " + row["skipped"] + " |" * 7)
            continue
        cells = [_cell(s, base, "clean"), _cell(s, base, "white", "fgsm"), _cell(s, base, "white", "pgd"),
                 _cell(s, base, "rerun", "fgsm"), _cell(s, base, "rerun", "pgd"), _cell(s, base, "transfer", "fgsm"),
                 _cell(s, base, "transfer", "pgd")]
        lead = (f"| {row['factor']} | {row['name']} | {row['set']['n']} | {100 * row['set']['misclassified']:.1f}% |"
                if with_set else f"| {row['name']} |")
        lines.append(lead + " " + " | ".join(cells) + " |")
    return lines


def render_ablation(report: dict[str, Any]) -> str:
    """Markdown: one row per setting, accuracy in % with the change against the original LeNet in pp."""
    base = report["original"]["scores"]
    s = report["settings"]
    lines = [f"# {report['experiment']} ({report['profile']} profile)", "",
             f"git {report['git_revision']}, split seed {s['seed']}, fine-tuning seed {s['finetune']['seed']} "
             f"(one seed per row), wall time {report['wall_time_s']:.0f} s. Each cell: accuracy % (change vs the "
             "original LeNet, pp). FGSM/PGD L-inf eps "
             f"{s['attack']['fgsm_eps']:g}/{s['attack']['pgd_eps']:g} (the paper's), PGD {s['attack']['pgd_steps']} "
             f"steps. 'fixed' = sets crafted once on the ORIGINAL LeNet (the paper's Table II reading); 're-run' = the "
             f"attack run again against each fine-tuned model from {s['rerun_per_class'] or 'all'} source images per "
             "class (the real white-box number); transfer = crafted on the black CNN (Table III). Fine-tuning: Eq. 4, "
             f"Adam lr {s['finetune']['lr']:g}, {s['finetune']['epochs']} epochs, batch {s['finetune']['batch_size']}, "
             f"alpha {s['finetune']['alpha']:g} unless the row says otherwise. 'LeNet wrong' = fraction of the "
             "fine-tuning set the original LeNet misclassifies.", "",
             f"Original LeNet: clean {100 * base['clean']['accuracy']:.2f}%.", "",
             f"Command: `latentdefence reproduce lad-{s['dataset']}-ablation --profile {report['profile']}` "
             "(`--out docs/results/archive/lad-mnist-ablation` for the committed copy).", ""]
    lines += _table(report["rows"], base, with_set=True)
    weak = report["attack_strength"]
    lines += ["", f"## Attack strength: FGSM/PGD at eps {weak['eps']:g}", "",
              "The same models scored on sets crafted at the weaker eps (change vs the original LeNet at that eps).", ""]
    lines += _table(weak["rows"][1:], weak["rows"][0]["scores"], with_set=False)
    lines += _upstream_section(report["upstream"])
    lines += ["", "## Not run", ""] + [f"* {k}: {v}." for k, v in report["not_run"].items()]
    return "\n".join(lines) + "\n"


_MINUS = (("white", "fgsm", "white FGSM (fixed)"), ("rerun", "fgsm", "white FGSM (re-run)"),
          ("transfer", "fgsm", "transfer FGSM"), ("transfer", "pgd", "transfer PGD"))


def _columns(diff: dict[str, float]) -> str:
    """A difference of accuracies keyed 'group/attack' (as `headline` keys them), in pp, on the columns that move."""
    return ", ".join(f"{label} {_pp(diff[f'{group}/{name}'])}" for group, name, label in _MINUS)


def _upstream_section(builds: list[dict[str, Any]]) -> list[str]:
    """One table per upstream build, each cell against that build's own original LeNet, and LAD minus control."""
    if not builds:
        return []
    lines = ["", "## Upstream: a better generator, a more accurate LeNet", "",
             "Each setting is a LAD build of its own (new boundaries-to-images G and generated sets; a new LeNet also "
             "gets its own FGSM/PGD sets and controls), so each cell's change is against that build's original "
             "LeNet. The paper's G reaches test MSE 0.0077, its LeNet 99.13%."]
    for build in builds:
        base = build["original"]["scores"]
        g = build["generator"]
        phases = ", ".join(f"{p['test_mse']:.5f} after {p['epochs']}" for p in g.get("phases", [g]))
        lines += ["", f"### {build['factor']}: {build['name']}", "",
                  f"G test MSE {phases} epochs (paper 0.0077); original LeNet clean "
                  f"{100 * base['clean']['accuracy']:.2f}% (paper 99.13%). Settings: `{build['overrides']}`.", ""]
        lines += _table(build["rows"], base, with_set=True)
        seeds = build["table2_seeds"]
        n_control = len(next(iter(seeds["controls"].values()))["seeds"]["clean"])
        counts = f"mean of {len(seeds['lad']['seeds']['clean'])} / {n_control} seeds"
        change = {key: mean - accuracy_at(base, key) for key, mean in seeds["lad"]["mean"].items()}
        lines += ["", f"* Adv, mean of {len(seeds['lad']['seeds']['clean'])} seeds, change vs this build's original "
                      f"LeNet (pp): {_columns(change)}"]
        lines += [f"* Adv minus {control} control ({counts}, pp): {_columns(diff)}"
                  for control, diff in seeds["lad_minus_control"].items()]
    return lines


__all__ = ["Row", "Upstream", "render_ablation", "rows", "run_lad_ablation", "upstream_rows"]


register_pipeline("lad-ablation", config=pipeline_config, run=run_lad_ablation)
