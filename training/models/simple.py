"""Small models: the paper's plain CNN (Table 1) and the fast models the CPU presets train."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.models.registry import ModelSpec, register_model


class PlainCNN(nn.Module):
    """Three ``conv3x3 -> BN -> max-pool -> ReLU`` blocks of ``w, 2w, 4w`` channels, then
    ``fc(4w) -> BN -> ReLU -> fc(K)``: the CNN of Ma et al.'s and the paper's CIFAR-10 table (``w = 32``)."""

    def __init__(self, spec: ModelSpec, width: int) -> None:
        super().__init__()
        channels = [spec.in_channels, width, 2 * width, 4 * width]
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.MaxPool2d(2), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*blocks)
        side = spec.image_size // 8
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4 * width * side * side, 4 * width),
            nn.BatchNorm1d(4 * width),
            nn.ReLU(inplace=True),
            nn.Linear(4 * width, spec.num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max-pooling: ``conv5(6) -> pool -> conv5(16) -> pool -> 120 -> 84 -> K``."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(spec.in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        side = (spec.image_size // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
            nn.Linear(84, spec.num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """A fully connected network on flattened pixels with ReLU hidden layers."""

    def __init__(self, spec: ModelSpec, hidden: tuple[int, ...]) -> None:
        super().__init__()
        sizes = [spec.in_channels * spec.image_size**2, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(sizes[-1], spec.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(torch.flatten(x, 1))


@register_model("cnn", "The paper's plain CNN (Table 1): conv 32-64-128 with BN and max-pooling, two FC layers")
def cnn(spec: ModelSpec) -> nn.Module:
    return PlainCNN(spec, width=32)


@register_model("cnn_small", "The plain CNN at half width (16-32-64): a fast CPU teacher")
def cnn_small(spec: ModelSpec) -> nn.Module:
    return PlainCNN(spec, width=16)


@register_model("lenet5", "LeNet-5 (ReLU, max-pooling): a small, fast convolutional student")
def lenet5(spec: ModelSpec) -> nn.Module:
    return LeNet5(spec)


@register_model("mlp", "A two-hidden-layer MLP (512-256): the fastest CPU student")
def mlp(spec: ModelSpec) -> nn.Module:
    return MLP(spec, hidden=(512, 256))
