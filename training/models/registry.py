"""A registry of architectures by name, in the manner of timm's ``register_model``/``create_model``.

Every builder takes the same four facts about the task, so any model can be created for any dataset:
``create_model(name, num_classes=K, in_channels=C, image_size=H)``. A name ``PREFIX:NAME`` goes to the
namespace ``PREFIX`` (e.g. ``torchvision:resnet50``), which builds ``NAME`` itself.
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


NamespaceBuilder = Callable[[str, ModelSpec], nn.Module]


@dataclass(frozen=True)
class NamespaceEntry:
    prefix: str
    builder: NamespaceBuilder
    summary: str


_REGISTRY: dict[str, ModelEntry] = {}
_NAMESPACES: dict[str, NamespaceEntry] = {}


def register_model(name: str, summary: str) -> Callable[[Builder], Builder]:
    """Decorator that registers ``builder(spec) -> nn.Module`` under ``name``."""

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name=name, builder=builder, summary=summary)
        return builder

    return decorate


def register_namespace(prefix: str, builder: NamespaceBuilder, summary: str) -> None:
    """Route every ``prefix:NAME`` to ``builder(NAME, spec)`` (which raises ``ValueError`` for a name it lacks)."""
    if prefix in _NAMESPACES:
        raise ValueError(f"model namespace {prefix!r} is registered twice")
    _NAMESPACES[prefix] = NamespaceEntry(prefix=prefix, builder=builder, summary=summary)


def list_namespaces() -> list[NamespaceEntry]:
    """Every registered namespace, sorted by prefix."""
    return [_NAMESPACES[prefix] for prefix in sorted(_NAMESPACES)]


def list_models() -> list[ModelEntry]:
    """Every registered architecture, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def create_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Build architecture ``name`` for ``num_classes`` outputs on ``in_channels x image_size^2`` inputs.

    The model maps float images ``[B, C, H, W]`` to logits ``[B, num_classes]``.
    """
    prefix, colon, member = name.partition(":")
    if name not in _REGISTRY and not (colon and prefix in _NAMESPACES):
        namespaces = "".join(f", {prefix}:NAME" for prefix in sorted(_NAMESPACES))
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(_REGISTRY))}{namespaces}")
    if num_classes < 2 or in_channels < 1 or image_size < 8:
        raise ValueError(
            f"need num_classes >= 2, in_channels >= 1 and image_size >= 8, got {num_classes}, {in_channels}, {image_size}"
        )
    spec = ModelSpec(num_classes, in_channels, image_size)
    if name in _REGISTRY:
        return _REGISTRY[name].builder(spec)
    return _NAMESPACES[prefix].builder(member, spec)
