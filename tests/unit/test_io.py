"""Crash-safe writes: atomic replacement and append-only JSON lines that survive a torn last line."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.io import append_json_line, atomic_path, atomic_write_json, read_json_lines


def test_torn_last_line_is_ignored_and_never_swallows_the_next_record(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    append_json_line(path, {"n": 1})
    with open(path, "a") as handle:
        handle.write('{"n": 2, "trunc')  # a crash in the middle of a write
    assert read_json_lines(path) == [{"n": 1}]
    append_json_line(path, {"n": 3})
    assert read_json_lines(path) == [{"n": 1}, {"n": 3}]


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    atomic_write_json(path, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert path.read_text().strip().startswith("{") and '"version": 1' in path.read_text()
    assert list(tmp_path.iterdir()) == [path], "no temporary file is left behind"


def test_missing_file_reads_as_empty(tmp_path: Path) -> None:
    assert read_json_lines(tmp_path / "absent.jsonl") == []


def test_atomic_files_get_the_usual_permissions(tmp_path: Path) -> None:
    import os

    atomic_write_json(tmp_path / "doc.json", {})
    (tmp_path / "plain.txt").write_text("")
    assert os.stat(tmp_path / "doc.json").st_mode & 0o777 == os.stat(tmp_path / "plain.txt").st_mode & 0o777
