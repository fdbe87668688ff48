"""The papers' classifiers, each a StagedModel whose stage names are its taps.

Every model takes (N, C, H, W) pixels in [0, 1]; any normalisation lives inside the model.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model
from .taps import StagedModel


def scaled(units: int, width: float) -> int:
    """`units` channels (or features) times a width multiplier, at least 1 (width 1 = the paper's)."""
    return max(1, round(units * width))


def _conv(cin: int, cout: int, k: int = 3, pool: bool = False, pad: int | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2 if pad is None else pad), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


@register_model("dld_mnist")
def dld_mnist(num_classes: int = 10) -> StagedModel:
    """DLD's "4-layer convolution network" for MNIST (the paper gives no details; our choice).

    Four conv layers (32, 64, 128 channels; each a tap: ``layer1``..``layer4``) and a linear head,
    ~0.24M parameters and ~8M multiply-adds per image, about 0.55x a Madry-style MNIST CNN, so PGD
    adversarial training and three adversarially trained encoders fit a CPU budget.
    Shapes: layer1 (32,14,14), layer2 (64,7,7), layer3 (128,3,3), layer4 (128,1,1) -> logits (10).
    """
    return StagedModel([
        ("layer1", _conv(1, 32, pool=True)),                     # (N, 32, 14, 14)
        ("layer2", _conv(32, 64, pool=True)),                    # (N, 64, 7, 7)
        ("layer3", _conv(64, 128, pool=True)),                   # (N, 128, 3, 3)
        ("layer4", _conv(128, 128, pad=0)),                      # (N, 128, 1, 1)
        ("logits", nn.Sequential(nn.Flatten(), nn.Linear(128, num_classes))),
    ], input_shape=(1, 28, 28), num_classes=num_classes)


@register_model("dld_svhn")
def dld_svhn(num_classes: int = 10, width: float = 1.0) -> StagedModel:
    """DLD's "8-layer convolution network" for SVHN (details not given in the paper; our choice).

    Eight 3x3 conv layers in four pairs (32, 64, 128, 256 channels; pool after each pair), each a
    tap ``layer1``..``layer8``, then ``fc`` (256) and ``logits``; `width` scales every channel and unit.
    """
    chans = [3] + [scaled(c, width) for c in (32, 32, 64, 64, 128, 128, 256, 256)]
    stages: list[tuple[str, nn.Module]] = [
        (f"layer{i + 1}", _conv(chans[i], chans[i + 1], pool=(i % 2 == 1))) for i in range(8)
    ]  # layer8: (N, 256, 2, 2)
    fc = scaled(256, width)
    stages += [("fc", nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * 2 * 2, fc), nn.ReLU())),
               ("logits", nn.Linear(fc, num_classes))]
    return StagedModel(stages, input_shape=(3, 32, 32), num_classes=num_classes)


@register_model("lenet5")
def lenet5(num_classes: int = 10) -> StagedModel:
    """LeNet-5 as in Caffe/LAD: conv20-pool-conv50-pool-fc500-fc10; ``fc1`` is the 500-d latent layer."""
    return StagedModel([
        ("conv1", nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2))),                 # (N, 20, 12, 12)
        ("conv2", nn.Sequential(nn.Conv2d(20, 50, 5), nn.MaxPool2d(2))),                # (N, 50, 4, 4)
        ("fc1", nn.Sequential(nn.Flatten(), nn.Linear(50 * 4 * 4, 500), nn.ReLU())),    # (N, 500)
        ("logits", nn.Linear(500, num_classes)),
    ], input_shape=(1, 28, 28), num_classes=num_classes)


@register_model("lenet5_relu")
def lenet5_relu(num_classes: int = 10) -> StagedModel:
    """LeNet-5 with a ReLU after each convolution (the common PyTorch/Keras form; the LAD paper does not say which
    LeNet it used); otherwise as `lenet5`, ``fc1`` the 500-d latent layer."""
    return StagedModel([
        ("conv1", nn.Sequential(nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2))),      # (N, 20, 12, 12)
        ("conv2", nn.Sequential(nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2))),     # (N, 50, 4, 4)
        ("fc1", nn.Sequential(nn.Flatten(), nn.Linear(50 * 4 * 4, 500), nn.ReLU())),    # (N, 500)
        ("logits", nn.Linear(500, num_classes)),
    ], input_shape=(1, 28, 28), num_classes=num_classes)


@register_model("mnist_black")
def mnist_black(num_classes: int = 10) -> StagedModel:
    """LAD's independently trained "black CNN" for transfer attacks: a different architecture than
    LeNet (the cleverhans tutorial CNN: conv64 8x8/2, conv128 6x6/2, conv128 5x5, linear)."""
    return StagedModel([
        ("conv1", nn.Sequential(nn.Conv2d(1, 64, 8, stride=2, padding=3), nn.ReLU())),   # (N, 64, 14, 14)
        ("conv2", nn.Sequential(nn.Conv2d(64, 128, 6, stride=2), nn.ReLU())),            # (N, 128, 5, 5)
        ("conv3", nn.Sequential(nn.Conv2d(128, 128, 5), nn.ReLU())),                      # (N, 128, 1, 1)
        ("logits", nn.Sequential(nn.Flatten(), nn.Linear(128, num_classes))),
    ], input_shape=(1, 28, 28), num_classes=num_classes)


