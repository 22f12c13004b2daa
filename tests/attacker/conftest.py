"""Fixtures for the attacker's tests: the fake server in-process (ASGI) and as a real uvicorn process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from attacker.client import RetryPolicy
from tests.attacker.fake_server import Knobs, create_app

REPO = Path(__file__).resolve().parents[2]
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def fake_server(tiny_teacher: Path) -> Callable[..., tuple[httpx.ASGITransport, Knobs]]:
    """``fake_server(**knobs)`` -> an ASGI transport to a fresh fake server and its knobs."""

    def make(**options: object) -> tuple[httpx.ASGITransport, Knobs]:
        knobs = Knobs(**options)  # type: ignore[arg-type]
        return httpx.ASGITransport(app=create_app(tiny_teacher, knobs)), knobs

    return make


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_ready(url: str, process: subprocess.Popen[bytes], deadline_s: float = 60.0) -> None:
    """Poll ``url`` until it answers 200; fail when the process exits or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode()[-2000:] if process.stderr else ""
            raise RuntimeError(f"the server exited with status {process.returncode}: {stderr}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {deadline_s:.0f}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def slow_fake_server(tiny_teacher: Path) -> Iterator[str]:
    """The fake server (stingy, k=2) as a uvicorn process on 127.0.0.1 answering each request after 50 ms."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.attacker.fake_server", "--checkpoint", str(tiny_teacher), "--port", str(port), "--delay", "0.05"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{url}/v1/model", process)
        yield url
    finally:
        stop(process)
