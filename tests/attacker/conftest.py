"""Fixtures for the attacker's tests: the fake server in-process (ASGI) and as a real uvicorn process."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.launch import free_port, running_process
from attacker.transport import RetryPolicy
from tests.attacker.fake_server import Knobs, create_app

REPO = Path(__file__).resolve().parents[2]
# child processes import the project from this checkout, and whatever the environment already adds
PYTHONPATH = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def fake_server(tiny_teacher: Path) -> Callable[..., tuple[httpx.ASGITransport, Knobs]]:
    """``fake_server(**knobs)`` -> an ASGI transport to a fresh fake server and its knobs."""

    def make(**options: object) -> tuple[httpx.ASGITransport, Knobs]:
        knobs = Knobs(**options)  # type: ignore[arg-type]
        return httpx.ASGITransport(app=create_app(tiny_teacher, knobs)), knobs

    return make


@pytest.fixture(scope="module")
def slow_fake_server(tiny_teacher: Path) -> Iterator[str]:
    """The fake server (stingy, k=2) as a uvicorn process on 127.0.0.1 answering each request after 50 ms."""
    port = free_port()
    command = [sys.executable, "-m", "tests.attacker.fake_server", "--checkpoint", str(tiny_teacher), "--port", str(port), "--delay", "0.05"]
    with running_process(command, port, ready_path="/v1/model", cwd=REPO, env={"PYTHONPATH": PYTHONPATH}, ready_timeout=60) as server:
        yield server.url
