"""What ``stingy-serve`` says when it cannot or should not start: a tampered checkpoint, a folder given as the
checkpoint, a port already in use, and no API key on an address other machines can reach. Each is one line on
stderr and a documented exit status, before uvicorn starts (real processes), never a traceback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app.launch import free_port
from app.listen import ListenError, check_can_listen, is_loopback
from app.main import create_app
from tests.api.conftest import make_settings


def _tampered(checkpoint: Path, folder: Path) -> Path:
    """A copy of ``checkpoint`` with the last byte of its weights flipped (the header still parses)."""
    copy = folder / "tampered.safetensors"
    data = bytearray(checkpoint.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    return copy


def _folder(checkpoint: Path, folder: Path) -> Path:
    run = folder / "run"
    run.mkdir()
    shutil.copy(checkpoint, run / "teacher.safetensors")
    return run


@pytest.mark.slow
@pytest.mark.parametrize(("make", "extra", "status", "message"), [
    (_tampered, [], 2, "the weights do not match their SHA-256 digest"),
    (_folder, [], 2, "is a folder, not a .safetensors file; it holds teacher.safetensors: pass "),
    (None, ["--host", "0.0.0.0"], 2, "no API key is configured and 0.0.0.0 can be reached from other machines"),
    (None, ["--port", "BUSY"], 3, "is already in use (another server listens there): stop it or choose another --port"),
])
def test_a_server_that_cannot_start_says_why_in_one_line(tiny_teacher: Path, tmp_path: Path, make, extra: list[str],  # type: ignore[no-untyped-def]
                                                          status: int, message: str) -> None:
    """``BUSY`` stands for a port on which another socket listens. ``0.0.0.0`` is refused before anything binds."""
    checkpoint = tiny_teacher if make is None else make(tiny_teacher, tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        args = ["--host", "127.0.0.1", "--port", str(free_port()), *[port if a == "BUSY" else a for a in extra]]
        env = {key: value for key, value in os.environ.items() if not key.startswith("STINGY_")}
        done = subprocess.run([sys.executable, "-m", "app.cli", "--checkpoint", str(checkpoint), "--device", "cpu", *args],
                              env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == status, done.stdout + done.stderr
    assert done.stderr.startswith("stingy-serve: ") and message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stdout and "Application startup" not in done.stdout + done.stderr


def test_an_open_server_must_be_asked_for_off_loopback(tiny_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    with pytest.raises(ValueError, match="pass --allow-anonymous"):
        create_app(make_settings(tiny_teacher, tmp_path, host="0.0.0.0"))
    create_app(make_settings(tiny_teacher, tmp_path, host="0.0.0.0", allow_anonymous=True))
    create_app(make_settings(tiny_teacher, tmp_path, host="0.0.0.0", api_keys="alice:secret-a"))
    create_app(make_settings(tiny_teacher, tmp_path))  # 127.0.0.1: open, with the start-up warning only
    monkeypatch.setenv("STINGY_ALLOW_ANONYMOUS", "1")  # the owner's explicit choice, from the environment
    create_app(make_settings(tiny_teacher, tmp_path, host="0.0.0.0"))


def test_a_busy_port_is_found_before_anything_loads() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ListenError, match=f"port {port} on 127.0.0.1 is already in use"):
            check_can_listen("127.0.0.1", port)
    check_can_listen("127.0.0.1", port)  # free again once the other socket closed
    with pytest.raises(ListenError, match="not an address of this machine"):
        check_can_listen("192.0.2.1", free_port())  # TEST-NET-1: never assigned to a machine
