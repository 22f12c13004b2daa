"""How many torch CPU threads a server process takes (:meth:`app.settings.ServeSettings.cpu_threads`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import app.settings
from app.settings import ServeSettings


@pytest.fixture
def six_cores_and_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Six usable cores, and a ``cuda`` device that resolves without a GPU."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    monkeypatch.setattr(app.settings, "resolve_device", lambda name: torch.device("cuda" if name.startswith("cuda") else "cpu"))


@pytest.mark.usefixtures("six_cores_and_a_gpu")
@pytest.mark.parametrize(("device", "processes", "given", "expected"), [
    ("cpu", 1, None, None),  # torch's default: one per core
    ("cpu", 2, None, 3),  # each worker its share of the cores
    ("cpu", 4, None, 1),
    ("cpu", 12, None, 1),  # never zero
    ("cuda", 1, None, 1),  # on a GPU the CPU only joins batches and runs the policy
    ("cuda", 4, None, 1),
    ("cpu", 2, 5, 5),  # --torch-threads wins
    ("cuda", 1, 2, 2),
])
def test_cpu_threads(device: str, processes: int, given: int | None, expected: int | None) -> None:
    settings = ServeSettings(checkpoint=Path("x"), device=device, torch_threads=given)
    assert settings.cpu_threads(processes) == expected
