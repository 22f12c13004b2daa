"""The benchmark's runs in local worker processes (``stingy-bench run --jobs N``): up to ``N`` runs at once,
a run that needs a teacher of this benchmark started only once that teacher's row is in, each finished row
handed back to the parent (the one writer of ``results.jsonl``) as it arrives.

Workers are started with ``spawn`` (never ``fork``: CUDA cannot be used in a child forked after the parent
touched it), so several workers may share one GPU, each with its own CUDA context. Each worker loads the
dataset once and keeps the teachers it loaded for its later runs, like the one-after-another executor. It
uses ``cpus // N`` torch threads (at least 1) unless ``OMP_NUM_THREADS`` is set, and draws no progress bars.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.devices import usable_cpus
from training.reproduction.plan import Run, needs
from training.reproduction.presets import Preset

if TYPE_CHECKING:
    from training.reproduction.runner import BenchmarkRunner

_runner: BenchmarkRunner | None = None  # the worker process's runner, set by _start_worker


def threads_per_job(jobs: int) -> int | None:
    """Torch CPU threads for each of ``jobs`` workers: a fair share of the CPUs this process may use (at least
    1), or None (torch's own choice) when the user set ``OMP_NUM_THREADS``."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, usable_cpus() // jobs)


def _start_worker(preset: Preset, out: Path, data_root: str | None, download: bool, threads: int | None) -> None:
    global _runner
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    import torch

    from training.reproduction.runner import BenchmarkRunner

    os.environ["STINGY_PROGRESS"] = "0"  # N interleaved progress bars are noise; the parent prints one line per run
    if threads is not None:
        torch.set_num_threads(threads)
    _runner = BenchmarkRunner(preset, out, data_root, download)


def _execute(run: Run) -> dict[str, Any]:
    assert _runner is not None, "_start_worker runs first in every worker"
    return _runner.execute(run)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def run_in_pool(
    preset: Preset, out: Path, todo: Sequence[Run], data_root: str | None, download: bool, *, jobs: int,
    on_row: Callable[[dict[str, Any]], None],
) -> dict[str, str]:
    """Run every run of ``todo`` (in plan order, so a teacher precedes what needs it) in ``jobs`` worker
    processes; call ``on_row`` with each finished row as it finishes. Returns the failed runs' keys with a
    one-line error (a run whose teacher failed fails too; when a worker process dies, e.g. killed for memory,
    the runs in flight fail and a new pool takes the rest); the finished ones have all been handed to ``on_row``."""
    threads = threads_per_job(jobs)
    print(f"--jobs {jobs}: {jobs} worker processes, "
          + (f"{threads} torch thread(s) each" if threads else "torch threads from OMP_NUM_THREADS"), flush=True)
    pending = list(todo)
    waiting_on = {run.key for run in todo}  # keys whose row has not come back yet
    failures: dict[str, str] = {}

    def start() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                                   initargs=(preset, out.resolve(), data_root, download, threads))

    pool = start()
    running: dict[Future[dict[str, Any]], Run] = {}
    try:
        while pending or running:
            for run in list(pending):
                teacher = needs(run)
                if teacher in failures:
                    failures[run.key] = f"its teacher {teacher} failed"
                    pending.remove(run)
                elif len(running) < jobs and teacher not in waiting_on:
                    running[pool.submit(_execute, run)] = run
                    pending.remove(run)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                run = running.pop(future)
                waiting_on.discard(run.key)
                try:
                    row = future.result()
                except BrokenProcessPool:  # every run in flight of this pool is lost with it
                    for lost in [run, *running.values()]:
                        failures[lost.key] = "its worker process died (killed, e.g. out of memory?)"
                        waiting_on.discard(lost.key)
                        print(f"failed: {lost.key}: {failures[lost.key]}", flush=True)
                    running.clear()
                    pool.shutdown(wait=False)
                    pool = start()
                    break
                except Exception as error:  # a failed run is reported; the others go on
                    failures[run.key] = _one_line(error)
                    print(f"failed: {run.key}: {failures[run.key]}", flush=True)
                else:
                    on_row(row)
    except BaseException:  # Ctrl-C or a failure to record a row: stop the runs in flight now
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return failures


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate ``pool``'s worker processes (their runs resume from their last epoch next time)."""
    for process in list(pool._processes.values()):  # CPython's worker table (3.14 adds terminate_workers())
        process.terminate()
