"""The response store: everything a server released, kept in an attack folder, append-only and crash-safe.

``DIR/manifest.json`` (rewritten atomically)
    ``format``; ``server`` (url, protocol, model, version, policy, released_per_image as the server declared
    them); ``dataset`` (name, split, size, root, options); ``num_classes``; ``plan`` (budget, seed and the
    dataset positions to query, as ``[start, stop)`` ranges); ``answered`` (positions answered when the last
    query session ended, as ranges, and their count); ``max_classes_seen`` (the largest number of released
    classes for one image); ``sessions`` (one entry per query session: status, new responses, seconds).
``DIR/responses.jsonl`` (appended, one fsynced line per answered request)
    ``{"positions": [p, ...], "classes": [[c, ...], ...], "logits": [[z, ...], ...], "time": unix}``: for each
    dataset position the released classes and their logits, descending; masked classes are not stored.
    This file is the truth: a ``kill -9`` loses at most the requests in flight, and a torn last line
    is ignored on reading and cut off before the next append.
``DIR/.lock``
    held (``flock``) by the one process that appends; a second one is refused.

A folder holds the responses of one server, model, release count ``N``, policy and dataset split; opening it
for another is refused with :class:`StoreMismatch`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attacker.wire import TopN
from training.io import append_json_line, atomic_write_json, read_json_lines

FORMAT = "stingy-teacher/attack-store/1"
MANIFEST = "manifest.json"
RESPONSES = "responses.jsonl"
LOCK = ".lock"
IDENTITY_KEYS = ("url", "model", "released_per_image", "policy", "dataset", "split", "dataset_size", "num_classes")


class StoreError(Exception):
    """The folder cannot be used as a response store (locked, damaged, or not a store)."""


class StoreMismatch(StoreError):
    """The folder holds responses of another server, model, ``N``, policy or dataset."""


def to_ranges(positions: Sequence[int]) -> list[list[int]]:
    """Sorted unique positions as ``[start, stop)`` runs: ``[0, 1, 2, 5] -> [[0, 3], [5, 6]]``."""
    runs: list[list[int]] = []
    for position in positions:
        if runs and runs[-1][1] == position:
            runs[-1][1] += 1
        else:
            runs.append([position, position + 1])
    return runs


def from_ranges(runs: Sequence[Sequence[int]]) -> list[int]:
    """The inverse of :func:`to_ranges`."""
    return [position for start, stop in runs for position in range(start, stop)]


@dataclass(frozen=True)
class Responses:
    """The stored responses in position order: ``positions`` int64 ``[M]`` and one :class:`TopN` each."""

    positions: Tensor
    rows: tuple[TopN, ...]

    def __len__(self) -> int:
        return len(self.rows)

    def dense(self, num_classes: int) -> Tensor:
        """The released logits as the server's dense form ``[M, K]`` float32: the pairs, ``-inf`` elsewhere."""
        dense = torch.full((len(self.rows), num_classes), float("-inf"))
        row_ids = [i for i, row in enumerate(self.rows) for _ in row.classes]
        classes = [c for row in self.rows for c in row.classes]
        dense[row_ids, classes] = torch.tensor([v for row in self.rows for v in row.logits], dtype=torch.float32)
        return dense

    def top1(self) -> Tensor:
        """The released top-1 class of each response, int64 ``[M]``."""
        return torch.tensor([row.classes[0] for row in self.rows], dtype=torch.int64)

    def max_classes(self) -> int:
        return max((len(row.classes) for row in self.rows), default=0)

    def digest(self) -> str:
        """SHA-256 of the responses in position order: the same data gives the same digest."""
        document = [self.positions.tolist(), [row.classes for row in self.rows], [row.logits for row in self.rows]]
        return hashlib.sha256(json.dumps(document, separators=(",", ":")).encode()).hexdigest()


