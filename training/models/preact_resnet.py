"""The paper's "ResNetC": pre-activation CIFAR ResNets of depth ``6n + 2`` (He et al. 2016b) with
16-32-64 channels, the students of the CIFAR-10 table (ResNetC-20, ResNetC-32)."""

from __future__ import annotations

from torch import Tensor, nn

from training.models.registry import ModelSpec, register_model


class PreActBlock(nn.Module):
    """``x + conv3x3(relu(bn(conv3x3(relu(bn(x))))))``; a 1x1 projection when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        )
        self.shortcut = (
            nn.Identity() if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.shortcut(x)


class PreActResNet(nn.Module):
    def __init__(self, spec: ModelSpec, depth: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"pre-activation CIFAR ResNets have depth 6n + 2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        layers: list[nn.Module] = [nn.Conv2d(spec.in_channels, 16, 3, padding=1, bias=False)]
        c_in = 16
        for index, c_out in enumerate((16, 32, 64)):
            for b in range(blocks_per_stage):
                layers.append(PreActBlock(c_in, c_out, stride=2 if index > 0 and b == 0 else 1))
                c_in = c_out
        layers += [nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, spec.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


@register_model("resnetc20", "ResNetC-20: pre-activation CIFAR ResNet, depth 20 (16-32-64 channels)")
def resnetc20(spec: ModelSpec) -> nn.Module:
    return PreActResNet(spec, depth=20)


@register_model("resnetc32", "ResNetC-32: pre-activation CIFAR ResNet, depth 32 (16-32-64 channels)")
def resnetc32(spec: ModelSpec) -> nn.Module:
    return PreActResNet(spec, depth=32)
