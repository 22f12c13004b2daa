"""Whether the commands draw progress bars: on, unless ``STINGY_PROGRESS=0`` (tests, CI logs, scripts)."""

from __future__ import annotations

import os


def progress_enabled() -> bool:
    """Progress bars unless the environment variable ``STINGY_PROGRESS`` is ``0``."""
    return os.environ.get("STINGY_PROGRESS", "1") != "0"
