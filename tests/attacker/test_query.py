"""Querying a transfer set into the store: planning, resume, budget exhaustion, 413 and failures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from attacker.errors import ServerUnavailable
from attacker.query import QuerySettings, TargetMismatch, plan_transfer_set, run_query
from attacker.store import ResponseStore
from tests.attacker.conftest import FAST_RETRY
from tests.attacker.fake_server import image_key
from training.data import load_dataset

Factory = Callable[..., Any]


def settings(**options: Any) -> QuerySettings:
    defaults: dict[str, Any] = {"url": "http://fake", "dataset": "synthetic", "batch_size": 8, "concurrency": 2, "retry": FAST_RETRY}
    return QuerySettings(**{**defaults, **options})


def keys_of(positions: list[int]) -> list[str]:
    train = load_dataset("synthetic", "train")
    return [image_key(train.images[p]) for p in positions]


def test_plan_is_seeded_and_a_larger_budget_extends_a_smaller_one() -> None:
    assert plan_transfer_set(10, None, 0).tolist() == list(range(10))
    assert plan_transfer_set(10, 50, 0).tolist() == list(range(10))
    small, large = plan_transfer_set(1000, 100, 3), plan_transfer_set(1000, 300, 3)
    assert len(small) == 100 and len(set(small.tolist())) == 100 and small.tolist() == sorted(small.tolist())
    assert set(small.tolist()) <= set(large.tolist())
    assert plan_transfer_set(1000, 100, 3).tolist() == small.tolist() != plan_transfer_set(1000, 100, 4).tolist()


def test_query_stores_every_planned_image_and_a_rerun_resumes_without_requerying(fake_server: Factory, tmp_path: Path) -> None:
    transport, knobs = fake_server()
    first = run_query(settings(budget=40), tmp_path, transport)
    assert first.complete and (first.planned, first.stored, first.new) == (40, 40, 40)
    store = ResponseStore(tmp_path)
    assert len(store.responses()) == 40 and store.responses().max_classes() == 2
    manifest = store.manifest()
    assert manifest["identity"]["released_per_image"] == 2 and manifest["identity"]["url"] == "http://fake"
    assert manifest["max_classes_seen"] == 2 and manifest["answered"]["count"] == 40
    assert manifest["server"]["protocol"] == "v2" and manifest["plan"]["count"] == 40

    again = run_query(settings(budget=40), tmp_path, transport)
    assert again.complete and again.new == 0
    more = run_query(settings(budget=100), tmp_path, transport)
    assert more.complete and (more.stored, more.new) == (100, 60)
    positions = ResponseStore(tmp_path).responses().positions.tolist()
    assert positions == plan_transfer_set(2000, 100, 0).tolist()
    assert all(knobs.counts[key] == 1 for key in keys_of(positions)) and sum(knobs.counts.values()) == 100
    assert [s["new"] for s in ResponseStore(tmp_path).manifest()["sessions"]] == [40, 0, 60]


def test_an_exhausted_budget_stops_cleanly_and_keeps_everything_it_got(fake_server: Factory, tmp_path: Path) -> None:
    transport, knobs = fake_server(budget=30)
    outcome = run_query(settings(budget=64), tmp_path, transport)
    assert outcome.status == "budget_exhausted" and not outcome.complete
    assert outcome.stored == 30 and knobs.budget == 0  # the last partial batch still spent the budget to the end
    assert len(ResponseStore(tmp_path).responses()) == 30
    assert ResponseStore(tmp_path).manifest()["sessions"][-1]["status"] == "budget_exhausted"
    assert "budget is exhausted" in outcome.message(tmp_path) and "30/64" in outcome.message(tmp_path)

    knobs.budget = 100  # the owner tops the key up: the rerun queries only what is missing
    resumed = run_query(settings(budget=64), tmp_path, transport)
    assert resumed.complete and resumed.new == 34 and knobs.budget == 66


def test_budget_exhaustion_without_a_remaining_header_bisects_the_refused_batch(fake_server: Factory, tmp_path: Path) -> None:
    transport, knobs = fake_server(budget=13)  # the very first batch (32) is refused: no remaining count known yet
    outcome = run_query(settings(budget=64, batch_size=32, concurrency=1), tmp_path, transport)
    assert outcome.status == "budget_exhausted" and outcome.stored == 13 and knobs.budget == 0
    assert knobs.requests <= 8  # halving, not one image at a time


def test_payload_too_large_halves_the_batch(fake_server: Factory, tmp_path: Path) -> None:
    transport, knobs = fake_server(max_batch=5)
    outcome = run_query(settings(budget=50, batch_size=16), tmp_path, transport)
    assert outcome.complete and outcome.stored == 50
    assert sum(knobs.counts.values()) == 50


def test_v1_store_equals_v2_store(fake_server: Factory, tmp_path: Path) -> None:
    transport, _ = fake_server()
    run_query(settings(budget=24, protocol="v1"), tmp_path / "v1", transport)
    run_query(settings(budget=24, protocol="v2"), tmp_path / "v2", transport)
    v1, v2 = ResponseStore(tmp_path / "v1").responses(), ResponseStore(tmp_path / "v2").responses()
    assert v1.digest() == v2.digest()


def test_server_failure_keeps_what_arrived_and_records_the_session(fake_server: Factory, tmp_path: Path) -> None:
    transport, knobs = fake_server()
    run_query(settings(budget=16), tmp_path, transport)
    knobs.fail_first = 10**6
    with pytest.raises(ServerUnavailable):
        run_query(settings(budget=64), tmp_path, transport)
    store = ResponseStore(tmp_path)
    assert len(store.responses()) == 16
    assert store.manifest()["sessions"][-1]["status"].startswith("failed: ")


def test_transient_5xx_mid_run_is_absorbed(fake_server: Factory, tmp_path: Path) -> None:
    transport, knobs = fake_server()
    knobs.fail_first = 2
    outcome = run_query(settings(budget=32), tmp_path, transport)
    assert outcome.complete and outcome.retries == 2 and outcome.stored == 32


def test_a_model_for_other_images_is_refused_before_querying(fake_server: Factory, tmp_path: Path) -> None:
    transport, knobs = fake_server()
    with pytest.raises(TargetMismatch, match=r"\[1, 28, 28\]"):
        run_query(settings(dataset_options={"image_size": 32}), tmp_path, transport)
    assert knobs.requests == 0 and not (tmp_path / "manifest.json").exists()


def test_the_manifest_is_valid_json_with_compact_ranges(fake_server: Factory, tmp_path: Path) -> None:
    transport, _ = fake_server()
    run_query(settings(budget=2000, batch_size=250, concurrency=4), tmp_path, transport)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["plan"]["positions"] == [[0, 2000]] and manifest["answered"]["positions"] == [[0, 2000]]
    assert torch.equal(ResponseStore(tmp_path).responses().positions, torch.arange(2000))
