"""Light-weight students for small images: MobileNetV2 (Sandler et al. 2018) and ShuffleNetV2
(Ma et al. 2018), in the CIFAR variants the paper's students use (stride-1 stems)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.models.registry import ModelSpec, register_model


class InvertedResidual(nn.Module):
    """MobileNetV2 block: ``1x1 expand (t) -> depthwise 3x3 (stride) -> 1x1 linear projection``,
    with an identity skip when the shape is unchanged."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.block = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, c_out, 1), nn.BatchNorm2d(c_out),
        )
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.skip else out


class MobileNetV2(nn.Module):
    # (expansion t, output channels c, repeats n, first stride s), Table 2 of the MobileNetV2 paper with
    # the first stride-2 stages kept at stride 1 for 32-px inputs.
    STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1), (6, 320, 1, 1))

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(spec.in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)]
        c_in = 32
        for expansion, c_out, repeats, stride in self.STAGES:
            for r in range(repeats):
                layers.append(InvertedResidual(c_in, c_out, stride if r == 0 else 1, expansion))
                c_in = c_out
        layers += [nn.Conv2d(c_in, 1280, 1), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, spec.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def _channel_shuffle(x: Tensor, groups: int) -> Tensor:
    batch, channels, height, width = x.shape
    return x.view(batch, groups, channels // groups, height, width).transpose(1, 2).reshape(batch, channels, height, width)


def _pointwise(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _depthwise(channels: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels), nn.BatchNorm2d(channels)]


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit. Stride 1: split channels in half, transform one half, concatenate, shuffle.
    Stride 2 (or a width change): both branches see the whole input and each gives half the output."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.split = stride == 1 and c_in == c_out
        half = c_out // 2
        branch_in = c_in // 2 if self.split else c_in
        self.residual = nn.Sequential(*_pointwise(branch_in, branch_in), *_depthwise(branch_in, stride), *_pointwise(branch_in, half))
        self.shortcut: nn.Module = (
            nn.Identity() if self.split else nn.Sequential(*_depthwise(c_in, stride), *_pointwise(c_in, half))
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.split:
            shortcut, residual = x.chunk(2, dim=1)
        else:
            shortcut = residual = x
        return _channel_shuffle(torch.cat([self.shortcut(shortcut), self.residual(residual)], dim=1), 2)


class ShuffleNetV2(nn.Module):
    STAGES = ((116, 3), (232, 7), (464, 3))  # width 1.0: (output channels, stride-1 units after the stride-2 one)

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(spec.in_channels, 24, 3, padding=1), nn.BatchNorm2d(24)]
        c_in = 24
        for c_out, repeats in self.STAGES:
            layers.append(ShuffleUnit(c_in, c_out, stride=2))
            layers += [ShuffleUnit(c_out, c_out, stride=1) for _ in range(repeats)]
            c_in = c_out
        layers += [*_pointwise(c_in, 1024), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, spec.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


@register_model("mobilenetv2", "MobileNetV2 for small images (stride-1 stem)")
def mobilenetv2(spec: ModelSpec) -> nn.Module:
    return MobileNetV2(spec)


@register_model("shufflenetv2", "ShuffleNetV2 (width 1.0) for small images (stride-1 stem)")
def shufflenetv2(spec: ModelSpec) -> nn.Module:
    return ShuffleNetV2(spec)
