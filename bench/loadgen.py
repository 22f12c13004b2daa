"""Load for the serving benchmark: request bodies in each input format, sent by ``hey`` (a Go load generator,
Debian package ``hey``) so that the client is not the bottleneck, and its per-request record read back; or,
for large requests, by :func:`run_retrying`, clients that honour ``Retry-After`` as well-behaved ones do
(``hey`` resends a refused request at once).

    rate = answered (200) images / wall seconds of the run
    p50, p99 = percentiles of the 200 answers' latencies (seconds from sending to the whole answer)
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import numpy as np
import torch
from PIL import Image

FORMATS = ("v2-json", "v2-binary", "v1-png")
BOUNDARY = "stingy-bench-boundary"


class LoadGeneratorMissing(RuntimeError):
    """``hey`` is not installed."""


def require_hey() -> str:
    """The path of ``hey``, or :class:`LoadGeneratorMissing` saying how to install it."""
    path = shutil.which("hey")
    if path is None:
        raise LoadGeneratorMissing("the serving benchmark needs the load generator 'hey': apt-get install hey")
    return path


@dataclass(frozen=True)
class Body:
    """One request: its path under the server, body bytes and headers."""

    path: str
    content: bytes
    headers: dict[str, str]


def make_body(fmt: str, model: str, pixels: torch.Tensor) -> Body:
    """The request for ``uint8`` ``pixels [B, C, H, W]`` in format ``fmt`` (one of :data:`FORMATS`): v2 UINT8 as
    JSON numbers, v2 binary tensor data (``Inference-Header-Content-Length``, as Triton clients send), or a v1
    multipart upload of B PNG files. v2 asks for the released pairs only."""
    infer = f"/v2/models/{model}/infer"
    tensor: dict[str, object] = {"name": "images", "shape": list(pixels.shape), "datatype": "UINT8"}
    outputs = [{"name": "topk_indices"}, {"name": "topk_logits"}]
    if fmt == "v2-json":
        tensor["data"] = pixels.reshape(-1).tolist()
        return Body(infer, json.dumps({"inputs": [tensor], "outputs": outputs}).encode(), {"Content-Type": "application/json"})
    if fmt == "v2-binary":
        tensor["parameters"] = {"binary_data_size": pixels.numel()}
        header = json.dumps({"inputs": [tensor], "outputs": outputs}).encode()
        return Body(infer, header + pixels.numpy().tobytes(),
                    {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})
    if fmt == "v1-png":
        parts = []
        for i, image in enumerate(pixels.numpy()):
            png = io.BytesIO()
            Image.fromarray(image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)).save(png, format="PNG")
            parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{i}.png"\r\n'
                         f"Content-Type: image/png\r\n\r\n".encode() + png.getvalue() + b"\r\n")
        content = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
        return Body("/v1/predict", content, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    raise ValueError(f"unknown format {fmt!r}; formats: {FORMATS}")


@dataclass(frozen=True)
class LoadResult:
    """What one ``hey`` run saw: answers by status, latencies of the 200s, its wall and CPU seconds."""

    requests: int
    ok: int
    statuses: dict[str, int]
    wall_s: float
    p50_ms: float
    p99_ms: float
    client_cpu_s: float


def run_hey(url: str, body: Body, clients: int, seconds: float, cpus: str | None = None, timeout_s: float = 20.0) -> LoadResult:
    """``hey -z SECONDS -c CLIENTS`` posting ``body`` (on the CPUs ``cpus`` with ``taskset`` when given). A request
    not answered within ``timeout_s`` is given up and left out of hey's record (counted as not answered)."""
    with tempfile.NamedTemporaryFile(prefix="stingy-bench-body-", delete=False) as handle:
        handle.write(body.content)
        body_file = handle.name
    command = [require_hey(), "-z", f"{seconds:g}s", "-c", str(clients), "-m", "POST", "-t", f"{timeout_s:g}", "-o", "csv", "-D", body_file,
               "-T", body.headers["Content-Type"]]
    for name, value in body.headers.items():
        if name != "Content-Type":
            command += ["-H", f"{name}: {value}"]
    command = pinned([*command, url + body.path], cpus)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=seconds + timeout_s + 60, check=False)
    finally:
        os.unlink(body_file)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if finished.returncode != 0:
        raise RuntimeError(f"hey failed ({finished.returncode}): {finished.stderr.strip()[-500:]}")
    return _parse_csv(finished.stdout, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))


