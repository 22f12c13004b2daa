"""``stingy-attack`` as a user meets it: exit statuses, one-line errors, a real ``kill -9`` and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from attacker import cli
from attacker.query import plan_transfer_set, run_query
from attacker.store import ResponseStore
from tests.attacker.conftest import PYTHONPATH, REPO, free_port
from tests.attacker.fake_server import image_key
from training.data import load_dataset

Factory = Callable[..., Any]
TRAIN = ["--epochs", "1", "--train-batch-size", "32", "--device", "cpu", "--no-amp"]


def error_of(capsys: pytest.CaptureFixture[str], argv: list[str], status: int = 2) -> str:
    assert cli.main(argv) == status
    err = capsys.readouterr().err
    assert err.startswith("stingy-attack: ") and "Traceback" not in err and err.count("\n") == 1
    return err


def test_usage_mistakes_are_one_line_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = ["--out", str(tmp_path)]
    assert "unknown architecture" in error_of(capsys, ["distill", "--student", "vgg99", *out])
    assert "unknown strategy" in error_of(capsys, ["distill", "--student", "mlp", "--strategy", "magic", *out])
    assert "listed twice" in error_of(capsys, ["distill", "--student", "mlp", "--strategies", "naive", "naive:tau=20", *out])
    assert "run `stingy-attack query` first" in error_of(capsys, ["distill", "--student", "mlp", *out])
    assert "run `stingy-attack query` first" in error_of(capsys, ["report", *out])
    assert "run `stingy-attack query` first" in error_of(capsys, ["report", str(tmp_path)])  # as `stingy-bench report DIR`
    assert "name one folder" in error_of(capsys, ["report"])
    assert "ends in /v1: drop /v1 (give the base URL, e.g. http://127.0.0.1:1;" in error_of(
        capsys, ["query", "--url", "http://127.0.0.1:1/v1", "--dataset", "synthetic", *out])
    assert "must start with http" in error_of(capsys, ["query", "--url", "localhost:1", "--dataset", "synthetic", *out])
    assert "budget must be a positive" in error_of(capsys, ["query", "--url", "http://x", "--dataset", "synthetic", "--budget", "0", *out])
    # refused before the server is contacted (this URL would not answer)
    assert "unsupported device 'tpu'" in error_of(capsys, ["run", "--url", "http://127.0.0.1:1", "--dataset", "synthetic",
                                                           "--student", "mlp", "--device", "tpu", *out])


def test_an_unreachable_server_is_exit_4_at_once_and_names_no_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Nothing listens at the URL: one line at once (no retries with their backoff), and no folder is named,
    as none was created."""
    url = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "attack"
    began = time.monotonic()
    err = error_of(capsys, ["query", "--url", url, "--dataset", "synthetic", "--out", str(out)], status=4)
    assert f"server error: cannot connect to {url} (ConnectError" in err and "is the server running" in err
    assert "kept" not in err and not out.exists()
    assert time.monotonic() - began < 10


def test_strategies_listing(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["strategies"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("naive", "hard_label", "low_temperature", "smooth_fill"))


@pytest.mark.slow
def test_run_with_an_exhausted_budget_keeps_distils_and_reports_with_exit_3(
    fake_server: Factory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    transport, knobs = fake_server(budget=120)
    monkeypatch.setattr(cli, "run_query", lambda settings, out: run_query(settings, out, transport))
    argv = ["run", "--url", "http://fake", "--dataset", "synthetic", "--student", "mlp", "--budget", "300", "--batch-size", "50",
            "--strategies", "naive", "low_temperature", *TRAIN, "--out", str(tmp_path)]
    assert cli.main(argv) == 3
    printed = capsys.readouterr().out
    assert "budget is exhausted" in printed and "120/300" in printed and "leakage" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["queries"] == 120 and report["query_status"] == "budget_exhausted"
    assert [row["strategy"] for row in report["strategies"]] == ["naive", "low_temperature"]

    assert cli.main(["query", "--url", "http://fake", "--dataset", "synthetic", "--budget", "300", "--out", str(tmp_path)]) == 3
    assert "0 new" in capsys.readouterr().out and knobs.budget == 0


@pytest.mark.slow
def test_run_against_a_real_http_server(slow_fake_server: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["run", "--url", slow_fake_server, "--dataset", "synthetic", "--student", "mlp", "--budget", "200", "--batch-size", "50",
            "--strategy", "naive", "--strategy", "smooth_fill", *TRAIN, "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "done: 200/200" in printed and "queries/s" in printed and "report:" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    assert {row["strategy"] for row in report["strategies"]} == {"naive", "smooth_fill"}
    assert report["server"]["url"] == slow_fake_server and report["server"]["policy"] == {"name": "stingy", "k": 2}

    other = slow_fake_server.replace("127.0.0.1", "localhost")  # the same machine, but not the same target to the store
    err = error_of(capsys, ["query", "--url", other, "--dataset", "synthetic", "--out", str(tmp_path)])
    assert "another target" in err and "url" in err


def counts(url: str) -> dict[str, int]:
    return httpx.get(f"{url}/_fake/counts", timeout=10).json()["counts"]


def complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


@pytest.mark.slow
def test_kill_9_mid_run_loses_only_batches_in_flight_and_the_rerun_requeries_nothing_stored(slow_fake_server: str, tmp_path: Path) -> None:
    budget, batch, concurrency = 600, 8, 2
    argv = [sys.executable, "-m", "attacker.cli", "query", "--url", slow_fake_server, "--dataset", "synthetic", "--out", str(tmp_path),
            "--budget", str(budget), "--batch-size", str(batch), "--concurrency", str(concurrency), "--seed", "7"]
    env = {**os.environ, "STINGY_PROGRESS": "0", "PYTHONPATH": PYTHONPATH}
    start = counts(slow_fake_server)
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    responses = tmp_path / "responses.jsonl"
    deadline = time.monotonic() + 60
    while complete_lines(responses) < 10:
        assert process.poll() is None, f"the query ended before it could be killed: {process.communicate()}"
        assert time.monotonic() < deadline, "no responses stored within 60 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL

    before = ResponseStore(tmp_path).responses()
    stored = before.positions.tolist()
    assert 10 * batch <= len(stored) < budget
    counted = counts(slow_fake_server)
    rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    delta = {key: n - counted.get(key, 0) for key, n in counts(slow_fake_server).items()}

    train = load_dataset("synthetic", "train")
    plan = plan_transfer_set(len(train), budget, 7).tolist()
    assert all(delta.get(image_key(train.images[p]), 0) == 0 for p in stored)  # nothing stored was asked again
    after = ResponseStore(tmp_path).responses()
    assert after.positions.tolist() == plan and after.max_classes() == 2
    assert sum(delta.values()) == budget - len(stored)
    # the answers stored before the kill are intact
    kept = {p: row for p, row in zip(after.positions.tolist(), after.rows)}
    assert all(kept[p] == row for p, row in zip(stored, before.rows))
    # only the requests in flight at the kill were answered but not stored; the rerun asked for those once more
    answered_first = {key for key, n in counted.items() if n > start.get(key, 0)}
    stored_keys = {image_key(train.images[p]) for p in stored}
    lost = answered_first - stored_keys
    assert stored_keys <= answered_first and len(lost) <= concurrency * batch
    assert all(delta.get(key, 0) == 1 for key in lost)
