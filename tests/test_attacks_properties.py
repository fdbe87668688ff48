"""Hypothesis properties: any input in the box gives outputs in the box and the ball; wrong stays wrong."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_attacks_fixtures import CLASSES, SIZE, one_thread, tiny_model  # noqa: F401 (autouse)

from latentdefence.attacks import APGD, FGSM, JSMA, PGD, CarliniWagnerL2, Square

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def batches(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """Images anywhere in [0, 1], including exact 0/1 pixels and constant images, with random labels."""
    n = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["uniform", "binary", "constant"]))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, SIZE, SIZE, generator=gen)
    if kind == "binary":
        x = (x > 0.5).float()
    elif kind == "constant":
        x = torch.full_like(x, draw(st.sampled_from([0.0, 1.0, 0.5])))
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    return x, y


BALL_ATTACKS = {
    "fgsm": lambda eps: FGSM(eps=eps),
    "pgd_linf": lambda eps: PGD(eps=eps, steps=3, restarts=2),
    "pgd_l2": lambda eps: PGD(eps=eps * 10, steps=3, norm="l2"),
    "apgd_linf": lambda eps: APGD(eps=eps, steps=4),
    "apgd_l2": lambda eps: APGD(eps=eps * 10, steps=4, norm="l2", loss="dlr"),
    "square": lambda eps: Square(eps=eps, queries=10),
}


@pytest.mark.parametrize("name", list(BALL_ATTACKS))
@SETTINGS
@given(batch=batches(), eps=st.floats(0.0, 0.5))
def test_outputs_in_box_and_ball(name: str, batch: tuple[torch.Tensor, torch.Tensor], eps: float) -> None:
    x, y = batch
    attack = BALL_ATTACKS[name](eps)
    result = attack(tiny_model(), x, y)
    assert result.images.min() >= 0 and result.images.max() <= 1
    radius = attack.eps
    assert (result.norms <= radius * (1 + 1e-5) + 1e-6).all()
    assert not torch.isnan(result.images).any()


@SETTINGS
@given(batch=batches())
def test_cw_and_jsma_stay_in_box(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    cw = CarliniWagnerL2(steps=5, binary_search_steps=2, initial_const=1.0)(tiny_model(), x, y)
    assert cw.images.min() >= 0 and cw.images.max() <= 1 and torch.isfinite(cw.norms).all()
    t = (y + 3) % CLASSES
    js = JSMA(gamma=0.05)(tiny_model(), x, y, t)
    assert js.images.min() >= 0 and js.images.max() <= 1
    assert (js.norms <= 0.05 * x[0].numel()).all()


@pytest.mark.parametrize("name", list(BALL_ATTACKS) + ["cw"])
@SETTINGS
@given(batch=batches())
def test_already_wrong_stays_wrong(name: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, _ = batch
    with torch.no_grad():
        preds = tiny_model()(x).argmax(1)
    wrong = (preds + 1) % CLASSES                                 # labels the model already gets wrong
    attack = (CarliniWagnerL2(steps=5, binary_search_steps=2) if name == "cw" else BALL_ATTACKS[name](0.1))
    result = attack(tiny_model(), x, wrong)
    assert result.success.all()
    assert (result.predictions != wrong).all()
