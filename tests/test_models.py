"""Every architecture's taps: features then forward_from gives the same logits as forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentdefence.models import HookedModel, StagedModel, as_tapped, create_model, list_models

SMALL = {"celeba_net": {"image_size": 32}}


def _model(name: str) -> StagedModel:
    torch.manual_seed(0)
    return create_model(name, **SMALL.get(name, {})).eval()


@pytest.mark.parametrize("name", list_models())
def test_every_tap_round_trips_to_the_same_logits(name: str) -> None:
    model = _model(name)
    x = torch.rand(3, *model.input_shape)
    logits = model(x)
    assert logits.shape == (3, model.num_classes)
    feats = model.intermediates(x, model.tap_names)
    for tap in model.tap_names:
        torch.testing.assert_close(model.forward_from(model.features(x, tap), tap), logits)
        torch.testing.assert_close(feats[tap], model.features(x, tap))
        torch.testing.assert_close(model.forward_with(x, tap, lambda h: h), logits)


@pytest.mark.parametrize("name", list_models())
def test_every_inner_tap_round_trips_and_sits_in_forward_order(name: str) -> None:
    model = _model(name)
    x = torch.rand(2, *model.input_shape)
    logits = model(x)
    inner = model.inner_tap_names
    everything = [*inner, *model.tap_names]
    feats = model.intermediates(x, everything)
    for tap in inner:
        torch.testing.assert_close(model.forward_from(feats[tap], tap), logits)
        torch.testing.assert_close(model.intermediates(x, [tap])[tap], feats[tap])
    stage = model.tap_names[0]
    assert all(model.deepest_tap([t, stage]) == stage for t in inner if t.startswith(f"{stage}."))


def test_dld_mnist_taps_before_pooling() -> None:
    model = _model("dld_mnist")
    x = torch.rand(2, 1, 28, 28)
    assert model.features(x, "layer1.1").shape == (2, 32, 28, 28)      # ReLU output, before the 2x2 max-pool
    torch.testing.assert_close(nn.functional.max_pool2d(model.features(x, "layer1.1"), 2), model.features(x, "layer1"))
    assert model.deepest_tap(["layer2", "layer1.1", "layer2.0"]) == "layer2"
    assert model.deepest_tap(["layer1", "layer2.1"]) == "layer2.1"
    with pytest.raises(KeyError, match=r"unknown tap 'layer1.2'.*inside them"):
        model.features(x, "layer1.2")     # the pool's output is the stage's own tap, `layer1`


@pytest.mark.parametrize("name", list_models())
def test_replacing_an_activation_changes_the_logits(name: str) -> None:
    model = _model(name)
    x = torch.rand(2, *model.input_shape)
    tap = model.tap_names[0]
    changed = model.forward_with(x, tap, lambda h: h + 1.0)
    assert not torch.allclose(changed, model(x))


def test_registry_records_architecture_and_rejects_unknown_names() -> None:
    model = create_model("lenet5")
    assert model.arch == "lenet5" and model.arch_kwargs == {}
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        create_model("nope")


def test_unknown_tap_and_wrong_input_shape_are_named() -> None:
    model = _model("dld_mnist")
    with pytest.raises(KeyError, match="unknown tap 'layer9'"):
        model.features(torch.rand(1, 1, 28, 28), "layer9")
    with pytest.raises(ValueError, match=r"expects input \(N, 1, 28, 28\)"):
        model(torch.rand(1, 3, 28, 28))


def test_paper_shapes_of_latent_layers() -> None:
    x = torch.rand(2, 1, 28, 28)
    assert _model("lenet5").features(x, "fc1").shape == (2, 500)
    assert _model("svhn_net").features(torch.rand(2, 3, 32, 32), "fc1").shape == (2, 4096)
    celeba = create_model("celeba_net", image_size=64)
    assert celeba.features(torch.rand(1, 3, 64, 64), "fc1").shape == (1, 4096)
    probs = celeba.eval()(torch.rand(1, 3, 64, 64)).softmax(1)
    z = celeba.features(torch.rand(0, 3, 64, 64), "logit")
    assert z.shape == (0, 1) and torch.allclose(probs.sum(1), torch.ones(1))
    with pytest.raises(ValueError, match="divisible by 32"):
        create_model("celeba_net", image_size=50)


@pytest.mark.parametrize(("name", "latent"), [("svhn_net", "fc1"), ("dld_svhn", "fc"), ("celeba_net", "fc1"),
                                            ("preact_resnet18", "pool")])
def test_width_scales_every_layer_and_keeps_the_taps(name: str, latent: str) -> None:
    full, narrow = _model(name), create_model(name, width=0.125, **SMALL.get(name, {})).eval()
    x = torch.rand(2, *full.input_shape)
    assert narrow.tap_names == full.tap_names and narrow.arch_kwargs["width"] == 0.125
    assert narrow.features(x, latent).shape[1] == full.features(x, latent).shape[1] // 8
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in full.parameters()) / 30
    torch.testing.assert_close(narrow.forward_from(narrow.features(x, latent), latent), narrow(x))


class UserNet(nn.Module):
    """A user's model with its own layer names and a non-Sequential forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = nn.ReLU()
        self.head = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)).flatten(1))


def test_hooked_user_model_exposes_named_layers() -> None:
    torch.manual_seed(0)
    net = as_tapped(UserNet(), taps=["conv", "act"], input_shape=(1, 28, 28), num_classes=10)
    assert isinstance(net, HookedModel)
    x = torch.rand(2, 1, 28, 28)
    logits = net(x)
    for tap in net.tap_names:
        torch.testing.assert_close(net.forward_from(net.features(x, tap), tap), logits)
    both = net.intermediates(x, ["conv", "act"])
    torch.testing.assert_close(both["act"], both["conv"].relu())
    torch.testing.assert_close(net.forward_with(x, "act", lambda h: h * 0), net.module.head(torch.zeros(2, 2704)))


def test_as_tapped_needs_layer_names_for_plain_modules() -> None:
    with pytest.raises(ValueError, match="taps="):
        as_tapped(UserNet())
    with pytest.raises(KeyError, match="no submodule"):
        as_tapped(UserNet(), taps=["missing"], input_shape=(1, 28, 28), num_classes=10)
    model = _model("lenet5")
    assert as_tapped(model) is model
