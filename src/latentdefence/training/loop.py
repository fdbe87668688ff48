"""Classifier training: clean, PGD adversarial (Madry et al.), fast FGSM with random start (Wong et al.) or TRADES
(Zhang et al.)."""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, get_args

import torch
from torch import nn

from .._io import read_json
from .._progress import make_progress
from .._seed import seed_everything
from ..attacks import PGD, frozen_eval
from ..attacks.base import Loss
from ..data.base import ImageDataset
from ..evaluation.metrics import accuracy, robust_accuracy
from ..validation import check_choice
from .augment import AUGMENTATIONS, Augment
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import DistInfo, init_distributed, shard

log = logging.getLogger(__name__)

Optimizer = Literal["adam", "sgd"]
Schedule = Literal["constant", "onecycle", "cosine", "tail"]
Adversarial = Literal["none", "pgd", "fgsm_rs", "trades"]


@dataclass(frozen=True)
class TrainConfig:
    """How to train a classifier; defaults are the DLD paper's MNIST threat model (eps 0.3)."""

    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    optimizer: Optimizer = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Schedule = "constant"     # tail: constant, then a cosine decay to 0 over the last tail_epochs
    tail_epochs: float = 2.0
    adversarial: Adversarial = "none"
    eps: float = 0.3
    steps: int = 7                      # PGD steps during training
    step_size: float | None = None      # default: 2.5*eps/steps (PGD), 1.25*eps (FGSM-RS)
    eps_ramp_epochs: float = 0.0        # ramp eps linearly from 0 over this many epochs
    trades_beta: float = 1.0            # TRADES: weight of the KL term (1.0: the TRADES authors' MNIST setting)
    augment: Augment = "none"           # crop_flip: CIFAR's random 4-pixel shift and mirror, before the attack
    eval_samples: int = 1000            # validation images used for the periodic check
    eval_pgd_steps: int = 20            # PGD steps of the periodic robustness check
    overfit_guard: float = 0.2          # stop and restore best if PGD accuracy falls this far
    seed: int = 0

    def __post_init__(self) -> None:
        for name, choices in (("optimizer", Optimizer), ("schedule", Schedule), ("adversarial", Adversarial),
                              ("augment", Augment)):
            check_choice(name, getattr(self, name), get_args(choices))   # a typo never trains something else

    def train_attack(self, eps: float, loss: Loss | None = None) -> PGD | None:
        """The attack crafting training examples at radius `eps`, ascending `loss` (default CE; TRADES: a KL, see
        `trades_loss`); None for clean training."""
        if self.adversarial == "none" or eps <= 0:
            return None
        if self.adversarial == "fgsm_rs":
            return PGD(eps, self.step_size or 1.25 * eps, 1, random_start=True, loss=loss)
        return PGD(eps, self.step_size or 2.5 * eps / self.steps, self.steps, random_start=True, loss=loss)

    def key_settings(self) -> dict[str, Any]:
        """The fields that decide the trained weights, for cache keys: `trades_beta`, `tail_epochs` and `augment` only
        when TRADES, the tail schedule or an augmentation uses them (so keys made before they existed still match)."""
        out = asdict(self)
        for name, used in (("trades_beta", self.adversarial == "trades"), ("tail_epochs", self.schedule == "tail"),
                           ("augment", self.augment != "none")):
            if not used:
                del out[name]
        return out


