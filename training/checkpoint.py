"""Model checkpoints (docs/design.md, Checkpoints).

One ``.safetensors`` file: the weights, and under the header metadata key ``stingy_teacher`` a JSON
document with the model card (:class:`ModelCard`) and a SHA-256 digest of every tensor (name, dtype,
shape, bytes). Loading parses the safetensors header and raw tensor bytes only, never a pickle, and
refuses a file whose digest, card or shapes do not match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from training.data.info import TaskShape
from training.io import atomic_path
from training.models import create_model
from training.preprocess import InputPreparation, PreparationError

METADATA_KEY = "stingy_teacher"
FORMAT = "stingy-teacher/checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, tampered with or inconsistent."""


@dataclass(frozen=True)
class ModelCard(TaskShape):
    """What a server and a benchmark need to know to rebuild and feed a model: the task's shape (classes,
    input, normalisation; :class:`TaskShape`, as the training dataset had it), the architecture and the
    dataset's name."""

    arch: str
    dataset: str
    test_accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    preprocess: InputPreparation | None = None  # None (cards written before it existed): stretch to image_size

    @property
    def preparation(self) -> InputPreparation:
        """How an image of any size becomes ``image_size x image_size`` (see :mod:`training.preprocess`)."""
        return self.preprocess or InputPreparation(crop_size=self.image_size)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> ModelCard:
        required = ["arch", "num_classes", "in_channels", "image_size", "mean", "std", "class_names", "dataset"]
        missing = [key for key in required if key not in document]
        if missing:
            raise CheckpointError(f"checkpoint metadata lacks {', '.join(missing)}")
        card = cls(
            arch=str(document["arch"]), num_classes=int(document["num_classes"]),
            in_channels=int(document["in_channels"]), image_size=int(document["image_size"]),
            mean=tuple(float(v) for v in document["mean"]), std=tuple(float(v) for v in document["std"]),
            class_names=tuple(str(v) for v in document["class_names"]), dataset=str(document["dataset"]),
            test_accuracy=None if document.get("test_accuracy") is None else float(document["test_accuracy"]),
            extra=dict(document.get("extra") or {}), preprocess=_preparation(document.get("preprocess")),
        )
        if card.preprocess is not None and card.preprocess.crop_size != card.image_size:
            raise CheckpointError(f"checkpoint metadata is inconsistent (crop size {card.preprocess.crop_size}, image size {card.image_size})")
        if len(card.class_names) != card.num_classes or len(card.mean) != card.in_channels or len(card.std) != card.in_channels:
            raise CheckpointError("checkpoint metadata is inconsistent (class names, mean or std of the wrong length)")
        return card


def _preparation(document: Any) -> InputPreparation | None:
    if document is None:
        return None
    if not isinstance(document, dict):
        raise CheckpointError(f"checkpoint metadata: preprocess must be an object, got {document!r}")
    try:
        return InputPreparation.from_json(document)
    except PreparationError as error:
        raise CheckpointError(f"checkpoint metadata: {error}") from error


def tensors_digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: str | Path, model: nn.Module, card: ModelCard) -> None:
    """Atomically write ``model``'s weights and ``card`` to ``path``."""
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    document = {"format": FORMAT, "card": card.to_json(), "sha256": tensors_digest(tensors)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(document)})


def read_card(path: str | Path) -> ModelCard:
    """The model card of a checkpoint, from its header only (the weights are not read or verified)."""
    return ModelCard.from_json(_read_document(Path(path))["card"])


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild the model from a checkpoint, verify every tensor, and return it in eval mode on ``device``."""
    path = Path(path)
    document = _read_document(path)
    card = ModelCard.from_json(document["card"])
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path}: cannot read the weights ({error})") from error
    if tensors_digest(tensors) != document.get("sha256"):
        raise CheckpointError(f"{path}: the weights do not match their SHA-256 digest (file corrupted or tampered with)")
    try:
        model = create_model(card.arch, card.num_classes, card.in_channels, card.image_size)
        model.load_state_dict(tensors, strict=True)
    except (ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: weights do not fit architecture {card.arch!r}: {error}") from error
    return model.to(device).eval(), card


def _read_document(path: Path) -> dict[str, Any]:
    if path.is_dir():
        inside = sorted(child.name for child in path.glob("*.safetensors"))
        hint = f"; it holds {', '.join(inside)}: pass {path / inside[0]}" if inside else "; it holds no .safetensors file"
        raise CheckpointError(f"checkpoint {path} is a folder, not a .safetensors file{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:
        raise CheckpointError(f"{path}: not a valid safetensors checkpoint ({error})") from error
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path}: no {METADATA_KEY!r} metadata; not a stingy-teacher checkpoint")
    try:
        document = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON ({error})") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(document.get("card"), dict):
        raise CheckpointError(f"{path}: unsupported checkpoint format {document.get('format') if isinstance(document, dict) else None!r}")
    return document
