"""Every registered architecture builds for every input the datasets need, at the paper's sizes."""

from __future__ import annotations

import pytest
import torch

from training.models import create_model, list_models

NAMES = [entry.name for entry in list_models()]

# Parameter counts at 100 classes and 3x32x32 input: this implementation's exact count, and the count of the
# released implementation (Ma et al.) in millions, to the precision it is stated in.
REFERENCE_PARAMETERS = {
    "resnet18": (11_220_132, "11.220"),
    "resnet50": (23_705_252, "23.705"),
    "resnext29": (34_518_948, "34.519"),
    "mobilenetv2": (2_370_148, "2.370"),
    "shufflenetv2": (1_360_896, "1.361"),
    "resnetc20": (278_132, "0.278"),
    "resnetc32": (472_564, "0.473"),
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


@pytest.mark.parametrize(("name", "exact", "millions"), [(name, *counts) for name, counts in sorted(REFERENCE_PARAMETERS.items())])
def test_parameter_count_matches_the_reference(name: str, exact: int, millions: str) -> None:
    count = sum(p.numel() for p in create_model(name, num_classes=100, in_channels=3, image_size=32).parameters())
    assert count == exact, f"{name}: {count} parameters, expected {exact}"
    assert f"{count / 1e6:.3f}" == millions, f"{name}: {count / 1e6:.3f}M parameters, the reference states {millions}M"


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: .*resnet18"):
        create_model("resnet19", num_classes=10)


def test_bad_task_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create_model("cnn", num_classes=1)
