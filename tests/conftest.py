"""Shared fixtures: tiny trained teachers and helpers live here so every test file can use them."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))
os.environ.setdefault("STINGY_PROGRESS", "0")

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


def real_fashion_mnist_available() -> bool:
    return os.path.isfile(os.path.join(FASHION_MNIST_ROOT, "t10k-images-idx3-ubyte.gz"))


needs_fashion_mnist = pytest.mark.skipif(
    not real_fashion_mnist_available(), reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)
