"""Every registered architecture builds for every input the datasets need, at the paper's sizes."""

from __future__ import annotations

import pytest
import torch

from training.models import create_model, list_models

NAMES = [entry.name for entry in list_models()]

# Parameter counts of the released implementation (Ma et al.) at 100 classes and 3x32x32 input.
REFERENCE_PARAMETERS = {
    "resnet18": 11.22e6,
    "resnet50": 23.71e6,
    "resnext29": 34.52e6,
    "mobilenetv2": 2.37e6,
    "shufflenetv2": 1.36e6,
    "resnetc20": 0.278e6,
    "resnetc32": 0.473e6,
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_builds_with_the_right_output_shape(name: str, channels: int, size: int) -> None:
    model = create_model(name, num_classes=7, in_channels=channels, image_size=size).eval()
    with torch.inference_mode():
        logits = model(torch.randn(2, channels, size, size))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("name", "expected"), sorted(REFERENCE_PARAMETERS.items()))
def test_parameter_count_matches_the_reference(name: str, expected: float) -> None:
    count = sum(p.numel() for p in create_model(name, num_classes=100, in_channels=3, image_size=32).parameters())
    assert abs(count - expected) / expected < 0.05, f"{name}: {count} parameters, reference {expected:.0f}"


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: .*resnet18"):
        create_model("resnet19", num_classes=10)


def test_bad_task_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create_model("cnn", num_classes=1)
