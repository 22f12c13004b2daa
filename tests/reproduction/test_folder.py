"""A benchmark folder records its preset: a rerun must match it, except that seeds may be added to a seeded folder."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from training.reproduction.presets import PRESETS
from training.reproduction.results import PRESET_FILE, BenchmarkError
from training.reproduction.runner import prepare_folder

SMOKE = PRESETS["smoke"]


def test_seeds_may_be_added_to_a_seeded_folder(tmp_path: Path) -> None:
    prepare_folder(replace(SMOKE, seeds=(0, 1)), tmp_path)
    prepare_folder(replace(SMOKE, seeds=(1,)), tmp_path)  # a subset: nothing changes
    assert json.loads((tmp_path / PRESET_FILE).read_text())["seeds"] == [0, 1]
    prepare_folder(replace(SMOKE, seeds=(2, 1)), tmp_path)
    assert json.loads((tmp_path / PRESET_FILE).read_text())["seeds"] == [0, 1, 2]  # the report covers every seed run


def test_seeded_and_unseeded_runs_do_not_mix(tmp_path: Path) -> None:
    prepare_folder(SMOKE, tmp_path / "plain")
    with pytest.raises(BenchmarkError, match="holds runs made without --seeds; run the same way or use another --out"):
        prepare_folder(replace(SMOKE, seeds=(0,)), tmp_path / "plain")
    prepare_folder(replace(SMOKE, seeds=(0, 1)), tmp_path / "seeded")
    with pytest.raises(BenchmarkError, match="holds runs made with --seeds 0 1; run the same way"):
        prepare_folder(SMOKE, tmp_path / "seeded")
    with pytest.raises(BenchmarkError, match="different definition"):
        prepare_folder(replace(SMOKE, seeds=(0, 1), sparse_ratio=0.5), tmp_path / "seeded")


def test_a_folder_recorded_before_seeds_existed_still_resumes(tmp_path: Path) -> None:
    """An older preset.json has no ``seeds`` field: the same preset without --seeds matches it."""
    document = json.loads(json.dumps(SMOKE.to_json()))
    del document["seeds"]
    (tmp_path / PRESET_FILE).write_text(json.dumps(document))
    prepare_folder(SMOKE, tmp_path)
    assert "seeds" not in json.loads((tmp_path / PRESET_FILE).read_text())
