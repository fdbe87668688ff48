"""LAD generator: every registered architecture maps latents to images of the right shape in [0, 1]."""

from __future__ import annotations

import pytest
import torch

from latentdefence.lad.generator import (GENERATORS, GeneratorConfig, create_generator, extract_latents, lp_loss,
                                         reconstruction_mse, train_generator)
from latentdefence.data.base import ImageDataset
from latentdefence.models import create_model

SMALL = {"mnist": {}, "svhn": {"width": 0.0625}, "celeba": {"width": 0.0625, "image_size": 64}}
SHAPES = {"mnist": (1, 28, 28), "svhn": (3, 32, 32), "celeba": (3, 64, 64)}
LATENTS = {"mnist": 500, "svhn": 4096, "celeba": 4096}


@pytest.mark.parametrize("dataset", sorted(GENERATORS))
def test_generator_shape_and_range(dataset: str) -> None:
    torch.manual_seed(0)
    gen = create_generator(dataset, **SMALL[dataset]).eval()
    x = gen(torch.randn(3, LATENTS[dataset]) * 10)
    assert x.shape == (3, *SHAPES[dataset])
    assert x.min() >= 0 and x.max() <= 1


def test_paper_widths_keep_shapes() -> None:
    assert create_generator("svhn").eval()(torch.randn(1, 4096)).shape == (1, 3, 32, 32)


def test_bad_latent_shape_is_named() -> None:
    with pytest.raises(ValueError, match=r"latents \(N, 500\)"):
        create_generator("mnist")(torch.randn(2, 10))
    with pytest.raises(KeyError, match="no generator"):
        create_generator("imagenet")
    with pytest.raises(ValueError, match="divisible by 32"):
        create_generator("celeba", image_size=50)


def test_lp_loss_values() -> None:
    x, x_hat = torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, -2.0]]]])
    assert lp_loss(x, x_hat, 1).item() == pytest.approx(1.5)
    assert lp_loss(x, x_hat, 2).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="p = 1 or p = 2"):
        lp_loss(x, x_hat, 3)


def test_training_lowers_reconstruction_error() -> None:
    torch.manual_seed(0)
    classifier = create_model("lenet5")
    images = torch.zeros(32, 1, 28, 28)
    images[:, :, 8:20, 8:20] = 1.0  # a shared bright square: far from the untrained G's grey output
    data = ImageDataset(images, torch.arange(32) % 10)
    z = extract_latents(classifier, "fc1", data.images)
    assert z.shape == (32, 500)
    gen = create_generator("mnist", width=0.25)
    before = reconstruction_mse(gen, data, z)
    losses = train_generator(gen, z, data.images, GeneratorConfig(epochs=2, batch_size=16, lr=3e-3))
    assert len(losses) == 2 and reconstruction_mse(gen, data, z) < before


def test_extract_latents_rejects_conv_taps() -> None:
    with pytest.raises(ValueError, match="fully connected"):
        extract_latents(create_model("lenet5"), "conv2", torch.rand(2, 1, 28, 28))
