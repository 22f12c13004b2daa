"""ResNeXt-29 (8x64d) for small images (Xie et al. 2017): three stages of three bottlenecks whose 3x3
convolution has 8 groups of 64 channels per stage width unit."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from training.models.registry import ModelSpec, register_model


class ResNeXtBottleneck(nn.Module):
    """``1x1 (D) -> grouped 3x3 (D, stride) -> 1x1 (c_out)`` with BN, plus the shortcut, then ReLU;
    ``D = cardinality * c_out / widen``."""

    def __init__(self, c_in: int, c_out: int, stride: int, cardinality: int, widen: int) -> None:
        super().__init__()
        width = cardinality * c_out // widen
        self.residual = nn.Sequential(
            nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=cardinality, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.residual(x) + self.shortcut(x))


class ResNeXt29(nn.Module):
    def __init__(self, spec: ModelSpec, cardinality: int = 8, widen: int = 4) -> None:
        super().__init__()
        blocks_per_stage = 3  # (29 - 2) / 9
        stage_channels = (64 * widen, 128 * widen, 256 * widen)
        layers: list[nn.Module] = [
            nn.Conv2d(spec.in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        ]
        c_in = 64
        for index, c_out in enumerate(stage_channels):
            for b in range(blocks_per_stage):
                stride = 2 if index > 0 and b == 0 else 1
                layers.append(ResNeXtBottleneck(c_in, c_out, stride, cardinality, widen))
                c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, spec.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


@register_model("resnext29", "ResNeXt-29 (8x64d) for small images")
def resnext29(spec: ModelSpec) -> nn.Module:
    return ResNeXt29(spec)
