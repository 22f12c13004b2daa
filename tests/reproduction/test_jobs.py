"""``stingy-bench run --jobs N`` (runs in N local worker processes) and the ``--device`` / ``--amp`` pins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.reproduction.broken import with_a_broken_nasty_teacher
from training.io import read_json_lines
from training.reproduction.cli import main
from training.reproduction.pool import threads_per_job
from training.reproduction.presets import PRESETS
from training.reproduction.results import Results


def test_pinned_preset_sets_every_schedule() -> None:
    preset = PRESETS["paper-cifar10"].pinned("cpu", False)  # it has a nasty teacher schedule of its own
    assert preset.nasty is not None and preset.nasty.config is not None
    for config in (preset.teacher_config, preset.student_config, preset.nasty.config):
        assert (config.device, config.amp) == ("cpu", False)
    assert PRESETS["smoke"].pinned() == PRESETS["smoke"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--jobs", "0"], "--jobs must be at least 1, not 0"),
    (["--jobs", "2", "--executor", "ray"], "--jobs is for the local executor"),
    (["--device", "tpu"], "unsupported device 'tpu'"),
])
def test_bad_run_options_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str) -> None:
    assert main(["run", "--preset", "smoke", "--out", str(tmp_path / "b"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists(), "nothing is written before the options are checked"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_device_cuda_without_a_gpu_fails_before_any_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--preset", "smoke", "--out", str(tmp_path / "b"), "--device", "cuda"]) == 2
    assert "this machine has no CUDA GPU" in capsys.readouterr().err


@pytest.mark.slow
def test_jobs_2_runs_the_keys_of_jobs_1_and_records_the_pins(smoke_run: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "jobs2"
    assert main(["run", "--preset", "smoke", "--out", str(out), "--jobs", "2", "--device", "auto", "--amp"]) == 0
    rows = read_json_lines(out / "results.jsonl")
    assert sorted(row["key"] for row in rows) == sorted(row["key"] for row in read_json_lines(smoke_run / "results.jsonl"))
    assert len(Results.load(out).rows) > 0
    preset = json.loads((out / "preset.json").read_text())
    for config in ("teacher_config", "student_config"):  # the smoke preset's own: cpu, no amp
        assert (preset[config]["device"], preset[config]["amp"]) == ("auto", True)
    threads = threads_per_job(2) or torch.get_num_threads()  # a fair share, or OMP_NUM_THREADS where set
    for row in rows:
        assert row["machine"]["torch"] == torch.__version__ and row["machine"]["device_name"]
        assert row["machine"]["threads"] == threads
    printed = capsys.readouterr().out
    assert f"[{len(rows)}/{len(rows)}]" in printed and "--jobs 2: 2 worker processes" in printed


@pytest.mark.slow
def test_a_failed_run_keeps_the_others_rows_and_exits_2(smoke_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "broken"
    kept, redo = with_a_broken_nasty_teacher(smoke_run, out)
    assert main(["run", "--preset", "smoke", "--out", str(out), "--jobs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{len(redo) - 1} of {len(redo)} runs failed (the 1 others are recorded)" in err
    assert {row["key"] for row in read_json_lines(out / "results.jsonl")} == kept | {"scratch/mlp"}
