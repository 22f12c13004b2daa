"""The training loop every set-up shares (teacher, scratch, KD, nasty, the attacker's student).

One epoch: shuffled (seeded per epoch) batches -> augmentation -> normalisation -> forward (autocast on
CUDA) -> objective -> non-finite check -> backward -> gradient norm (optionally clipped) -> SGD step;
then the learning-rate step, a test-set evaluation, a metrics line (the loss and the epoch mean of each of
the objective's named terms, e.g. ``kd`` and ``ce``), and (with a run folder) an atomic
checkpoint and resume state. Runs are repeatable on CPU for a given seed, also across ``resume``.
Under ``torchrun`` (an initialised process group) the same loop is data-parallel: see
:mod:`training.distributed` for what changes (per-process batch size, each rank's share of the data,
global reductions, rank 0 writing the run folder).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from defense import LogitPolicy
from training.checkpoint import ModelCard, save_checkpoint
from training.data import Batch, ImageDataset
from training.devices import autocast_for, prepare_inputs, resolve_device
from training.distributed import Distributed, current
from training.io import append_json_line, atomic_path, read_json_lines
from training.objectives import Objective
from training.progress import progress_enabled

STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and run settings. Defaults are the paper's: SGD (momentum 0.9, weight decay 5e-4),
    lr 0.1 divided by 5 at 30%, 60% and 80% of the epochs (60/120/160 of 200), batch 128."""

    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.3, 0.6, 0.8)
    gamma: float = 0.2
    optimizer: str = "sgd"
    grad_clip: float | None = None
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError("grad_clip must be positive")

    def milestone_epochs(self) -> list[int]:
        """Milestones as epoch numbers: values below 1 are fractions of ``epochs``."""
        return sorted({round(m * self.epochs) if m < 1 else int(m) for m in self.milestones})


@dataclass
class FitResult:
    """How a run went: per-epoch history, test accuracy (%) after the last completed epoch (None when
    none completed), and its stability record. A diverged run is a diverged run, whatever its accuracy."""

    history: list[dict[str, Any]] = field(default_factory=list)
    test_accuracy: float | None = None
    max_grad_norm: float = 0.0
    diverged_step: int | None = None
    steps: int = 0
    seconds: float = 0.0

    @property
    def diverged(self) -> bool:
        return self.diverged_step is not None

    def summary(self) -> dict[str, Any]:
        return {
            "test_accuracy": self.test_accuracy, "max_grad_norm": self.max_grad_norm, "diverged": self.diverged,
            "diverged_step": self.diverged_step, "steps": self.steps, "seconds": round(self.seconds, 2),
            "epochs_run": len(self.history),
        }


def predict_logits(
    model: nn.Module, dataset: ImageDataset, mean: tuple[float, ...], std: tuple[float, ...], *,
    device: torch.device | None = None, batch_size: int = 512, amp: bool = True, num_workers: int = 0, desc: str | None = None,
) -> Tensor:
    """The model's float32 logits ``[N, K]`` on every image of ``dataset``, in dataset order, on CPU."""
    device = device or next(model.parameters()).device
    autocast, _ = autocast_for(device, amp)
    model.eval()
    outputs = []
    batches = dataset.batches(batch_size, num_workers=num_workers)
    total = math.ceil(len(dataset) / batch_size)
    with torch.inference_mode():
        for batch in tqdm(batches, total=total, desc=desc or "predict", leave=False, disable=not progress_enabled()):
            with autocast():
                outputs.append(model(prepare_inputs(batch.images, mean, std, device)).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0, dataset.info.num_classes)


def accuracy(logits: Tensor, labels: Tensor, policy: LogitPolicy | None = None) -> float:
    """Top-1 accuracy in percent of ``logits`` (after ``policy``, when given) against ``labels``."""
    released = policy(logits) if policy is not None else logits
    correct = int((released.argmax(dim=-1) == labels.to(released.device)).sum())
    return 100.0 * correct / max(int(labels.shape[0]), 1)


