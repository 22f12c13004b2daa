"""Datasets by name, as uint8 image batches, with the paper's augmentation and normalisation."""

from training.data.augment import normalize, pad_crop_flip
from training.data.base import Batch, ImageDataset, ImageFiles, InMemoryImages, subset_positions
from training.data.info import DatasetDownloadError, DatasetFormatError, DatasetInfo, DatasetNotFoundError
from training.data.registry import DATASETS, dataset_names, load_dataset

__all__ = [
    "DATASETS",
    "Batch",
    "DatasetDownloadError",
    "DatasetFormatError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "ImageDataset",
    "ImageFiles",
    "InMemoryImages",
    "dataset_names",
    "load_dataset",
    "subset_positions",
    "normalize",
    "pad_crop_flip",
]
