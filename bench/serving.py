"""Serving throughput and latency (a benchmark, not a test).

Sends v2 inference requests (UINT8 as JSON numbers, or raw bytes with ``--binary``; ``--images`` images each) from ``--concurrency`` concurrent
clients and prints per setting: images/s, the clients' latency percentiles, the server's own mean latency
per infer (``/metrics``: from the request reaching the app to its answer, so the difference is time spent
waiting in sockets and the event loop before the app sees a request) and the mean forward-pass size.

    python -m bench.serving --checkpoint runs/teacher/teacher.safetensors   # starts servers: batching on, off
    python -m bench.serving --arch resnetc20 --image-size 32 --channels 3     # same, random weights
    python -m bench.serving --url http://127.0.0.1:8000 --api-key KEY        # a live server, as it is

Run from the repository root. Client and servers share this machine's CPUs: read the numbers as relative.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from prometheus_client.parser import text_string_to_metric_families

from app.launch import running_server
from training.checkpoint import ModelCard, save_checkpoint
from training.models import create_model


@dataclass
class Result:
    setting: str
    concurrency: int
    requests: int
    images_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_mean_ms: float
    mean_batch: float

    def row(self) -> str:
        return (f"| {self.setting} | {self.concurrency} | {self.requests} | {self.images_per_s:.0f} | {self.p50_ms:.1f} | "
                f"{self.p95_ms:.1f} | {self.p99_ms:.1f} | {self.server_mean_ms:.1f} | {self.mean_batch:.1f} |")


HEADER = ("| setting | concurrency | requests | images/s | p50 ms | p95 ms | p99 ms | server mean ms | mean images per forward |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")


def random_checkpoint(folder: Path, arch: str, channels: int, image_size: int, classes: int) -> Path:
    """A checkpoint of ``arch`` with random weights (throughput does not depend on what the weights are)."""
    torch.manual_seed(0)
    model = create_model(arch, classes, channels, image_size)
    card = ModelCard(arch=arch, num_classes=classes, in_channels=channels, image_size=image_size, mean=(0.5,) * channels,
                     std=(0.25,) * channels, class_names=tuple(f"class_{i}" for i in range(classes)), dataset="random")
    path = folder / f"{arch}.safetensors"
    save_checkpoint(path, model, card)
    return path


INFER_ROUTE = "/v2/models/{name}/infer"


@dataclass
class ServerCounters:
    """Cumulative ``/metrics`` counters: images and forward passes, and seconds and count of answered v2 infers."""

    images: float = 0.0
    passes: float = 0.0
    infer_seconds: float = 0.0
    infers: float = 0.0

    def __sub__(self, other: ServerCounters) -> ServerCounters:
        return ServerCounters(self.images - other.images, self.passes - other.passes,
                              self.infer_seconds - other.infer_seconds, self.infers - other.infers)


async def _server_counters(client: httpx.AsyncClient) -> ServerCounters:
    counters = ServerCounters()
    for family in text_string_to_metric_families((await client.get("/metrics")).text):
        for sample in family.samples:
            if sample.name == "stingy_batch_size_images_sum":
                counters.images = sample.value
            elif sample.name == "stingy_batch_size_images_count":
                counters.passes = sample.value
            elif sample.labels.get("route") == INFER_ROUTE and sample.labels.get("status") == "200":
                if sample.name == "stingy_request_duration_seconds_sum":
                    counters.infer_seconds = sample.value
                elif sample.name == "stingy_request_duration_seconds_count":
                    counters.infers = sample.value
    return counters


def infer_body(pixels: torch.Tensor, binary: bool) -> tuple[bytes, dict[str, str]]:
    """A v2 infer body and its headers for ``uint8`` ``pixels``: JSON numbers, or (``binary``) a JSON header
    followed by the raw bytes, as Triton's client sends them (``Inference-Header-Content-Length``)."""
    tensor: dict[str, object] = {"name": "images", "shape": list(pixels.shape), "datatype": "UINT8"}
    if binary:
        tensor["parameters"] = {"binary_data_size": pixels.numel()}
    else:
        tensor["data"] = pixels.reshape(-1).tolist()
    header = json.dumps({"inputs": [tensor], "outputs": [{"name": "topk_indices"}, {"name": "topk_logits"}]}).encode()
    if not binary:
        return header, {"content-type": "application/json"}
    return header + pixels.numpy().tobytes(), {"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))}


async def measure(url: str, headers: dict[str, str], setting: str, concurrency: int, requests: int, images: int,
                  binary: bool = False) -> Result:
    """``requests`` inference requests from ``concurrency`` workers against ``url``."""
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120,
                                 limits=httpx.Limits(max_connections=concurrency + 1)) as client:
        model = (await client.get("/v1/model")).json()
        shape = [images, *model["input_shape"]]
        pixels = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        body, send_headers = infer_body(pixels, binary)
        path = f"/v2/models/{model['name']}/infer"
        for _ in range(min(requests, 2 * concurrency)):  # warm the connections and the server
            (await client.post(path, content=body, headers=send_headers)).raise_for_status()
        before = await _server_counters(client)
        latencies: list[float] = []
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                began = time.perf_counter()
                response = await client.post(path, content=body, headers=send_headers)
                response.raise_for_status()
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - began
        counted = await _server_counters(client) - before
    cuts = statistics.quantiles(latencies, n=100)
    return Result(setting, concurrency, requests, requests * images / wall, 1000 * cuts[49], 1000 * cuts[94], 1000 * cuts[98],
                  1000 * counted.infer_seconds / max(counted.infers, 1), counted.images / max(counted.passes, 1))


def run_levels(url: str, headers: dict[str, str], setting: str, args: argparse.Namespace) -> list[Result]:
    results = []
    setting = f"{setting}, binary" if args.binary else setting
    for concurrency in args.concurrency:
        result = asyncio.run(measure(url, headers, setting, concurrency, args.requests, args.images, args.binary))
        print(result.row(), flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="benchmark this running server as it is configured")
    target.add_argument("--checkpoint", type=Path, help="start servers for this checkpoint (batching on, then off)")
    parser.add_argument("--arch", default="cnn_small", help="without --url/--checkpoint: random weights of this architecture")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--api-key", help="key for --url")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    parser.add_argument("--images", type=int, default=1, help="images per request")
    parser.add_argument("--binary", action="store_true", help="send pixels as binary tensor data instead of JSON numbers")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-delay-ms", type=float, default=2.0)
    args = parser.parse_args(argv)

    print(HEADER)
    if args.url:
        run_levels(args.url.rstrip("/"), {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}, "live", args)
        return 0
    with tempfile.TemporaryDirectory(prefix="stingy-bench-") as scratch:
        checkpoint = args.checkpoint or random_checkpoint(Path(scratch), args.arch, args.channels, args.image_size, args.classes)
        common = ["--checkpoint", str(checkpoint), "--access-log", "", "--log-level", "warning",
                  "--max-batch-size", str(args.max_batch_size), "--max-delay-ms", str(args.max_delay_ms)]
        for setting, extra in ((f"batching on ({args.max_delay_ms:g} ms)", []), ("batching off", ["--no-batching"])):
            with running_server([*common, *extra], log_dir=Path(scratch)) as server:
                run_levels(server.url, {}, setting, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
