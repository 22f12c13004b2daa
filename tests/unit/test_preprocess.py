"""Input preparation: the same pixels as torchvision's own transforms, the old behaviour for old cards, and
the card field that records it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torchvision import transforms as T1
from torchvision.transforms import v2 as T2

from training.checkpoint import CheckpointError, ModelCard, read_card, save_checkpoint
from training.models import create_model
from training.preprocess import InputPreparation, PreparationError

SIZES = [(61, 97), (97, 61), (80, 80), (40, 130), (64, 64)]


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("size", SIZES)
def test_resize_and_crop_match_torchvision_v1_and_v2(size: tuple[int, int], interpolation: str) -> None:
    preparation = InputPreparation(crop_size=48, resize_size=56, interpolation=interpolation)
    mode = T2.InterpolationMode(interpolation)
    image = _image(*size)
    ours = preparation.apply(image)
    v2 = T2.Compose([T2.Resize(56, interpolation=mode, antialias=True), T2.CenterCrop(48)])(image)
    v1 = T1.Compose([T1.Resize(56, interpolation=mode, antialias=True), T1.CenterCrop(48)])(image)
    assert ours.dtype == torch.uint8 and ours.shape == (3, 48, 48)
    assert torch.equal(ours, v2)
    if interpolation != "bicubic":  # v1 resizes uint8 through float: rounding differs by one level (and bicubic overshoot more)
        assert int((ours.int() - v1.int()).abs().max()) <= 1
    assert torch.equal(preparation.apply(torch.stack([image, image])), torch.stack([ours, ours]))  # batches too


def test_stretch_is_the_behaviour_of_cards_without_a_preparation() -> None:
    preparation = InputPreparation(crop_size=32)
    image = _image(50, 20)
    assert torch.equal(preparation.apply(image), T2.functional.resize(image, [32, 32], antialias=True))
    same = _image(32, 32)
    assert preparation.apply(same) is same


@pytest.mark.parametrize("kwargs", [dict(crop_size=0), dict(crop_size=64, resize_size=32), dict(crop_size=8, interpolation="lanczos")])
def test_invalid_preparations_are_refused(kwargs: dict) -> None:
    with pytest.raises(PreparationError):
        InputPreparation(**kwargs)


def _card(**overrides: object) -> ModelCard:
    fields = dict(arch="lenet5", num_classes=10, in_channels=1, image_size=28, mean=(0.5,), std=(0.25,),
                  class_names=tuple(str(i) for i in range(10)), dataset="synthetic")
    return ModelCard(**{**fields, **overrides})  # type: ignore[arg-type]


def test_card_records_the_preparation_and_old_cards_stretch(tmp_path: Path) -> None:
    model = create_model("lenet5", 10, 1, 28)
    recorded = _card(preprocess=InputPreparation(crop_size=28, resize_size=32, interpolation="bicubic"))
    save_checkpoint(tmp_path / "new.safetensors", model, recorded)
    assert read_card(tmp_path / "new.safetensors") == recorded
    assert read_card(tmp_path / "new.safetensors").preparation.resize_size == 32
    save_checkpoint(tmp_path / "old.safetensors", model, _card())  # as every card written before the field existed
    assert read_card(tmp_path / "old.safetensors").preparation == InputPreparation(crop_size=28)


@pytest.mark.parametrize("preprocess", [{"crop_size": 27, "resize_size": 32}, {"crop_size": 28, "resize_size": 20}, {"crop_size": "x"}, [28]])
def test_card_with_a_bad_preparation_is_refused(preprocess: object) -> None:
    document = replace(_card()).to_json() | {"preprocess": preprocess}
    with pytest.raises(CheckpointError, match="preprocess|preparation|crop size|inconsistent"):
        ModelCard.from_json(document)
