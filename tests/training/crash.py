"""Crashing a training run at a known point, for the resume tests."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def kill_inside_epoch_two(process: subprocess.Popen, folder: Path, kill: Callable[[], None], wait_s: float = 200) -> None:
    """Wait until ``process`` saved epoch 1 in ``folder``, then ``kill()`` it half an epoch later (inside epoch 2)."""
    deadline = time.monotonic() + wait_s
    while not (folder / "state.pt").exists():
        assert process.poll() is None, "training ended before its first epoch was saved"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    epoch_seconds = json.loads((folder / "metrics.jsonl").read_text().splitlines()[0])["epoch_seconds"]
    time.sleep(epoch_seconds / 2)
    kill()
    process.wait()
