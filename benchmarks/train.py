"""Training throughput of `train_classifier` against a plain PyTorch loop, measured in one run.

Run: .venv/bin/python benchmarks/train.py [--images 6000] [--arch dld_mnist] [--adversarial none|pgd]
     CIFAR-10's cpu-profile F: --arch preact_resnet18 --width 0.25 --adversarial fgsm_rs --augment crop_flip
     --optimizer sgd --batch 128 --images 3840
Target: ratio >= 0.95 (our loop adds progress, bookkeeping and attack plumbing, not compute).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

os.environ.setdefault("LATENTDEFENCE_PROGRESS", "0")

from latentdefence.data import ImageDataset  # noqa: E402
from latentdefence.models import create_model  # noqa: E402
from latentdefence.training import TrainConfig, train_classifier  # noqa: E402
from latentdefence.training.augment import AUGMENTATIONS  # noqa: E402


def plain_loop(model: nn.Module, data: ImageDataset, cfg: TrainConfig) -> None:
    """The reference: the shortest correct loop doing the same work."""
    opt = (torch.optim.SGD(model.parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
           if cfg.optimizer == "sgd" else torch.optim.Adam(model.parameters(), cfg.lr))
    attack = cfg.train_attack(cfg.eps)
    order, draws = torch.randperm(len(data)), torch.Generator().manual_seed(0)
    for b in range(len(data) // cfg.batch_size):
        idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        x, y = AUGMENTATIONS[cfg.augment](data.images[idx], draws), data.labels[idx]
        if attack is not None:
            x = attack(model, x, y).images
        model.train()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--arch", default="dld_mnist")
    parser.add_argument("--width", type=float, default=None, help="the architecture's width multiplier")
    parser.add_argument("--adversarial", default="none", choices=["none", "pgd", "fgsm_rs"])
    parser.add_argument("--augment", default="none", choices=sorted(AUGMENTATIONS))
    parser.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    kwargs = {} if args.width is None else {"width": args.width}
    model0 = create_model(args.arch, **kwargs)
    g = torch.Generator().manual_seed(0)
    data = ImageDataset(torch.rand(args.images, *model0.input_shape, generator=g),
                        torch.randint(0, model0.num_classes, (args.images,), generator=g))
    eps = 0.3 if model0.input_shape[0] == 1 else 8 / 255
    cfg = TrainConfig(epochs=1, adversarial=args.adversarial, steps=7, eps=eps, augment=args.augment,
                      optimizer=args.optimizer, batch_size=args.batch, lr=0.05 if args.optimizer == "sgd" else 1e-3)
    times: dict[str, list[float]] = {"plain": [], "ours": []}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        for name in ("plain", "ours"):
            model = create_model(args.arch, **kwargs)
            t0 = time.perf_counter()
            if name == "plain":
                plain_loop(model, data, cfg)
            else:
                train_classifier(model, data, cfg)
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    print(f"arch {args.arch} {kwargs}, {args.images} images, adversarial={args.adversarial}, augment={args.augment}, "
          f"optimizer={args.optimizer}, batch {args.batch}, threads {torch.get_num_threads()}")
    for name, secs in best.items():
        print(f"  {name:5s}: {args.images / secs:8.1f} images/s  ({secs:.2f} s, best of {args.repeats})")
    print(f"  ratio ours/plain throughput: {best['plain'] / best['ours']:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
