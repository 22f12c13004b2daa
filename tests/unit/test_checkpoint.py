"""Checkpoints: round trip, metadata contract, and refusal of damaged or foreign files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from training.checkpoint import CheckpointError, ModelCard, load_checkpoint, read_card, save_checkpoint
from training.models import create_model


def _card(**overrides: object) -> ModelCard:
    fields = dict(arch="lenet5", num_classes=10, in_channels=1, image_size=28, mean=(0.286,), std=(0.353,),
                  class_names=tuple(str(i) for i in range(10)), dataset="fashion-mnist", test_accuracy=91.5)
    fields.update(overrides)
    return ModelCard(**fields)  # type: ignore[arg-type]


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = create_model("lenet5", 10, 1, 28)
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model, _card())
    return path, model


def test_round_trip_restores_weights_and_card(saved: tuple[Path, torch.nn.Module]) -> None:
    path, model = saved
    loaded, card = load_checkpoint(path)
    assert card == _card() and read_card(path) == card
    assert not loaded.training
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_header_holds_the_documented_metadata(saved: tuple[Path, torch.nn.Module]) -> None:
    path, _ = saved
    header_size = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8 : 8 + header_size])
    document = json.loads(header["__metadata__"]["stingy_teacher"])
    for key in ("arch", "num_classes", "in_channels", "image_size", "mean", "std", "class_names", "dataset", "test_accuracy"):
        assert key in document["card"]
    assert len(document["sha256"]) == 64


def test_truncated_file_is_refused(saved: tuple[Path, torch.nn.Module]) -> None:
    path, _ = saved
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    path.write_bytes(path.read_bytes()[:5])
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        read_card(path)


def test_flipped_weight_byte_is_refused(saved: tuple[Path, torch.nn.Module]) -> None:
    path, _ = saved
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x40  # a byte inside the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)


def test_edited_metadata_is_refused(saved: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    path, model = saved
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    forged = json.dumps({"format": "stingy-teacher/checkpoint/1", "card": _card().to_json(), "sha256": "0" * 64})
    save_file(tensors, str(tmp_path / "forged.safetensors"), metadata={"stingy_teacher": forged})
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(tmp_path / "forged.safetensors")


def test_foreign_and_missing_files_are_refused(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not a stingy-teacher checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.safetensors")
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04\x95")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "pickle.safetensors")


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "m.safetensors", create_model("lenet5", 10, 1, 28), _card(arch="cnn_small"))
    with pytest.raises(CheckpointError, match="do not fit architecture 'cnn_small'"):
        load_checkpoint(tmp_path / "m.safetensors")


def test_inconsistent_card_is_refused() -> None:
    with pytest.raises(CheckpointError, match="inconsistent"):
        ModelCard.from_json({**_card().to_json(), "class_names": ["a"]})
    with pytest.raises(CheckpointError, match="lacks arch"):
        ModelCard.from_json({k: v for k, v in _card().to_json().items() if k != "arch"})
