"""Any classification architecture of ``torchvision.models`` by name: ``create_model("torchvision:resnet50", ...)``.

Built with random weights (``weights=None``: nothing is ever downloaded) and ``num_classes`` outputs, so the
head fits a fine-tuned ``state_dict``. Vision transformers are built for the task's image size (their
position embeddings depend on it); the others take any size their down-sampling allows. torchvision's
architectures take 3-channel inputs. GoogLeNet and Inception-v3 get PyTorch's default initialisation instead of
their slow truncated-normal one (a checkpoint's weights replace it anyway).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision import models as tv

from training.models.registry import ModelSpec, register_namespace

NAMESPACE = "torchvision"
_SIZE_ARGUMENT = {"vit_": "image_size", "maxvit_": "input_size"}  # name prefix -> builder argument for the input size
_SLOW_INIT = ("googlenet", "inception_v3")  # their default truncated-normal init is slow and about to change: skipped


def classification_architectures() -> list[str]:
    """The names of torchvision's classification architectures (``torchvision.models.list_models``)."""
    return list(tv.list_models(module=tv))


def build(name: str, spec: ModelSpec) -> nn.Module:
    """torchvision's ``name`` with random weights and ``spec.num_classes`` outputs; ``ValueError`` for an
    unknown name or an input that is not 3-channel."""
    if name not in classification_architectures():
        raise ValueError(f"unknown torchvision classification architecture {name!r}; see torchvision.models.list_models()")
    if spec.in_channels != 3:
        raise ValueError(f"torchvision architectures take 3-channel inputs, got {spec.in_channels}")
    options: dict[str, Any] = {"num_classes": spec.num_classes}
    for prefix, argument in _SIZE_ARGUMENT.items():
        if name.startswith(prefix):
            options[argument] = spec.image_size if argument == "image_size" else (spec.image_size, spec.image_size)
    if name in _SLOW_INIT:
        options["init_weights"] = False
    return tv.get_model(name, weights=None, **options)


register_namespace(NAMESPACE, build, "any torchvision.models classification architecture, e.g. torchvision:resnet50")
