"""The IDX format of MNIST and Fashion-MNIST (``*-idx3-ubyte`` images, ``*-idx1-ubyte`` labels, optionally gzipped).

Header: two zero bytes, a type code (``0x08`` = uint8), the number of dimensions ``d``, then ``d`` big-endian
int32 sizes, then the data.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from training.data.base import InMemoryImages
from training.data.info import DatasetFormatError, DatasetInfo

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
UINT8 = 0x08


def read_idx(path: Path) -> np.ndarray:
    """The array stored in an IDX file (gzipped when the name ends in ``.gz``)."""
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetFormatError(f"{path}: not an IDX file (bad magic number)")
    if raw[2] != UINT8:
        raise DatasetFormatError(f"{path}: IDX type 0x{raw[2]:02x} is not uint8")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}i", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DatasetFormatError(f"{path}: IDX header says {expected} bytes of data, file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as IDX (gzipped when the name ends in ``.gz``): the inverse of :func:`read_idx`."""
    data = bytes([0, 0, UINT8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def holds_split(folder: Path, split: str) -> bool:
    return all(find_file(folder, stem) is not None for stem in FILES[split])


def load_idx_split(folder: Path, split: str, info: DatasetInfo) -> InMemoryImages:
    images_path, labels_path = (find_file(folder, stem) for stem in FILES[split])
    assert images_path is not None and labels_path is not None
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(f"{folder}: {images.shape} images do not match {labels.shape} labels")
    if images.shape[1:] != (info.image_size, info.image_size):
        raise DatasetFormatError(f"{folder}: images are {images.shape[1:]}, expected {info.image_size}x{info.image_size}")
    if labels.max(initial=0) >= info.num_classes:
        raise DatasetFormatError(f"{folder}: label {labels.max()} out of range for {info.num_classes} classes")
    return InMemoryImages(info, split, torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
