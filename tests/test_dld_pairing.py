"""Contrastive pairing in encoder training: balanced within the clean and the adversarial half, and
adversarial anchors paired by their true label, so their embeddings move to the true-class cluster."""

from __future__ import annotations

import pytest
import torch

from latentdefence.dld import EncoderDecoder, EncoderTrainConfig, sample_pairs, train_encoder
from latentdefence.dld.contrastive import balanced_same
from latentdefence.dld.training import load_encoders, save_encoders
from test_dld_detector import _blobs, _tiny_model


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
        train_encoder(_tiny_model(), "layer1", _blobs(30, 0), 3, EncoderTrainConfig(epochs=1, pairing="nope"))


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
