"""Architectures by name: ``create_model("resnet18", num_classes=100, in_channels=3, image_size=32)``."""

from training.models import cifar_resnet, imagenet, mobile, preact_resnet, resnext, simple  # noqa: F401  (registration)
from training.models.registry import ModelSpec, create_model, list_models, register_model

__all__ = ["ModelSpec", "create_model", "list_models", "register_model"]
