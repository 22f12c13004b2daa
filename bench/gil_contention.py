"""Forward-pass time beside a busy Python thread (not a test): why one server process cannot run its model at
the model's speed under load.

    python -m bench.gil_contention                    # cnn and resnetc20, batch 32, one torch thread
    python -m bench.gil_contention --threads 2 --switch-ms 5 0.5

A server process runs its event loop (pure Python: HTTP parsing, validation, encoding) and its forward thread
side by side. An eager PyTorch forward takes Python's global interpreter lock between operators, so while the
event loop is busy, each operator of the forward can wait up to the interpreter's switch interval
(``sys.setswitchinterval``, 5 ms by default) for the lock. This measures the mean forward time of a model
(random weights) alone and beside a thread that spins in Python, per switch interval; the ratio is the
slow-down the forward suffers from sharing a process with a busy event loop. Separate processes
(``stingy-serve --workers N``) do not share a lock.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable

import torch

from bench.serving import MODELS
from training.models.registry import create_model


def mean_ms(function: Callable[[], object], calls: int) -> float:
    """Mean wall milliseconds of ``function()`` over ``calls`` calls, after two untimed ones."""
    function()
    function()
    began = time.perf_counter()
    for _ in range(calls):
        function()
    return 1000 * (time.perf_counter() - began) / calls


def spin(stop: threading.Event) -> None:
    """Pure-Python work (it holds the lock except when the interpreter makes it let go) until ``stop`` is set."""
    total = 0
    while not stop.is_set():
        for i in range(1000):
            total += i * i


def beside_busy_thread(function: Callable[[], object], calls: int) -> float:
    """:func:`mean_ms` of ``function`` while another thread runs :func:`spin`."""
    stop = threading.Event()
    busy = threading.Thread(target=spin, args=(stop,), daemon=True)
    busy.start()
    try:
        return mean_ms(function, calls)
    finally:
        stop.set()
        busy.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["cnn", "resnetc20"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the forward")
    parser.add_argument("--switch-ms", type=float, nargs="+", default=[5.0, 0.5, 0.1], help="interpreter switch intervals")
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# forward at batch {args.batch}, {args.threads} torch thread(s), torch {torch.__version__}")
    print("| model | switch interval ms | alone ms | beside a busy Python thread ms | slow-down |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in args.models:
        channels, size, classes = MODELS[name]
        model = create_model(name, classes, channels, size).eval()
        images = torch.randn(args.batch, channels, size, size)
        with torch.inference_mode():
            for switch_ms in args.switch_ms:
                sys.setswitchinterval(switch_ms / 1000)
                alone = mean_ms(lambda: model(images), args.calls)
                beside = beside_busy_thread(lambda: model(images), args.calls)
                print(f"| {name} | {switch_ms:g} | {alone:.2f} | {beside:.2f} | {beside / alone:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
