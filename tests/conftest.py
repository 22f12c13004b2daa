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


def _train_tiny_teacher(out, dataset: str, arch: str, train_subset: int | None, **options: object):  # type: ignore[no-untyped-def]
    from training.data import load_dataset
    from training.engine import TrainConfig
    from training.objectives import CrossEntropy
    from training.runs import run_training

    train = load_dataset(dataset, "train", **options)
    if train_subset:
        train = train.first(train_subset)
    test = load_dataset(dataset, "test", **options)
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, milestones=(), device="cpu", amp=False)
    run_training(arch=arch, objective=CrossEntropy(), train=train, test=test, config=config, out=out, checkpoint_name="teacher.safetensors")
    return out / "teacher.safetensors"


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A LeNet-5 trained for one epoch on the synthetic dataset (10 classes, 1x28x28): seconds to make."""
    return _train_tiny_teacher(tmp_path_factory.mktemp("tiny_teacher"), "synthetic", "lenet5", None)


@pytest.fixture(scope="session")
def fmnist_teacher(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """An MLP trained for one epoch on 10,000 real Fashion-MNIST images (skips when the data is absent)."""
    if not real_fashion_mnist_available():
        pytest.skip("real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return _train_tiny_teacher(tmp_path_factory.mktemp("fmnist_teacher"), "fashion-mnist", "mlp", 10_000)
