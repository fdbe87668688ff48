"""The base-class contract, checked for every attack: state restored, inputs untouched, clear errors."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from test_attacks_fixtures import make_net, one_thread, targets_for, tiny_batch, tiny_model  # noqa: F401

from latentdefence.attacks import (
    APGD,
    FGSM,
    PGD,
    Attack,
    apgd_losses,
    attack_entry,
    attack_in_batches,
    attack_success,
    channels_last_weights,
    create_attack,
    cross_entropy,
    in_batches,
    list_attacks,
    margin,
)
from latentdefence.detectors import Detection, evaded



def _factory(name: str, example: dict) -> Callable[[bool], Attack]:
    """The registered attack with its example settings, targeted or not where it takes the choice."""
    def make(targeted: bool) -> Attack:
        takes = "targeted" in attack_entry(name).parameters()
        return create_attack(name, **example, **({"targeted": targeted} if takes else {}))
    return make


# Every registered attack on a model, with the small settings it registered, so a new one is tested at once.
CASES = {name if i == 0 else f"{name}-{i}": (name, dict(example))
         for name in list_attacks(on="model") for i, example in enumerate(attack_entry(name).examples)}
FACTORIES = {key: _factory(name, example) for key, (name, example) in CASES.items()}
_MODES = {key: attack_entry(name).targeted for key, (name, _) in CASES.items()}
UNTARGETED = [k for k in FACTORIES if False in _MODES[k]]
TARGETED = [k for k in FACTORIES if True in _MODES[k]]


def test_the_registry_holds_every_attack_on_a_model() -> None:
    assert {"fgsm", "pgd", "cw", "jsma", "apgd-ce", "apgd-dlr", "apgdt", "square", "autoattack"} <= set(FACTORIES)
    assert isinstance(create_attack("apgd-dlr", eps=0.1), APGD) and create_attack("apgd-dlr", eps=0.1).loss == "dlr"
    with pytest.raises(KeyError, match="unknown attack 'nope'; choose one of"):
        create_attack("nope")
    with pytest.raises(TypeError, match="takes no setting bogus"):
        create_attack("fgsm", eps=0.1, bogus=1)


def test_margin_sign() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    labels = torch.tensor([0, 0])
    assert margin(logits, labels, targeted=False).tolist() == [2.0, -2.0]
    assert margin(logits, torch.tensor([1, 1]), targeted=True).tolist() == [2.0, -1.0]


@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_restored_and_inputs_untouched(name: str) -> None:
    model = make_net()
    model.load_state_dict(tiny_model().state_dict())
    model.train()
    model[0].weight.requires_grad_(False)               # a mix of flags must survive
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = tiny_batch(8)
    x_copy, y_copy = x.clone(), y.clone()
    attack = FACTORIES[name](False not in _MODES[name])
    targets = targets_for(y) if attack.targeted else None
    t_copy = None if targets is None else targets.clone()
    result = attack(model, x, y, targets)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == [False] + [True] * 5
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    assert targets is None or torch.equal(targets, t_copy)
    assert result.images.shape == x.shape and result.success.dtype == torch.bool
    assert result.norms.shape == y.shape and result.predictions.shape == y.shape
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(result.images).argmax(1), result.predictions)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_describe_is_json_ready(name: str) -> None:
    desc = FACTORIES[name](True).describe()
    assert desc["attack"] == type(FACTORIES[name](True)).__name__
    assert desc["norm"] in ("linf", "l2", "l0")
    json.dumps(desc)


@pytest.mark.parametrize("name", UNTARGETED)
def test_clear_errors(name: str) -> None:
    model, attack = tiny_model(), FACTORIES[name](False)
    x, y = tiny_batch(4)
    bad_nan = x.clone()
    bad_nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        attack(model, bad_nan, y)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        attack(model, x[0], y)
    with pytest.raises(TypeError, match="floating"):
        attack(model, (x * 255).to(torch.uint8), y)
    with pytest.raises(ValueError, match="int64"):
        attack(model, x, y.int())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(model, x * 2, y)
    with pytest.raises(ValueError, match="untargeted"):
        attack(model, x, y, targets_for(y))


@pytest.mark.parametrize("name", TARGETED)
def test_targeted_needs_targets(name: str) -> None:
    x, y = tiny_batch(4)
    with pytest.raises(ValueError, match="targets"):
        FACTORIES[name](True)(tiny_model(), x, y)


@pytest.mark.parametrize("name", TARGETED)
def test_a_target_equal_to_the_true_label_is_refused_by_name(name: str) -> None:
    """"Success" there would be the model still predicting the true label (issue 37): refused before any work."""
    x, y = tiny_batch(4)
    targets = targets_for(y)
    targets[2] = y[2]
    with pytest.raises(ValueError, match=rf"targets equal the true label at 1 image\(s\) \(first: index 2, class "
                                         rf"{int(y[2])}\)"):
        FACTORIES[name](True)(tiny_model(), x, y, targets)


def test_empty_batch() -> None:
    x, y = tiny_batch(4)
    result = PGD(eps=0.1, steps=2)(tiny_model(), x[:0], y[:0])
    assert result.images.shape == (0, *x.shape[1:]) and result.success.numel() == 0


def test_channels_last_weights_restores_tensors() -> None:
    model = make_net()
    ptrs = [p.data_ptr() for p in model.parameters()]
    values = [p.detach().clone() for p in model.parameters()]
    with channels_last_weights(model):
        assert model[3].weight.is_contiguous(memory_format=torch.channels_last)
        assert model[3].weight.data_ptr() != ptrs[2]        # (16, 8, 3, 3): really swapped
    assert [p.data_ptr() for p in model.parameters()] == ptrs          # the very same storages are back
    assert all(torch.equal(p, v) for p, v in zip(model.parameters(), values))
    assert model[3].weight.is_contiguous()


def test_channels_last_same_result() -> None:
    x, y = tiny_batch(16)
    a = PGD(eps=0.1, steps=3, random_start=False)(tiny_model(), x, y)
    b = PGD(eps=0.1, steps=3, random_start=False, channels_last=True)(tiny_model(), x, y)
    assert torch.allclose(a.images, b.images, atol=1e-5) or (a.images - b.images).abs().gt(1e-5).float().mean() < 0.01


def test_base_is_abstract() -> None:
    with pytest.raises(NotImplementedError):
        Attack()(tiny_model(), *tiny_batch(2))


def test_attacks_in_batches_match_one_call_and_follow_the_one_success_rule() -> None:
    """Batches concatenate in order to what one call gives (a seedless attack), targeted too; an empty input is an
    empty result; `success` is `attack_success` of the predictions."""
    x, y = tiny_batch(10)
    model = tiny_model()
    attack = FGSM(eps=0.1)
    whole, batched = attack(model, x, y), attack_in_batches(model, attack, x, y, batch_size=3)
    assert torch.equal(batched.images, whole.images) and torch.equal(batched.predictions, whole.predictions)
    assert torch.equal(batched.success, attack_success(batched.predictions, y))
    targets = targets_for(y)
    hit = attack_in_batches(model, PGD(eps=0.1, steps=2, targeted=True), x, y, targets, batch_size=4)
    assert torch.equal(hit.success, attack_success(hit.predictions, targets, targeted=True))
    empty = attack_in_batches(model, attack, x[:0], y[:0], batch_size=3)
    assert empty.images.shape == (0, *x.shape[1:]) and empty.success.numel() == 0
    starts = in_batches(lambda a, b, s: a + s, x, y, torch.ones_like(x), batch_size=4)  # a third tensor rides along
    assert torch.equal(starts, x + 1)
    with pytest.raises(ValueError, match="batch_size"):
        attack_in_batches(model, attack, x, y, batch_size=0)


def test_success_rules_on_f_and_on_f_with_a_detector() -> None:
    pred, labels = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 0, 0])
    assert attack_success(pred, labels).tolist() == [False, False, True, True]
    assert attack_success(pred, torch.tensor([1, 1, 2, 2]), targeted=True).tolist() == [False, True, True, False]
    flagged = torch.tensor([True, False, True, False])
    verdict = Detection(pred, flagged, torch.ones(4), torch.zeros(4), {})
    assert evaded(verdict, labels).tolist() == [False, False, False, True]


@pytest.mark.parametrize("bad", ["hinge", "CE", "", None])
def test_apgd_takes_a_registered_loss_name_and_names_the_choices_otherwise(bad: object) -> None:
    assert apgd_losses() == ["ce", "dlr"]
    with pytest.raises(ValueError, match="loss must be one of 'ce', 'dlr'"):
        APGD(eps=0.1, loss=bad)
    with pytest.raises(ValueError, match="one of 'ce', 'dlr'"):
        APGD(eps=0.1, loss=cross_entropy)  # a callable is not a name



@pytest.mark.parametrize("key", sorted(FACTORIES))
def test_every_attack_passes_at_most_batch_size_rows_at_a_time(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 37: PGD called directly on 20,000 images allocated every iterate at once. Each attack now runs in
    batches of `batch_size`, results in the input order: the rows `run` sees never exceed it."""
    targeted = _MODES[key][0]
    attack = FACTORIES[key](targeted)
    attack.batch_size = 3
    model, (x, y) = tiny_model(), tiny_batch(7)
    seen: list[int] = []
    run = type(attack).run
    monkeypatch.setattr(type(attack), "run", lambda self, m, images, goal: seen.append(len(images)) or run(
        self, m, images, goal))
    result = attack(model, x, y, targets_for(y) if targeted else None)
    assert seen and max(seen) <= 3 and sum(seen) >= len(x)
    assert result.images.shape == x.shape and result.success.shape == y.shape
    with torch.no_grad():
        assert torch.equal(result.predictions, model(result.images).argmax(1))
    attack.batch_size = 0
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        attack(model, x, y, targets_for(y) if targeted else None)


