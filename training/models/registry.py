"""A registry of architectures by name, in the manner of timm's ``register_model``/``create_model``.

Every builder takes the same four facts about the task, so any model can be created for any dataset:
``create_model(name, num_classes=K, in_channels=C, image_size=H)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """What a builder needs to know about the task: classes, input channels and (square) input size."""

    num_classes: int
    in_channels: int
    image_size: int


Builder = Callable[[ModelSpec], nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Builder
    summary: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, summary: str) -> Callable[[Builder], Builder]:
    """Decorator that registers ``builder(spec) -> nn.Module`` under ``name``."""

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name=name, builder=builder, summary=summary)
        return builder

    return decorate


def list_models() -> list[ModelEntry]:
    """Every registered architecture, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def create_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Build architecture ``name`` for ``num_classes`` outputs on ``in_channels x image_size^2`` inputs.

    The model maps float images ``[B, C, H, W]`` to logits ``[B, num_classes]``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    if num_classes < 2 or in_channels < 1 or image_size < 8:
        raise ValueError(
            f"need num_classes >= 2, in_channels >= 1 and image_size >= 8, got {num_classes}, {in_channels}, {image_size}"
        )
    return _REGISTRY[name].builder(ModelSpec(num_classes, in_channels, image_size))
