"""Import a model trained elsewhere: a ``state_dict`` file plus an architecture name -> a checkpoint that
``stingy-serve`` can serve (``stingy-train import``).

What is checked, in order: the architecture exists (``torchvision:NAME`` for any torchvision classification
model, or one of ``stingy-train models``); the weights file is a plain ``state_dict`` (``.safetensors``, or
``.pth``/``.pt`` read with ``torch.load(weights_only=True)``, so nothing but tensors and plain containers is
ever unpickled; a ``{"state_dict": ...}``/``{"model": ...}`` wrapper and DataParallel's ``module.`` prefix are
accepted); every key and shape of the file matches the architecture built for ``num_classes`` outputs (the
head is built for that count; a mismatch is one error listing the first missing, unexpected and mismatched
keys); the class names number ``num_classes``; the input preparation is valid. Optionally the accuracy on a
labelled test split, prepared exactly as the server will prepare uploads, is measured into the card.

Defaults for a ``torchvision:NAME`` architecture come from torchvision's default weights for it (without
downloading them): input size, resize size, interpolation, mean and std of its ``transforms()``, and the
ImageNet class names when the model has 1000 classes. A smaller ``image_size`` scales the resize size by the
same ratio (e.g. 224/256 -> 64/73).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn
from torchvision import models as tv

from training.checkpoint import ModelCard
from training.data import ImageDataset
from training.data.registry import IMAGENET_MEAN, IMAGENET_STD
from training.data.base import ImageFiles
from training.data.info import DatasetFormatError
from training.devices import prepare_inputs
from training.engine import accuracy
from training.models import create_model, list_models
from training.models.torchvision_zoo import NAMESPACE, classification_architectures
from training.preprocess import InputPreparation, read_image

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
SHOWN_KEYS = 5
BN_COUNTER = "num_batches_tracked"
HEAD_PROBE = 1000  # output count the architecture is built with to find its head


class ImportFailure(ValueError):
    """The weights, architecture, class names or test data do not make a servable model."""


@dataclass(frozen=True)
class ImportOptions:
    """What the model owner says about the model; ``None`` fields take the defaults described in the module."""

    arch: str
    weights: Path
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    image_size: int | None = None
    resize_size: int | None = None
    stretch: bool = False
    interpolation: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    in_channels: int = 3
    dataset: str = "imported"


@dataclass(frozen=True)
class InputDefaults:
    """The input facts an architecture's reference weights were evaluated with."""

    image_size: int
    resize_size: int | None
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    categories: tuple[str, ...] | None


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``state_dict`` file, unwrapped and without a ``module.`` prefix; never unpickles code."""
    if not path.is_file():
        raise ImportFailure(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return _unprefixed(load_file(str(path)))
        except (SafetensorError, OSError) as error:
            raise ImportFailure(f"{path}: not a readable safetensors file ({error})") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        raise ImportFailure(f"{path}: torch.load(weights_only=True) refused it ({_reason(error)}); save the weights with "
                            "torch.save(model.state_dict(), PATH), not the whole model") from None
    return _unprefixed(_tensors_of(loaded, path))


def _reason(error: BaseException) -> str:
    """The line of a torch.load error that names the cause (e.g. the class a pickled model needs)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = next((line for line in lines if line.startswith("WeightsUnpickler error:")), lines[0] if lines else type(error).__name__)
    return cause.removeprefix("WeightsUnpickler error:").strip().split(". ")[0][:200]


def _tensors_of(loaded: object, path: Path) -> dict[str, Tensor]:
    if isinstance(loaded, dict):
        if loaded and all(isinstance(value, Tensor) for value in loaded.values()):
            return {str(key): value for key, value in loaded.items()}
        for key in WRAPPER_KEYS:
            if isinstance(loaded.get(key), dict):
                return _tensors_of(loaded[key], path)
    raise ImportFailure(f"{path}: not a state_dict (a dict of tensors, or one under {', '.join(map(repr, WRAPPER_KEYS))})")


