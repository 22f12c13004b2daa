"""The shared training loop: learning, repeatability, divergence detection, clipping, crash and resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.checkpoint import load_checkpoint
from training.data import load_dataset, normalize
from training.devices import DeviceError, resolve_device
from training.engine import TrainConfig, fit
from training.models import create_model
from training.objectives import CrossEntropy, Distillation, LiveTeacher, Objective
from training.runs import card_for, run_training

from .crash import kill_inside_epoch_two

CPU = dict(device="cpu", amp=False)


@pytest.fixture(scope="module")
def synthetic() -> tuple:
    return load_dataset("synthetic", "train", size=600), load_dataset("synthetic", "test", size=200)


def test_a_small_model_learns_the_synthetic_task(synthetic: tuple, tmp_path: Path) -> None:
    train, test = synthetic
    config = TrainConfig(epochs=3, batch_size=64, lr=0.05, milestones=(), **CPU)
    result = run_training(arch="cnn_small", objective=CrossEntropy(), train=train, test=test, config=config, out=tmp_path, checkpoint_name="m.safetensors")
    assert result.test_accuracy is not None and result.test_accuracy > 60.0, "far above the 10% of chance"
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    _, card = load_checkpoint(tmp_path / "m.safetensors")
    assert card.test_accuracy == result.test_accuracy and card.dataset == "synthetic"
    assert card.extra["epochs_trained"] == 3
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["test_accuracy"] == result.test_accuracy and saved["diverged"] is False
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_same_seed_same_weights_on_cpu(synthetic: tuple) -> None:
    train, test = synthetic
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=3, **CPU)
    weights = []
    for _ in range(2):
        torch.manual_seed(3)
        model = create_model("lenet5", 10, 1, 28)
        fit(model, CrossEntropy(), train, test, config)
        weights.append(model.state_dict())
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name


class _ExplodingObjective(Objective):
    """Cross-entropy that turns NaN at a given step, as a diverging KD run does."""

    def __init__(self, at_step: int) -> None:
        super().__init__()
        self.at_step, self.calls = at_step, 0

    def forward(self, logits, inputs, batch, labels):  # type: ignore[no-untyped-def]
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(logits, labels)
        return {"ce": loss * float("nan") if self.calls >= self.at_step else loss}

    def describe(self) -> dict:
        return {"objective": "exploding"}


def test_history_logs_each_named_loss_term(synthetic: tuple) -> None:
    """KD logs its two terms of Eq. 1 every epoch, ``kd`` = alpha tau^2 KL and ``ce`` = (1 - alpha) CE, and
    they add up to the logged loss; training on labels logs its one ``ce`` term."""
    train, test = synthetic
    config = TrainConfig(epochs=2, batch_size=100, lr=0.05, milestones=(), **CPU)
    torch.manual_seed(0)
    teacher = create_model("mlp", 10, 1, 28)
    kd = fit(create_model("mlp", 10, 1, 28), Distillation(LiveTeacher(teacher), tau=4.0, alpha=0.75), train, test, config)
    scratch = fit(create_model("mlp", 10, 1, 28), CrossEntropy(), train, test, config)
    for record in kd.history:
        terms = record["loss_terms"]
        assert set(terms) == {"kd", "ce"} and terms["kd"] > 0 and terms["ce"] > 0
        assert terms["kd"] + terms["ce"] == pytest.approx(record["train_loss"], rel=1e-5)
    for record in scratch.history:
        assert record["loss_terms"] == {"ce": pytest.approx(record["train_loss"], rel=1e-5)}


def test_non_finite_loss_stops_the_run_and_is_flagged(synthetic: tuple) -> None:
    train, test = synthetic
    steps_per_epoch = -(-len(train) // 64)
    model = create_model("lenet5", 10, 1, 28)
    result = fit(model, _ExplodingObjective(at_step=steps_per_epoch + 3), train, test, TrainConfig(epochs=5, batch_size=64, lr=0.05, **CPU))
    assert result.diverged and result.diverged_step == steps_per_epoch + 3
    assert len(result.history) == 1, "the run stops in the epoch it diverged"
    assert result.summary()["diverged"] is True
    assert all(torch.isfinite(p).all() for p in model.parameters()), "the non-finite step is never applied"


def test_gradient_norm_is_recorded_before_clipping(synthetic: tuple) -> None:
    """One step on one batch: the recorded norm is the L2 norm of every parameter's gradient together, taken
    before clipping, recomputed here by hand from a copy of the model on the same batch."""
    train, test = synthetic
    images = train.first(64)
    (batch,) = images.batches(64)
    model = create_model("lenet5", 10, 1, 28)
    copy = deepcopy(model).train()
    loss = torch.nn.functional.cross_entropy(copy(normalize(batch.images, train.info.mean, train.info.std)), batch.labels)
    loss.backward()
    expected = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in copy.parameters() if p.grad is not None))
    result = fit(model, CrossEntropy(), images, test, TrainConfig(epochs=1, batch_size=64, lr=0.05, grad_clip=1e-3, augment=False, **CPU))
    assert result.steps == 1
    assert result.max_grad_norm == pytest.approx(expected, rel=1e-4), "the recorded norm is the pre-clipping L2 norm"
    assert expected > 1e-2, "clipping at 1e-3 acted on this step"


def _train_command(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "training.cli", "teacher", "--dataset", "synthetic", "--image-size", "48", "--arch", "cnn_small",
        "--epochs", "3", "--batch-size", "32", "--lr", "0.05", "--device", "cpu", "--seed", "5", "--out", str(out), *extra,
    ]


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_epoch_and_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    env = {**os.environ, "STINGY_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run(_train_command(reference), check=True, env=env, capture_output=True)

    crashed = tmp_path / "crashed"
    process = subprocess.Popen(_train_command(crashed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_inside_epoch_two(process, crashed, lambda: os.kill(process.pid, signal.SIGKILL), wait_s=120)
    saved_epochs = [json.loads(line)["epoch"] for line in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert saved_epochs == [1], "killed mid-epoch 2"
    assert not list(crashed.glob(".*.tmp")), "no temporary file survives as a result"

    refused = subprocess.run(_train_command(crashed), env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr and "Traceback" not in refused.stderr

    subprocess.run(_train_command(crashed, "--resume"), check=True, env=env, capture_output=True)
    epochs = [json.loads(line)["epoch"] for line in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    model, card = load_checkpoint(crashed / "teacher.safetensors")
    assert card.extra["epochs_trained"] == 3
    expected, got = load_file(str(reference / "teacher.safetensors")), load_file(str(crashed / "teacher.safetensors"))
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{name} differs from the uninterrupted run"


def test_card_for_describes_the_dataset(synthetic: tuple) -> None:
    card = card_for("lenet5", synthetic[0])
    assert (card.num_classes, card.in_channels, card.image_size, card.dataset) == (10, 1, 28, "synthetic")


@pytest.mark.parametrize("name", ["tpu", "meta", "cuda:x", ""])
def test_devices_other_than_cpu_and_cuda_are_refused_with_what_to_use(name: str) -> None:
    with pytest.raises(DeviceError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device(name)


def test_a_gpu_this_machine_lacks_is_refused() -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(DeviceError, match="CUDA GPU"):
        resolve_device(f"cuda:{count}")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if count else "cpu")


def test_history_records_the_lr_each_epoch_trained_with(synthetic: tuple) -> None:
    """The schedule divides lr by 5 after epoch 1 (milestone 1): epoch 1 trained at 0.05, epoch 2 at 0.01."""
    train, test = synthetic
    config = TrainConfig(epochs=2, batch_size=200, lr=0.05, milestones=(1,), gamma=0.2, augment=False, **CPU)
    result = fit(create_model("mlp", 10, 1, 28), CrossEntropy(), train, test, config)
    assert [r["lr"] for r in result.history] == pytest.approx([0.05, 0.01])
