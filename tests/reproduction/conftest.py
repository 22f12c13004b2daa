"""The smoke preset run once by the local executor, shared by the run, ``--jobs`` and Ray tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.reproduction.cli import main


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A benchmark folder holding the whole smoke preset, run by the local executor (do not modify it: copy it)."""
    out = tmp_path_factory.mktemp("bench") / "smoke"
    assert main(["run", "--preset", "smoke", "--out", str(out)]) == 0
    return out
