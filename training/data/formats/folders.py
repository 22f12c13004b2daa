"""Folder layouts of image files: ImageFolder (``split/<class>/<image>``, ImageNet and any custom set) and
the original Tiny-ImageNet release (``train/<wnid>/images/*``, ``val/images/*`` with ``val/val_annotations.txt``)."""

from __future__ import annotations

from pathlib import Path

import torch

from training.data.base import ImageFiles
from training.data.info import DatasetFormatError, DatasetInfo

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def image_folder_classes(split_folder: Path) -> list[str]:
    """Class folder names of an ImageFolder split, sorted."""
    return sorted(p.name for p in split_folder.iterdir() if p.is_dir())


def load_image_folder(split_folder: Path, split: str, info: DatasetInfo, classes: list[str]) -> ImageFiles:
    """Every image under ``split_folder/<class>/``, labelled by the position of ``<class>`` in ``classes``."""
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = split_folder / name
        if not folder.is_dir():
            continue
        found = _images_in(folder)
        paths += found
        labels += [label] * len(found)
    unknown = sorted(set(image_folder_classes(split_folder)) - set(classes))
    if unknown:
        raise DatasetFormatError(f"{split_folder}: class folders {unknown[:5]} are not among the training classes")
    if not paths:
        raise DatasetFormatError(f"{split_folder}: no images found in class folders")
    return ImageFiles(info, split, paths, torch.tensor(labels, dtype=torch.int64))


def tiny_imagenet_root(root: Path) -> Path:
    return root / "tiny-imagenet-200" if (root / "tiny-imagenet-200" / "wnids.txt").is_file() else root


def tiny_imagenet_classes(folder: Path) -> tuple[list[str], list[str]]:
    """``(wnids, readable names)`` in the order of ``wnids.txt``; names from ``words.txt`` when present."""
    wnids = [line.strip() for line in (folder / "wnids.txt").read_text().splitlines() if line.strip()]
    words: dict[str, str] = {}
    if (folder / "words.txt").is_file():
        for line in (folder / "words.txt").read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip()
    return wnids, [words.get(wnid, wnid) for wnid in wnids]


def load_tiny_imagenet(folder: Path, split: str, info: DatasetInfo, wnids: list[str]) -> ImageFiles:
    label_of = {wnid: index for index, wnid in enumerate(wnids)}
    if split == "train":
        paths, labels = [], []
        for wnid in wnids:
            found = _images_in(folder / "train" / wnid / "images")
            paths += found
            labels += [label_of[wnid]] * len(found)
    else:
        annotations = folder / "val" / "val_annotations.txt"
        paths, labels = [], []
        for line_number, line in enumerate(annotations.read_text().splitlines(), start=1):
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in label_of:
                raise DatasetFormatError(f"{annotations}:{line_number}: expected '<file>\\t<wnid>...' with a known wnid")
            paths.append(folder / "val" / "images" / fields[0])
            labels.append(label_of[fields[1]])
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DatasetFormatError(f"{annotations}: {len(missing)} listed images are missing, e.g. {missing[0]}")
    if not paths:
        raise DatasetFormatError(f"{folder}: no {split} images found")
    return ImageFiles(info, split, paths, torch.tensor(labels, dtype=torch.int64))
