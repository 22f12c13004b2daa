"""Crash-safe file writing: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_current_umask()  # what open() would give a new file (mkstemp makes it 0600)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over ``path`` with the
    permissions a newly created file gets."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
        _fsync_directory(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, document: Any) -> None:
    atomic_write_text(path, json.dumps(document, indent=2, sort_keys=True) + "\n")


def append_json_line(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON document as a line and fsync it (a crash loses at most this line, never earlier ones).

    A torn last line left by an earlier crash is cut off first, so it cannot swallow this record.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    cut_torn_tail(target)
    with open(target, "a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def cut_torn_tail(path: Path) -> None:
    """Cut an unfinished last line (a crash in the middle of an append) off the JSON-lines file ``path``."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        handle.truncate(handle.read().rfind(b"\n") + 1)
        handle.flush()
        os.fsync(handle.fileno())


def read_json_lines(path: str | Path) -> list[dict[str, Any]]:
    """Every complete JSON line of ``path`` ([] when absent); a torn last line from a crash is ignored."""
    target = Path(path)
    if not target.is_file():
        return []
    records = []
    for line in target.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _fsync_directory(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
