"""Training throughput benchmark (not a test): images per second of one optimisation step.

    python -m bench.train_speed --archs cnn_small lenet5 resnet18 --batch-size 128 --steps 20

Measures forward + backward + SGD step on random inputs of each architecture's usual input size, on the
default device (CUDA when present), with and without mixed precision on CUDA; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch

from training.devices import autocast_for, resolve_device
from training.engine import TrainConfig, make_optimizer
from training.models import create_model

INPUTS = {"mlp": (1, 28), "lenet5": (1, 28), "cnn_small": (1, 28), "cnn": (3, 32)}


def images_per_second(arch: str, batch_size: int, steps: int, device: torch.device, amp: bool) -> float:
    channels, size = INPUTS.get(arch, (3, 32))
    model = create_model(arch, num_classes=10 if channels == 1 else 100, in_channels=channels, image_size=size).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, TrainConfig())
    autocast, _ = autocast_for(device, amp)
    x = torch.randn(batch_size, channels, size, size, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step() -> None:
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["mlp", "lenet5", "cnn_small", "resnet18"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    modes = [False, True] if device.type == "cuda" else [False]
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else f'cpu ({torch.get_num_threads()} threads)'}, batch {args.batch_size}")
    print("| architecture | input | " + " | ".join("AMP images/s" if amp else "fp32 images/s" for amp in modes) + " |")
    print("|---|---|" + "---|" * len(modes))
    for arch in args.archs:
        channels, size = INPUTS.get(arch, (3, 32))
        rates = [images_per_second(arch, args.batch_size, args.steps, device, amp) for amp in modes]
        print(f"| {arch} | {channels}x{size}x{size} | " + " | ".join(f"{rate:,.0f}" for rate in rates) + " |")


if __name__ == "__main__":
    main()
