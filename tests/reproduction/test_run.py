"""``stingy-bench`` end to end: the smoke preset, resumption, the report, and a paper preset on fixture data."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fixtures.datasets import write_cifar
from training.checkpoint import load_checkpoint
from training.data import load_dataset
from training.engine import predict_logits
from training.io import read_json_lines
from training.reproduction.cli import main
from training.reproduction.plan import plan, slug
from training.reproduction.cells import within_spread
from training.reproduction.presets import PRESETS
from training.reproduction.results import NORMAL, Results

pytestmark = pytest.mark.slow


def _teacher_accuracy_recomputed(out: Path, preset_name: str, teacher: str) -> float:
    """The reproduction teacher's test accuracy, recomputed in-process from its saved checkpoint."""
    preset = PRESETS[preset_name]
    test = load_dataset(preset.dataset, "test", **preset.data_options)
    test = test.first(preset.test_subset) if preset.test_subset else test
    model, card = load_checkpoint(out / "runs" / slug(f"teacher/{teacher}") / "teacher.safetensors", "cpu")
    top1 = predict_logits(model, test, card.mean, card.std, amp=False).argmax(dim=-1)
    return 100.0 * int((top1 == test.labels).sum()) / len(test)


def test_smoke_preset_runs_every_experiment(smoke_run: Path) -> None:
    rows = read_json_lines(smoke_run / "results.jsonl")
    assert {row["key"] for row in rows} == {run.key for run in plan(PRESETS["smoke"])}
    teacher = next(row for row in rows if row["key"] == "teacher/lenet5")
    expected = _teacher_accuracy_recomputed(smoke_run, "smoke", "lenet5")
    assert teacher["accuracy"]["normal"] == pytest.approx(expected, abs=1e-9)
    assert teacher["accuracy"]["stingy"] == pytest.approx(expected, abs=1e-9), "claim (a): stingy keeps the teacher's accuracy"
    for row in rows:
        assert row["diverged"] or row["test_accuracy"] is not None
        assert row["max_grad_norm"] > 0
        for epoch in row.get("history", []):  # the loss's named terms add up to it, every epoch
            assert sum(epoch["loss_terms"].values()) == pytest.approx(epoch["train_loss"], rel=1e-4)
    terms = {tuple(sorted(epoch["loss_terms"])) for row in rows for epoch in row.get("history", [])}
    assert {("ce", "kd"), ("ce",)} <= terms, "KD runs log their KD and CE terms, runs on labels their CE"


def test_smoke_report_shows_the_values_of_the_results(smoke_run: Path) -> None:
    rows = read_json_lines(smoke_run / "results.jsonl")
    teacher = next(row for row in rows if row["key"] == "teacher/lenet5")["accuracy"]
    scratch = next(row for row in rows if row["type"] == "student" and row["teacher"] is None and row["student"] == "mlp")
    report = (smoke_run / "report.md").read_text()
    assert f"(a) Teacher accuracy: normal {teacher['normal']:.2f}%, stingy {teacher['stingy']:.2f}% (identical)." in report
    assert f"| Student baseline | - | {scratch['test_accuracy']:.2f}" in report
    assert f"| lenet5 (normal) | {teacher['normal']:.2f} |" in report
    assert "lenet5 (stingy)" in report and "lenet5 (nasty)" in report and "## Stability of the collapsed students" in report
    for figure in ("fig2_sparse_ratio", "fig3_epochs", "fig4_logits", "fig5_top_vs_least", "fig6_temperature"):
        path = smoke_run / f"{figure}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
        assert f"({figure}.png)" in report


