"""State-store benchmark (not a test): what a request's budget and rate-limit bookkeeping costs in each store
(:mod:`app.state`), with 1, 2 and 4 server processes working on one key at once.

    python -m bench.state                          # 2 s per setting; writes runs/bench-state/state.{json,txt}
    python -m bench.state --seconds 5 --processes 1 4 --out docs/results/state

For each store (``sqlite``: a file in a temporary folder; ``redis``: a ``redis-server`` started here on
127.0.0.1 with ``appendfsync always``, as docs/serving.md asks) and each number of processes, every process
repeats one operation on the same key for ``--seconds``: ``reserve`` (count 1 image against a budget that is
never reached) or ``take`` (take a token from a bucket that never empties). Printed per setting: operations
per second (all processes together) and the latency of one operation, p50 and p99 in microseconds. The
processes share the machine with the store (and, on this 2-core machine, with whatever else runs).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

from app.launch import RedisServer, redis_server_available
from app.state import TokenBucket, open_state

OPERATIONS = ("reserve", "take")
BUCKET = TokenBucket("bench", rate=1e9, burst=1_000_000_000)  # never empties: every take succeeds


def _worker(url: str, sqlite_path: Path, operation: str, seconds: float, start: threading.Barrier) -> list[float]:
    """In a spawned process: repeat ``operation`` for ``seconds`` once every process is ready; the latencies (s)."""
    store = open_state(url, sqlite_path)
    call = (lambda: store.reserve("bench", 1, limit=10**15)) if operation == "reserve" else (lambda: store.take(BUCKET, "bench"))
    call()  # connect, create the rows
    start.wait(timeout=120)
    latencies = []
    deadline = time.perf_counter() + seconds
    while (began := time.perf_counter()) < deadline:
        call()
        latencies.append(time.perf_counter() - began)
    store.close()
    return latencies


def _percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def measure(url: str, sqlite_path: Path, operation: str, processes: int, seconds: float) -> dict[str, float]:
    """One setting: ``processes`` processes doing ``operation`` at once for ``seconds``."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(processes) as pool:
        start = manager.Barrier(processes)
        results = pool.starmap(_worker, [(url, sqlite_path, operation, seconds, start)] * processes)
    latencies = sorted(value for result in results for value in result)
    return {"ops_per_s": len(latencies) / seconds, "p50_us": _percentile(latencies, 0.5) * 1e6,
            "p99_us": _percentile(latencies, 0.99) * 1e6, "operations": len(latencies)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="how long each setting runs (default 2)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4], help="numbers of processes (default 1 2 4)")
    parser.add_argument("--stores", nargs="+", choices=["sqlite", "redis"], default=["sqlite", "redis"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-state"), help="folder for state.json and state.txt")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "redis" in args.stores and not redis_server_available():
        print("bench.state: redis-server is not installed (apt-get install redis-server), or pass --stores sqlite")
        return 2
    load_before = os.getloadavg()[0]
    rows = []
    lines = ["| store | operation | processes | operations/s | p50 us | p99 us |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-state-") as scratch:
        folder = Path(scratch)
        redis_server = RedisServer(folder) if "redis" in args.stores else None
        if redis_server is not None:
            redis_server.start()
        try:
            for store in args.stores:
                url = redis_server.url if store == "redis" and redis_server is not None else "sqlite"
                for operation in OPERATIONS:
                    for processes in args.processes:
                        result = measure(url, folder / f"{operation}-{processes}.sqlite3", operation, processes, args.seconds)
                        rows.append({"store": store, "operation": operation, "processes": processes, **result})
                        lines.append(f"| {store} | {operation} | {processes} | {result['ops_per_s']:.0f} | "
                                     f"{result['p50_us']:.0f} | {result['p99_us']:.0f} |")
                        print(lines[-1], flush=True)
        finally:
            if redis_server is not None:
                redis_server.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {"python": platform.python_version(), "machine": platform.machine(), "cpus": multiprocessing.cpu_count(),
               "seconds_per_setting": args.seconds, "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}}
    (args.out / "state.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    lines.append(f"\nload average (1 min) before {load_before:.1f}, after {os.getloadavg()[0]:.1f}, on {machine['cpus']} CPUs")
    (args.out / "state.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
