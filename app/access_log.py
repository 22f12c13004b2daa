"""The JSON-lines access log: one line per request with its key id, images, status and latency.

It never holds inputs, outputs, query strings or secrets. ``destination`` is a file path (appended to),
``-`` for standard output, or empty for no log.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO


class AccessLog:
    """Appends one JSON document per line; safe to call from any thread."""

    def __init__(self, destination: str) -> None:
        self._owned = bool(destination) and destination != "-"
        self._stream: TextIO | None = (
            open(destination, "a", buffering=1, encoding="utf-8") if self._owned else (sys.stdout if destination == "-" else None)
        )
        self._lock = threading.Lock()

    def write(self, *, method: str, route: str, status: int, key: str | None, images: int, latency_s: float) -> None:
        if self._stream is None:
            return
        record: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z", "method": method, "route": route,
            "status": status, "key": key, "images": images, "latency_ms": round(latency_s * 1000.0, 3),
        }
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()

    def close(self) -> None:
        with self._lock:
            if self._owned and self._stream is not None:
                self._stream.close()
            self._stream = None
