"""Parity on F alone: our APGD-CE / APGD-T against torchattacks' at AutoAttack's standard budget.

    OMP_NUM_THREADS=1 python benchmarks/apgd_parity.py [--n 200] [--eps 0.3] [--out docs/results/archive/apgd-parity]

On the committed classifier (`docs/results/dld-mnist-table1/classifier`) and the first `--n` MNIST test images:
APGD-CE (100 steps, 1 restart), then APGD-T (100 steps, 9 target classes) on the images APGD-CE left robust
(AutoAttack's cascade), L-inf. Prints both libraries' robust accuracy after each stage and their wall times,
and writes results.json + report.md to `--out`. torchattacks is a test-time oracle, never used by the library.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from latentdefence._io import atomic_path, environment_info, git_revision, write_json
from latentdefence.attacks import APGD, APGDT
from latentdefence.data import load_dataset
from latentdefence.stats import wilson_interval
from latentdefence.training import load_checkpoint

Attack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # (images, labels) -> adversarial images
CLASSIFIER = "docs/results/dld-mnist-table1/classifier"


def correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images).argmax(1) == labels


def cascade(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, ce: Attack,
            targeted: Attack) -> dict[str, object]:
    """Robust accuracy after APGD-CE and after APGD-T on what APGD-CE left, with each stage's wall time."""
    robust = correct(model, x, y)
    out: dict[str, object] = {"clean": float(robust.float().mean())}
    for name, attack in (("apgd-ce", ce), ("apgd-t", targeted)):
        rows = robust.nonzero().squeeze(1)
        start = time.perf_counter()
        adv = attack(x[rows], y[rows])
        out[f"{name}_s"] = round(time.perf_counter() - start, 1)
        if rows.numel() and (adv - x[rows]).abs().amax() > eps + 1e-5:
            raise RuntimeError(f"{name} left the eps-ball")
        robust[rows] = correct(model, adv, y[rows])
        out[name] = float(robust.float().mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--classifier", default=CLASSIFIER)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torchattacks

    model = load_checkpoint(args.classifier)[0].eval()
    for p in model.parameters():
        p.requires_grad_(False)
    test = load_dataset("mnist").test
    x, y = test.images[:args.n], test.labels[:args.n]
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    ours = cascade(model, x, y, args.eps,
                   lambda a, b: APGD(args.eps, 100, loss="ce", generator=gen())(model, a, b).images,
                   lambda a, b: APGDT(args.eps, 100, n_target_classes=9, generator=gen())(model, a, b).images)
    theirs = cascade(model, x, y, args.eps, torchattacks.APGD(model, norm="Linf", eps=args.eps, steps=100, n_restarts=1,
                                                    loss="ce", seed=0),
                     torchattacks.APGDT(model, norm="Linf", eps=args.eps, steps=100, n_restarts=1, n_classes=10,
                                        seed=0))
    n = len(y)
    rows = []
    for stage in ("clean", "apgd-ce", "apgd-t"):
        a, b = ours[stage], theirs[stage]
        rows.append(f"| {stage} | {100 * a:.2f} {_ci(a, n)} | {100 * b:.2f} {_ci(b, n)} | {100 * (a - b):+.2f} |")
    times = f"wall time (s): ours {ours['apgd-ce_s']} + {ours['apgd-t_s']}, torchattacks {theirs['apgd-ce_s']} + " \
            f"{theirs['apgd-t_s']}"
    print(f"n {n}, eps {args.eps} (L-inf), threads {torch.get_num_threads()}")
    print("\n".join(["| after | ours | torchattacks | difference (pp) |", "|---|---|---|---|", *rows]))
    print(times)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "results.json", {"n": n, "eps": args.eps, "norm": "linf", "classifier": args.classifier,
                                               "ours": ours, "torchattacks": theirs,
                                               "torchattacks_version": torchattacks.__version__,
                                               "threads": torch.get_num_threads(), "git_revision": git_revision(),
                                               "environment": environment_info()})
        report = [f"# APGD-CE / APGD-T parity with torchattacks {torchattacks.__version__}", "",
                  f"Committed classifier `{args.classifier}`, first {n} MNIST test images, eps {args.eps} (L-inf), "
                  "AutoAttack's standard budget: APGD-CE 100 steps, 1 restart; APGD-T 100 steps, 9 target classes, on "
                  f"what APGD-CE left. git {git_revision()}, {torch.get_num_threads()} thread(s).", "",
                  "Robust accuracy (%, Wilson 95% interval):", "",
                  "| after | ours | torchattacks | difference (pp) |", "|---|---|---|---|", *rows, "", times + ".", "",
                  "Command: `OMP_NUM_THREADS=1 python benchmarks/apgd_parity.py --n 200 "
                  "--out docs/results/archive/apgd-parity`.",
                  ""]
        with atomic_path(args.out / "report.md") as tmp:
            tmp.write_text("\n".join(report))


def _ci(rate: float, n: int) -> str:
    lo, hi = wilson_interval(round(rate * n), n)
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


if __name__ == "__main__":
    main()
