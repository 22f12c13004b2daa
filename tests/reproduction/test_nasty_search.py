"""``stingy-bench nasty-search`` end to end on the smoke preset, and ``run``'s Nasty Teacher override."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.io import read_json_lines
from training.reproduction.cli import main


@pytest.mark.slow
def test_a_2x1_search_writes_its_rows_table_and_pick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "search"
    assert main(["nasty-search", "--preset", "smoke", "--omega", "0.04", "1", "--tau", "4", "--students", "mlp",
                 "--max-epochs", "1", "--out", str(out)]) == 0
    rows = read_json_lines(out / "search.jsonl")
    keys = [row["key"] for row in rows]
    nasty = ["teacher/lenet5-nasty(omega=0.04,tau=4)", "teacher/lenet5-nasty(omega=1,tau=4)"]
    assert keys == ["teacher/lenet5", *nasty, "scratch/mlp", "kd/lenet5/mlp/normal/tau=20/alpha=0.9/clip=none",
                    *(f"kd/{key.removeprefix('teacher/')}/mlp/normal/tau=20/alpha=0.9/clip=none" for key in nasty)]
    by_key = {row["key"]: row for row in rows}
    assert by_key[nasty[1]]["grid"] == {"omega": 1.0, "tau": 4.0} and by_key["scratch/mlp"]["grid"] is None
    assert (by_key[nasty[1]]["nasty_omega"], by_key[nasty[1]]["nasty_tau"]) == (1.0, 4.0)
    picked = json.loads((out / "pick.json").read_text())
    normal, scratch = by_key["teacher/lenet5"]["accuracy"]["normal"], by_key["scratch/mlp"]["test_accuracy"]
    assert picked["normal_teacher_accuracy"] == normal and picked["preset"] == "smoke"
    report = (out / "search.md").read_text()
    assert f"| scratch | - | - | {scratch:.2f} | - | - |" in report and "## Pick" in report
    for row in rows[1:3]:
        teacher = row["accuracy"]["normal"]
        assert f"| {row['nasty_omega']:g} | 4 | {teacher:.2f} ({teacher - normal:+.2f}) |" in report
    if picked["omega"] is not None:
        row = by_key[f"teacher/lenet5-nasty(omega={picked['omega']:g},tau=4)"]
        assert picked["teacher_accuracy"] == row["accuracy"]["normal"] and normal - row["accuracy"]["normal"] <= 2.0
        assert picked["students"]["mlp"]["scratch"] == scratch
    assert "could not be made to work" in report or f"**omega {picked['omega']:g}, tau_A 4**" in report
    assert capsys.readouterr().out.rstrip().endswith(f"pick: {out / 'pick.json'}")


def test_run_records_the_overridden_nasty_teacher(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The override lands in preset.json before any training (the missing dataset then stops the run)."""
    pick = tmp_path / "pick.json"
    pick.write_text(json.dumps({"preset": "fmnist-cpu", "omega": 0.3, "tau": 20, "works": True, "reason": "test"}))
    missing = str(tmp_path / "no-data")
    for flags, expected in ((["--nasty-from", str(pick)], (0.3, 20.0)), (["--nasty-omega", "0.1"], (0.1, 4.0))):
        out = tmp_path / flags[0]
        assert main(["run", "--preset", "fmnist-cpu", "--out", str(out), "--data-root", missing, *flags]) == 2
        nasty = json.loads((out / "preset.json").read_text())["nasty"]
        assert (nasty["omega"], nasty["tau"]) == expected
    capsys.readouterr()
    assert main(["run", "--preset", "fmnist-cpu", "--out", str(tmp_path / "x"), "--nasty-from", str(pick), "--nasty-tau", "1"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["run", "--preset", "smoke", "--out", str(tmp_path / "y"), "--nasty-from", str(pick)]) == 2
    assert "searched on preset 'fmnist-cpu', not 'smoke'" in capsys.readouterr().err
    assert main(["nasty-search", "--preset", "smoke", "--omega", "0", "--tau", "4", "--out", str(tmp_path / "z")]) == 2
    assert "must be positive" in capsys.readouterr().err
