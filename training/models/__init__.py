"""Architectures by name: ``create_model("resnet18", num_classes=100, in_channels=3, image_size=32)``, or
any of torchvision's: ``create_model("torchvision:resnet50", num_classes=1000, image_size=224)``."""

from training.models import cifar_resnet, imagenet, mobile, preact_resnet, resnext, simple, torchvision_zoo  # noqa: F401  (registration)
from training.models.registry import ModelSpec, create_model, list_models, list_namespaces, register_model

__all__ = ["ModelSpec", "create_model", "list_models", "list_namespaces", "register_model"]
