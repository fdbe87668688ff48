"""Training: it learns, checkpoints round-trip without pickle, resume equals an uninterrupted run, DDP equals one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latentdefence.data import ImageDataset
from latentdefence.models import create_model
from latentdefence.training import TrainConfig, load_checkpoint, save_checkpoint, trades_loss, train_classifier
from latentdefence.validation import InputValidationError

ROOT = Path(__file__).resolve().parents[1]


def toy_digits(n: int = 400, seed: int = 0) -> ImageDataset:
    """A learnable 28x28 task: class k has a bright bar at row 2k+4 plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.rand(n, 1, 28, 28, generator=g) * 0.3
    for i, k in enumerate(labels.tolist()):
        images[i, 0, 2 * k + 4, 4:24] = 1.0
    return ImageDataset(images, labels, "toy", "train")


@pytest.mark.parametrize("setting", ["optimizer", "schedule", "adversarial"])
def test_an_unknown_choice_is_rejected_by_name(setting: str) -> None:
    with pytest.raises(InputValidationError, match=f"^{setting} must be one of .*'adamw'"):
        TrainConfig(**{setting: "adamw"})


def test_clean_training_learns_a_simple_task() -> None:
    torch.manual_seed(0)
    model = create_model("dld_mnist")
    data = toy_digits()
    result = train_classifier(model, data, TrainConfig(epochs=3, batch_size=50, lr=3e-3), val=toy_digits(200, 1))
    assert result.history[-1]["val_clean_acc"] > 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_adversarial_training_records_pgd_accuracy() -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=1, batch_size=50, lr=3e-3, adversarial="fgsm_rs", eps=0.1, eval_pgd_steps=3,
                      eval_samples=50)
    result = train_classifier(create_model("dld_mnist"), toy_digits(100), cfg, val=toy_digits(50, 1))
    assert 0.0 <= result.history[0]["val_pgd_acc"] <= result.history[0]["val_clean_acc"] + 1e-9
    assert cfg.train_attack(0.1).steps == 1 and cfg.train_attack(0.1).step_size == pytest.approx(0.125)
    assert TrainConfig(adversarial="pgd", steps=7).train_attack(0.3).step_size == pytest.approx(2.5 * 0.3 / 7)
    assert TrainConfig().train_attack(0.3) is None


def test_trades_objective_is_clean_cross_entropy_plus_beta_times_the_attacked_kl() -> None:
    torch.manual_seed(0)
    model, data = create_model("dld_mnist"), toy_digits(40)
    x, y = data.images, data.labels

    def objective(beta: float, eps: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(1)   # the same random start every call
        cfg = TrainConfig(adversarial="trades", trades_beta=beta, steps=5)
        return trades_loss(model, model, x, y, cfg, eps)
    ce = torch.nn.functional.cross_entropy(model(x), y)
    zero, logits = objective(0.0)
    assert torch.allclose(zero, ce) and torch.allclose(logits, model(x))
    one, two = objective(1.0)[0], objective(2.0)[0]
    assert one > ce and torch.allclose(two - ce, 2 * (one - ce), rtol=1e-4)   # KL > 0, scaled by beta
    assert torch.allclose(objective(1.0, eps=0.0)[0], ce)                     # eps ramped to 0: plain CE
    # the inner attack ascends the KL: more steps find a larger divergence than one
    torch.manual_seed(1)
    one_step = trades_loss(model, model, x, y, TrainConfig(adversarial="trades", steps=1), 0.3)[0]
    assert one > one_step


def test_trades_training_runs_and_only_its_keys_carry_beta() -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=2, batch_size=50, lr=3e-3, adversarial="trades", eps=0.1, steps=3, eval_pgd_steps=3,
                      eval_samples=50, trades_beta=3.0)
    result = train_classifier(create_model("dld_mnist"), toy_digits(200), cfg, val=toy_digits(50, 1))
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history)
    assert result.history[-1]["val_clean_acc"] > 0.5 and "val_pgd_acc" in result.history[-1]
    assert cfg.key_settings()["trades_beta"] == 3.0 and "trades_beta" not in TrainConfig(adversarial="pgd").key_settings()