def epoch_seed(seed: int, epoch: int) -> int:
    """The data-order and augmentation seed of one epoch: independent of how the run got there."""
    return seed * 1_000_003 + epoch


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def fit(
    model: nn.Module,
    objective: Objective,
    train_data: ImageDataset,
    test_data: ImageDataset,
    config: TrainConfig,
    *,
    card: ModelCard | None = None,
    run_dir: str | Path | None = None,
    checkpoint_name: str = "model.safetensors",
    resume: bool = False,
    desc: str = "train",
) -> FitResult:
    """Train ``model`` on ``train_data`` minimising ``objective``; evaluate on ``test_data`` every epoch.

    With ``run_dir``: each epoch appends a line to ``metrics.jsonl`` and atomically rewrites the checkpoint
    (``checkpoint_name``, with ``card`` and that epoch's test accuracy) and ``state.pt`` (optimiser, schedule,
    history). ``resume=True`` continues from ``state.pt``. A non-finite loss stops the run; the result says
    at which step, and the checkpoint keeps the last finite epoch's weights. In a process group every rank
    calls ``fit`` with the same arguments; rank 0 alone writes ``run_dir``.
    """
    ddp = current()
    device = resolve_device(config.device) if ddp is None else ddp.device(resolve_device(config.device))
    writer = folder_of(run_dir, ddp)
    info = train_data.info
    mean, std = (card.mean, card.std) if card else (info.mean, info.std)
    folder = Path(run_dir) if run_dir is not None else None
    torch.manual_seed(config.seed)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    objective.to(device)
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, config.milestone_epochs(), gamma=config.gamma)
    autocast, amp_dtype = autocast_for(device, config.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    result = FitResult()
    start_epoch = 0
    if folder is not None and resume and (folder / STATE_FILE).is_file():
        start_epoch = _load_state(folder / STATE_FILE, model, optimizer, scheduler, scaler, result)
        if writer is not None:
            _truncate_metrics(writer / METRICS_FILE, start_epoch)
    elif writer is not None and resume is False and (writer / METRICS_FILE).exists():
        (writer / METRICS_FILE).unlink()
    began = time.perf_counter() - result.seconds
    step = _Step(model if ddp is None else ddp.wrap(model, device), objective, optimizer, scaler, autocast, config.grad_clip, mean, std, device)
    if ddp is not None:
        step.finite = ddp.all_finite
    for epoch in range(start_epoch + 1, config.epochs + 1):
        epoch_began = time.perf_counter()
        if ddp is None:
            positions = None
            seed = epoch_seed(config.seed, epoch)
        else:
            positions = ddp.epoch_positions(len(train_data), config.seed, epoch)
            seed = epoch_seed(config.seed, epoch) + ddp.rank  # each rank its own augmentation
        batches = train_data.batches(
            config.batch_size, shuffle=positions is None, augment=config.augment, seed=seed, num_workers=config.num_workers, indices=positions
        )
        total = math.ceil((len(train_data) if positions is None else len(positions)) / config.batch_size)
        stats = step.epoch(tqdm(batches, total=total, desc=f"{desc} {epoch}/{config.epochs}", leave=False, disable=not progress_enabled()), result)
        if ddp is not None:
            ddp.sync_buffers(model)
            stats = stats if result.diverged else _reduced(stats, ddp, device)
        result.max_grad_norm = max(result.max_grad_norm, stats.max_grad_norm)
        if result.diverged:
            break
        trained_lr = optimizer.param_groups[0]["lr"]  # the lr this epoch's steps used, before the schedule moves on
        scheduler.step()
        result.test_accuracy = _test_accuracy(model, test_data, mean, std, device, config, ddp)
        result.seconds = time.perf_counter() - began
        record = {
            "epoch": epoch, "train_loss": stats.mean_loss, "loss_terms": stats.mean_terms(), "test_accuracy": result.test_accuracy,
            "lr": trained_lr, "max_grad_norm": stats.max_grad_norm,
            "epoch_seconds": round(time.perf_counter() - epoch_began, 3), "seconds": round(result.seconds, 3),
        }
        result.history.append(record)
        if writer is not None:
            append_json_line(writer / METRICS_FILE, record)
            if card is not None:
                save_checkpoint(writer / checkpoint_name, model, _with_accuracy(card, result.test_accuracy, epoch, config))
            _save_state(writer / STATE_FILE, epoch, model, optimizer, scheduler, scaler, result)
        if progress_enabled():
            tqdm.write(f"[{desc}] epoch {epoch}/{config.epochs}  loss {stats.mean_loss:.4f}  test acc {result.test_accuracy:.2f}%")
    result.seconds = time.perf_counter() - began
    return result


def folder_of(run_dir: str | Path | None, ddp: Distributed | None) -> Path | None:
    """The run folder this process writes: ``run_dir``, except on the ranks other than 0 (None)."""
    if run_dir is None or (ddp is not None and not ddp.is_main):
        return None
    return Path(run_dir)


def _test_accuracy(
    model: nn.Module, test_data: ImageDataset, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
    config: TrainConfig, ddp: Distributed | None,
) -> float:
    """Top-1 test accuracy (%); in a process group each rank predicts its share and the counts are summed."""
    shard = test_data if ddp is None else test_data.select(ddp.test_positions(len(test_data)))
    logits = predict_logits(model, shard, mean, std, device=device, batch_size=config.eval_batch_size,
                            amp=config.amp, num_workers=config.num_workers, desc="eval")
    if ddp is None:
        return accuracy(logits, shard.labels)
    correct, total = ddp.sum([float((logits.argmax(dim=-1) == shard.labels).sum()), float(len(shard))], device)
    return 100.0 * correct / max(total, 1.0)


def _reduced(stats: _EpochStats, ddp: Distributed, device: torch.device) -> _EpochStats:
    """``stats`` over every rank's images: sums of losses and counts, maximum gradient norm."""
    names = sorted(stats.term_sums)
    loss_sum, seen, *terms = ddp.sum([stats.loss_sum, float(stats.seen), *(float(stats.term_sums[n]) for n in names)], device)
    return _EpochStats(loss_sum, {n: torch.tensor(t) for n, t in zip(names, terms)}, int(seen), ddp.max(stats.max_grad_norm, device))


@dataclass
class _EpochStats:
    loss_sum: float = 0.0
    term_sums: dict[str, Tensor] = field(default_factory=dict)  # on the device: no extra synchronisation per step
    seen: int = 0
    max_grad_norm: float = 0.0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    def add(self, loss: Tensor, terms: dict[str, Tensor], count: int) -> None:
        self.loss_sum += loss.item() * count
        for name, term in terms.items():
            weighted = term.detach().float() * count
            self.term_sums[name] = weighted if name not in self.term_sums else self.term_sums[name] + weighted
        self.seen += count

    def mean_terms(self) -> dict[str, float]:
        """Each named loss term of the objective, averaged over the epoch's images (their sum is ``mean_loss``)."""
        return {name: float(total) / max(self.seen, 1) for name, total in self.term_sums.items()}


@dataclass
class _Step:
    """One optimisation step: forward (autocast), objective, non-finite check, backward, norm, clip, update."""

    model: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: Callable[[], Any]
    grad_clip: float | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    finite: Callable[[Tensor], bool] = lambda loss: bool(torch.isfinite(loss))  # in a process group: on every rank

    def epoch(self, batches: Iterable[Batch], result: FitResult) -> _EpochStats:
        """Train on ``batches``; a non-finite loss sets ``result.diverged_step`` and ends the epoch unapplied."""
        self.model.train()
        stats = _EpochStats()
        clip = self.grad_clip if self.grad_clip is not None else math.inf
        for batch in batches:
            inputs = prepare_inputs(batch.images, self.mean, self.std, self.device)
            labels = batch.labels.to(self.device, non_blocking=True)
            with self.autocast():
                logits = self.model(inputs)
            terms = self.objective(logits.float(), inputs, batch, labels)
            loss = torch.stack(list(terms.values())).sum()
            result.steps += 1
            if not self.finite(loss):
                result.diverged_step = result.steps
                break
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
            if math.isfinite(norm):  # fp16 overflow steps are skipped by the scaler
                stats.max_grad_norm = max(stats.max_grad_norm, norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            stats.add(loss, terms, len(labels))
            if isinstance(batches, tqdm):
                batches.set_postfix(loss=f"{stats.mean_loss:.4f}", refresh=False)
        if isinstance(batches, tqdm):
            batches.close()
        return stats


def _with_accuracy(card: ModelCard, test_accuracy: float, epoch: int, config: TrainConfig) -> ModelCard:
    extra = {**card.extra, "epochs_trained": epoch, "train_config": asdict(config)}
    return replace(card, test_accuracy=test_accuracy, extra=extra)


def _save_state(path: Path, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, result: FitResult) -> None:
    state = {
        "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(), "history": result.history, "max_grad_norm": result.max_grad_norm,
        "steps": result.steps, "seconds": result.seconds,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, result: FitResult) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    result.history = list(state["history"])
    result.max_grad_norm = float(state["max_grad_norm"])
    result.steps = int(state["steps"])
    result.seconds = float(state["seconds"])
    result.test_accuracy = float(result.history[-1]["test_accuracy"]) if result.history else None
    return int(state["epoch"])


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop metric lines of epochs after ``last_epoch`` (written before a crash that lost their state)."""
    kept = [r for r in read_json_lines(path) if r.get("epoch", 0) <= last_epoch]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
