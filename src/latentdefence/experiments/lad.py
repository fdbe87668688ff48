"""LAD experiments (Zhou et al., Section IV): Tables II-IV (V-X on SVHN/CelebA) and Figs. 3-7, one function.

`run_lad(lad_config("cpu"), out_dir)` trains (or loads from the stage cache) the classifier, the black
model, the generator and the boundaries, generates the Large/Small Adv. sets, fine-tunes, crafts the
input-space attacks, and writes `results.json`, `report.md` and the figures to `out_dir`.
Profiles: `paper` (the paper's settings, for a GPU), `cpu` (documented reductions, ~1 h on 2 cores for
MNIST), `smoke` (tiny, seconds, for CI). Reductions are listed in docs/lad.md.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks.base import attack_in_batches as _attack_batches
from .._io import atomic_path, environment_info, git_revision, jsonable as _jsonable, write_json
from ..data import Splits
from ..data.base import ImageDataset
from ..evaluation.metrics import accuracy, batched_predict
from ..stats import wilson_interval
from ..lad.finetune import FinetuneConfig, eps_label, finetune_set_statistics
from ..lad.generation import GeneratedSet, success_by_eps
from ..lad.generator import extract_latents, generate
from .registry import register_pipeline
from .lad_config import PAPER, SPECS, TARGETED, AttackSettings, LadConfig, lad_config
from .lad_report import render_report, write_figures
from .lad_stages import LadBuild, accuracy_ci, as_dataset, build_lad, lad_attack, trained_acgan


@dataclass(frozen=True)
class EvalSets:
    """The sets a fine-tuned model is scored on: white-box sets crafted on the ORIGINAL classifier (the paper's
    Table II reading), transfer sets crafted on the black model (Table III), and the source images the white-box
    attacks are re-run from against the fine-tuned model itself (the real white-box number)."""

    clean: ImageDataset
    white: dict[str, ImageDataset]
    transfer: dict[str, ImageDataset]
    rerun: dict[str, ImageDataset]
    attack: AttackSettings
    clip: bool = True  # False: FGSM/PGD sets and re-runs leave [0, 1] (cleverhans' default)


def eval_sets(b: LadBuild, names: tuple[str, ...] = ("fgsm", "pgd"), attack: AttackSettings | None = None,
              rerun_per_class: int | None = None, clip: bool = True) -> EvalSets:
    """FGSM/PGD (untargeted) evaluation sets from the evaluation images; re-runs on the first `rerun_per_class`
    source images of each class of the white-box set (all when None); unclipped sets and re-runs when `clip` is False."""
    s = attack or b.config.attack
    white, transfer, rerun = {}, {}, {}
    for name in names:
        w = b.crafted(name, "classifier", "evaluation", s.untargeted_per_class, s, clip=clip)
        white[name] = as_dataset(w, name)
        transfer[name] = as_dataset(b.crafted(name, "black", "evaluation", s.untargeted_per_class, s, clip=clip), name)
        keep = torch.cat([torch.nonzero(w.labels == c).flatten()[:rerun_per_class] for c in torch.unique(w.labels)])
        rerun[name] = b.splits.test.subset(w.source_indices[keep.sort().values])
    return EvalSets(b.evaluation, white, transfer, rerun, s, clip)


def _correct(model: nn.Module, data: ImageDataset) -> dict[str, Any]:
    """Accuracy with its count and 95% Wilson interval."""
    hits = int((batched_predict(model, data.images, 500) == data.labels).sum()) if len(data) else 0
    return {"accuracy": hits / len(data) if len(data) else None, "n": len(data),
            "ci95": list(wilson_interval(hits, len(data)))}


def score(model: nn.Module, sets: EvalSets, seed: int = 0) -> dict[str, Any]:
    """Clean, white-box (fixed sets and re-run against `model`) and transfer accuracy of `model`."""
    rerun = {}
    for name, data in sets.rerun.items():
        result = _attack_batches(model, lad_attack(name, sets.attack, seed, sets.clip), data.images, data.labels, None,
                                 sets.attack.batch_size, f"{name} re-run")
        hits = int((result.predictions == data.labels).sum())
        rerun[name] = {"accuracy": hits / len(data), "n": len(data), "ci95": list(wilson_interval(hits, len(data)))}
    return {"clean": _correct(model, sets.clean), "white": {n: _correct(model, d) for n, d in sets.white.items()},
            "rerun": rerun, "transfer": {n: _correct(model, d) for n, d in sets.transfer.items()}}


def _first_per_class(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """Row indices of the first `per_class` rows of each class, in order."""
    rank = torch.zeros_like(labels)
    for c in torch.unique(labels):
        rows = torch.nonzero(labels == c).flatten()
        rank[rows] = torch.arange(rows.numel())
    return torch.nonzero(rank < per_class).flatten()


def reconstruction_control(b: LadBuild, mirror: GeneratedSet, mirror_settings: dict[str, Any]
                           ) -> tuple[dict[str, Any], ImageDataset]:
    """The reconstruction control of a LAD set: plain G(phi(x)) of the same sources (eps 0), with its cache settings."""
    sources = b.splits.test.images[mirror.source_index]
    recon = generate(b.generator, extract_latents(b.classifier, SPECS[b.config.dataset].tap, sources))
    return ({"control": "reconstruction", "of": mirror_settings},
            ImageDataset(recon, mirror.labels, "reconstruction", "generated"))


def control_sets(b: LadBuild, mirror: GeneratedSet, mirror_settings: dict[str, Any]
                 ) -> dict[str, tuple[dict[str, Any], ImageDataset]]:
    """The same-budget controls for a LAD fine-tuning set: its generated images replaced by plain reconstructions
    G(phi(x)) of the same sources (eps 0), by the source images themselves, and by as many PGD or FGSM examples
    (the positive controls) crafted against the classifier from training images."""
    k = b.classifier.num_classes
    sources = b.splits.test.images[mirror.source_index]
    out: dict[str, tuple[dict[str, Any], ImageDataset]] = {
        "reconstruction": reconstruction_control(b, mirror, mirror_settings),
        "clean": ({"control": "clean", "of": mirror_settings}, ImageDataset(sources, mirror.labels, "clean", "test"))}
    wanted = -(-len(mirror) // k)
    per_class = max(-(-len(b.small) // k), wanted)  # one crafted set serves every mirror (Small Adv. is the largest)
    for name in ("pgd", "fgsm"):
        adv = b.crafted(name, "classifier", "train", per_class)
        out[name] = ({"control": name, "per_class": wanted, "params": asdict(b.config.attack)},
                     as_dataset(adv, name).subset(_first_per_class(adv.labels, wanted)))
    return out


def set_statistics(b: LadBuild, generated: GeneratedSet) -> dict[str, Any]:
    """`finetune_set_statistics` of a generated set against its source test images, with the Eq. 3 rate."""
    stats = finetune_set_statistics(b.classifier, generated.as_dataset(), b.splits.test.images[generated.source_index])
    return {**stats, "eq3_holds": float(generated.consistent.double().mean())}


def _seeded(config: LadConfig, seeds: tuple[int, ...]) -> list[FinetuneConfig]:
    return [replace(config.finetune, seed=s) for s in seeds]


def accuracy_at(scores: dict[str, Any], key: str) -> float:
    """The accuracy at 'clean' or 'group/attack' (e.g. 'rerun/fgsm') of a `score` result."""
    node: Any = scores
    for part in key.split("/"):
        node = node[part]
    return node["accuracy"]


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed 0's scores (with Wilson intervals) plus per-seed accuracies and their mean for every metric."""
    keys = ["clean"] + [f"{group}/{name}" for group in ("white", "rerun", "transfer") for name in runs[0][group]]
    seeds = {key: [accuracy_at(run, key) for run in runs] for key in keys}
    return {**runs[0], "seeds": seeds, "mean": {k: sum(v) / len(v) for k, v in seeds.items()}}


