"""The response store: round trip, compact form, torn lines, identity checks, the writer lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attacker.store import ResponseStore, StoreError, StoreMismatch, from_ranges, to_ranges
from attacker.wire import TopN

IDENTITY = {"url": "http://s", "model": "m", "released_per_image": 2, "policy": {"name": "stingy", "k": 2},
            "dataset": "synthetic", "split": "train", "dataset_size": 100, "num_classes": 10}


def store_with(folder: Path, batches: list[tuple[list[int], list[TopN]]]) -> ResponseStore:
    store = ResponseStore(folder)
    store.open(IDENTITY, {"dataset": {"name": "synthetic", "split": "train", "root": None, "options": {}}})
    for positions, rows in batches:
        store.append(positions, rows)
    return store


BATCH_A = ([7, 3], [TopN((1, 4), (3.5, 1.25)), TopN((0, 9), (2.0, -1.0))])
BATCH_B = ([5], [TopN((9, 2), (7.0, 6.5))])


def test_round_trip_in_position_order_with_exactly_the_released_pairs(tmp_path: Path) -> None:
    store = store_with(tmp_path, [BATCH_A, BATCH_B])
    responses = ResponseStore(tmp_path).responses()
    assert responses.positions.tolist() == [3, 5, 7]
    assert responses.rows == (BATCH_A[1][1], BATCH_B[1][0], BATCH_A[1][0])
    dense = responses.dense(10)
    assert dense.shape == (3, 10) and torch.isfinite(dense).sum(dim=1).tolist() == [2, 2, 2]
    assert dense[0, 0] == 2.0 and dense[0, 9] == -1.0 and dense[2, 1] == 3.5 and dense[2, 4] == 1.25
    assert responses.top1().tolist() == [0, 9, 1]
    assert store.pending(torch.tensor([9, 7, 5, 4, 3])).tolist() == [9, 4]
    # the digest depends on the data, not on the order the answers arrived in
    assert store_with(tmp_path / "other", [BATCH_B, BATCH_A]).responses().digest() == responses.digest()


def test_lines_hold_compact_pairs_not_dense_rows(tmp_path: Path) -> None:
    store_with(tmp_path, [BATCH_A])
    (line,) = (tmp_path / "responses.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["positions"] == [7, 3] and record["classes"] == [[1, 4], [0, 9]] and record["logits"] == [[3.5, 1.25], [2.0, -1.0]]


def test_a_torn_last_line_is_ignored_then_cut_before_the_next_append(tmp_path: Path) -> None:
    store_with(tmp_path, [BATCH_A])
    with open(tmp_path / "responses.jsonl", "a") as handle:
        handle.write('{"positions": [5], "classes": [[9, 2')  # a crash in the middle of a write
    assert ResponseStore(tmp_path).responses().positions.tolist() == [3, 7]
    store = store_with(tmp_path, [BATCH_B])  # the next append cuts the torn tail first
    assert store.responses().positions.tolist() == [3, 5, 7]
    assert all(json.loads(line) for line in (tmp_path / "responses.jsonl").read_text().splitlines())


def test_another_target_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    store_with(tmp_path, [BATCH_A])
    details = {"dataset": {}}
    ResponseStore(tmp_path).open(dict(IDENTITY), details)  # the same target: fine
    ResponseStore(tmp_path).open({**IDENTITY, "policy": None}, details)  # not disclosed this time: fine
    for key, value in (("url", "http://other"), ("released_per_image", 10), ("dataset", "fashion-mnist"), ("model", "n"),
                       ("policy", {"name": "normal"})):
        with pytest.raises(StoreMismatch, match=key):
            ResponseStore(tmp_path).open({**IDENTITY, key: value}, details)


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    first, second = ResponseStore(tmp_path), ResponseStore(tmp_path)
    with first.lock():
        with pytest.raises(StoreError, match="another stingy-attack process"):
            with second.lock():
                pass
    with second.lock():
        pass


def test_not_a_store_and_malformed_records(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="run `stingy-attack query` first"):
        ResponseStore(tmp_path).manifest()
    store_with(tmp_path, [BATCH_A])
    with open(tmp_path / "responses.jsonl", "a") as handle:
        handle.write('{"positions": [1, 2], "classes": [[1]], "logits": [[0.5]]}\n')
    with pytest.raises(StoreError, match="malformed record"):
        ResponseStore(tmp_path).responses()


@given(st.sets(st.integers(0, 500)))
def test_ranges_round_trip(positions: set[int]) -> None:
    ordered = sorted(positions)
    runs = to_ranges(ordered)
    assert from_ranges(runs) == ordered
    assert all(stop > start for start, stop in runs) and all(a[1] < b[0] for a, b in zip(runs, runs[1:]))