def test_rerun_skips_finished_runs_and_redoes_missing_ones(smoke_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(smoke_run, copy)
    lines = (copy / "results.jsonl").read_text().splitlines()
    dropped = [json.loads(line)["key"] for line in lines[-2:]]
    (copy / "results.jsonl").write_text("\n".join(lines[:-2]) + "\n" + '{"torn": ')  # two lost runs and a torn line
    capsys.readouterr()
    assert main(["run", "--preset", "smoke", "--out", str(copy)]) == 0
    out = capsys.readouterr().out
    assert f"{len(lines) - 2} already finished, 2 to go" in out
    assert {row["key"] for row in read_json_lines(copy / "results.jsonl")} >= set(dropped)


def test_a_folder_of_another_preset_definition_is_refused(smoke_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "other"
    shutil.copytree(smoke_run, copy)
    assert main(["run", "--preset", "smoke", "--out", str(copy), "--max-epochs", "1", "--train-subset", "10"]) == 2
    assert "different definition" in capsys.readouterr().err
    assert main(["run", "--preset", "fmnist-cpu", "--out", str(copy)]) == 2
    assert f"{copy} holds a run of preset 'smoke', not 'fmnist-cpu'; use another --out" in capsys.readouterr().err


def test_report_of_a_non_benchmark_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "not a benchmark folder" in capsys.readouterr().err


def test_paper_cifar10_code_path_on_cifar_fixture(tmp_path: Path) -> None:
    """The paper preset's real architectures, live (augmented) teachers and nasty training, on tiny CIFAR-10 files."""
    write_cifar(tmp_path / "data", "cifar10", per_batch=8)
    out = tmp_path / "bench"
    assert main(["run", "--preset", "paper-cifar10", "--out", str(out), "--data-root", str(tmp_path / "data"),
                 "--max-epochs", "1", "--train-subset", "24", "--test-subset", "8"]) == 0
    rows = read_json_lines(out / "results.jsonl")
    assert len(rows) == len(plan(PRESETS["paper-cifar10"]))
    report = (out / "report.md").read_text()
    assert "| Teacher network | Teacher accuracy | cnn | resnetc20 | resnetc32 | Teacher self |" in report
    preset = json.loads((out / "preset.json").read_text())
    assert preset["teacher_config"]["epochs"] == 1 and preset["dataset"] == "cifar10"


def test_seeds_repeat_every_student_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--seeds 0 1``: a row per (cell, seed) with its seed, teachers once, mean ± std in the report, ``≈`` exactly
    where the spread rule says, and a rerun of the same command skips every finished (cell, seed)."""
    out = tmp_path / "seeds"
    assert main(["run", "--preset", "smoke", "--out", str(out), "--seeds", "0", "1"]) == 0
    rows = {row["key"]: row for row in read_json_lines(out / "results.jsonl")}
    assert set(rows) == {run.key for run in plan(replace(PRESETS["smoke"], seeds=(0, 1)))}
    assert rows["teacher/lenet5"]["seed"] == 0 and "teacher/lenet5/seed=1" not in rows
    first, second = rows["scratch/mlp/seed=0"], rows["scratch/mlp/seed=1"]
    assert (first["seed"], second["seed"]) == (0, 1)
    assert first["history"][0]["train_loss"] != second["history"][0]["train_loss"], "the seed changes the student's training"
    assert json.loads((out / "preset.json").read_text())["seeds"] == [0, 1]

    results = Results.load(out)
    report = (out / "report.md").read_text()
    scratch = results.scratch("mlp")
    assert scratch.n == 2 and f"| Student baseline | - | {scratch.mean:.2f} ± {scratch.std:.2f} (n=2) |" in report
    nasty_finding = next(line for line in report.splitlines() if line.startswith("- (c) "))
    pairs = dict(part.split(": nasty ", 1) for part in nasty_finding.split("Students: ", 1)[1].rstrip(".").split("; "))
    for student in ("mlp", "lenet5"):
        for clip in (None, 5.0):
            nasty = results.kd("lenet5-nasty", student, NORMAL, 20.0, clip)
            stingy = results.kd("lenet5", student, results.stingy(), 20.0, clip)
            assert nasty.n == stingy.n == 2
            pair = pairs[f"{'self' if student == 'lenet5' else student}{' (clip 5)' if clip else ''}"]
            assert (" ≈ stingy " in pair) == within_spread(nasty, stingy) != (" vs stingy " in pair), pair

    capsys.readouterr()
    assert main(["run", "--preset", "smoke", "--out", str(out), "--seeds", "0", "1"]) == 0
    assert f"{len(rows)} runs, {len(rows)} already finished, 0 to go" in capsys.readouterr().out
    assert main(["run", "--preset", "smoke", "--out", str(out)]) == 2
    assert "holds runs made with --seeds 0 1" in capsys.readouterr().err
