"""End to end: a tiny teacher served by the real server (``stingy-serve``, a uvicorn process) with policy
``normal`` and ``stingy``, attacked over HTTP with a small budget by ``stingy-attack run``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from app.launch import running_server
from attacker import cli
from attacker.store import ResponseStore
from training.checkpoint import load_checkpoint
from training.data import load_dataset, normalize

pytestmark = pytest.mark.slow

K_STINGY = 2
ROW_FIELDS = {"strategy", "queries", "student_arch", "student_accuracy", "scratch_accuracy", "leakage"}
STRATEGIES = ["naive", "hard_label", "low_temperature", "smooth_fill"]
BUDGET = 200
EPOCHS = "8"  # enough for the scratch baseline to learn the synthetic task (training.baseline), so leakage is measured


def serve(checkpoint: Path, policy: str, *options: str) -> Iterator[str]:
    """Run ``stingy-serve`` on a free port until the generator is closed; yields its URL once ready."""
    args = ["--checkpoint", str(checkpoint), "--policy", policy, "--access-log", "", *options]
    args += ["--k", str(K_STINGY)] if policy == "stingy" else ["--allow-disclosing-policy"]
    with running_server(args) as server:
        yield server.url


@pytest.fixture(scope="module", params=["normal", "stingy"])
def served(request: pytest.FixtureRequest, tiny_teacher: Path) -> Iterator[tuple[str, str]]:
    """``(url, policy)`` of the real server serving the tiny teacher."""
    for url in serve(tiny_teacher, request.param):
        yield url, request.param


@pytest.fixture
def guarded(tiny_teacher: Path, tmp_path: Path) -> Iterator[str]:
    """The real stingy server with an API key, a budget of 120 images per key and 5 requests/s per key."""
    keys = tmp_path / "keys.txt"
    keys.write_text("red-team:s3cret\n")
    yield from serve(tiny_teacher, "stingy", "--api-keys-file", str(keys), "--budget-images", "120",
                     "--budget-db", str(tmp_path / "budget.sqlite3"), "--rate-limit", "5", "--rate-burst", "2")


def test_attack_the_real_server(served: tuple[str, str], tiny_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, policy = served
    n = K_STINGY if policy == "stingy" else 10
    argv = ["run", "--url", url, "--dataset", "synthetic", "--student", "mlp", "--budget", str(BUDGET), "--batch-size", "50",
            "--epochs", EPOCHS, "--train-batch-size", "32", "--device", "cpu", "--no-amp", "--strategies", *STRATEGIES,
            "--out", str(tmp_path / "v2")]
    assert cli.main(argv) == 0, capsys.readouterr().err

    report = json.loads((tmp_path / "v2" / "report.json").read_text())
    assert report["queries"] == BUDGET and report["server"]["protocol"] == "v2"
    assert report["server"]["released_per_image"] == n and report["server"]["max_classes_seen"] <= n
    assert [row["strategy"] for row in report["strategies"]] == STRATEGIES
    for row in report["strategies"]:
        assert set(row) >= ROW_FIELDS and row["queries"] == BUDGET and row["student_arch"] == "mlp"
        if row["diverged"]:
            assert row["student_accuracy"] is None and row["leakage"] is None
        else:
            assert row["leakage"] == pytest.approx(row["student_accuracy"] - row["scratch_accuracy"], abs=1e-3)
    assert (tmp_path / "v2" / "report.md").is_file() and (tmp_path / "v2" / "report.png").is_file()

    responses = ResponseStore(tmp_path / "v2").responses()
    assert len(responses) == BUDGET
    assert all(len(row.classes) <= n for row in responses.rows)  # nothing beyond the top-N ever reached the attacker
    if policy == "stingy":
        assert all(len(row.classes) == K_STINGY for row in responses.rows)
    # what came over the wire is the teacher's own ranking
    model, card = load_checkpoint(tiny_teacher)
    images = load_dataset("synthetic", "train").images[responses.positions]
    with torch.inference_mode():
        teacher = model(normalize(images, card.mean, card.std))
    assert torch.equal(responses.top1(), teacher.argmax(dim=1))
    order = teacher.argsort(dim=1, descending=True, stable=True)[:, :n]
    assert [row.classes for row in responses.rows] == [tuple(r) for r in order.tolist()]

    # v1 releases the same pairs for the same images
    v1 = ["query", "--url", url, "--dataset", "synthetic", "--budget", str(BUDGET), "--protocol", "v1", "--out", str(tmp_path / "v1")]
    assert cli.main(v1) == 0
    v1_rows = ResponseStore(tmp_path / "v1").responses()
    assert torch.equal(v1_rows.positions, responses.positions)
    for a, b in zip(v1_rows.rows, responses.rows):
        assert a.classes == b.classes and a.logits == pytest.approx(b.logits, rel=1e-5, abs=1e-5)


def test_the_real_servers_key_budget_and_rate_limit(guarded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    query = ["query", "--url", guarded, "--dataset", "synthetic", "--budget", "300", "--batch-size", "16", "--out", str(tmp_path)]
    assert cli.main([*query, "--api-key", "wrong"]) == 2
    assert "HTTP 401" in capsys.readouterr().err
    assert cli.main([*query, "--api-key", "s3cret"]) == 3  # stopped by the server's budget, everything kept
    printed = capsys.readouterr().out
    assert "budget is exhausted" in printed and "120/300" in printed
    responses = ResponseStore(tmp_path).responses()
    assert len(responses) == 120 and all(len(row.classes) == K_STINGY for row in responses.rows)
    sessions = ResponseStore(tmp_path).manifest()["sessions"]
    assert sessions[-1]["status"] == "budget_exhausted" and sessions[-1]["rate_limited"] > 0  # 429s were waited out
