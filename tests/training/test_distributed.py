"""Data-parallel training under torchrun (2 CPU processes, gloo): identical ranks, a checkpoint that a
single process evaluates to the same accuracy, a divergence on one rank stopping both, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.checkpoint import load_checkpoint
from training.data import load_dataset
from training.engine import accuracy, predict_logits

from .crash import kill_inside_epoch_two

pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("ddp_worker.py")
ENV = {**os.environ, "STINGY_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def _ranks(out: Path, *extra: str) -> list[dict]:
    subprocess.run(_torchrun(str(WORKER), str(out), *extra), check=True, env=ENV, capture_output=True, timeout=300)
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]


def test_two_ranks_end_identical_and_the_checkpoint_matches_a_single_process_evaluation(tmp_path: Path) -> None:
    first, second = _ranks(tmp_path)
    assert first["state"].keys() == second["state"].keys()
    for name, value in first["state"].items():
        assert torch.equal(value, second["state"][name]), f"{name} differs between the ranks"
    assert first["summary"] == {**second["summary"], "seconds": first["summary"]["seconds"]}
    assert first["summary"]["steps"] == 2 * 4, "256 images, 2 ranks, 32 per process: 4 steps per epoch"

    model, card = load_checkpoint(tmp_path / "run" / "model.safetensors")
    for name, value in model.state_dict().items():
        assert torch.equal(value, first["state"][name]), f"the checkpoint's {name} is not rank 0's"
    test = load_dataset("synthetic", "test", size=100)
    single = accuracy(predict_logits(model, test, card.mean, card.std, amp=False), test.labels)
    assert card.test_accuracy == pytest.approx(single, abs=1e-9)
    assert card.test_accuracy == first["summary"]["test_accuracy"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2], "rank 0 alone writes the metrics"


def test_a_non_finite_loss_on_one_rank_stops_both_at_the_same_step(tmp_path: Path) -> None:
    first, second = _ranks(tmp_path, "--nan-on-rank", "1", "--nan-at-step", "6")
    for rank in (first, second):
        assert rank["summary"]["diverged"] and rank["summary"]["diverged_step"] == 6
        assert rank["summary"]["epochs_run"] == 1, "epoch 1 (4 steps) finished, epoch 2 stopped at its 2nd"
    for name, value in first["state"].items():
        assert torch.equal(value, second["state"][name]), f"{name} differs between the ranks"


def _train_command(out: Path, *extra: str) -> list[str]:
    return _torchrun(
        "-m", "training.cli", "teacher", "--dataset", "synthetic", "--image-size", "48", "--arch", "cnn_small", "--epochs", "3",
        "--batch-size", "16", "--lr", "0.05", "--device", "cpu", "--seed", "5", "--out", str(out), *extra,
    )


def test_a_killed_ddp_run_resumes_and_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    done = subprocess.run(_train_command(reference), check=True, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.stdout.count("done: test accuracy") == 1, "rank 0 alone reports"

    crashed = tmp_path / "crashed"
    process = subprocess.Popen(_train_command(crashed), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    kill_inside_epoch_two(process, crashed, lambda: os.killpg(process.pid, signal.SIGKILL))  # torchrun and both ranks
    assert [json.loads(line)["epoch"] for line in (crashed / "metrics.jsonl").read_text().splitlines()] == [1]

    subprocess.run(_train_command(crashed, "--resume"), check=True, env=ENV, capture_output=True, timeout=300)
    assert [json.loads(line)["epoch"] for line in (crashed / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    expected, got = load_file(str(reference / "teacher.safetensors")), load_file(str(crashed / "teacher.safetensors"))
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{name} differs from the uninterrupted DDP run"
