"""Carlini et al.'s (2019) sanity checks on a detector's evaluation, which warn in the report: more iterations,
robustness against eps, gradient-free against gradient attacks, transfer against white box, the surrogate's
gradients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..attacks import PGD, Randomness, evaluation_attacks
from ..attacks.base import attack_in_batches, in_batches
from ..detectors.base import Detection, Evaluable, evaded
from .attack_plan import detector_attack, in_evaluation, pgd_on_f, robust_fraction
from .detection import verdicts
from .threat import EPS_SWEEP_FLOOR, ON_F_ALONE, Budget, ThreatModel
from .workers import Draws


def sanity_checks(det: Evaluable, name: str, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel, b: Budget,
                  sets: Mapping[str, torch.Tensor], scored: Mapping[str, Detection], results: Mapping[str, Any],
                  transfer_source: tuple[str, nn.Module] | None, draws: Draws) -> dict[str, Any]:
    """Carlini et al.'s checks on the detector's strongest detector-aware attack, on the first `n_sanity` images;
    `scored` holds the detector's verdicts on `sets`, computed once by the evaluation. Each check's attack draws per
    image (its own stage of `draws`) and is split over the evaluation's processes like the main attacks."""
    x, y = images[:b.n_sanity], labels[:b.n_sanity]
    attacks = results["detectors"][name]["attacks"]
    warnings: list[str] = []
    gradient = [k for k in evaluation_attacks() if in_evaluation(k).gradient and k in attacks]
    strongest = min(gradient or [k for k in ("square", "pgd") if k in attacks],
                    key=lambda k: (attacks[k]["robustness"], k))

    def robustness(adv: torch.Tensor) -> float:
        return robust_fraction(verdicts(det, adv), y)

    def run(attack: Any, starts: torch.Tensor | None = None, model: nn.Module | None = None) -> torch.Tensor:
        if isinstance(attack, PGD):
            on = model or det.classifier
            return draws.split(lambda u, v, _: attack_in_batches(on, attack, u, v, batch_size=b.batch_size).images,
                               x, y)
        return draws.split(lambda u, v, s: in_batches(lambda p, q, r: attack(det, p, q, starts=r).images, u, v, s,
                                                      batch_size=b.batch_size), x, y, starts)

    def randomness(stage: str) -> Randomness:
        per_image = strongest == "pgd" or in_evaluation(strongest).per_image_draws
        return draws.streams(stage) if per_image else draws.stage_generator(stage)

    def make(bud: Budget, stage: str, eps: float | None = None) -> Any:
        rng = randomness(f"sanity/{strongest}--{name}/{stage}")
        return pgd_on_f(threat, bud, rng, eps) if strongest == "pgd" else detector_attack(strongest, threat, bud, rng,
                                                                                          eps)
    start_from = in_evaluation(strongest).starts if strongest in evaluation_attacks() else None
    starts = sets[start_from][:len(x)] if start_from else None   # as in the main run
    more: dict[str, Any] = {"attack": strongest,
                            "budget": robust_fraction(scored[strongest].select(torch.arange(len(x))), y),
            "double_steps_and_restarts": robustness(run(make(b.doubled(), "doubled"), starts))}
    if more["double_steps_and_restarts"] > more["budget"]:
        warnings.append(f"{name}: {strongest} with twice the steps and restarts gave higher robustness "
                        f"({100 * more['double_steps_and_restarts']:.1f}% vs {100 * more['budget']:.1f}%): "
                        "the attack is unstable at this budget")
    sweep: dict[str, Any] = {"eps": [round(f * threat.eps, 6) for f in b.eps_sweep],
                             "attack": f"{strongest} (random start)", "detector": [], "classifier_alone": []}
    for eps in sweep["eps"]:
        sweep["detector"].append(robustness(run(make(b, f"eps={eps:g}", eps))))
        adv = run(pgd_on_f(threat, b, draws.streams(f"sanity/pgd/eps={eps:g}"), eps))
        with torch.no_grad():
            sweep["classifier_alone"].append(float((det.classifier(adv).argmax(1) == y).float().mean()))
    if sweep["detector"] and sweep["detector"][-1] > EPS_SWEEP_FLOOR:
        warnings.append(f"{name}: robustness stays at {100 * sweep['detector'][-1]:.1f}% at eps {sweep['eps'][-1]:g} "
                        f"(should fall to ~0 as eps grows): gradients may be masked or the attack too weak")
    out: dict[str, Any] = {"n": len(x), "more_iterations": more, "eps_sweep": sweep,
                           "gradient_free": _gradient_free(name, attacks, scored, labels, results, warnings),
                           "transfer_vs_white_box": _transfer(name, attacks, warnings),
                           "surrogate_gradients": _surrogate_gradients(det, name, x, warnings)}
    if transfer_source is not None:
        source, model = transfer_source
        adv = run(pgd_on_f(threat, b, draws.streams(f"sanity/transfer--{name}")), model=model)
        with torch.no_grad():
            own = float((model(adv).argmax(1) == y).float().mean())
        out["transfer"] = {"source": source,
                           "source_pgd_robust_accuracy": own, "robustness_transfer": robustness(adv),
                           "robustness_white_box": more["budget"]}
        if out["transfer"]["robustness_transfer"] < more["budget"]:
            warnings.append(f"{name}: PGD transferred from {out['transfer']['source']} beats the white-box {strongest}")
    out["warnings"] = warnings
    return out