@register_model("svhn_net")
def svhn_net(num_classes: int = 10, width: float = 1.0) -> StagedModel:
    """LAD's svhnNet (Table XII): conv64/128/256/512 with max-pooling, conv512, fc 4096-2048-512-10.

    On 32x32 inputs four pools would leave 2x2, not the table's 512x4x4, so the fourth conv is not
    followed by a pool (documented deviation). ``fc1`` is the 4096-d "fifth layer" the generator reads.
    `width` scales every channel and unit (the smoke profile's 1/8 makes it ~1/60 the size).
    """
    c1, c2, c3, c4, c5 = (scaled(c, width) for c in (64, 128, 256, 512, 512))
    f1, f2, f3 = (scaled(u, width) for u in (4096, 2048, 512))
    return StagedModel([
        ("block1", _conv(3, c1, pool=True)),       # (N, 64, 16, 16)
        ("block2", _conv(c1, c2, pool=True)),      # (N, 128, 8, 8)
        ("block3", _conv(c2, c3, pool=True)),      # (N, 256, 4, 4)
        ("block4", _conv(c3, c4)),                 # (N, 512, 4, 4)
        ("block5", _conv(c4, c5)),                 # (N, 512, 4, 4)
        ("fc1", nn.Sequential(nn.Flatten(), nn.Linear(c5 * 4 * 4, f1), nn.ReLU(), nn.Dropout(0.5))),
        ("fc2", nn.Sequential(nn.Linear(f1, f2), nn.ReLU())),
        ("fc3", nn.Sequential(nn.Linear(f2, f3), nn.ReLU())),
        ("logits", nn.Linear(f3, num_classes)),
    ], input_shape=(3, 32, 32), num_classes=num_classes)


class BinaryLogits(nn.Module):
    """Expose one logit z as two logits [0, z], so softmax equals sigmoid(z) and every attack and
    loss written for K-class logits applies unchanged to a one-logit classifier."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(z), z], dim=1)


_VGG11: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


@register_model("celeba_net")
def celeba_net(image_size: int = 128, width: float = 1.0) -> StagedModel:
    """LAD's CelebANet (Table XIV): VGG11's conv/pool layers, fc 4096-2048-1 with dropout 0.5.

    The paper's 128x128 crops give 512x4x4 features; other sizes (a multiple of 32) scale the first
    linear layer. Trained from scratch here (no pretrained weights can be fetched). The single logit
    is exposed as [0, z] (see BinaryLogits); ``fc1`` is the 4096-d latent layer. `width` scales every
    channel and unit.
    """
    if image_size % 32:
        raise ValueError(f"celeba_net needs image_size divisible by 32, got {image_size}")
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG11:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, scaled(int(v), width), 3, padding=1), nn.ReLU()]
            cin = scaled(int(v), width)
    side, f1, f2 = image_size // 32, scaled(4096, width), scaled(2048, width)
    return StagedModel([
        ("features", nn.Sequential(*layers)),                                                 # (N, 512, s, s)
        ("fc1", nn.Sequential(nn.Flatten(), nn.Linear(cin * side * side, f1), nn.ReLU(), nn.Dropout(0.5))),
        ("fc2", nn.Sequential(nn.Linear(f1, f2), nn.ReLU(), nn.Dropout(0.5))),
        ("logit", nn.Linear(f2, 1)),
        ("logits", BinaryLogits()),
    ], input_shape=(3, image_size, image_size), num_classes=2)


class Normalize(nn.Module):
    """Per-channel (x - mean) / std inside the model, so every attack and defence sees pixels in [0, 1]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PreActBlock(nn.Module):
    """He et al. 2016's pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        return self.conv2(torch.relu(self.bn2(out))) + skip


CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


@register_model("preact_resnet18")
def preact_resnet18(num_classes: int = 10, width: float = 1.0) -> StagedModel:
    """PreAct ResNet-18 (He et al. 2016; the model of Wong et al. 2020's fast adversarial training) for 32x32 RGB.

    Taps: ``stem`` (the first conv, (64, 32, 32) at width 1), ``layer1`` (64, 32, 32), ``layer2`` (128, 16, 16),
    ``layer3`` (256, 8, 8), ``layer4`` (512, 4, 4), ``pool`` (512) and ``logits``; `width` scales every channel
    (0.25: 0.7M weights, ~36M multiply-adds per image, a CPU's budget). CIFAR-10 normalisation lives inside.
    """
    c = [scaled(ch, width) for ch in (64, 128, 256, 512)]

    def layer(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1))
    return StagedModel([
        ("stem", nn.Sequential(Normalize(CIFAR10_MEAN, CIFAR10_STD), nn.Conv2d(3, c[0], 3, 1, 1, bias=False))),
        ("layer1", layer(c[0], c[0], 1)),                                                   # (N, c0, 32, 32)
        ("layer2", layer(c[0], c[1], 2)),                                                   # (N, c1, 16, 16)
        ("layer3", layer(c[1], c[2], 2)),                                                   # (N, c2, 8, 8)
        ("layer4", layer(c[2], c[3], 2)),                                                   # (N, c3, 4, 4)
        ("pool", nn.Sequential(nn.BatchNorm2d(c[3]), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())),  # (N, c3)
        ("logits", nn.Linear(c[3], num_classes)),
    ], input_shape=(3, 32, 32), num_classes=num_classes)