def trades_loss(net: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TRADES' objective and the clean logits: CE on the clean images plus beta * KL(clean prediction || prediction
    on x'), x' the training attack's ascent of that KL from a random start in the eps-ball (Zhang et al. 2019,
    arXiv:1901.08573). At eps 0 (the start of a ramp) it is plain cross-entropy."""
    logits = net(x)
    loss = nn.functional.cross_entropy(logits, y)
    with torch.no_grad(), frozen_eval(model):
        clean = nn.functional.log_softmax(model(x), dim=1)

    def divergence(adv_logits: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        # per row of the whole batch: the training attack has one run and no early stop, so rows stay aligned
        return nn.functional.kl_div(nn.functional.log_softmax(adv_logits, dim=1), clean, reduction="none",
                                    log_target=True).sum(1)
    attack = cfg.train_attack(eps, loss=divergence)
    if attack is None:
        return loss, logits
    adv = attack(model, x, y).images
    kl = nn.functional.kl_div(nn.functional.log_softmax(net(adv), dim=1), nn.functional.softmax(logits, dim=1),
                              reduction="batchmean")
    return loss + cfg.trades_beta * kl, logits


@dataclass
class TrainResult:
    """Per-epoch metrics and where the final model was saved."""

    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    stopped_early: bool = False


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Any:
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if cfg.schedule == "tail":
        return torch.optim.lr_scheduler.LambdaLR(opt, tail_factor(total, round(cfg.tail_epochs * steps_per_epoch)))
    return None


def tail_factor(total: int, tail: int) -> Callable[[int], float]:
    """Learning-rate factor per step: 1 until the last `tail` of `total` steps, then a cosine from 1 to 0; the
    first steps equal a constant run's, so a longer run can resume from a shorter constant one's checkpoint."""
    if not 0 < tail <= total:
        raise ValueError(f"tail schedule: the tail ({tail} steps) must be positive and at most the run ({total})")
    start = total - tail
    return lambda step: 1.0 if step < start else 0.5 * (1.0 + math.cos(math.pi * min(step - start, tail) / tail))


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {f"optim.{idx}.{key}": val if torch.is_tensor(val) else torch.tensor(val)
            for idx, state in opt.state_dict()["state"].items() for key, val in state.items()}


def _restore_optimizer(opt: torch.optim.Optimizer, extra: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, val in extra.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def _evaluate(model: nn.Module, val: ImageDataset, cfg: TrainConfig) -> dict[str, float]:
    x, y = val.images[: cfg.eval_samples], val.labels[: cfg.eval_samples]
    out = {"val_clean_acc": accuracy(model, x, y)}
    if cfg.adversarial != "none":
        attack = PGD(cfg.eps, 2.5 * cfg.eps / cfg.eval_pgd_steps, cfg.eval_pgd_steps)
        out["val_pgd_acc"] = robust_accuracy(model, x, y, attack)
    return out


def train_classifier(model: nn.Module, train: ImageDataset, config: TrainConfig,
                     val: ImageDataset | None = None, checkpoint_dir: str | Path | None = None,
                     metadata: dict[str, Any] | None = None, restart: bool = False) -> TrainResult:
    """Train `model` in place; resumes from `checkpoint_dir/last` if present and the same run (`check_same_run`),
    or starts afresh over it with `restart=True`; saves `final` there.

    Under `torchrun --nproc_per_node=N` each process takes an equal share of every global batch
    and DistributedDataParallel averages gradients, so N processes train the same model as one.
    """
    dist_info = init_distributed()
    device = next(model.parameters()).device
    seed_everything(config.seed + dist_info.rank)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    opt = _optimizer(model, config)
    steps_per_epoch = len(train) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"training set of {len(train)} is smaller than one batch of {config.batch_size}")
    sched = _scheduler(opt, config, steps_per_epoch)
    result, start_epoch = TrainResult(), 0
    best: tuple[float, dict[str, Any] | None] = (-1.0, None)   # (score, F's weights) of the best epoch
    if ckpt_dir and (ckpt_dir / "last.json").is_file() and not restart:
        check_same_run(ckpt_dir / "last.json", model, config, train.name)
        start_epoch, result.history = _resume(ckpt_dir / "last", model, opt, sched, steps_per_epoch)
    net = _wrap_ddp(model, dist_info)
    meta = {"train_config": asdict(config), "dataset": train.name, **(metadata or {})}
    with make_progress() as progress:
        for epoch in range(start_epoch, config.epochs):
            t0 = time.time()
            task = progress.add_task(f"epoch {epoch + 1}/{config.epochs}", total=steps_per_epoch, status="")
            stats = _train_epoch(net, model, opt, sched, train, config, epoch, dist_info,
                                 lambda s: progress.update(task, advance=1, status=s))
            stats.update(epoch=epoch + 1, seconds=time.time() - t0)
            if val is not None:
                stats.update(_evaluate(model, val, config))
            result.history.append(stats)
            log.info("epoch %d/%d: %s", epoch + 1, config.epochs,
                     ", ".join(f"{k} {v:.4g}" for k, v in stats.items() if k != "epoch"))
            score = stats.get("val_pgd_acc", stats.get("val_clean_acc"))  # None without a validation set
            if score is None:
                pass  # nothing held out to judge overfitting by: keep training, keep the last weights
            elif score >= best[0]:
                best = (score, copy.deepcopy(model.state_dict()))
            elif config.adversarial != "none" and best[1] is not None and score < best[0] - config.overfit_guard:
                model.load_state_dict(best[1])  # catastrophic overfitting: keep the robust weights
                result.stopped_early = True
            if ckpt_dir and dist_info.is_main:
                save_checkpoint(ckpt_dir / "last", model, {**meta, "epoch": epoch + 1, "history": result.history},
                                {**_optimizer_tensors(opt), "rng": torch.get_rng_state()})
            if result.stopped_early:
                break
    if ckpt_dir and dist_info.is_main:
        result.checkpoint = save_checkpoint(ckpt_dir / "final", model, {**meta, "history": result.history,
                                                                        "stopped_early": result.stopped_early})
    return result


def check_same_run(sidecar: Path, model: nn.Module, config: TrainConfig, dataset: str) -> None:
    """Refuse, naming what differs, to resume a checkpoint of another run: another architecture, dataset or training
    setting (epochs may grow; a constant-rate run may be extended by the tail schedule, `tail_factor`)."""
    saved = read_json(sidecar)
    old, new = dict(saved.get("train_config") or {}), asdict(config)
    if old.get("schedule") == "constant" and new["schedule"] == "tail":
        for name in ("schedule", "tail_epochs"):
            old.pop(name, None)
            new.pop(name, None)
    differ = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in new.items() if k != "epochs" and k in old and old[k] != v]
    for name, was, now in (("architecture", saved.get("arch"), getattr(model, "arch", None)),
                           ("arch_kwargs", saved.get("arch_kwargs", {}), getattr(model, "arch_kwargs", {})),
                           ("dataset", saved.get("dataset"), dataset)):
        if was != now:
            differ.append(f"{name} {was!r} -> {now!r}")
    if int(saved.get("epoch", 0)) > config.epochs:
        differ.append(f"epochs: the checkpoint has {saved['epoch']}, this run stops at {config.epochs}")
    if differ:
        raise ValueError(f"{sidecar.parent}: holds another run's checkpoint ({'; '.join(differ)}); use another "
                         "folder, or restart=True (`train --restart`) to train afresh over it")


def _resume(path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
            steps_per_epoch: int) -> tuple[int, list[dict[str, float]]]:
    saved, meta, extra = load_checkpoint(path, with_extra=True)
    model.load_state_dict(saved.state_dict())
    _restore_optimizer(opt, extra)
    torch.set_rng_state(extra["rng"])
    epoch = int(meta["epoch"])
    with warnings.catch_warnings():  # replaying the schedule; no optimizer step is skipped
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(epoch * steps_per_epoch if sched is not None else 0):
            sched.step()
    return epoch, list(meta["history"])


def _wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    if info.world_size == 1:
        return model
    return nn.parallel.DistributedDataParallel(model)


def _train_epoch(net: nn.Module, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                 train: ImageDataset, cfg: TrainConfig, epoch: int, info: DistInfo,
                 report: Any) -> dict[str, float]:
    device = next(model.parameters()).device
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
    augment, draws = AUGMENTATIONS[cfg.augment], torch.Generator().manual_seed(cfg.seed * 1000 + epoch + 10**6)
    n_batches = len(train) // cfg.batch_size
    total_loss, total_correct, total_seen = 0.0, 0, 0
    model.train()
    for b in range(n_batches):
        idx = shard(order[b * cfg.batch_size:(b + 1) * cfg.batch_size], info)
        x, y = augment(train.images[idx], draws).to(device), train.labels[idx].to(device)
        ramp = min(1.0, (epoch + b / n_batches) / cfg.eps_ramp_epochs) if cfg.eps_ramp_epochs > 0 else 1.0
        if cfg.adversarial == "trades":
            loss, logits = trades_loss(net, model, x, y, cfg, cfg.eps * ramp)
        else:
            attack = cfg.train_attack(cfg.eps * ramp)
            if attack is not None:
                x = attack(model, x, y).images
            logits = net(x)
            loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        total_loss += float(loss.item()) * len(y)
        total_correct += int((logits.argmax(1) == y).sum().item())
        total_seen += len(y)
        report(f"loss {total_loss / total_seen:.3f} acc {total_correct / total_seen:.3f}")
    return {"train_loss": total_loss / total_seen, "train_acc": total_correct / total_seen}
