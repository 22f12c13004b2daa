"""Run ``stingy-serve`` (or any local HTTP server), or a ``redis-server``, as a child process on a free port
of 127.0.0.1 and wait until it is ready: for the demo, benchmarks and tests.

    with running_server(["--checkpoint", str(path), "--sparse-ratio", "0.1"]) as server:
        httpx.get(server.url + "/v1/model")
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ServerProcess:
    """A started server: its base ``url``, the process, and the file holding its output."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait (SIGKILL after ``timeout`` seconds); the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise RuntimeError(f"the server ignored SIGTERM for {timeout} s; output:\n{self.output()[-3000:]}") from None


@contextmanager
def running_process(
    command: Sequence[str], port: int, *, ready_path: str = "/readyz", env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None, ready_timeout: float = 90.0, log_dir: Path | None = None,
) -> Iterator[ServerProcess]:
    """Start ``command`` (a server that will listen on 127.0.0.1:``port``) and yield once ``ready_path``
    answers 200. ``env`` adds to this process's environment. Raises ``RuntimeError`` with the server's
    output when it exits or is not ready within ``ready_timeout`` seconds. The server is terminated on exit."""
    folder = Path(tempfile.mkdtemp(prefix="stingy-server-", dir=log_dir))
    log = folder / "server.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(list(command), stdout=sink, stderr=subprocess.STDOUT, cwd=cwd, env={**os.environ, **(env or {})})
    server = ServerProcess(url=f"http://127.0.0.1:{port}", process=process, log=log)
    try:
        _wait_until_ready(server, ready_path, ready_timeout)
        yield server
    finally:
        if process.poll() is None:
            server.terminate()


@contextmanager
def running_server(args: Sequence[str], env: Mapping[str, str] | None = None, *, ready_timeout: float = 90.0,
                   log_dir: Path | None = None) -> Iterator[ServerProcess]:
    """``stingy-serve --host 127.0.0.1 --port PORT *args`` on a free port, yielded once ``/readyz`` answers 200."""
    port = free_port()
    command = [sys.executable, "-m", "app.cli", "--host", "127.0.0.1", "--port", str(port), *args]
    with running_process(command, port, env=env, ready_timeout=ready_timeout, log_dir=log_dir) as server:
        yield server


def _wait_until_ready(server: ServerProcess, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"the server exited with status {server.process.returncode}:\n{server.output()[-3000:]}")
            try:
                if client.get(server.url + path).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.1)
    raise RuntimeError(f"the server was not ready within {timeout} s:\n{server.output()[-3000:]}")


def redis_server_available() -> bool:
    """True when the ``redis-server`` command (Debian package ``redis-server``) is installed."""
    return shutil.which("redis-server") is not None


class RedisServer:
    """A real ``redis-server`` on a free port of 127.0.0.1 with its data in ``folder``, started and stopped on
    that one port.

    It persists every write before answering (``appendonly yes``, ``appendfsync always``), the setting
    docs/serving.md asks for, so that a crash (``stop(kill=True)``) and a :meth:`start` keep every counted image.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        """Start it and wait until it answers PING (after loading its append-only file)."""
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
                   "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "yes"]
        with open(self.folder / "redis.log", "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        with redis.Redis.from_url(self.url, socket_timeout=1.0) as client:
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start:\n{(self.folder / 'redis.log').read_text()[-2000:]}") from None
                    time.sleep(0.05)

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL, a crash) and wait for the process to end."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.process.wait(20)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)
