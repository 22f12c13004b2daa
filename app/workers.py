"""``stingy-serve --workers N``: N server processes on one port of one machine, under uvicorn's supervisor.

The parent binds the port and starts N workers (uvicorn's ``Multiprocess``: spawned processes sharing the
listening socket; the kernel hands each new connection to one of them, and a worker that dies is replaced).
Each worker builds its own app from the parent's settings: its own model copy (on the CPU, or its own CUDA
context on a shared GPU), batcher and metrics; budgets and rate limits are in the shared state store
(:mod:`app.state`), so they stay exact across workers. On the CPU each worker gets (cores the process may use) // N
torch threads (:meth:`app.settings.ServeSettings.cpu_threads`), so that N workers do not fight over the cores.

Metrics are summed over the workers with prometheus_client's multiprocess mode: before spawning, the parent
creates a fresh private directory (never one left by an earlier run) and puts it in ``PROMETHEUS_MULTIPROC_DIR``,
which the workers inherit; each worker writes its metrics to files there, and ``/metrics``, whichever worker
answers it, reads them all. The supervisor removes the queue-depth file of a worker that has ended (dead,
replaced on SIGHUP, or retired on SIGTTOU) within half a second (``mark_process_dead``), and the parent
removes the directory when it ends (not when it is killed with SIGKILL: the directory is then left behind in
the temporary folder, and never reused).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from socket import socket
from typing import Any

import uvicorn
from prometheus_client.multiprocess import mark_process_dead
from uvicorn.supervisors import Multiprocess

SETTINGS_ENV = "STINGY_SERVE_WORKER_ARGS"  # the parent's parsed command line, for the workers it spawns
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's switch to its multiprocess mode


def share_with_workers(arguments: dict[str, Any]) -> None:
    """Put the parent's parsed command-line ``arguments`` where the workers it spawns read them (with the
    rest of its environment, which they inherit: ``STINGY_*`` settings and API keys)."""
    os.environ[SETTINGS_ENV] = json.dumps(arguments, default=str)


def arguments_from_parent() -> dict[str, Any]:
    """In a worker: the arguments :func:`share_with_workers` put there."""
    return dict(json.loads(os.environ[SETTINGS_ENV]))


def metrics_dir_from_parent() -> str:
    """In a worker: the directory where the workers' metrics are summed (see :func:`shared_metrics_dir`)."""
    return os.environ[METRICS_DIR_ENV]


@contextmanager
def shared_metrics_dir() -> Iterator[str]:
    """A fresh private directory (mode 0700) for the workers' metrics, in this process's environment for the
    workers it spawns meanwhile (replacing any inherited value); removed, with its files, on leaving."""
    directory = tempfile.mkdtemp(prefix="stingy-metrics-")
    os.environ[METRICS_DIR_ENV] = directory
    try:
        yield directory
    finally:
        del os.environ[METRICS_DIR_ENV]
        shutil.rmtree(directory, ignore_errors=True)


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, remembering the signal (SIGTERM, SIGINT) that stopped it, and marking each
    worker that has ended as dead in ``metrics_dir`` (its live gauges leave the sums)."""

    stopped_by: signal.Signals | None = None

    def __init__(self, config: uvicorn.Config, sockets: list[socket], metrics_dir: str) -> None:
        super().__init__(config, sockets)
        self.metrics_dir = metrics_dir
        self._workers: set[int] = set()

    def keep_subprocess_alive(self) -> None:
        """uvicorn's check (every half second, after the signals: a dead worker is replaced), then forget the
        workers no longer among the supervised ones."""
        super().keep_subprocess_alive()
        workers = {process.pid for process in self.processes if process.pid is not None}
        for pid in self._workers - workers:
            mark_process_dead(pid, self.metrics_dir)
        self._workers = workers

    def handle_term(self) -> None:
        self.stopped_by = signal.SIGTERM
        super().handle_term()

    def handle_int(self) -> None:
        self.stopped_by = signal.SIGINT
        super().handle_int()


def run_workers(config: uvicorn.Config) -> bool:
    """Run ``config.workers`` workers until a signal stops them (then this process ends by that signal, after
    every worker has finished its requests in flight, as a single server does), or until a worker fails to
    start (returns False). ``/metrics`` sums the workers' metrics in a directory of their own (see above)."""
    with shared_metrics_dir() as metrics_dir:
        supervisor = Supervisor(config, [config.bind_socket()], metrics_dir)
        supervisor.run()
    if supervisor.stopped_by is None:
        return False
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.raise_signal(supervisor.stopped_by)
    return True
