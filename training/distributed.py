"""Data-parallel training under ``torchrun``: the process group, each rank's share of the data, and the
reductions that keep a run's record global.

``torchrun --nproc_per_node N -m training.cli teacher ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`init_from_environment` joins them into one process group
(NCCL on CUDA, gloo on CPU). Without those variables nothing here is used and training is one process.

Semantics (``fit`` follows them when a process group is initialised):

- the batch size is **per process**: one optimiser step sees ``world_size * batch_size`` images;
- each epoch, :func:`epoch_positions` gives this rank its share of the shuffled dataset
  (``DistributedSampler`` seeded with the run's seed, ``set_epoch(epoch)``; padded so that every rank
  runs the same number of steps);
- BatchNorm is plain (per-rank batch statistics); the running statistics of rank 0 are broadcast after each
  epoch, so every rank evaluates and saves the same model;
- a step's loss is finite only if it is finite on every rank (:meth:`Distributed.all_finite`), so a
  divergence stops all ranks at the same step; gradients are averaged by DDP, so the gradient norm is
  the same on every rank;
- epoch losses and test accuracy are sums over the ranks' images divided by their total count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class Distributed:
    """This process's place in an initialised process group."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder, the logs and the progress bars."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: ``cuda:LOCAL_RANK`` when training on CUDA, else ``device``."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` (its gradients averaged over the ranks)."""
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def epoch_positions(self, size: int, seed: int, epoch: int) -> Tensor:
        """This rank's dataset positions for ``epoch``, in training order: ``DistributedSampler`` shuffled with
        ``seed`` and ``set_epoch(epoch)``; every rank gets ``ceil(size / world_size)`` positions."""
        sampler = DistributedSampler(range(size), num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return torch.tensor(list(sampler), dtype=torch.int64)

    def test_positions(self, size: int) -> Tensor:
        """This rank's share of an evaluation set: positions ``rank, rank + world_size, ...`` (no padding)."""
        return torch.arange(self.rank, size, self.world_size)

    def all_finite(self, loss: Tensor) -> bool:
        """Whether ``loss`` is finite on every rank (one all-reduce)."""
        bad = torch.tensor([0.0 if bool(torch.isfinite(loss)) else 1.0], device=loss.device)
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bool(bad.item() == 0.0)

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Each of ``values`` summed over the ranks."""
        total = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return total.tolist()

    def max(self, value: float, device: torch.device) -> float:
        """``value``'s maximum over the ranks."""
        top = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
        return float(top.item())

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank."""
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def current() -> Distributed | None:
    """The process group this process belongs to, or None when training is one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def launched_by_torchrun() -> bool:
    """Whether ``torchrun`` (or another launcher setting ``RANK`` and ``WORLD_SIZE``) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """False on the ranks other than 0 of a ``torchrun`` launch (they print nothing)."""
    return os.environ.get("RANK", "0") == "0"


def init_from_environment(device_name: str) -> Distributed | None:
    """Join the process group ``torchrun`` set up (NCCL when ``device_name`` resolves to CUDA, else gloo);
    None when not launched by ``torchrun``. On CUDA each rank uses ``cuda:LOCAL_RANK``."""
    if not launched_by_torchrun() or current() is not None:
        return current()
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return current()


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
