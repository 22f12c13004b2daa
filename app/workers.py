"""``stingy-serve --workers N``: N server processes on one port of one machine, under uvicorn's supervisor.

The parent binds the port and starts N workers (uvicorn's ``Multiprocess``: spawned processes sharing the
listening socket; the kernel hands each new connection to one of them, and a worker that dies is replaced).
Each worker builds its own app from the parent's settings: its own model copy (on the CPU, or its own CUDA
context on a shared GPU), batcher and metrics; budgets and rate limits are in the shared state store
(:mod:`app.state`), so they stay exact across workers. On the CPU each worker gets ``cpu_count // N`` torch
threads (unless ``--torch-threads`` is given), so that N workers do not fight over the cores.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import torch
import uvicorn
from uvicorn.supervisors import Multiprocess

SETTINGS_ENV = "STINGY_SERVE_WORKER_ARGS"  # the parent's parsed command line, for the workers it spawns


def share_with_workers(arguments: dict[str, Any]) -> None:
    """Put the parent's parsed command-line ``arguments`` where the workers it spawns read them (with the
    rest of its environment, which they inherit: ``STINGY_*`` settings and API keys)."""
    os.environ[SETTINGS_ENV] = json.dumps(arguments, default=str)


def arguments_from_parent() -> dict[str, Any]:
    """In a worker: the arguments :func:`share_with_workers` put there."""
    return dict(json.loads(os.environ[SETTINGS_ENV]))


def share_cpu(workers: int) -> None:
    """Give this worker its share of the CPU cores for torch's intra-op threads."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, remembering the signal (SIGTERM, SIGINT) that stopped it."""

    stopped_by: signal.Signals | None = None

    def handle_term(self) -> None:
        self.stopped_by = signal.SIGTERM
        super().handle_term()

    def handle_int(self) -> None:
        self.stopped_by = signal.SIGINT
        super().handle_int()


def run_workers(config: uvicorn.Config) -> bool:
    """Run ``config.workers`` workers until a signal stops them (then this process ends by that signal, after
    every worker has finished its requests in flight, as a single server does), or until a worker fails to
    start (returns False)."""
    supervisor = Supervisor(config, sockets=[config.bind_socket()])
    supervisor.run()
    if supervisor.stopped_by is None:
        return False
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.raise_signal(supervisor.stopped_by)
    return True