def _unprefixed(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    prefix = "module."
    if tensors and all(key.startswith(prefix) for key in tensors):
        return {key[len(prefix):]: value for key, value in tensors.items()}
    return tensors


def check_arch(arch: str) -> None:
    """Raise :class:`ImportFailure` unless ``arch`` is ``torchvision:NAME`` of a classification model or a registry name."""
    prefix, colon, name = arch.partition(":")
    if colon and prefix == NAMESPACE:
        if name not in classification_architectures():
            raise ImportFailure(f"torchvision has no classification architecture {name!r}; see torchvision.models.list_models()")
    elif arch not in {entry.name for entry in list_models()}:
        raise ImportFailure(f"unknown architecture {arch!r}: use torchvision:NAME or one of `stingy-train models`")


def read_class_names(path: Path) -> tuple[str, ...]:
    """Class names, one per line in class-index order (blank lines and surrounding spaces ignored)."""
    try:
        names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as error:
        raise ImportFailure(f"cannot read class names from {path}: {error}") from None
    if not names:
        raise ImportFailure(f"{path} holds no class names (one per line)")
    return names


def input_defaults(arch: str) -> InputDefaults | None:
    """For ``torchvision:NAME``: the evaluation transforms and categories of torchvision's default weights
    for ``NAME`` (read from torchvision's tables; nothing is downloaded). ``None`` for other architectures."""
    prefix, _, name = arch.partition(":")
    if prefix != NAMESPACE:
        return None
    try:
        weights = tv.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        return None
    transforms = weights.transforms()
    categories = weights.meta.get("categories")
    return InputDefaults(
        image_size=int(transforms.crop_size[0]), resize_size=int(transforms.resize_size[0]),
        interpolation=transforms.interpolation.value, mean=tuple(transforms.mean), std=tuple(transforms.std),
        categories=tuple(categories) if categories else None,
    )


def build_card(options: ImportOptions, num_classes: int) -> ModelCard:
    """The card of the imported model: options first, then the architecture's defaults (see the module)."""
    defaults = input_defaults(options.arch)
    image_size = _image_size(options, defaults)
    resize_size = options.resize_size
    if resize_size is None and not options.stretch and defaults is not None and defaults.resize_size is not None:
        resize_size = round(defaults.resize_size * image_size / defaults.image_size)
    interpolation = options.interpolation or (defaults.interpolation if defaults else "bilinear")
    mean = options.mean or (defaults.mean if defaults else IMAGENET_MEAN)
    std = options.std or (defaults.std if defaults else IMAGENET_STD)
    if len(mean) != options.in_channels or len(std) != options.in_channels:
        raise ImportFailure(f"--mean and --std need {options.in_channels} values each, got {len(mean)} and {len(std)}")
    names = options.class_names
    if names is None:
        imagenet = defaults.categories if defaults is not None else None
        names = imagenet if imagenet is not None and len(imagenet) == num_classes else tuple(f"class_{i}" for i in range(num_classes))
    if len(names) != num_classes:
        raise ImportFailure(f"{len(names)} class names for a model with {num_classes} classes")
    preparation = InputPreparation(crop_size=image_size, resize_size=None if options.stretch else resize_size,
                                   interpolation=interpolation)
    return ModelCard(arch=options.arch, num_classes=num_classes, in_channels=options.in_channels, image_size=image_size,
                     mean=tuple(mean), std=tuple(std), class_names=tuple(names), dataset=options.dataset,
                     preprocess=preparation)


def _image_size(options: ImportOptions, defaults: InputDefaults | None) -> int:
    if options.image_size is not None:
        return options.image_size
    if defaults is None:
        raise ImportFailure(f"--image-size is required for architecture {options.arch!r}")
    return defaults.image_size


def infer_num_classes(arch: str, in_channels: int, image_size: int, weights: dict[str, Tensor], path: Path) -> int:
    """The output count of the weights' head: the architecture's last tensor whose first dimension is its
    class count (e.g. ``fc.bias``), looked up in ``weights``. Weights without that tensor do not fit the
    architecture: the :func:`check_fit` error says how."""
    shapes = _probe_shapes(arch, in_channels, image_size)
    head = [key for key, shape in shapes.items() if len(shape) >= 1 and shape[0] == HEAD_PROBE]
    if head and head[-1] in weights and weights[head[-1]].ndim >= 1:
        return int(weights[head[-1]].shape[0])
    check_fit(shapes, weights, arch, path)
    raise ImportFailure(f"cannot find the classification head of {arch} in {path}; pass --num-classes")


def _probe_shapes(arch: str, in_channels: int, image_size: int) -> dict[str, torch.Size]:
    """The state_dict shapes of ``arch`` built for :data:`HEAD_PROBE` classes: on the meta device (no memory, no
    initialisation) where the architecture allows it, else for real."""
    try:
        with torch.device("meta"):
            model = _build(arch, HEAD_PROBE, in_channels, image_size)
    except (RuntimeError, NotImplementedError):  # builders that initialise from data (e.g. RegNet) need real tensors
        model = _build(arch, HEAD_PROBE, in_channels, image_size)
    return {key: value.shape for key, value in model.state_dict().items()}


def check_fit(expected: dict[str, torch.Size], weights: dict[str, Tensor], arch: str, path: Path) -> None:
    """Raise one :class:`ImportFailure` naming the first few missing, unexpected and mismatched keys of
    ``weights`` against the ``expected`` shapes, if any."""
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    mismatched = [f"{key} {list(weights[key].shape)} in the file, {list(shape)} in the model"
                  for key, shape in expected.items() if key in weights and weights[key].shape != shape]
    problems = [_listed(label, keys) for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                         ("of another shape", mismatched)) if keys]
    if problems:
        raise ImportFailure(f"{path} does not fit {arch}: {'; '.join(problems)}")


