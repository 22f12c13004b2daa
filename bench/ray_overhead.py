"""Ray executor overhead on this machine (not a test): the smoke preset by the local executor and on a
local Ray instance.

    python -m bench.ray_overhead --out docs/results/distributed/ray_smoke.json

Records ``ray.init`` time (start-up of a local instance), the smoke preset's wall time with the local
executor, on Ray with 1 CPU (tasks one at a time, like the local executor: the difference divided by the
number of cells is the per-cell overhead: a worker process, dataset loading and teacher loading per task),
and on Ray with 2 CPUs; plus ``uptime`` before and after (the machine is shared). The local executor runs
with one torch thread, like a Ray task (Ray sets ``OMP_NUM_THREADS=1``), so the difference is Ray's alone.
Each figure is the best of ``--repeats`` runs (all of them recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch

from training.reproduction.plan import plan
from training.reproduction.presets import PRESETS
from training.reproduction.runner import run_benchmark


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _smoke(out: Path, executor: str) -> float:
    began = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        run_benchmark(PRESETS["smoke"], out, executor=executor)
    return round(time.perf_counter() - began, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cells = len(plan(PRESETS["smoke"]))
    record: dict[str, Any] = {"uptime_before": _uptime(), "cells": cells}
    runs: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            runs.setdefault("local_wall_seconds", []).append(_smoke(Path(tmp) / "local", "local"))
            for cpus in (1, 2):
                began = time.perf_counter()
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
                runs.setdefault(f"ray_{cpus}cpu_init_seconds", []).append(round(time.perf_counter() - began, 2))
                runs.setdefault(f"ray_{cpus}cpu_wall_seconds", []).append(_smoke(Path(tmp) / f"ray{cpus}", "ray"))
                ray.shutdown()
    record["all_runs"] = runs
    record.update({name: min(values) for name, values in runs.items()})
    record["ray_1cpu_overhead_per_cell_seconds"] = round((record["ray_1cpu_wall_seconds"] - record["local_wall_seconds"]) / cells, 3)
    record["uptime_after"] = _uptime()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
