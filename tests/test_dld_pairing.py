"""Contrastive pairing in encoder training: balanced within the clean and the adversarial half, and
adversarial anchors paired by their true label, so their embeddings move to the true-class cluster."""

from __future__ import annotations

import pytest
import torch

from latentdefence.dld import EncoderDecoder, EncoderTrainConfig, contrastive_loss, sample_pairs, train_encoder
from latentdefence.dld.contrastive import balanced_same
from latentdefence.dld.training import load_encoders, save_encoders
from toy_blobs import blobs, tiny_model


def test_balanced_same_is_balanced_within_each_half() -> None:
    gen = torch.Generator().manual_seed(0)
    same = balanced_same([64, 64], gen)
    assert same.shape == (128,) and int(same[:64].sum()) == 32 and int(same[64:].sum()) == 32
    odd = balanced_same([5, 5], gen)
    assert int(odd[:5].sum()) == 3 and int(odd[5:].sum()) == 3
    # positions are drawn, not fixed: over many draws every anchor is sometimes "same"
    hits = sum(balanced_same([8, 8], gen).long() for _ in range(200))
    assert (hits > 40).all() and (hits < 160).all()
    with pytest.raises(ValueError, match="non-negative"):
        balanced_same([-1], gen)


def test_adversarial_half_gets_true_label_partners_of_both_kinds() -> None:
    gen = torch.Generator().manual_seed(1)
    pool = torch.arange(10).repeat(30)
    clean = torch.randint(0, 10, (60,), generator=gen)
    anchors = torch.cat([clean, clean])                      # [clean | adversarial], adversarial keep TRUE labels
    partner, same = sample_pairs(anchors, pool, gen, balanced_same([60, 60], gen))
    for half in (slice(0, 60), slice(60, 120)):
        s, p, a = same[half], partner[half], anchors[half]
        assert int(s.sum()) == 30
        assert torch.equal(pool[p[s]], a[s]) and (pool[p[~s]] != a[~s]).all()
    with pytest.raises(ValueError, match="same must be bool"):
        sample_pairs(anchors, pool, gen, torch.ones(3, dtype=torch.bool))


def test_unknown_pairing_is_rejected() -> None:
    with pytest.raises(ValueError, match="pairing"):
        train_encoder(tiny_model(), "layer1", blobs(30, 0), 3, EncoderTrainConfig(epochs=1, pairing="nope"))


@pytest.mark.parametrize("depth", [1, 2])
def test_encoder_depth_round_trips_and_rebuilds_every_tap_shape(tmp_path, depth: int) -> None:
    eds = {"conv14": EncoderDecoder((4, 14, 14), 5, 6, depth), "conv7": EncoderDecoder((4, 7, 7), 5, 6, depth),
           "conv3": EncoderDecoder((4, 3, 3), 5, 6, depth), "vec": EncoderDecoder((9,), 5, 6, depth)}
    for ed in eds.values():
        h = torch.randn(2, *ed.shape)
        assert ed.encoder(h).shape == (2, 5) and ed(h).shape == h.shape
    save_encoders(str(tmp_path / "e.safetensors"), eds)
    back = load_encoders(str(tmp_path / "e.safetensors"))
    for tap, ed in eds.items():
        assert back[tap].depth == depth
        h = torch.randn(3, *ed.shape)
        assert torch.equal(back[tap](h), ed(h))
    with pytest.raises(ValueError, match="depth"):
        EncoderDecoder((4, 7, 7), 5, 6, 3)


def _toy_adversarial_embeddings(pairing: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A toy run of the training step's pairing + J_c on free embeddings: 3 class clusters (auxiliary
    partners), a batch of clean anchors in their cluster and adversarial anchors that the attack moved
    into a wrong cluster. Returns (adversarial embeddings after training, their true labels, centroids)."""
    gen = torch.Generator().manual_seed(0)
    centroids = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    pool_labels = torch.arange(3).repeat(50)
    pool = centroids[pool_labels] + 0.1 * torch.randn(150, 2, generator=gen)          # auxiliary embeddings
    labels = torch.arange(3).repeat(10)                                               # (30,)
    clean = (centroids[labels] + 0.1 * torch.randn(30, 2, generator=gen)).requires_grad_(True)
    adv = centroids[(labels + 1) % 3].clone().requires_grad_(True)                    # in a wrong cluster
    opt = torch.optim.SGD([clean, adv], lr=10.0)                          # J_c is a mean over 60 pairs
    y = torch.cat([labels, labels])                                                   # adversarial keep TRUE labels
    for _ in range(200):
        same = (torch.arange(60) < 30 if pairing == "legacy" else balanced_same([30, 30], gen))
        partner, same = sample_pairs(y, pool_labels, gen, same)
        loss = contrastive_loss(torch.cat([clean, adv]), pool[partner], same)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return adv.detach(), labels, centroids


def test_per_half_pairing_pulls_adversarial_embeddings_to_their_true_class_cluster() -> None:
    for pairing, expect_true in (("per_half", True), ("legacy", False)):
        adv, labels, centroids = _toy_adversarial_embeddings(pairing)
        nearest = torch.cdist(adv, centroids).argmin(1)
        true_dist = (adv - centroids[labels]).norm(dim=1)
        if expect_true:   # every adversarial embedding now sits in its true class's cluster
            assert (nearest == labels).all() and true_dist.max() < 0.5, true_dist
        else:             # legacy only pushes them away from other classes: none reaches its true class
            assert (nearest != labels).all() and true_dist.min() > 1.5, true_dist


@pytest.mark.parametrize("pairing", ["per_half", "legacy"])
def test_training_step_pairs_each_half_as_configured(monkeypatch, pairing: str) -> None:
    import latentdefence.dld.training as training

    seen: list[torch.Tensor] = []

    def record(z, z2, same, margin):
        seen.append(same.clone())
        return contrastive_loss(z, z2, same, margin)

    monkeypatch.setattr(training, "contrastive_loss", record)
    cfg = EncoderTrainConfig(epochs=1, batch_size=20, eps=0.1, steps=1, step_size=0.1, width=4, pairing=pairing)
    train_encoder(tiny_model(), "layer1", blobs(40, 0), 3, cfg)
    assert len(seen) == 2 and all(s.shape == (40,) for s in seen)
    for same in seen:
        clean, adv = same[:20], same[20:]
        if pairing == "per_half":
            assert int(clean.sum()) == 10 and int(adv.sum()) == 10
        else:
            assert clean.all() and not adv.any()