def _parse_csv(text: str, client_cpu_s: float) -> LoadResult:
    """hey's CSV: ``response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset``
    per request (seconds; ``offset`` from the start of the run)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        _no_answer()
    return _result([(row["status-code"], float(row["response-time"]), float(row["offset"]) + float(row["response-time"]))
                    for row in rows], client_cpu_s)


def _no_answer() -> NoReturn:
    raise RuntimeError("the load generator recorded no answer at all (is the server answering?)")


def _result(records: list[tuple[str, float, float]], client_cpu_s: float) -> LoadResult:
    """A :class:`LoadResult` from (status, latency seconds, end offset seconds) per answered request."""
    statuses: dict[str, int] = {}
    for status, _, _ in records:
        statuses[status] = statuses.get(status, 0) + 1
    latencies = [latency for status, latency, _ in records if status == "200"]
    p50, p99 = (1000 * float(np.percentile(latencies, q)) for q in (50, 99)) if latencies else (float("nan"),) * 2
    return LoadResult(len(records), len(latencies), statuses, max(end for _, _, end in records), p50, p99, client_cpu_s)


def run_retrying(url: str, body: Body, clients: int, seconds: float, timeout_s: float = 20.0) -> LoadResult:
    """``clients`` concurrent clients (one connection each, in this process) posting ``body`` for ``seconds``, each
    waiting as long as a 503's ``Retry-After`` says (never past the end) before its next request. A request not
    answered within ``timeout_s`` is given up and not recorded, as with hey, and so is one whose connection broke
    (after which the client waits a second). Its CPU seconds are this process's."""
    cpu = time.process_time()
    records = asyncio.run(_retrying_clients(url, body, clients, seconds, timeout_s))
    if not records:
        _no_answer()
    return _result(records, time.process_time() - cpu)


async def _retrying_clients(url: str, body: Body, clients: int, seconds: float, timeout_s: float) -> list[tuple[str, float, float]]:
    """(status, latency, end offset) of every answered request."""
    records: list[tuple[str, float, float]] = []
    began = time.perf_counter()
    deadline = began + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=body.headers, timeout=timeout_s, limits=limits) as client:

        async def one_client() -> None:
            while (sent := time.perf_counter()) < deadline:
                try:
                    response = await client.post(body.path, content=body.content)
                except httpx.TimeoutException:
                    continue
                except httpx.TransportError:  # e.g. the connection closed under a body refused unread: back off
                    await _sleep_before(1.0, deadline)
                    continue
                answered = time.perf_counter()
                records.append((str(response.status_code), answered - sent, answered - began))
                if response.status_code == 503:
                    await _sleep_before(float(response.headers.get("Retry-After", "1")), deadline)

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return records


async def _sleep_before(seconds: float, deadline: float) -> None:
    """Sleep ``seconds``, but not past ``deadline`` (a ``time.perf_counter()`` value)."""
    await asyncio.sleep(min(seconds, max(deadline - time.perf_counter(), 0.0)))


def pinned(command: Sequence[str], cpus: str | None) -> list[str]:
    """``command`` under ``taskset -c cpus`` when ``cpus`` is given."""
    return ["taskset", "-c", cpus, *command] if cpus else list(command)


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (field 3, the state, first)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` and every live process below it (all their
    threads; ``stingy-serve --workers N`` serves from child processes), from ``/proc``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            except (OSError, IndexError, ValueError):  # the process ended while we looked
                continue
    tree, grew = {pid}, True
    while grew:
        below = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= below
        grew = bool(below)
    ticks = 0
    for member in tree:
        try:
            fields = _stat_fields(member)
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")
