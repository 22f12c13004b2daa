"""Exit 0 when a stingy-serve endpoint is ready (``GET /readyz`` answers 200), else 1.

    python3 ready.py                       this container's server: http://127.0.0.1:$STINGY_PORT/readyz
    python3 ready.py URL                   another server's base URL (``/readyz`` is appended)
    python3 ready.py URL --wait SECONDS    poll every 2 s until ready, for at most SECONDS

The image's HEALTHCHECK runs the first form; the attacker's entrypoint the last, so that it does not depend
on the engine honouring ``depends_on: condition: service_healthy``. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request

POLL_S = 2.0


def is_ready(base_url: str, timeout_s: float = 5.0) -> bool:
    """True when ``base_url + /readyz`` answers 200 within ``timeout_s``."""
    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/readyz", timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_ready(base_url: str, wait_s: float) -> bool:
    """Poll ``is_ready`` every ``POLL_S`` seconds until it is true or ``wait_s`` seconds have passed."""
    deadline = time.monotonic() + wait_s
    while not is_ready(base_url):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ready.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", nargs="?", default=f"http://127.0.0.1:{os.environ.get('STINGY_PORT', '8000')}")
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="keep polling this long (default: one try)")
    args = parser.parse_args(argv)
    if wait_ready(args.url, args.wait):
        return 0
    print(f"ready.py: {args.url} is not ready" + (f" after {args.wait:g} s" if args.wait else ""), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
