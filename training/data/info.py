"""What the rest of the system needs to know about a dataset, and the error for a missing one."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

Augmentation = Literal["pad_crop", "resized_crop"]


@dataclass(frozen=True)
class TaskShape:
    """What a classifier of a task takes in and gives out: ``K`` classes and their names, ``C`` input channels of
    ``image_size`` x ``image_size`` pixels, normalised with ``mean`` and ``std`` per channel. A dataset has these
    facts (:class:`DatasetInfo`) and a model card carries them from the dataset to the server
    (:class:`training.checkpoint.ModelCard`)."""

    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]

    def task_shape(self) -> dict[str, Any]:
        """These fields alone, by name: ``ModelCard(arch=..., dataset=..., **info.task_shape())``."""
        return {f.name: getattr(self, f.name) for f in fields(TaskShape)}


@dataclass(frozen=True)
class DatasetInfo(TaskShape):
    """Task facts of a dataset (:class:`TaskShape`), its ``name``, and its augmentation.

    ``augmentation`` is ``"pad_crop"`` (4-px zero-padded random crop, plus a horizontal flip when ``flip``)
    for small images, or ``"resized_crop"`` (random-resized crop and flip at decode time) for ImageNet-size ones.
    """

    name: str
    flip: bool = True
    augmentation: Augmentation = "pad_crop"
    crop_padding: int = 4

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(f"{self.name}: mean/std must have one entry per channel ({self.in_channels})")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not where it was looked for; the message names the paths and how to get it."""

    def __init__(self, name: str, searched: list[Path], how_to_get: str) -> None:
        places = "\n".join(f"  - {path}" for path in searched)
        super().__init__(f"dataset {name!r} not found. Looked in:\n{places}\n{how_to_get}")
        self.name = name
        self.searched = searched


class DatasetDownloadError(OSError):
    """``--download`` could not fetch a dataset (no network, server down, a corrupted file); one line naming
    the URL, the cause and what to do instead."""


class DatasetFormatError(ValueError):
    """A dataset file exists but is not in the expected format (truncated, wrong magic, wrong sizes)."""
