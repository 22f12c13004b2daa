"""The benchmark's runs as Ray tasks (``stingy-bench run --executor ray``): one task per pending run, a run
that needs a teacher of this benchmark waiting for that teacher's task, each finished row handed back as
it arrives. Every task trains into the same ``OUT/runs/`` folders as the local executor (on several machines
``OUT`` must be shared storage), so a grid can be resumed by either executor.

Needs the optional extra: ``pip install '.[ray]'``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from training.reproduction.plan import Run, needs
from training.reproduction.presets import Preset
from training.reproduction.results import BenchmarkError


def _execute(preset: Preset, out: Path, run: Run, data_root: str | None, download: bool, *teachers: Any) -> dict[str, Any]:
    """One run in a Ray worker (``teachers``: the rows of the runs it needs, passed only to order the tasks)."""
    from training.reproduction.runner import BenchmarkRunner

    return BenchmarkRunner(preset, out, data_root, download).execute(run)


def run_on_ray(
    preset: Preset, out: Path, todo: Sequence[Run], data_root: str | None, download: bool, *, address: str | None,
    gpus_per_run: float, on_row: Callable[[dict[str, Any]], None],
) -> dict[str, str]:
    """Submit every run of ``todo`` (in plan order, so a teacher precedes what needs it) to the Ray cluster at
    ``address`` (None: the one this process already joined, else a new local one); call ``on_row`` with each
    finished row as it finishes. Returns the failed runs' keys with their error (a run whose teacher failed
    fails too); the finished ones have all been handed to ``on_row``."""
    try:
        import ray
    except ImportError as error:
        raise BenchmarkError("--executor ray needs Ray: pip install '.[ray]'") from error
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    task = ray.remote(num_cpus=1, num_gpus=gpus_per_run)(_execute)
    refs: dict[str, Any] = {}
    for run in todo:
        teacher = needs(run)
        waits = [refs[teacher]] if teacher in refs else []
        refs[run.key] = task.remote(preset, out.resolve(), run, data_root, download, *waits)
    keys = {ref: key for key, ref in refs.items()}
    failures: dict[str, str] = {}
    while keys:
        (ready,), _ = ray.wait(list(keys), num_returns=1)
        key = keys.pop(ready)
        try:
            on_row(ray.get(ready))
        except ray.exceptions.RayError as error:
            failures[key] = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return failures
