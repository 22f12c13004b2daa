"""The training set-ups as functions: a teacher (or a student from scratch) on labels, knowledge
distillation from a teacher through a release policy, and the Nasty Teacher. The CLI and the benchmark
both call these; each writes its run folder (checkpoint, ``metrics.jsonl``, ``state.pt``, ``result.json``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from defense import LogitPolicy
from training.checkpoint import ModelCard
from training.data import ImageDataset
from training.devices import resolve_device
from training.distributed import current
from training.engine import FitResult, TrainConfig, fit, folder_of, predict_logits
from training.io import atomic_write_json
from training.models import create_model
from training.objectives import CachedTeacher, LiveTeacher, Objective

RESULT_FILE = "result.json"


def card_for(arch: str, data: ImageDataset, extra: dict[str, Any] | None = None) -> ModelCard:
    """The model card of a model of ``arch`` trained on ``data``."""
    return ModelCard(arch=arch, dataset=data.info.name, extra=dict(extra or {}), **data.info.task_shape())


def build_model(arch: str, data: ImageDataset, seed: int) -> nn.Module:
    """A freshly initialised ``arch`` for ``data`` (initialisation seeded)."""
    torch.manual_seed(seed)
    info = data.info
    return create_model(arch, info.num_classes, info.in_channels, info.image_size)


def run_training(
    *, arch: str, objective: Objective, train: ImageDataset, test: ImageDataset, config: TrainConfig, out: str | Path,
    checkpoint_name: str, resume: bool = False, extra: dict[str, Any] | None = None, desc: str = "train",
) -> FitResult:
    """Train a new ``arch`` with ``objective`` into the folder ``out``; returns the run's result. Under
    ``torchrun`` every rank trains, rank 0 writes the folder."""
    folder = Path(out)
    card = card_for(arch, train, {**(extra or {}), **objective.describe()})
    model = build_model(arch, train, config.seed)
    result = fit(model, objective, train, test, config, card=card, run_dir=folder, checkpoint_name=checkpoint_name, resume=resume, desc=desc)
    if folder_of(folder, current()) is None:  # a rank other than 0 of a torchrun launch
        return result
    atomic_write_json(folder / RESULT_FILE, {
        "arch": arch, "dataset": train.info.name, "train_images": len(train), "checkpoint": checkpoint_name,
        "objective": objective.describe(), "config": asdict(config), **result.summary(),
        "history": result.history,
    })
    return result


def teacher_logits(teacher: nn.Module, card: ModelCard, data: ImageDataset, desc: str = "teacher logits") -> Tensor:
    """The teacher's logits on every image of ``data`` (no augmentation), on the teacher's device, in float32
    like a live teacher: bfloat16 logits would tie classes the teacher separates."""
    return predict_logits(teacher, data, card.mean, card.std, amp=False, desc=desc)


def teacher_signal(
    teacher: nn.Module, card: ModelCard, policy: LogitPolicy, train: ImageDataset, config: TrainConfig, cache: bool
) -> LiveTeacher | CachedTeacher:
    """The teacher as a student sees it: live on every (augmented) batch, or precomputed once per image
    when ``cache`` (only valid without augmentation)."""
    if not cache:
        return LiveTeacher(teacher, policy)
    if config.augment:
        raise ValueError("a cached teacher needs augmentation off (the student must see the images the teacher saw)")
    return CachedTeacher(teacher_logits(teacher.to(resolve_device(config.device)), card, train), policy)