def fit_weights(model: nn.Module, weights: dict[str, Tensor], arch: str, path: Path) -> None:
    """Load ``weights`` into ``model`` strictly after :func:`check_fit`. BatchNorm's ``num_batches_tracked``
    counters (absent from files saved before PyTorch 0.4.1, unused in evaluation) are kept when missing."""
    own = model.state_dict()
    weights = {**{key: value for key, value in own.items() if key.endswith(BN_COUNTER) and key not in weights}, **weights}
    check_fit({key: value.shape for key, value in own.items()}, weights, arch, path)
    model.load_state_dict(weights, strict=True)


def _listed(label: str, keys: list[str]) -> str:
    more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return f"{len(keys)} keys {label} ({', '.join(keys[:SHOWN_KEYS])}{more})"


def _build(arch: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    try:
        return create_model(arch, num_classes, in_channels, image_size)
    except ValueError as error:
        raise ImportFailure(str(error)) from None


def import_model(options: ImportOptions) -> tuple[nn.Module, ModelCard]:
    """The model with the file's weights (eval mode, CPU) and its card; :class:`ImportFailure` otherwise."""
    check_arch(options.arch)
    weights = read_state_dict(options.weights)
    num_classes = options.num_classes or (len(options.class_names) if options.class_names else None)
    if num_classes is None:
        image_size = _image_size(options, input_defaults(options.arch))
        num_classes = infer_num_classes(options.arch, options.in_channels, image_size, weights, options.weights)
    card = build_card(options, num_classes)
    model = _build(options.arch, card.num_classes, card.in_channels, card.image_size)
    fit_weights(model, weights, options.arch, options.weights)
    source = {"imported_from": options.weights.name, "weights_sha256": _file_sha256(options.weights)}
    return model.eval(), replace(card, extra={**card.extra, **source})


def measure_accuracy(model: nn.Module, card: ModelCard, dataset: ImageDataset, batch_size: int = 64) -> float:
    """Top-1 accuracy in percent on ``dataset``, every image prepared by ``card.preparation`` and normalised
    with the card's mean and std (as the server does). Labels are matched by class name when the dataset has
    the card's class names in another order."""
    if dataset.info.num_classes != card.num_classes or dataset.info.in_channels != card.in_channels:
        raise ImportFailure(f"the test data has {dataset.info.num_classes} classes of {dataset.info.in_channels}-channel "
                            f"images; the model takes {card.num_classes} classes of {card.in_channels}-channel images")
    labels = dataset.labels
    if set(dataset.info.class_names) == set(card.class_names):
        position = {name: index for index, name in enumerate(card.class_names)}
        labels = torch.tensor([position[name] for name in dataset.info.class_names])[labels]
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = torch.cat([model(prepare_inputs(images, card.mean, card.std, device)).float().cpu()
                            for images in _prepared_batches(dataset, card, batch_size)])
    return accuracy(logits, labels)


def _prepared_batches(dataset: ImageDataset, card: ModelCard, batch_size: int) -> Iterator[Tensor]:
    preparation = card.preparation
    if isinstance(dataset, ImageFiles):  # decoded at their own size, as an upload would be
        for start in range(0, len(dataset.paths), batch_size):
            chunk = dataset.paths[start:start + batch_size]
            yield torch.stack([preparation.apply(_decoded(path, card.in_channels)) for path in chunk])
    else:
        for batch in dataset.batches(batch_size):
            yield preparation.apply(batch.images)


def _decoded(path: Path, channels: int) -> Tensor:
    try:
        return read_image(path, channels)
    except OSError as error:
        raise DatasetFormatError(f"cannot decode image {path}: {error}") from None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
