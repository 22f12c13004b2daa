"""The README as a newcomer uses it: after the set-up commands and ``source .venv/bin/activate``, every command
block runs as pasted in a new shell, and the curl examples answer as shown.

A block preceded by ``<!-- not run by tests/test_readme.py: REASON -->`` is not run, nor is one that calls a program
outside :data:`RUNNABLE` (Docker, the set-up scripts: they need their own machine); the ``stingy-*`` commands of
every block are still parsed. The run uses small settings, each one substitution of :data:`SMALL` (an unmatched substitution
fails the test, so the README and this table cannot drift apart silently). The new shell starts from a clean
environment: PATH, HOME, LANG and ``PYTHONPATH`` = this checkout (what the virtualenv's editable install gives
in CI, where ``.venv`` is the checkout's own; a worktree sharing another checkout's ``.venv`` tests its own code).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli import build_parser as serve_parser
from app.launch import free_port
from attacker.cli import build_parser as attack_parser
from tests.conftest import needs_fashion_mnist
from training.cli import build_parser as train_parser
from training.reproduction.cli import build_parser as bench_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
NOT_RUN = re.compile(r"<!-- not run by tests/test_readme\.py: (.+) -->")
ACTIVATE = "source .venv/bin/activate"
PARSERS: dict[str, Callable[[], Any]] = {
    "stingy-train": train_parser, "stingy-bench": bench_parser, "stingy-serve": serve_parser, "stingy-attack": attack_parser,
}
RUNNABLE = {*PARSERS, "python", "curl"}


@dataclass(frozen=True)
class Block:
    language: str
    text: str
    not_run: str | None  # the reason given in the marker line above the block


def readme_blocks() -> list[Block]:
    lines = README.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        fence = re.fullmatch(r"```(\w+)", lines[index])
        if fence is None:
            index += 1
            continue
        end = lines.index("```", index + 1)
        marker = NOT_RUN.fullmatch(lines[index - 1]) if index else None
        blocks.append(Block(fence[1], "\n".join(lines[index + 1:end]), marker[1] if marker else None))
        index = end + 1
    return blocks


def shell_commands(text: str) -> list[list[str]]:
    """The commands of a bash block, continuation lines joined, comments dropped, as argument lists."""
    return [words for line in text.replace("\\\n", " ").splitlines() if (words := shlex.split(line, comments=True))]


def program(words: list[str]) -> list[str]:
    """``words`` without leading ``NAME=value`` assignments: the program and its arguments."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        words = words[1:]
    return words


def stingy_argv(words: list[str]) -> list[str] | None:
    """The command without its environment assignments, when it is a ``stingy-*`` command."""
    argv = program(words)
    return argv if argv and argv[0] in PARSERS else None


def runs_here(block: Block) -> bool:
    """Not marked, and every program it calls is one of :data:`RUNNABLE`."""
    if block.not_run is not None or block.language != "bash":
        return block.not_run is None and block.language == "console"
    return all(program(words)[:1] and program(words)[0] in RUNNABLE for words in shell_commands(block.text))


def test_every_stingy_command_in_the_readme_parses() -> None:
    """Each ``stingy-*`` command of a bash block, and each inline one with arguments, is accepted by its parser
    (a missing required option such as ``stingy-bench run``'s ``--out`` fails here)."""
    commands = [argv for block in readme_blocks() if block.language == "bash"
                for words in shell_commands(block.text) if (argv := stingy_argv(words))]
    commands += [words for span in re.findall(r"`(stingy-[a-z]+ [^`]+)`", README.read_text())
                 if (words := stingy_argv(shlex.split(span)))]
    assert len(commands) >= 10
    refused = []
    for argv in commands:
        try:
            PARSERS[argv[0]]().parse_args(argv[1:])
        except SystemExit:
            refused.append(shlex.join(argv))
    assert not refused, refused


def test_the_activation_comes_right_after_the_set_up() -> None:
    set_up, activation, *_ = [block for block in readme_blocks() if block.language == "bash"]
    assert [words[0] for words in shell_commands(set_up.text)] == ["./scripts/demo.sh", "./scripts/test.sh"]
    assert shell_commands(activation.text) == [shlex.split(ACTIVATE)]


