"""The CUDA paths: mixed-precision training, distillation from masked logits under autocast, and serving on
the GPU. Skipped where no GPU is present (CI); run on a GPU machine with ``./scripts/gpu_check.sh``."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from app.launch import running_server
from defense import make_policy
from training.checkpoint import load_checkpoint
from training.data import load_dataset
from training.engine import TrainConfig, accuracy, predict_logits
from training.losses import kd_loss
from training.objectives import CrossEntropy, Distillation, LiveTeacher
from training.runs import run_training

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GPU = dict(device="cuda", amp=True)


@pytest.fixture(scope="module")
def synthetic() -> tuple:
    return load_dataset("synthetic", "train", size=1200), load_dataset("synthetic", "test", size=400)


@pytest.fixture(scope="module")
def gpu_teacher(synthetic: tuple, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cnn_small trained on the GPU with mixed precision (channels_last, bfloat16 or float16 autocast)."""
    train, test = synthetic
    out = tmp_path_factory.mktemp("gpu_teacher")
    config = TrainConfig(epochs=3, batch_size=64, lr=0.05, milestones=(), **GPU)
    result = run_training(arch="cnn_small", objective=CrossEntropy(), train=train, test=test, config=config, out=out,
                          checkpoint_name="teacher.safetensors")
    assert not result.diverged and result.test_accuracy is not None and result.test_accuracy > 60.0
    return out / "teacher.safetensors"


def test_amp_training_on_cuda_saves_a_checkpoint_that_loads_and_agrees_on_cpu(gpu_teacher: Path, synthetic: tuple) -> None:
    _, test = synthetic
    accuracies = {}
    for device in ("cpu", "cuda"):
        model, card = load_checkpoint(gpu_teacher, device)
        assert next(model.parameters()).device.type == device
        accuracies[device] = accuracy(predict_logits(model, test, card.mean, card.std, amp=False), test.labels)
    assert card.test_accuracy is not None
    assert abs(accuracies["cpu"] - accuracies["cuda"]) <= 1.0, accuracies  # float32 on both: same function up to rounding
    assert abs(accuracies["cuda"] - card.test_accuracy) <= 2.0, (accuracies, card.test_accuracy)  # the card's is under AMP


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kd_loss_with_masked_teacher_logits_is_finite_under_autocast(dtype: torch.dtype) -> None:
    generator = torch.Generator("cuda").manual_seed(0)
    student = (torch.randn(256, 100, device="cuda", generator=generator) * 30).to(dtype).float().requires_grad_()
    teacher = make_policy("stingy", sparse_ratio=0.02)(torch.randn(256, 100, device="cuda", generator=generator) * 30)
    labels = torch.randint(0, 100, (256,), device="cuda", generator=generator)
    with torch.autocast("cuda", dtype=dtype):
        loss = kd_loss(student, teacher, labels, tau=20.0, alpha=0.9)
    loss.backward()
    assert torch.isfinite(loss) and student.grad is not None and torch.isfinite(student.grad).all()


def test_stingy_distillation_on_cuda_records_gradient_norms_and_clipping_keeps_them_bounded(gpu_teacher: Path, synthetic: tuple,
                                                                                           tmp_path: Path) -> None:
    train, test = synthetic
    teacher, _ = load_checkpoint(gpu_teacher, "cuda")
    objective = Distillation(LiveTeacher(teacher, make_policy("stingy", k=2)), tau=20.0, alpha=0.9)
    config = TrainConfig(epochs=1, batch_size=64, lr=0.01, milestones=(), grad_clip=5.0, **GPU)
    result = run_training(arch="lenet5", objective=objective, train=train, test=test, config=config, out=tmp_path,
                          checkpoint_name="student.safetensors")
    assert not result.diverged and result.test_accuracy is not None
    assert 0.0 < result.max_grad_norm < float("inf")
    assert (tmp_path / "student.safetensors").is_file()


def test_served_on_cuda_the_api_top1_equals_the_in_process_top1(gpu_teacher: Path, synthetic: tuple, tmp_path: Path) -> None:
    """A real stingy-serve on the GPU: every v2 top-1 equals the teacher's own, computed in-process on the
    same device with the same batch, so accuracy through the API is the teacher's. One process (``--workers 1``):
    the default, one worker per CPU core, would open a CUDA context per core of the GPU host."""
    _, test = synthetic
    batch = 200
    model, card = load_checkpoint(gpu_teacher, "cuda")
    model.to(memory_format=torch.channels_last)  # as the server runs it
    logits = predict_logits(model, test, card.mean, card.std, batch_size=batch, amp=False)
    labels: list[int] = []
    args = ["--checkpoint", str(gpu_teacher), "--device", "cuda", "--workers", "1", "--sparse-ratio", "0.2", "--max-batch-size", str(batch),
            "--max-images-per-request", str(batch), "--budget-db", str(tmp_path / "budget.sqlite3")]
    with running_server(args) as server, httpx.Client(base_url=server.url, timeout=60.0) as client:
        for images in (b.images for b in test.batches(batch)):
            request = {"inputs": [{"name": "images", "shape": list(images.shape), "datatype": "UINT8", "data": images.reshape(-1).tolist()}],
                       "outputs": [{"name": "topk_indices"}, {"name": "topk_logits"}]}
            response = client.post("/v2/models/teacher/infer", json=request)
            assert response.status_code == 200, response.text
            outputs = {output["name"]: output for output in response.json()["outputs"]}
            assert outputs["topk_indices"]["shape"] == [len(images), 2]
            labels += outputs["topk_indices"]["data"][::2]
        assert "cuda" in server.output(), server.output()[-2000:]
    api_top1 = torch.tensor(labels)
    assert torch.equal(api_top1, logits.argmax(dim=-1))
    # Against the same checkpoint in float32 on the CPU: the accuracies can differ only by the images whose
    # top-1 the two devices' rounding decides differently (near ties), which are few.
    cpu_model, _ = load_checkpoint(gpu_teacher, "cpu")
    cpu_top1 = predict_logits(cpu_model, test, card.mean, card.std, batch_size=batch, amp=False).argmax(dim=-1)
    ties = int((cpu_top1 != api_top1).sum())
    assert ties <= len(test) // 100, f"{ties} of {len(test)} images get another top-1 on the CPU"
    api_accuracy = 100.0 * int((api_top1 == test.labels).sum()) / len(test)
    cpu_accuracy = 100.0 * int((cpu_top1 == test.labels).sum()) / len(test)
    assert abs(api_accuracy - cpu_accuracy) <= 100.0 * ties / len(test), (api_accuracy, cpu_accuracy, ties)
