"""Where training and serving run: the device a name asks for, checked against this machine, the CPU cores
this process may use, the mixed-precision context for it, and image batches moved onto it in the layout it
prefers."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from training.data import normalize


class DeviceError(ValueError):
    """A device name that is not ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, or a GPU this machine lacks."""


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask, as a container's ``--cpuset-cpus`` sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cpu``, ``cuda`` and ``cuda:N`` are checked against this
    machine. Raises :class:`DeviceError` with what to use instead."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise DeviceError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available == 0:
            raise DeviceError(f"device {name!r} was asked for but this machine has no CUDA GPU; use auto or cpu")
        if device.index is not None and device.index >= available:
            raise DeviceError(f"device {name!r} was asked for but this machine has {available} CUDA GPU(s): cuda:0 to cuda:{available - 1}")
    return device


def device_name(device: torch.device) -> str:
    """What ``device`` is, for telling results of different machines apart: the GPU's name for CUDA, the CPU
    model (``model name`` of ``/proc/cpuinfo``, else :func:`platform.processor`, else the architecture)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    return model or platform.processor() or platform.machine()


def autocast_for(device: torch.device, enabled: bool) -> tuple[Callable[[], Any], torch.dtype | None]:
    """The autocast context factory and dtype for mixed precision on CUDA (bf16 where supported, else fp16)."""
    if not enabled or device.type != "cuda":
        return nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return (lambda: torch.autocast("cuda", dtype=dtype)), dtype


def prepare_inputs(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> Tensor:
    """A ``uint8`` (0-255) or float (0-1) image batch -> normalised float on ``device`` (channels-last on CUDA)."""
    x = normalize(images.to(device, non_blocking=True), mean, std)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x