def headline(b: LadBuild, sets: EvalSets, name: str, set_settings: dict[str, Any], generated: GeneratedSet
             ) -> dict[str, Any]:
    """A LAD model (at every fine-tuning seed) beside its same-budget controls, scored and differenced."""
    lad = _summary([score(b.tuned(name, set_settings, generated.as_dataset(), cfg), sets, cfg.seed)
                    for cfg in _seeded(b.config, b.config.finetune_seeds)])
    controls = {}
    for control, (settings, data) in control_sets(b, generated, set_settings).items():
        controls[control] = _summary([score(b.tuned(f"{name}-{control}", settings, data, cfg), sets, cfg.seed)
                                      for cfg in _seeded(b.config, b.config.control_seeds)])
    minus = {c: {k: lad["mean"][k] - v["mean"][k] for k in lad["mean"]} for c, v in controls.items()}
    return {"lad": lad, "controls": controls, "lad_minus_control": minus}


def run_lad(config: LadConfig, out_dir: str | Path, data: Splits | None = None) -> dict[str, Any]:
    """Run every LAD stage for `config`, write results.json, report.md and figures to out_dir; return results."""
    start = time.perf_counter()
    revision = git_revision()  # the code that runs, not whatever HEAD is when the run ends
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    b = build_lad(config, data)
    stages, splits, split, train, test = b.stages, b.splits, b.split, b.train, b.splits.test
    classifier, black, large, small = b.classifier, b.black, b.large, b.small
    ft = {eps: b.tuned(f"FT-{eps_label(eps)}", b.keys["large"], large.select(large.eps == eps).as_dataset())
          for eps in config.large_eps}
    adv_model = b.tuned("Adv", b.keys["small"], small.as_dataset())
    ft_first = ft[config.large_eps[0]]
    acgan = trained_acgan(stages, b.keys["acgan"], config, train) if "ga" in config.attacks else None

    def per_attack(name: str) -> dict[str, Any]:
        per_class = config.attack.targeted_per_class if name in TARGETED else config.attack.untargeted_per_class
        white = b.crafted(name, "classifier", "evaluation", per_class, acgan=acgan)
        transfer = b.crafted(name, "black", "evaluation", per_class, acgan=acgan)
        t4_per_class = config.attack.targeted_per_class if name in TARGETED else config.table4_per_class
        t4_set = b.crafted(name, "classifier", "train", t4_per_class, acgan=acgan)
        t4_model = b.tuned(f"attack-{name}", {"attack_set": name, "per_class": t4_per_class,
                                              "params": asdict(config.attack)}, as_dataset(t4_set, name)) \
            if len(t4_set) else None  # GA may find no example at smoke scale
        with stages.timed("evaluate"):
            return {"table2": _row(classifier, adv_model, as_dataset(white, name)),
                    "table3": _row(classifier, ft_first, as_dataset(transfer, name)),
                    "table4": {"accuracy": _acc(t4_model, test.subset(split.evaluation)) if t4_model else None,
                               "n_train": len(t4_set)},
                    "search": {part: {"candidates": adv.metadata["candidates"], "success_rate": adv.metadata["success_rate"]}
                               for part, adv in (("white", white), ("transfer", transfer), ("table4", t4_set))}
                    if name == "ga" else None,
                    "white": white}

    attack_rows = {name: per_attack(name) for name in config.attacks}
    with stages.timed("controls"):
        sets = eval_sets(b, tuple(n for n in ("fgsm", "pgd") if n in config.attacks), None, config.rerun_per_class)
        first = config.large_eps[0]
        headlines = {"table2": headline(b, sets, "Adv", b.keys["small"], small),
                     "table3": headline(b, sets, f"FT-{eps_label(first)}", b.keys["large"], large.select(large.eps == first))}
    with stages.timed("evaluate"):
        evaluation = b.evaluation
        table4 = {"original": _acc(classifier, evaluation), "ours": _acc(ft_first, evaluation),
                  "ours_model": f"FT-{eps_label(config.large_eps[0])}", "adv_model": _acc(adv_model, evaluation),
                  "n": len(evaluation), **{n: r["table4"]["accuracy"] for n, r in attack_rows.items()},
                  "n_train": {n: r["table4"]["n_train"] for n, r in attack_rows.items()}}
        fig5 = success_by_eps(large, classifier.num_classes)
        fig7 = _fig7(config, classifier, adv_model, ft, large, evaluation)
        original = score(classifier, sets)
        stats = {"small_adv": set_statistics(b, small),
                 "large_adv": {eps_label(eps): set_statistics(b, large.select(large.eps == eps)) for eps in config.large_eps}}
    with stages.timed("figures"):
        write_figures(out, config, classifier, b.generator, b.boundaries, splits, split, large, attack_rows, fig5, fig7)
    table2 = {n: r["table2"] for n, r in attack_rows.items()}
    table3 = {n: r["table3"] for n, r in attack_rows.items()}
    for table, rows, group in (("table2", table2, "white"), ("table3", table3, "transfer")):
        lad = headlines[table]["lad"]
        for name, row in rows.items():
            row["original_ci95"] = accuracy_ci(row["original"], row["n"])
            row["finetuned_ci95"] = accuracy_ci(row["finetuned"], row["n"])
            if name in lad[group]:
                row["finetuned_seeds"] = lad["seeds"][f"{group}/{name}"]
            if table == "table2" and name in lad["rerun"]:
                row["finetuned_rerun"] = lad["rerun"][name]["accuracy"]
                row["finetuned_rerun_ci95"] = lad["rerun"][name]["ci95"]
                row["finetuned_rerun_seeds"] = lad["seeds"][f"rerun/{name}"]
                row["original_rerun"] = original["rerun"][name]["accuracy"]
                row["rerun_n"] = lad["rerun"][name]["n"]
    results = {
        "experiment": f"lad-{config.dataset}", "profile": config.profile,
        "generator": {k_: b.generator_metrics[k_] for k_ in ("train_mse", "test_mse", "epochs", "train_images", "latent_dim")},
        "table2": table2, "table3": table3,
        "table4": table4, "fig5": fig5, "fig7": fig7,
        "models": {"table2_finetuned": "Adv (Small Adv. set)", "table3_finetuned": table4["ours_model"]},
        **({"ga_search": attack_rows["ga"]["search"]} if "ga" in attack_rows else {}),
        "sets": {"large_adv": len(large), "small_adv": len(small)},
        "finetune_sets": stats, "original_scores": original, "baselines": headlines,
        "split": {name: idx.tolist() for name, idx in split.as_dict().items()},
        "settings": _jsonable(asdict(config)), "seed": config.seed,
        "dataset_sizes": {"train": len(train), "test": len(test), "evaluation": len(split.evaluation)},
        "git_revision": revision, "environment": environment_info(),
        "wall_time_s": {**stages.wall_time_s, "total": time.perf_counter() - start},
        "stage_build_time_s": stages.build_time_s,
    }
    write_json(out / "results.json", results)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render_report(results, PAPER.get(config.dataset, {})))
    return results