# ---- the blocks, run -------------------------------------------------------------------------------------

def small_settings(port: int) -> list[tuple[str, str]]:
    """README text -> what the test runs instead: tiny training and attack, a free port, scripts by full path."""
    return [
        ("--epochs 10 --out runs/teacher", "--epochs 1 --train-subset 2000 --out runs/teacher"),
        ("--out runs/attack", "--budget 500 --epochs 1 --strategies naive --out runs/attack"),
        ("--port 8000", f"--port {port}"), ("localhost:8000", f"localhost:{port}"), ("127.0.0.1:8000", f"127.0.0.1:{port}"),
        ("python scripts/", f"python {REPO}/scripts/"),
    ]


def same_shape(expected: Any, actual: Any, key: str = "") -> bool:
    """Equal, except that values the trained weights decide (logits, labels, class data) need only match in type
    and, for lists, in length."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and expected.keys() == actual.keys() and all(same_shape(v, actual[k], k) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(same_shape(e, a, key) for e, a in zip(expected, actual))
    if key in {"label", "class", "class_name", "logit", "data"} or isinstance(expected, float):
        return type(expected) is type(actual) or {type(expected), type(actual)} <= {int, float}
    return bool(expected == actual)


def parse_answer(line: str) -> tuple[Any, str]:
    """A JSON answer, and any text curl wrote after it (``-w " %{http_code}"``)."""
    document, end = json.JSONDecoder().raw_decode(line)
    return document, line[end:].strip()


@pytest.mark.slow
@pytest.mark.real_data
@needs_fashion_mnist
def test_the_readme_blocks_run_in_a_new_shell(tmp_path: Path) -> None:
    port = free_port()
    substitutions = small_settings(port)
    used: set[str] = set()

    def small(text: str) -> str:
        for old, new in substitutions:
            if old in text:
                used.add(old)
                text = text.replace(old, new)
        return text

    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": os.environ.get("HOME", str(tmp_path)),
           "LANG": "C.UTF-8", "PYTHONPATH": str(REPO)}
    prelude = f"set -euo pipefail\ncd {shlex.quote(str(REPO))}\n{ACTIVATE}\ncd {shlex.quote(str(tmp_path))}\n"

    def shell(script: str, **options: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", prelude + script], env=env, capture_output=True, text=True, timeout=600, **options)

    runnable = [block for block in readme_blocks() if runs_here(block)]
    assert sum("stingy-serve" in block.text for block in runnable) == 1, "one server block, which the console blocks query"
    server: subprocess.Popen[bytes] | None = None
    log = tmp_path / "server.log"
    try:
        for block in runnable:
            if block.language == "console":
                assert server is not None, "a console block of commands comes after the server block"
                check_console(block.text, small, shell)
            elif "stingy-serve" in block.text:
                with open(log, "wb") as sink:
                    server = subprocess.Popen(["bash", "-c", prelude + small(block.text)], env=env, stdout=sink,
                                              stderr=subprocess.STDOUT, start_new_session=True)
                wait_ready(server, f"http://127.0.0.1:{port}/readyz", log)
            else:
                done = shell(small(block.text))
                assert done.returncode == 0, f"{block.text}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(60)
    assert used == {old for old, _ in substitutions}, f"substitutions that no longer match the README: {set(dict(substitutions)) - used}"
    assert (tmp_path / "runs" / "attack" / "report.md").is_file()


def wait_ready(server: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 300.0) -> None:
    """Until ``url`` answers 200 (the block trains the teacher first, then serves it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server block exited with status {server.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the server was not ready within {timeout} s:\n{log.read_text()[-3000:]}")


def check_console(text: str, small: Callable[[str], str], shell: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """Run each ``$ command`` of a console block; its answer must match the one shown (see :func:`same_shape`)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if not line.startswith("$ "):
            continue
        done = shell(small(line[2:]))
        assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"
        expected, expected_tail = parse_answer(lines[index + 1])
        actual, actual_tail = parse_answer(done.stdout.strip())
        assert same_shape(expected, actual) and expected_tail == actual_tail, f"{line}\nREADME: {lines[index + 1]}\ngot:    {done.stdout}"
