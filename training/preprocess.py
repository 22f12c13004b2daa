"""How an image of any size becomes the model's input: the preparation a checkpoint's card records.

Two policies, both on ``uint8 [..., C, H, W]`` tensors (0-255 in, 0-255 out) and applied before the
normalisation with the card's mean and std:

- ``resize_size = None`` (*stretch*, the default and the behaviour of every checkpoint written before
  cards recorded a preparation): the whole image is resized to ``crop_size x crop_size``, aspect ratio
  not kept; an image already of that size is passed through unchanged.
- ``resize_size = R``: the shorter side is resized to ``R`` (aspect ratio kept), then the central
  ``crop_size x crop_size`` is cut out. This is what torchvision's ``Resize(R)`` + ``CenterCrop(crop_size)``
  and its weights' ``ImageClassification(crop_size, resize_size)`` transforms do, and gives the same pixels
  on a ``uint8`` tensor.

Resizing is antialiased; ``interpolation`` is one of :data:`INTERPOLATIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic")


class PreparationError(ValueError):
    """An input preparation that cannot be applied (sizes below 1, a crop larger than the resize, an unknown interpolation)."""


@dataclass(frozen=True)
class InputPreparation:
    """``crop_size``: the model's square input side; ``resize_size``: the shorter side before the centre crop,
    or ``None`` to stretch the whole image to ``crop_size``; ``interpolation``: the resampling filter."""

    crop_size: int
    resize_size: int | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.crop_size < 1 or (self.resize_size is not None and self.resize_size < self.crop_size):
            raise PreparationError(f"need 1 <= crop size <= resize size, got crop {self.crop_size}, resize {self.resize_size}")
        if self.interpolation not in INTERPOLATIONS:
            raise PreparationError(f"unknown interpolation {self.interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")

    def apply(self, pixels: Tensor) -> Tensor:
        """``uint8 [..., C, H, W]`` of any ``H, W`` -> ``uint8 [..., C, crop_size, crop_size]``."""
        mode = InterpolationMode(self.interpolation)
        if self.resize_size is None:
            if tuple(pixels.shape[-2:]) == (self.crop_size, self.crop_size):
                return pixels
            return TF.resize(pixels, [self.crop_size, self.crop_size], interpolation=mode, antialias=True)
        resized = TF.resize(pixels, [self.resize_size], interpolation=mode, antialias=True)
        return TF.center_crop(resized, [self.crop_size, self.crop_size])

    def to_json(self) -> dict[str, Any]:
        return {"resize_size": self.resize_size, "crop_size": self.crop_size, "interpolation": self.interpolation}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> InputPreparation:
        """Raises :class:`PreparationError` for missing or invalid fields."""
        try:
            crop, resize = int(document["crop_size"]), document.get("resize_size")
            resize = None if resize is None else int(resize)
        except (KeyError, TypeError, ValueError):
            raise PreparationError(f"input preparation {document!r} needs an integer crop_size and resize_size (or null)") from None
        return cls(crop_size=crop, resize_size=resize, interpolation=str(document.get("interpolation", "bilinear")))

    def describe(self) -> str:
        if self.resize_size is None:
            return f"stretch to {self.crop_size}x{self.crop_size} ({self.interpolation})"
        return f"shorter side to {self.resize_size}, centre crop {self.crop_size}x{self.crop_size} ({self.interpolation})"


def read_image(path: str | Path, channels: int) -> Tensor:
    """An image file as ``uint8 [C, H, W]`` in gray (``channels`` 1) or RGB (3); ``OSError`` (PIL's
    ``UnidentifiedImageError`` included) when it cannot be read."""
    with Image.open(path) as image:
        return TF.pil_to_tensor(image.convert("L" if channels == 1 else "RGB"))

