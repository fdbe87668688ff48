"""GA baseline (Song et al. 2018): AC-GAN shapes, training, save/load, the attack's loss and its contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentdefence.lad.ga import (ACGAN, ACGANConfig, ACGANDiscriminator, ACGANGenerator, UnrestrictedAttack,
                                  load_acgan, save_acgan, train_acgan)
from test_lad_experiment import tiny_digits

SMALL = ACGANConfig(epochs=2, batch_size=32, width=8, latent_dim=16)


@pytest.fixture(scope="module")
def acgan() -> ACGAN:
    model, history = train_acgan(tiny_digits(n_train=320).train, SMALL)
    assert len(history) == 2 and all(set(h) == {"d_loss", "g_loss", "aux_accuracy_real"} for h in history)
    return model


def test_generator_and_discriminator_shapes() -> None:
    g = ACGANGenerator(10, (3, 32, 32), latent_dim=8, width=4)
    x = g(torch.randn(5, 8), torch.arange(5))
    assert x.shape == (5, 3, 32, 32) and x.min() >= 0 and x.max() <= 1
    source, aux = ACGANDiscriminator(10, (3, 32, 32), width=4)(x)
    assert source.shape == (5,) and aux.shape == (5, 10)
    with pytest.raises(ValueError, match="divisible by 4"):
        ACGANGenerator(10, (1, 30, 30))
    with pytest.raises(ValueError, match="noise"):
        g(torch.randn(5, 7), torch.arange(5))


def test_saved_acgan_draws_the_same_images(acgan: ACGAN, tmp_path) -> None:
    save_acgan(tmp_path / "g.safetensors", acgan)
    loaded, meta = load_acgan(tmp_path / "g.safetensors")
    labels = torch.arange(10)
    torch.testing.assert_close(loaded.sample(labels, torch.Generator().manual_seed(0)),
                               acgan.sample(labels, torch.Generator().manual_seed(0)))
    assert meta["num_classes"] == 10 and loaded.config == SMALL
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError):
        load_acgan(tmp_path / "bad.safetensors")


def test_loss_terms_follow_song_et_al(acgan: ACGAN) -> None:
    attack = UnrestrictedAttack(acgan, lambda1=1.0, lambda2=0.0, z_eps=0.1)
    z0 = torch.zeros(2, 16)
    sources = torch.tensor([0, 0])
    confident = torch.tensor([[5.0, 0.0], [5.0, 0.0]])      # model sure of the source class
    fooled = torch.tensor([[0.0, 5.0], [0.0, 5.0]])
    aux = torch.zeros(2, 10)
    inside = attack.loss(confident, aux, z0 + 0.05, z0, sources, None)
    outside = attack.loss(confident, aux, z0 + 0.6, z0, sources, None)
    torch.testing.assert_close(outside - inside, torch.full((2,), 0.5))   # L1 = mean(max(|dz| - eps, 0))
    assert (attack.loss(fooled, aux, z0, z0, sources, None) < inside).all()  # untargeted L0 falls as p(source) falls
    targeted = attack.loss(fooled, aux, z0, z0, sources, torch.tensor([1, 1]))
    assert (targeted < attack.loss(confident, aux, z0, z0, sources, torch.tensor([1, 1]))).all()


def test_attack_contract_and_that_the_search_lowers_the_source_probability(acgan: ACGAN) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    nn.init.normal_(model[1].weight, std=0.05)
    sources = torch.arange(10).repeat(4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attack = UnrestrictedAttack(acgan, steps=30, lr=0.05, lambda1=1.0, lambda2=0.0)
    start = UnrestrictedAttack(acgan, steps=1, lr=1e-8)(model, sources, generator=torch.Generator().manual_seed(0))[0]
    result, aux = attack(model, sources, generator=torch.Generator().manual_seed(0))
    assert result.images.shape == (40, 1, 28, 28) and 0 <= result.images.min() and result.images.max() <= 1
    p_before = model(start.images).softmax(1).gather(1, sources[:, None]).mean()
    p_after = model(result.images).softmax(1).gather(1, sources[:, None]).mean()
    assert p_after < p_before
    assert torch.equal(result.success, (result.predictions != sources) & (aux == sources))
    assert result.norms.shape == (40,) and (result.norms >= 0).all()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_bad_requests_are_named(acgan: ACGAN) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    attack = UnrestrictedAttack(acgan, steps=1)
    with pytest.raises(ValueError, match="int64"):
        attack(model, torch.zeros(3))
    with pytest.raises(ValueError, match=r"classes in \[0, 10\)"):
        attack(model, torch.tensor([0, 12]))
    with pytest.raises(ValueError, match="targets"):
        attack(model, torch.tensor([0, 1]), torch.tensor([1]))
    with pytest.raises(ValueError, match="steps"):
        UnrestrictedAttack(acgan, steps=0)
