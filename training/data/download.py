"""Opt-in downloads (``--download``) of the datasets that are freely distributed."""

from __future__ import annotations

import urllib.error
from collections.abc import Callable
from pathlib import Path

from torchvision.datasets.utils import download_and_extract_archive, download_url

from training.data.info import DatasetDownloadError

_FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_ARCHIVES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
    "tiny-imagenet": ("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de"),
}
_FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


def download(name: str, root: Path) -> None:
    """Fetch dataset ``name`` into ``root`` in the layout its loader reads (checksums verified).

    Raises :class:`DatasetDownloadError` (one line: the URL, the cause and what to do) when a file cannot be
    fetched or does not match its checksum.
    """
    root.mkdir(parents=True, exist_ok=True)
    if name == "fashion-mnist":
        for file, md5 in _FASHION_MNIST_FILES.items():
            url = _FASHION_MNIST_URL + file
            _fetch(lambda: download_url(url, str(root), filename=file, md5=md5), url, root)
    elif name in _ARCHIVES:
        url, md5 = _ARCHIVES[name]
        _fetch(lambda: download_and_extract_archive(url, str(root), md5=md5), url, root)
    else:
        raise ValueError(f"dataset {name!r} cannot be downloaded automatically")


def _fetch(get: Callable[[], None], url: str, root: Path) -> None:
    instead = f"or put the files in {root} yourself and run without --download"
    try:
        get()
    except urllib.error.URLError as error:
        raise DatasetDownloadError(f"cannot download {url} ({error.reason}): check the network connection "
                                   f"(or the https_proxy setting), {instead}") from None
    except (OSError, RuntimeError) as error:  # torchvision: "File not found or corrupted." after a bad transfer
        raise DatasetDownloadError(f"cannot download {url} ({error}): try again, {instead}") from None