def test_a_deterministic_attack_gives_the_same_images_in_batches_as_in_one_pass() -> None:
    model, (x, y) = tiny_model(), tiny_batch(10)
    whole = FGSM(0.1)(model, x, y)
    batched = FGSM(0.1)
    batched.batch_size = 4
    assert torch.equal(batched(model, x, y).images, whole.images)


def test_the_cli_offers_every_registered_attack_and_only_those(monkeypatch: pytest.MonkeyPatch) -> None:
    """`attack run` and `attack list` read the registry (no hand-kept list): a newly registered attack is offered,
    an unknown name is refused with the registered ones named."""
    from typer.testing import CliRunner

    from latentdefence.attacks import FGSM, list_attacks, register_attack
    from latentdefence.attacks.registry import _ATTACKS  # noqa: PLC2701 - the test restores what it registers
    from latentdefence.cli import app
    from latentdefence.cli.attack import build_attack

    monkeypatch.setattr(_ATTACKS, "_entries", dict(_ATTACKS._entries))
    register_attack("one-step-test")(FGSM)
    listed = CliRunner().invoke(app, ["attack", "list"]).output
    assert all(f"  {name} " in listed for name in list_attacks())
    flags = dict(eps=0.1, norm="linf", steps=None, step_size=None, restarts=1, targeted=False, early_stop=False,
                 confidence=0.0, initial_const=1e-3, search_steps=1, lr=0.01, theta=1.0, gamma=0.1, seed=0,
                 channels_last=False)
    assert isinstance(build_attack("one-step-test", **flags), FGSM)
    with pytest.raises(ValueError, match="unknown attack 'nope'; choose one of .*one-step-test"):
        build_attack("nope", **flags)
