"""CIFAR-10 / CIFAR-100 in torchvision's "python version" layout.

``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and ``cifar-100-python/{train, test, meta}``:
pickled dicts with ``data`` (uint8 ``[N, 3072]``, channel-major 32x32) and ``labels`` / ``fine_labels``.
The pickles are read with an unpickler that only admits the numpy types these files contain.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.data.base import InMemoryImages
from training.data.info import DatasetFormatError, DatasetInfo

LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}, "labels", "batches.meta", "label_names"),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "fine_labels", "meta", "fine_label_names"),
}
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DatasetFormatError(f"refusing to unpickle {module}.{name} from a CIFAR file")
        return super().find_class(module, name)


def read_batch(path: Path) -> dict[str, Any]:
    """One CIFAR pickle as a dict with ``str`` keys."""
    try:
        content = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise DatasetFormatError(f"{path}: not a CIFAR batch ({error})") from error
    if not isinstance(content, dict):
        raise DatasetFormatError(f"{path}: not a CIFAR batch (no dict inside)")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in content.items()}


def locate(root: Path, name: str) -> Path:
    """The folder holding the batch files: ``root/<layout folder>`` or ``root`` itself."""
    folder_name = LAYOUTS[name][0]
    return root / folder_name if (root / folder_name).is_dir() else root


def holds_split(folder: Path, name: str, split: str) -> bool:
    return all((folder / file).is_file() for file in LAYOUTS[name][1][split])


def class_names(folder: Path, name: str, count: int) -> tuple[str, ...] | None:
    """Class names from the meta file, when present and complete."""
    _, _, _, meta_file, key = LAYOUTS[name]
    if not (folder / meta_file).is_file():
        return None
    names = read_batch(folder / meta_file).get(key)
    return tuple(str(n) for n in names) if names is not None and len(names) == count else None


def load_cifar_split(folder: Path, name: str, split: str, info: DatasetInfo) -> InMemoryImages:
    _, files, label_key, _, _ = LAYOUTS[name]
    images, labels = [], []
    for file in files[split]:
        batch = read_batch(folder / file)
        if "data" not in batch or label_key not in batch:
            raise DatasetFormatError(f"{folder / file}: missing 'data' or {label_key!r}")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != len(batch[label_key]):
            raise DatasetFormatError(f"{folder / file}: data {data.shape} does not match {len(batch[label_key])} labels of 3x32x32 images")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    all_labels = np.concatenate(labels)
    if all_labels.size and (all_labels.min() < 0 or all_labels.max() >= info.num_classes):
        raise DatasetFormatError(f"{folder}: labels out of range for {info.num_classes} classes")
    return InMemoryImages(info, split, torch.from_numpy(np.concatenate(images)), torch.from_numpy(all_labels))
