"""Datasets by name, as uint8 image batches, with the paper's augmentation and normalisation."""

from training.data.augment import normalize, pad_crop_flip
from training.data.base import Batch, ImageDataset, ImageFiles, InMemoryImages
from training.data.info import DatasetFormatError, DatasetInfo, DatasetNotFoundError
from training.data.registry import DATASETS, dataset_info, dataset_names, load_dataset

__all__ = [
    "DATASETS",
    "Batch",
    "DatasetFormatError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "ImageDataset",
    "ImageFiles",
    "InMemoryImages",
    "dataset_info",
    "dataset_names",
    "load_dataset",
    "normalize",
    "pad_crop_flip",
]
