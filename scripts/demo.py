"""The stingy-teacher demo: train (or reuse) a Fashion-MNIST teacher, then show what the defense releases.

Run it through ``scripts/demo.sh``, which sets up the environment first.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from defense import make_policy, tempered_softmax
from training.checkpoint import load_checkpoint
from training.data import load_dataset
from training.engine import accuracy, predict_logits

ROOT = Path(__file__).resolve().parent.parent


def step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def train_teacher(out: Path, epochs: int) -> Path:
    checkpoint = out / "teacher.safetensors"
    done = checkpoint.is_file() and (out / "result.json").is_file()
    if done:
        print(f"reusing the teacher trained before: {checkpoint} (delete {out} to retrain)")
        return checkpoint
    command = [
        sys.executable, "-m", "training.cli", "teacher", "--dataset", "fashion-mnist", "--arch", "cnn_small",
        "--epochs", str(epochs), "--out", str(out), "--resume" if (out / "state.pt").exists() else "--force",
    ]
    print("$ stingy-train " + " ".join(command[3:]), flush=True)
    subprocess.run(command, check=True)
    return checkpoint


def show_released_logits(checkpoint: Path, sparse_ratio: float, images: int) -> None:
    model, card = load_checkpoint(checkpoint)
    test = load_dataset(card.dataset, "test")
    logits = predict_logits(model, test, card.mean, card.std, desc="teacher on the test set")
    normal, stingy = make_policy("normal"), make_policy("stingy", sparse_ratio=sparse_ratio)
    n = stingy.released_count(card.num_classes)
    print(f"teacher: {card.arch} on {card.dataset}, {len(test)} test images, K={card.num_classes}, stingy N={n} (r={sparse_ratio})")
    print(f"  accuracy with normal logits: {accuracy(logits, test.labels, normal):.2f}%")
    print(f"  accuracy with stingy logits: {accuracy(logits, test.labels, stingy):.2f}%   (Eq. 6 keeps the top-1: identical)")
    names = card.class_names
    for index in range(images):
        raw = logits[index : index + 1]
        released = stingy(raw)[0]
        soft_normal, soft_stingy = tempered_softmax(raw, 20.0)[0], tempered_softmax(released[None], 20.0)[0]
        print(f"\ntest image {index}: true class '{names[int(test.labels[index])]}'")
        print(f"  {'class':<12} {'normal logit':>12} {'stingy logit':>12} {'p_normal(tau=20)':>17} {'p_stingy(tau=20)':>17}")
        for k in torch.argsort(raw[0], descending=True).tolist():
            value = released[k].item()
            shown = f"{value:12.3f}" if value != float("-inf") else f"{'-inf':>12}"
            print(f"  {names[k]:<12} {raw[0, k].item():12.3f} {shown} {soft_normal[k].item():17.4f} {soft_stingy[k].item():17.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "demo", help="where the demo keeps its runs")
    parser.add_argument("--epochs", type=int, default=10, help="teacher epochs (10 reach about 91%% in about 2.5 minutes on 2 cores)")
    parser.add_argument("--sparse-ratio", type=float, default=0.2, help="the paper's r for 10 classes")
    parser.add_argument("--images", type=int, default=3, help="test images to show")
    args = parser.parse_args()

    step("1. Train the teacher (the model owner's classifier)")
    checkpoint = train_teacher(args.workdir / "teacher", args.epochs)
    step("2. What leaves the model: normal logits vs stingy logits")
    show_released_logits(checkpoint, args.sparse_ratio, args.images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
