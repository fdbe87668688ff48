"""Attack throughput on the DLD-MNIST network: our PGD-40 vs a bare loop vs torchattacks; CW-L2 vs torchattacks.

    python benchmarks/attacks.py [--batch 128] [--repeats 3] [--threads 1]

Random weights and inputs (speed does not depend on them). Every contender runs in the same process,
interleaved, `--repeats` times; the best time of each is reported (least disturbed by other load on a
shared machine). torchattacks is optional: without it those rows are skipped.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from latentdefence.attacks import PGD, CarliniWagnerL2
from latentdefence.models import create_model


def bare_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int) -> torch.Tensor:
    """The simplest correct PGD loop, the yardstick (model already in eval mode without weight grads)."""
    adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(adv), y)
        grad, = torch.autograd.grad(loss, adv)
        adv = torch.min(torch.max(adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return adv


class Counted(nn.Module):
    """Counts forward passes (images through the net), to compare attacks doing different amounts of work."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.net(x)


def best_time(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name] = min(times[name], time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--cw-batch", type=int, default=32)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("dld_mnist").eval()
    x = torch.rand(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    eps, alpha, steps = 0.3, 0.01, 40
    try:
        import torchattacks
    except ImportError:
        torchattacks = None
    print(f"dld_mnist, batch {args.batch}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"best of {args.repeats}")

    frozen = create_model("dld_mnist").eval()
    frozen.load_state_dict(model.state_dict())
    for p in frozen.parameters():
        p.requires_grad_(False)
    fns: dict[str, Callable[[], object]] = {
        "bare loop": lambda: bare_pgd(frozen, x, y, eps, alpha, steps),
        "ours PGD-40": lambda: PGD(eps, alpha, steps)(model, x, y),
        "ours PGD-40 channels_last": lambda: PGD(eps, alpha, steps, channels_last=True)(model, x, y),
    }
    if torchattacks is not None:
        fns["torchattacks PGD-40"] = lambda: torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps)(x, y)
    times = best_time(fns, args.repeats)
    print("\nPGD-40 (L-inf, eps 0.3, step 0.01)          img/s   vs bare   vs torchattacks")
    for name, t in times.items():
        ta = times.get("torchattacks PGD-40")
        print(f"  {name:38s} {args.batch / t:8.1f}   {times['bare loop'] / t:6.2f}   "
              f"{(ta / t if ta else float('nan')):6.2f}")

    xc, yc = x[:args.cw_batch], y[:args.cw_batch]
    counted = Counted(model)
    cw_fns: dict[str, Callable[[], object]] = {
        "ours CW-100 (abort early)": lambda: CarliniWagnerL2(
            steps=100, binary_search_steps=1, initial_const=1.0)(counted, xc, yc),
        "ours CW-100 (no abort)": lambda: CarliniWagnerL2(
            steps=100, binary_search_steps=1, initial_const=1.0, abort_early=False)(counted, xc, yc),
        "ours CW-100 no abort, channels_last": lambda: CarliniWagnerL2(
            steps=100, binary_search_steps=1, initial_const=1.0, abort_early=False, channels_last=True)(
            counted, xc, yc),
    }
    if torchattacks is not None:
        cw_fns["torchattacks CW-100 (its abort)"] = lambda: torchattacks.CW(counted, c=1.0, steps=100, lr=0.01)(xc, yc)
    passes: dict[str, float] = {}
    for name, fn in cw_fns.items():
        counted.images = 0
        fn()
        passes[name] = counted.images / args.cw_batch
    cw_times = best_time(cw_fns, args.repeats)
    print(f"\nCW-L2, 100 Adam steps, c = 1, batch {args.cw_batch}"
          "     ms/img   passes/img   ms/img/pass   per-pass speed vs torchattacks")
    ta_name = "torchattacks CW-100 (its abort)"
    ta = cw_times[ta_name] / passes[ta_name] if ta_name in cw_times else None
    for name, t in cw_times.items():
        per_pass = t / passes[name]
        print(f"  {name:38s} {1000 * t / args.cw_batch:8.2f}   {passes[name]:8.0f}   "
              f"{1000 * per_pass / args.cw_batch:9.3f}   {(ta / per_pass if ta else float('nan')):6.2f}")

if __name__ == "__main__":
    main()