def test_adversarial_training_without_validation_runs_every_epoch() -> None:
    # regression: without a validation set the overfitting guard once scored epochs by -epoch and stopped
    # adversarial training after its second epoch, restoring the first epoch's weights
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=3, batch_size=50, lr=3e-3, adversarial="fgsm_rs", eps=0.1)
    result = train_classifier(create_model("dld_mnist"), toy_digits(100), cfg)
    assert not result.stopped_early and [h["epoch"] for h in result.history] == [1, 2, 3]


def test_checkpoint_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    model = create_model("lenet5").eval()
    save_checkpoint(tmp_path / "ck", model, {"note": "x"})
    loaded, meta = load_checkpoint(tmp_path / "ck.safetensors")
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(loaded.eval()(x), model(x))
    assert meta["arch"] == "lenet5" and meta["note"] == "x" and "git_revision" in meta
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_or_mismatched_checkpoints_are_named(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ck", create_model("lenet5"))
    weights = tmp_path / "ck.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="ck.safetensors"):
        load_checkpoint(tmp_path / "ck")
    save_checkpoint(tmp_path / "other", create_model("lenet5"))
    (tmp_path / "other.json").write_text((tmp_path / "other.json").read_text().replace('"lenet5"', '"dld_mnist"'))
    with pytest.raises(ValueError, match="field 'arch' is 'dld_mnist' but other.safetensors was saved for 'lenet5'"):
        load_checkpoint(tmp_path / "other")                     # the sidecar is checked against the weights' header
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_checkpoint(tmp_path / "missing")


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path: Path, monkeypatch) -> None:
    import latentdefence.training.loop as loop

    data = toy_digits(200)
    cfg = TrainConfig(epochs=2, batch_size=50, lr=3e-3, schedule="onecycle")
    torch.manual_seed(0)
    straight = create_model("dld_mnist")
    train_classifier(straight, data, cfg)

    real_epoch = loop._train_epoch

    def crash_in_second_epoch(*args, **kwargs):
        if args[6] == 1:  # epoch index
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "_train_epoch", crash_in_second_epoch)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(create_model("dld_mnist"), data, cfg, checkpoint_dir=tmp_path)
    assert '"epoch": 1' in (tmp_path / "last.json").read_text() and not (tmp_path / "final.json").exists()
    monkeypatch.setattr(loop, "_train_epoch", real_epoch)
    torch.manual_seed(1)  # a different init: everything must come from the checkpoint
    resumed = create_model("dld_mnist")
    result = train_classifier(resumed, data, cfg, checkpoint_dir=tmp_path)
    assert [h["epoch"] for h in result.history] == [1, 2]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_a_checkpoint_of_another_run_is_refused_by_name_or_restarted(tmp_path: Path) -> None:
    """Issue 37: a finished clean run in the folder must not be returned as an adversarially trained one."""
    data = toy_digits(100)
    clean = TrainConfig(epochs=3, batch_size=50, lr=3e-3)
    train_classifier(create_model("dld_mnist"), data, clean, checkpoint_dir=tmp_path)
    pgd = TrainConfig(epochs=2, batch_size=50, lr=3e-3, adversarial="pgd", eps=0.1, steps=1)
    with pytest.raises(ValueError, match=r"another run's checkpoint \(adversarial 'none' -> 'pgd'; eps 0.3 -> 0.1.*"
                                         r"epochs: the checkpoint has 3, this run stops at 2\)"):
        train_classifier(create_model("dld_mnist"), data, pgd, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"architecture 'dld_mnist' -> 'lenet5'"):
        train_classifier(create_model("lenet5"), data, clean, checkpoint_dir=tmp_path)
    renamed = ImageDataset(data.images, data.labels, "other-digits", "train")
    with pytest.raises(ValueError, match=r"dataset 'toy' -> 'other-digits'|dataset .* -> 'other-digits'"):
        train_classifier(create_model("dld_mnist"), renamed, clean, checkpoint_dir=tmp_path)
    fresh = train_classifier(create_model("dld_mnist"), data, pgd, checkpoint_dir=tmp_path, restart=True)
    assert [h["epoch"] for h in fresh.history] == [1, 2] and "val_pgd_acc" not in fresh.history[0]
    assert '"adversarial": "pgd"' in (tmp_path / "final.json").read_text()