def _acc(model: nn.Module, data: ImageDataset) -> float | None:
    """Accuracy on `data`; None for an empty set (e.g. GA found no example)."""
    return accuracy(model, data.images, data.labels) if len(data) else None


def _row(original: nn.Module, finetuned: nn.Module, data: ImageDataset) -> dict[str, Any]:
    """Accuracy (original label) of the original and fine-tuned models on one adversarial set."""
    return {"original": _acc(original, data), "finetuned": _acc(finetuned, data), "n": len(data)}


def _fig7(config: LadConfig, classifier: nn.Module, adv_model: nn.Module, ft: dict[float, nn.Module],
          large: GeneratedSet, evaluation: ImageDataset) -> dict[str, Any]:
    """Fig. 7: clean accuracy of FT-eps per eps; accuracy of original and Adv. model on each Large Adv. set."""
    per_eps = [large.select(large.eps == eps).as_dataset() for eps in config.large_eps]
    return {"eps": list(config.large_eps),
            "clean_accuracy": {"original": _acc(classifier, evaluation),
                               "finetuned": [_acc(ft[eps], evaluation) for eps in config.large_eps]},
            "adversarial_accuracy": {"original": [_acc(classifier, d) for d in per_eps],
                                     "adv_model": [_acc(adv_model, d) for d in per_eps]}}


def pipeline_config(profile: str, dataset: str, data_dir: str | None, checkpoint: str | None) -> LadConfig:
    """The LAD pipelines' config of a profile (they train their own classifiers: no checkpoint)."""
    if checkpoint:
        raise ValueError("--classifier applies to DLD experiments only")
    return lad_config(profile, dataset, data_dir=data_dir)


register_pipeline("lad", config=pipeline_config, run=run_lad)
