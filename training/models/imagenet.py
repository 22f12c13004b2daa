"""torchvision's ImageNet architectures (random initialisation, never downloaded weights).

For inputs below 96 px the 7x7 stride-2 stem and its max-pool are replaced by a 3x3 stride-1 stem,
as is usual for CIFAR-size images; otherwise DenseNet's four down-samplings leave nothing of a 28-px input.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tv

from training.models.registry import ModelSpec, register_model

SMALL_INPUT = 96


def _stem(spec: ModelSpec, out_channels: int, conv: nn.Conv2d) -> nn.Conv2d:
    if spec.image_size < SMALL_INPUT:
        return nn.Conv2d(spec.in_channels, out_channels, 3, stride=1, padding=1, bias=False)
    if spec.in_channels != conv.in_channels:
        return nn.Conv2d(spec.in_channels, out_channels, 7, stride=2, padding=3, bias=False)
    return conv


@register_model("densenet121", "DenseNet-121 from torchvision (the paper's ImageNet teacher)")
def densenet121(spec: ModelSpec) -> nn.Module:
    model = tv.densenet121(weights=None, num_classes=spec.num_classes)
    model.features.conv0 = _stem(spec, 64, model.features.conv0)
    if spec.image_size < SMALL_INPUT:
        model.features.pool0 = nn.Identity()
    return model


@register_model("resnet18_imagenet", "ResNet-18 from torchvision (the paper's ImageNet student)")
def resnet18_imagenet(spec: ModelSpec) -> nn.Module:
    model = tv.resnet18(weights=None, num_classes=spec.num_classes)
    model.conv1 = _stem(spec, 64, model.conv1)
    if spec.image_size < SMALL_INPUT:
        model.maxpool = nn.Identity()
    return model