def test_tail_schedule_holds_the_rate_then_anneals_it_to_zero() -> None:
    from latentdefence.training.loop import tail_factor

    factor = tail_factor(total=100, tail=20)
    assert [factor(s) for s in (0, 50, 79)] == [1.0, 1.0, 1.0]
    assert factor(90) == pytest.approx(0.5) and factor(100) == pytest.approx(0.0)
    assert all(factor(s) >= factor(s + 1) for s in range(100))
    with pytest.raises(ValueError, match="tail"):
        tail_factor(total=10, tail=11)
    assert TrainConfig(schedule="tail", tail_epochs=3).key_settings()["tail_epochs"] == 3
    assert "tail_epochs" not in TrainConfig(schedule="cosine").key_settings()  # keys made before it still match


def test_a_tail_run_extends_a_constant_runs_checkpoint_exactly(tmp_path: Path) -> None:
    """The tail leaves the first epochs at the constant rate, so epochs past a constant run resume from it."""
    data = toy_digits(200)
    tail = TrainConfig(epochs=3, batch_size=50, lr=3e-3, schedule="tail", tail_epochs=1)
    torch.manual_seed(0)
    straight = create_model("dld_mnist")
    train_classifier(straight, data, tail)
    torch.manual_seed(0)
    train_classifier(create_model("dld_mnist"), data, TrainConfig(epochs=2, batch_size=50, lr=3e-3),
                     checkpoint_dir=tmp_path)
    extended = create_model("dld_mnist")
    result = train_classifier(extended, data, tail, checkpoint_dir=tmp_path)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    for a, b in zip(straight.state_dict().values(), extended.state_dict().values()):
        torch.testing.assert_close(a, b)


DDP_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_training import toy_digits
from latentdefence.models import create_model
from latentdefence.training import TrainConfig, train_classifier, save_checkpoint, init_distributed
torch.manual_seed(0)
model = create_model("dld_mnist")
train_classifier(model, toy_digits(160), TrainConfig(epochs=2, batch_size=40, lr=3e-3), checkpoint_dir=sys.argv[1])
if torch.distributed.is_initialized():   # leave together, after rank 0 has written the checkpoint, and cleanly
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_two_ddp_processes_train_the_same_model_as_one(tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT.format(tests=str(ROOT / "tests")))
    env_cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               str(tmp_path / "ddp")]
    launched = subprocess.run(env_cmd, capture_output=True, text=True, timeout=300,
                              env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert launched.returncode == 0, f"torchrun failed:\n{launched.stderr[-4000:]}"  # the workers' own error
    subprocess.run([sys.executable, str(script), str(tmp_path / "single")], check=True, capture_output=True,
                   timeout=300)
    ddp, _ = load_checkpoint(tmp_path / "ddp" / "final")
    single, _ = load_checkpoint(tmp_path / "single" / "final")
    for (name, a), b in zip(ddp.state_dict().items(), single.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, msg=lambda m: f"{name}: {m}")
    torch.manual_seed(0)
    fresh = create_model("dld_mnist")
    changed = any(not torch.allclose(a, b) for a, b in zip(fresh.state_dict().values(), single.state_dict().values()))
    assert changed, "training must have moved the weights for the comparison to mean anything"
