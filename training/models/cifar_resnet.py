"""ResNets for small images (He et al. 2016) with a 3x3 stride-1 stem and no max-pool, as used by
Ma et al. and the paper for CIFAR and Tiny-ImageNet; global average pooling makes them size-agnostic."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from training.models.registry import ModelSpec, register_model


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out)]


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))


class BasicBlock(nn.Module):
    """``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))``."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(*_conv_bn(c_in, planes, 3, stride), nn.ReLU(inplace=True), *_conv_bn(planes, planes, 3))
        self.shortcut = _shortcut(c_in, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.residual(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """``1x1 -> 3x3 (stride) -> 1x1 (4 x planes)`` with BN, plus the shortcut, then ReLU."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            *_conv_bn(c_in, planes, 1), nn.ReLU(inplace=True),
            *_conv_bn(planes, planes, 3, stride), nn.ReLU(inplace=True),
            *_conv_bn(planes, planes * 4, 1),
        )
        self.shortcut = _shortcut(c_in, planes * 4, stride)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.residual(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, spec: ModelSpec, block: type[BasicBlock] | type[Bottleneck], depths: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(spec.in_channels, 64, 3), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        c_in = 64
        for index, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            blocks = []
            for b in range(depth):
                blocks.append(block(c_in, planes, stride=2 if index > 0 and b == 0 else 1))
                c_in = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, spec.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


@register_model("resnet18", "ResNet-18 for small images (3x3 stem)")
def resnet18(spec: ModelSpec) -> nn.Module:
    return ResNet(spec, BasicBlock, (2, 2, 2, 2))


@register_model("resnet34", "ResNet-34 for small images (3x3 stem)")
def resnet34(spec: ModelSpec) -> nn.Module:
    return ResNet(spec, BasicBlock, (3, 4, 6, 3))


@register_model("resnet50", "ResNet-50 for small images (3x3 stem, bottleneck blocks)")
def resnet50(spec: ModelSpec) -> nn.Module:
    return ResNet(spec, Bottleneck, (3, 4, 6, 3))
