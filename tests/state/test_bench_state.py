"""``python -m bench.state`` runs and writes its records (the numbers themselves are machine-dependent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import state


@pytest.mark.slow
def test_bench_state_measures_each_operation_and_writes_its_records(tmp_path: Path) -> None:
    assert state.main(["--seconds", "0.2", "--processes", "1", "--stores", "sqlite", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "state.json").read_text())
    assert [(row["store"], row["operation"], row["processes"]) for row in record["rows"]] == [("sqlite", "reserve", 1), ("sqlite", "take", 1)]
    assert all(row["operations"] > 0 and 0 < row["p50_us"] <= row["p99_us"] for row in record["rows"])
    assert (tmp_path / "state.txt").read_text().count("| sqlite |") == 2