def _gradient_free(name: str, attacks: Mapping[str, Any], scored: Mapping[str, Detection], labels: torch.Tensor,
                   results: Mapping[str, Any], warnings: list[str]) -> dict[str, Any]:
    """Images Square (no gradients) broke that no gradient attack did; F alone: Square after APGD in the cascade."""
    after = results["classifier_alone"]["autoattack_robust_accuracy_after"]
    out: dict[str, Any] = {"classifier_alone_square_gain": after.get("apgd-t", 0.0) - after["square"]
                           if "square" in after else None}
    if out["classifier_alone_square_gain"]:
        warnings.append(f"{name}: on F alone Square broke {100 * out['classifier_alone_square_gain']:.1f}% that "
                        "APGD could not: F's gradients may be masked")
    if "square" not in scored:
        return {**out, "only_square": None}
    broken = {k: evaded(v, labels) for k, v in scored.items()}
    gradient = torch.stack([v for k, v in broken.items() if k != "square"]).any(0)
    only = int((broken["square"] & ~gradient).sum())
    out.update(only_square=only, square_robustness=attacks["square"]["robustness"])
    if only:
        warnings.append(f"{name}: Square (gradient-free) broke {only} image(s) no gradient attack broke: "
                        "the detector's gradients may be masked")
    return out


def _transfer(name: str, attacks: Mapping[str, Any], warnings: list[str]) -> dict[str, Any]:
    """Attacks on F alone (transferred to the detector) against the detector-aware (white-box) ones."""
    white = [k for k in attacks if k not in ON_F_ALONE]
    if not white:
        return {"f_alone": None, "white_box": None}
    f_alone = min(attacks[k]["robustness"] for k in ON_F_ALONE if k in attacks)
    white_box = min(attacks[k]["robustness"] for k in white)
    if f_alone < white_box:
        warnings.append(f"{name}: attacks on F alone ({100 * f_alone:.1f}%) beat every detector-aware attack "
                        f"({100 * white_box:.1f}%): the white-box attacks are not working")
    return {"f_alone": f_alone, "white_box": white_box}


def _surrogate_gradients(det: Any, name: str, images: torch.Tensor, warnings: list[str]) -> dict[str, Any] | None:
    """Fraction of images where the surrogate's input gradient is zero or not finite (it then guides nothing)."""
    if not hasattr(det, "surrogate_score"):
        return None
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        with torch.no_grad():
            classes = det.classifier(x).argmax(1)
        grad, = torch.autograd.grad(det.surrogate_score(x, classes).sum(), x, allow_unused=True)
    norms = torch.zeros(len(x)) if grad is None else grad.detach().flatten(1).norm(dim=1).cpu()
    vanished = float(((norms < 1e-12) | ~torch.isfinite(norms)).float().mean())
    if vanished > 0.5:
        warnings.append(f"{name}: its surrogate_score's gradient vanishes on {100 * vanished:.0f}% of images: "
                        "selective / orthogonal PGD cannot move there; trust the gradient-free attack more")
    return {"vanished_fraction": vanished, "median_norm": float(norms.median()) if len(norms) else None}