class ResponseStore:
    """The store in ``folder``. Read with :meth:`responses`; write with :meth:`open` then :meth:`append`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.manifest_path = self.folder / MANIFEST
        self.responses_path = self.folder / RESPONSES
        self._answered: set[int] | None = None

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        """The manifest; :class:`StoreError` when the folder is not a store."""
        if not self.exists():
            raise StoreError(f"{self.folder} holds no response store ({MANIFEST} missing); run `stingy-attack query` first")
        try:
            document = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise StoreError(f"{self.manifest_path} is not readable JSON ({error})") from error
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise StoreError(f"{self.manifest_path} is not a {FORMAT} manifest")
        return document

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's writer lock; :class:`StoreError` when another process holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / LOCK, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"another stingy-attack process is writing to {self.folder}") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def open(self, identity: dict[str, Any], details: dict[str, Any]) -> None:
        """Create the store for ``identity`` (see :data:`IDENTITY_KEYS`), or check that it is the one here.

        ``details`` (server metadata, dataset root and options, plan) are written to the manifest.
        """
        if self.exists():
            manifest = self.manifest()
            _check_identity(self.folder, manifest["identity"], identity)
            manifest.update(details)
        else:
            manifest = {"format": FORMAT, "identity": identity, "sessions": [], "max_classes_seen": 0, **details}
        atomic_write_json(self.manifest_path, manifest)

    def answered(self) -> set[int]:
        """The dataset positions with a stored response."""
        if self._answered is None:
            self._answered = set(self.responses().positions.tolist())
        return self._answered

    def pending(self, indices: Tensor) -> Tensor:
        """The positions of ``indices`` (order kept) that have no stored response yet."""
        answered = self.answered()
        return torch.tensor([i for i in indices.tolist() if i not in answered], dtype=torch.int64)

    def append(self, positions: Sequence[int], rows: Sequence[TopN]) -> None:
        """Durably store one answered request (one fsynced line)."""
        if len(positions) != len(rows):
            raise ValueError(f"{len(positions)} positions for {len(rows)} responses")
        append_json_line(self.responses_path, {
            "positions": [int(p) for p in positions], "classes": [list(row.classes) for row in rows],
            "logits": [list(row.logits) for row in rows], "time": round(time.time(), 3),
        })
        self.answered().update(int(p) for p in positions)

    def responses(self) -> Responses:
        """Every stored response, sorted by position (a position stored twice keeps its first answer)."""
        found: dict[int, TopN] = {}
        for record in read_json_lines(self.responses_path):
            for position, row in _rows_of(record, self.responses_path):
                found.setdefault(position, row)
        order = sorted(found)
        return Responses(torch.tensor(order, dtype=torch.int64), tuple(found[p] for p in order))

    def record_session(self, session: dict[str, Any]) -> None:
        """Note a finished query session and refresh the manifest's ``answered`` and ``max_classes_seen``."""
        manifest = self.manifest()
        responses = self.responses()
        positions = responses.positions.tolist()
        manifest["answered"] = {"count": len(positions), "positions": to_ranges(positions)}
        manifest["max_classes_seen"] = max(int(manifest.get("max_classes_seen", 0)), responses.max_classes())
        manifest["sessions"] = [*manifest.get("sessions", []), session]
        atomic_write_json(self.manifest_path, manifest)


def _check_identity(folder: Path, stored: dict[str, Any], wanted: dict[str, Any]) -> None:
    differences = [
        f"{key} {stored.get(key)!r} (asked: {wanted.get(key)!r})"
        for key in IDENTITY_KEYS
        if stored.get(key) is not None and wanted.get(key) is not None and stored.get(key) != wanted.get(key)
    ]
    if differences:
        raise StoreMismatch(
            f"{folder} holds responses for another target: {'; '.join(differences)}. Use another --out folder"
        )


def _rows_of(record: dict[str, Any], path: Path) -> Iterator[tuple[int, TopN]]:
    try:
        positions, classes, logits = record["positions"], record["classes"], record["logits"]
        if not len(positions) == len(classes) == len(logits):
            raise ValueError("positions, classes and logits differ in length")
        for position, row_classes, row_logits in zip(positions, classes, logits):
            if len(row_classes) != len(row_logits) or not row_classes:
                raise ValueError("a response has no pairs or unmatched classes and logits")
            yield int(position), TopN(tuple(int(c) for c in row_classes), tuple(float(v) for v in row_logits))
    except (KeyError, TypeError, ValueError) as error:
        raise StoreError(f"{path} holds a malformed record ({error})") from error
