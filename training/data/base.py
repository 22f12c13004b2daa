"""Datasets as sources of ``uint8 [B, C, H, W]`` batches with labels and dataset positions.

Two kinds: :class:`InMemoryImages` holds every image in one tensor (MNIST/CIFAR scale; batches are
gathered and augmented in a vectorised way), :class:`ImageFiles` decodes image files on demand in
``DataLoader`` workers (Tiny-ImageNet/ImageNet scale). Both yield the same :class:`Batch`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as T

from training.data.augment import pad_crop_flip
from training.data.info import DatasetFormatError, DatasetInfo
from training.preprocess import read_image

RESIZE_RATIO = 256 / 224  # evaluation resize before the centre crop for ImageNet-size inputs


@dataclass(frozen=True)
class Batch:
    """``images`` uint8 ``[B, C, H, W]``, ``labels`` int64 ``[B]``, ``indices`` int64 ``[B]`` (dataset positions)."""

    images: Tensor
    labels: Tensor
    indices: Tensor


class ImageDataset(ABC):
    """One split of a dataset: ``info``, ``split``, ``labels`` (int64 ``[N]``) and batches of its images."""

    def __init__(self, info: DatasetInfo, split: str, labels: Tensor) -> None:
        self.info = info
        self.split = split
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @abstractmethod
    def select(self, indices: Tensor) -> ImageDataset:
        """The sub-dataset at ``indices`` (positions are renumbered from 0)."""

    @abstractmethod
    def batches(
        self, batch_size: int, *, shuffle: bool = False, augment: bool = False, seed: int = 0, num_workers: int = 0,
        drop_last: bool = False, indices: Tensor | None = None,
    ) -> Iterator[Batch]:
        """Batches in order (or shuffled with ``seed``), optionally augmented; ``indices`` limits the positions."""

    def _order(self, shuffle: bool, generator: torch.Generator, indices: Tensor | None) -> Tensor:
        order = torch.arange(len(self)) if indices is None else indices.to(torch.int64)
        if shuffle:
            order = order[torch.randperm(len(order), generator=generator)]
        return order

    def first(self, count: int, seed: int = 0) -> ImageDataset:
        """A seeded random subset of ``count`` images (all of them when ``count >= len``)."""
        if count >= len(self):
            return self
        return self.select(subset_positions(len(self), count, seed))


def subset_positions(size: int, count: int, seed: int) -> Tensor:
    """``count`` of the positions ``0..size-1``, drawn at random with ``seed`` and sorted (all of them when
    ``count >= size``). With the same seed a larger ``count`` draws a superset."""
    if count >= size:
        return torch.arange(size)
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:count].sort().values


def _chunks(order: Tensor, batch_size: int, drop_last: bool) -> list[Tensor]:
    chunks = list(order.split(batch_size))
    if drop_last and chunks and len(chunks[-1]) < batch_size:
        chunks.pop()
    return chunks


class InMemoryImages(ImageDataset):
    """Every image in one uint8 tensor ``[N, C, H, W]``."""

    def __init__(self, info: DatasetInfo, split: str, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise DatasetFormatError(f"{info.name}/{split}: need uint8 images [N, C, H, W] and N labels")
        super().__init__(info, split, labels.to(torch.int64))
        self.images = images

    def select(self, indices: Tensor) -> InMemoryImages:
        return InMemoryImages(self.info, self.split, self.images[indices], self.labels[indices])

    def batches(
        self, batch_size: int, *, shuffle: bool = False, augment: bool = False, seed: int = 0, num_workers: int = 0,
        drop_last: bool = False, indices: Tensor | None = None,
    ) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(seed)
        for chunk in _chunks(self._order(shuffle, generator, indices), batch_size, drop_last):
            images = self.images[chunk]
            if augment:
                images = pad_crop_flip(images, self.info.crop_padding, self.info.flip, generator)
            yield Batch(images, self.labels[chunk], chunk)


class _DecodedFiles(Dataset):
    """Decodes one file into uint8 ``[C, H, W]`` at the dataset's resolution."""

    def __init__(self, info: DatasetInfo, paths: Sequence[Path], augment: bool) -> None:
        self.paths = paths
        self.channels = info.in_channels
        size = info.image_size
        if info.augmentation == "resized_crop":
            self.transform = (
                T.Compose([T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip()])
                if augment
                else T.Compose([T.Resize(round(size * RESIZE_RATIO), antialias=True), T.CenterCrop(size)])
            )
        else:  # small images: decoded at full size, augmented batch-wise afterwards
            self.transform = T.Resize((size, size), antialias=True)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        path = self.paths[index]
        try:
            pixels = read_image(path, self.channels)
        except OSError as error:  # PIL's UnidentifiedImageError included
            raise DatasetFormatError(f"cannot decode image {path}: {error}") from error
        return self.transform(pixels)


class ImageFiles(ImageDataset):
    """Image files decoded on demand (``num_workers`` processes) with their labels."""

    def __init__(self, info: DatasetInfo, split: str, paths: Sequence[Path], labels: Tensor) -> None:
        if len(paths) != labels.shape[0]:
            raise DatasetFormatError(f"{info.name}/{split}: {len(paths)} files but {labels.shape[0]} labels")
        super().__init__(info, split, labels.to(torch.int64))
        self.paths = list(paths)

    def select(self, indices: Tensor) -> ImageFiles:
        return ImageFiles(self.info, self.split, [self.paths[i] for i in indices.tolist()], self.labels[indices])

    def in_memory(self, batch_size: int = 1000) -> InMemoryImages:
        """Every file decoded once (at the dataset's resolution, un-augmented) into one uint8 ``[N, C, H, W]``
        tensor: for small images, where decoding each file every epoch would cost more than training."""
        images = [batch.images for batch in self.batches(batch_size)]
        return InMemoryImages(self.info, self.split, torch.cat(images), self.labels)

    def batches(
        self, batch_size: int, *, shuffle: bool = False, augment: bool = False, seed: int = 0, num_workers: int = 0,
        drop_last: bool = False, indices: Tensor | None = None,
    ) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(seed)
        chunks = _chunks(self._order(shuffle, generator, indices), batch_size, drop_last)
        loader = DataLoader(
            _DecodedFiles(self.info, self.paths, augment),
            batch_sampler=[chunk.tolist() for chunk in chunks],
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(seed),
            collate_fn=torch.stack,
        )
        for chunk, images in zip(chunks, loader):
            if augment and self.info.augmentation == "pad_crop":
                images = pad_crop_flip(images, self.info.crop_padding, self.info.flip, generator)
            yield Batch(images, self.labels[chunk], chunk)
