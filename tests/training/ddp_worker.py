"""One rank of the DDP tests (started by ``torchrun`` from tests/training/test_distributed.py).

    torchrun --nproc_per_node 2 tests/training/ddp_worker.py OUT [--nan-on-rank R --nan-at-step S]

Trains ``cnn_small`` on the synthetic set through :func:`training.engine.fit` with a run folder ``OUT/run``
and writes what this rank ended with to ``OUT/rank{R}.pt``: the model's state and the result summary.
``--nan-on-rank`` makes the loss non-finite on that rank alone at that step.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from training.data import Batch, load_dataset
from training.distributed import current, init_from_environment, shutdown
from training.engine import TrainConfig, fit
from training.objectives import CrossEntropy, LossTerms
from training.runs import build_model, card_for


class NanOnOneRank(CrossEntropy):
    """Cross-entropy, except a NaN on rank ``rank`` at its ``step``-th batch."""

    def __init__(self, rank: int, step: int) -> None:
        super().__init__()
        self.rank, self.step, self.calls = rank, step, 0

    def forward(self, logits: Tensor, inputs: Tensor, batch: Batch, labels: Tensor) -> LossTerms:
        self.calls += 1
        terms = super().forward(logits, inputs, batch, labels)
        ddp = current()
        if ddp is not None and ddp.rank == self.rank and self.calls == self.step:
            return {name: term * float("nan") for name, term in terms.items()}
        return terms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--nan-on-rank", type=int)
    parser.add_argument("--nan-at-step", type=int, default=3)
    args = parser.parse_args()
    ddp = init_from_environment("cpu")
    assert ddp is not None, "run me under torchrun"
    train, test = load_dataset("synthetic", "train", size=256), load_dataset("synthetic", "test", size=100)
    config = TrainConfig(epochs=2, batch_size=32, lr=0.05, milestones=(), device="cpu", amp=False, seed=3)
    objective = CrossEntropy() if args.nan_on_rank is None else NanOnOneRank(args.nan_on_rank, args.nan_at_step)
    model = build_model("cnn_small", train, config.seed)
    result = fit(model, objective, train, test, config, card=card_for("cnn_small", train), run_dir=args.out / "run",
                 checkpoint_name="model.safetensors")
    torch.save({"state": model.state_dict(), "summary": result.summary()}, args.out / f"rank{ddp.rank}.pt")
    shutdown()


if __name__ == "__main__":
    main()
