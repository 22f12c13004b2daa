"""The model behind the service: loads a checkpoint once, normalises decoded images, runs forward passes and
the release policy. Raw logits exist only inside :meth:`ModelRunner.forward`; what comes out is the
policy's sparse form, the ``N`` released ``(class, value)`` pairs per image.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from app.codecs import InputSpec
from defense import LogitPolicy, SparseLogits
from training.checkpoint import ModelCard, load_checkpoint
from training.devices import prepare_inputs, resolve_device

logger = logging.getLogger("stingy.serve")


class ModelRunner:
    """A loaded teacher and its release policy. Thread-compatible: call :meth:`forward` from one thread."""

    def __init__(self, checkpoint: str | Path, policy: LogitPolicy, *, device: str = "auto", max_batch_size: int = 64) -> None:
        """Load ``checkpoint`` onto ``device`` (``auto``: CUDA when present) in eval mode.

        Raises :class:`training.checkpoint.CheckpointError` for a bad file and ``ValueError`` when the policy
        does not fit the model (e.g. ``k`` larger than the number of classes).
        """
        self.device = resolve_device(device)
        self.model, self.card = load_checkpoint(checkpoint, self.device)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.policy = policy
        self.released_count = policy.released_count(self.card.num_classes)
        self.max_batch_size = max_batch_size
        self.spec = InputSpec(self.card.in_channels, self.card.image_size, self.card.image_size, self.card.preparation)

    @property
    def num_classes(self) -> int:
        return self.card.num_classes

    def check_input(self, images: Tensor) -> None:
        """Raise ``ValueError`` unless ``images`` is a non-empty ``uint8`` or ``float32`` batch of the model's shape."""
        if images.ndim != 4 or images.shape[0] < 1 or tuple(images.shape[1:]) != self.spec.shape:
            raise ValueError(f"images must be [B, {', '.join(map(str, self.spec.shape))}], got {list(images.shape)}")
        if images.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"images must be uint8 (0-255) or float32 (in [0, 1]), got {images.dtype}")

    def forward(self, parts: Sequence[Tensor]) -> SparseLogits:
        """Released pairs for decoded image batches (``uint8`` 0-255 or ``float32`` in [0, 1], ``[B_i, C, H, W]``
        each), one row per image in order, on CPU: ``indices`` int64 and ``values`` float32, ``[sum B_i, N]``.

        The parts are moved to the device and normalised with the checkpoint's mean and std (see
        :meth:`prepare`), the model runs in chunks of at most ``max_batch_size`` images under
        ``torch.inference_mode``, and :meth:`release` applies the policy.
        """
        with torch.inference_mode():
            batch = self.prepare(parts)
            logits = torch.cat([self.model(chunk).float() for chunk in batch.split(self.max_batch_size)])
            return self.release(logits)

    def prepare(self, parts: Sequence[Tensor]) -> Tensor:
        """One normalised batch on the device from decoded parts. Parts of one dtype (the usual case) are
        concatenated on the CPU first, so the pass makes one host-to-device copy and one normalisation, not one
        per request (each a few kernel launches on a GPU); parts of both dtypes are prepared one by one, since
        ``uint8`` and ``float32`` pixels differ in scale."""
        groups = [torch.cat(list(parts))] if len({part.dtype for part in parts}) == 1 else parts
        return torch.cat([prepare_inputs(group, self.card.mean, self.card.std, self.device) for group in groups])

    def release(self, logits: Tensor) -> SparseLogits:
        """The policy's released pairs of ``logits [B, K]`` (on any device), computed on their CPU copy: the
        answer goes to the CPU anyway, and on a GPU the policy's small kernels took 8-14% of a ResNet-18
        forward at batch 32 (docs/serving.md, the H200 table) against microseconds on the CPU."""
        return self.policy.sparse(logits.cpu())

    def warm_up(self) -> float:
        """One forward pass at ``max_batch_size`` (allocations, kernel selection); returns its seconds."""
        began = time.perf_counter()
        self.forward([torch.zeros(self.max_batch_size, *self.spec.shape, dtype=torch.uint8)])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - began

    def describe(self) -> str:
        card: ModelCard = self.card
        return (f"{card.arch} ({card.dataset}, {card.num_classes} classes, input {list(self.spec.shape)}) on {self.device}, "
                f"policy {self.policy.config()} releasing N={self.released_count} per image")
