"""The Nasty Teacher search's pick rule (:func:`training.reproduction.nasty_pick.pick`) and pick.json read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.reproduction.nasty_pick import Setting, edge_note, load_pick, pick, pick_document, student_drop
from training.reproduction.results import BenchmarkError

SCRATCH = {"mlp": 87.0, "lenet5": 86.0}


def _pick(*settings: Setting, normal: float = 90.0, tolerance: float = 2.0):
    return pick(list(settings), SCRATCH, normal, 10, tolerance)


def test_the_most_harmful_setting_whose_teacher_keeps_its_accuracy_is_picked() -> None:
    mild = Setting(0.01, 4, 89.5, {"mlp": 86.0, "lenet5": 85.0})      # mean drop 1
    harsh = Setting(0.1, 4, 88.5, {"mlp": 80.0, "lenet5": 82.0})      # mean drop 5.5, teacher -1.5
    too_harsh = Setting(1.0, 4, 87.9, {"mlp": 10.0, "lenet5": 10.0})  # teacher -2.1: not eligible
    result = _pick(mild, harsh, too_harsh)
    assert result.setting == harsh and result.works
    assert "2 of 3 settings" in result.reason
    assert _pick(mild, harsh, too_harsh, tolerance=2.5).setting == too_harsh


def test_ties_go_to_the_more_accurate_teacher() -> None:
    low = Setting(0.1, 4, 88.5, {"mlp": 80.0, "lenet5": 82.0})
    high = Setting(0.1, 20, 89.0, {"mlp": 82.0, "lenet5": 80.0})
    assert _pick(low, high).setting == high


def test_a_diverged_student_counts_at_chance_and_a_diverged_teacher_is_never_picked() -> None:
    assert student_drop(87.0, None, 10) == 77.0
    diverged_student = Setting(0.1, 4, 89.0, {"mlp": None, "lenet5": 86.0})
    assert _pick(diverged_student, Setting(0.3, 4, 89.0, {"mlp": 50.0, "lenet5": 50.0})).setting == diverged_student
    result = _pick(Setting(0.3, 4, None, {"mlp": 10.0, "lenet5": 10.0}))
    assert result.setting is None and not result.works


def test_none_works_when_no_eligible_setting_hurts_students() -> None:
    helpful = Setting(0.01, 4, 90.0, {"mlp": 87.5, "lenet5": 86.5})
    result = _pick(helpful, Setting(1.0, 4, 50.0, {"mlp": 10.0, "lenet5": 10.0}))
    assert result.setting == helpful and not result.works
    assert "could not be made to work on this data" in result.reason and "-0.50" in result.reason
    result = _pick(Setting(1.0, 4, 50.0, {"mlp": 10.0, "lenet5": 10.0}))
    assert result.setting is None and not result.works and "could not be made to work" in result.reason


def test_pick_json_round_trip_and_its_refusals(tmp_path: Path) -> None:
    result = _pick(Setting(0.1, 4, 88.5, {"mlp": 80.0, "lenet5": 82.0}))
    document = pick_document(result, SCRATCH, 90.0, 10, 2.0, preset="fmnist-cpu")
    assert document["students"]["mlp"] == {"scratch": 87.0, "accuracy": 80.0, "drop": 7.0} and document["mean_drop"] == 5.5
    path = tmp_path / "pick.json"
    path.write_text(json.dumps(document))
    assert load_pick(path, "fmnist-cpu")[:2] == (0.1, 4.0)
    with pytest.raises(BenchmarkError, match="searched on preset 'fmnist-cpu', not 'smoke'"):
        load_pick(path, "smoke")
    path.write_text(json.dumps(pick_document(_pick(), SCRATCH, 90.0, 10, 2.0, preset="fmnist-cpu")))
    with pytest.raises(BenchmarkError, match="picked no setting"):
        load_pick(path, "fmnist-cpu")
    path.write_text("{")
    with pytest.raises(BenchmarkError, match="not a pick.json"):
        load_pick(path, "fmnist-cpu")


def test_a_pick_on_the_grids_edge_says_so() -> None:
    grid = [Setting(omega, tau, 89.0, {}) for omega in (0.01, 0.1, 0.3) for tau in (4.0, 10.0, 20.0)]
    assert edge_note(Setting(0.1, 10.0, 89.0, {}), grid) is None
    assert "largest omega searched (0.3)" in (edge_note(Setting(0.3, 10.0, 89.0, {}), grid) or "")
    note = edge_note(Setting(0.01, 20.0, 89.0, {}), grid) or ""
    assert "tau_A range searched (20)" in note and "omega" not in note.split(":")[1]
