"""Serving an imported ImageNet-size model (not a test): its memory and latency on this machine.

    python -m bench.import_serving                                    # torchvision:resnet50, 224 px, CPU
    python -m bench.import_serving --arch torchvision:resnet18 --requests 3 --out runs/quick

Steps, as a model owner takes them: a random-weight torchvision model (the weights do not change the cost)
saved as a ``state_dict`` ``.pth``; ``stingy-train import`` run as a command (its wall time and peak memory);
one ``stingy-serve`` process (``--device``, the stingy policy with N = ``--k``, ``--workers 1`` unless ``--server-arg``
or ``STINGY_WORKERS`` gives the number of workers, whose memory the server memory below then leaves out: it is
the supervising parent's; defaults otherwise: it warms up with one forward pass of ``--max-batch-size`` images,
64); then one client sending one request at a time, ``--requests`` (batch 1) or ``--requests-large`` (batch 32)
of each kind after one untimed request:

- v2 binary ``UINT8`` tensors ``[B, 3, S, S]`` (already the input size: no resizing), B = 1 and 32;
- v1 uploads of B JPEG photos of 640x480 (decoded, resized and centre-cropped by the server), B = 1 and 32.

    latency = seconds from sending a request to having its whole answer (p50, p90, mean over the requests)
    server memory = the server process's peak resident set size (VmHWM in /proc), when ready and at the end
    baseline memory = the peak resident set size of a Python process that only imports torch and torchvision

Raw records: ``OUT/import_serving.json`` and ``OUT/import_serving.txt``.
"""

from __future__ import annotations

import argparse
import io
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from app.launch import running_server
from bench.loadgen import make_body
from bench.serving import load_average, machine, one_process_unless_told, say, settings_of, write_records
from training.checkpoint import read_card
from training.models import create_model

BATCHES = (1, 32)
PHOTO_SIZE = (640, 480)  # width, height


def peak_rss_mib(pid: int) -> float:
    """The peak resident set size of process ``pid`` (``VmHWM``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM")


def save_user_weights(arch: str, classes: int, image_size: int, path: Path) -> None:
    """A random-weight model's ``state_dict``, saved the way a user's script saves one."""
    torch.manual_seed(0)
    torch.save(create_model(arch, classes, 3, image_size).state_dict(), path)


def jpeg_photos(count: int, seed: int) -> list[bytes]:
    """Smooth 640x480 RGB JPEGs (upsampled noise): photo-like sizes and compression."""
    rng = np.random.default_rng(seed)
    photos = []
    for _ in range(count):
        small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), "RGB")
        buffer = io.BytesIO()
        small.resize(PHOTO_SIZE, Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def latencies(send: Callable[[], httpx.Response], requests: int) -> dict[str, float]:
    """p50, p90 and mean milliseconds of ``send()`` over ``requests`` calls after one untimed call; every answer must be 200."""
    seconds = []
    for call in range(requests + 1):
        began = time.perf_counter()
        answer = send()
        elapsed = time.perf_counter() - began
        if answer.status_code != 200:
            raise RuntimeError(f"the server answered {answer.status_code}: {answer.text[:300]}")
        if call:
            seconds.append(elapsed)
    ordered = sorted(seconds)
    return {"p50_ms": 1000 * statistics.median(ordered), "p90_ms": 1000 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            "mean_ms": 1000 * statistics.fmean(ordered), "requests": requests}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="torchvision:resnet50", help="torchvision:NAME to import")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--k", type=int, default=5, help="N: classes released per image (stingy policy)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per kind of batch 1")
    parser.add_argument("--requests-large", type=int, default=5, help="timed requests per kind of batch 32")
    parser.add_argument("--server-arg", action="append", default=[], help="extra stingy-serve argument (repeat), e.g. --server-arg=--max-batch-size=32")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-import"), help="folder for the raw records")
    args = parser.parse_args(argv)
    args.server_arg = one_process_unless_told(args.server_arg, [])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: list[str] = []
    began = time.strftime("%Y-%m-%d %H:%M:%S")
    say(report, f"# bench.import_serving {args.arch}, {began}, load average {load_average()}, {machine()}")
    record: dict[str, object] = {"began": began, "machine": machine(), "load_average_start": load_average(),
                                 "settings": settings_of(args)}
    with tempfile.TemporaryDirectory(prefix="stingy-bench-import-") as scratch:
        weights, checkpoint = Path(scratch) / "model.pth", Path(scratch) / "model.safetensors"
        baseline = subprocess.run([sys.executable, "-c", "import resource, torch, torchvision; "
                                   "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"], capture_output=True, text=True, check=True)
        record["python_torch_torchvision_peak_rss_mib"] = int(baseline.stdout) / 1024
        say(report, f"a Python process that only imports torch and torchvision: peak RSS {record['python_torch_torchvision_peak_rss_mib']:.0f} MiB")
        save_user_weights(args.arch, args.classes, 224, weights)
        command = [sys.executable, "-m", "training.cli", "import", "--arch", args.arch, "--weights", str(weights), "--out", str(checkpoint)]
        started = time.perf_counter()
        imported = subprocess.run(command, capture_output=True, text=True, check=True)
        step = {"seconds": time.perf_counter() - started, "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                "output": imported.stdout.strip(), "weights_mib": weights.stat().st_size / 2**20}
        record["import"] = step  # RUSAGE_CHILDREN: the largest child so far, the import command (the baseline is smaller)
        say(report, f"\nimport: {step['output']} in {step['seconds']:.1f} s, peak RSS {step['peak_rss_mib']:.0f} MiB; "
                    f"weights file {step['weights_mib']:.0f} MiB")
        card = read_card(checkpoint)
        size = card.image_size
        server_args = ["--checkpoint", str(checkpoint), "--device", args.device, "--policy", "stingy", "--k", str(args.k),
                       "--budget-db", str(Path(scratch) / "budget.sqlite3"), "--access-log", "", *args.server_arg]
        rows: dict[str, dict[str, float]] = {}
        with running_server(server_args, log_dir=Path(scratch), ready_timeout=300) as server, \
                httpx.Client(base_url=server.url, timeout=600) as client:
            pid = server.process.pid
            record["server_peak_rss_mib_ready"] = peak_rss_mib(pid)
            say(report, f"server ready (model loaded and warmed up): peak RSS {record['server_peak_rss_mib_ready']:.0f} MiB")
            generator = torch.Generator().manual_seed(0)
            for batch in BATCHES:
                requests = args.requests if batch == 1 else args.requests_large
                pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
                body = make_body("v2-binary", checkpoint.stem, pixels)
                rows[f"v2 binary uint8 [{batch}, 3, {size}, {size}]"] = latencies(
                    lambda: client.post(body.path, content=body.content, headers=body.headers), requests)
                files = [("files", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(jpeg_photos(batch, seed=batch))]
                rows[f"v1 {batch} JPEG {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}"] = latencies(
                    lambda: client.post("/v1/predict", files=files), requests)
            record["server_peak_rss_mib_end"] = peak_rss_mib(pid)
        record["latency"] = rows
        say(report, "\n| request (one client, one at a time) | p50 ms | p90 ms | mean ms |\n| --- | ---: | ---: | ---: |")
        for name, row in rows.items():
            say(report, f"| {name} | {row['p50_ms']:.0f} | {row['p90_ms']:.0f} | {row['mean_ms']:.0f} |")
        say(report, f"\nserver peak RSS at the end: {record['server_peak_rss_mib_end']:.0f} MiB")
    record["load_average_end"] = load_average()
    say(report, f"load average at the end: {record['load_average_end']}")
    write_records(args.out, "import_serving", record, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
