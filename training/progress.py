"""Whether the commands draw progress bars: on, unless ``STINGY_PROGRESS=0`` (tests, CI logs, scripts), and
never on the ranks other than 0 of a ``torchrun`` launch."""

from __future__ import annotations

import os


def progress_enabled() -> bool:
    """Progress bars unless the environment variable ``STINGY_PROGRESS`` is ``0`` or ``RANK`` is not ``0``."""
    return os.environ.get("STINGY_PROGRESS", "1") != "0" and os.environ.get("RANK", "0") == "0"
