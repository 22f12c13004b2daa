"""``stingy-serve``: serve a teacher checkpoint behind the protected API.

    stingy-serve --checkpoint runs/teacher/teacher.safetensors --policy stingy --sparse-ratio 0.1 --port 8000

Every flag has an environment variable (``STINGY_`` + the flag in capitals, e.g. ``STINGY_MAX_BATCH_SIZE``);
a flag on the command line wins. API keys come only from ``STINGY_API_KEYS`` or ``--api-keys-file``, and the key
that reads ``/metrics`` only from ``STINGY_METRICS_KEY`` (never from a flag, which other users could read in the
process list). Without any key the server is open to whoever can connect: it says so with a WARNING, and
refuses a --host other machines can reach unless --allow-anonymous (STINGY_ALLOW_ANONYMOUS=1) is given.

Exit status: 2 for bad settings or a bad checkpoint (missing, a folder, damaged or tampered with: the weights
are verified before the server starts), or a policy that releases something of every class without
--allow-disclosing-policy; 3 when the server could not start (e.g. its port is in use); after SIGTERM
requests in flight complete, then the process ends by that signal (status 143), as uvicorn does.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from app.connections import ServerConfig
from app.errors import describe_validation_errors
from app.listen import ListenError, check_can_listen
from app.main import create_app
from app.settings import ServeSettings
from app.workers import arguments_from_parent, metrics_dir_from_parent, run_workers, share_with_workers
from training.checkpoint import load_checkpoint
from training.console import ErrorExit, UsageError, add_policy_options, policy_flags, run_command

POLICY_FLAGS = ("policy", "sparse_ratio", "k", "policy_param")
EXIT_NOT_STARTED = 3
# A worker that does not answer the supervisor's ping for this long is replaced. Loading torch holds the
# interpreter lock for seconds on a busy machine, which uvicorn's default of 5 s mistakes for a hung worker.
WORKER_HEALTHCHECK_S = 60


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stingy-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=None)
    model = parser.add_argument_group("model")
    model.add_argument("--checkpoint", type=Path, help="teacher checkpoint (.safetensors) [STINGY_CHECKPOINT]")
    model.add_argument("--model-name", help="name in URLs and responses (default: the checkpoint's file stem)")
    model.add_argument("--device", help="auto (CUDA when present, the default), cpu, cuda, cuda:1, ...")
    add_policy_options(parser, default=None)  # None: not given, the environment decides
    model.add_argument("--allow-disclosing-policy", action="store_const", const=True,
                       help="serve a policy that releases something of every class (normal, reverse, stingy_smooth, "
                            "rounding, gaussian_noise, reverse_sigmoid, or N = K); refused otherwise")
    model.add_argument("--show-model-details", action="store_const", const=True,
                       help="show the architecture and training dataset on /v1/model (hidden by default)")
    parser.epilog = ("Policy flags on the command line replace every policy setting of the environment "
                     "(--policy then defaults to stingy).")
    net = parser.add_argument_group("network")
    net.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 in containers)")
    net.add_argument("--port", type=int, help="port (default 8000)")
    net.add_argument("--workers", help="server processes sharing the port, each with its own model (default auto: one per "
                     "CPU core, the fastest on a CPU, docs/serving.md#performance; on a GPU host give a number: each "
                     "worker is a CUDA context); 1: one process")
    net.add_argument("--graceful-timeout-s", type=float, help="on SIGTERM, how long requests in flight may take (default 30)")
    net.add_argument("--keep-alive-timeout-s", type=float, help="close an idle keep-alive connection after this long (default 5)")
    net.add_argument("--header-timeout-s", type=float,
                     help="close a connection that has not sent a whole request head within this long (default 10)")
    net.add_argument("--max-header-bytes", type=int, help="close a connection whose request head grows past this (default 65536)")
    net.add_argument("--body-timeout-s", type=float, help="answer 408 to a request whose body takes longer (default 30)")
    net.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], help="(default info)")
    net.add_argument("--access-log", help="JSON-lines access log file; '-' for standard output (default), '' for none")
    batching = parser.add_argument_group("batching")
    batching.add_argument("--max-batch-size", type=int, help="most images in one forward pass (default 64)")
    batching.add_argument("--max-delay-ms", type=float, help="longest wait for requests to join a batch (default 2)")
    batching.add_argument("--no-batching", dest="batching", action="store_const", const=False,
                          help="one forward pass per request")
    batching.add_argument("--max-queue-wait-s", type=float,
                          help="most seconds of work waiting for forward passes, at their recent rate; a request past it "
                               "gets 503 at once (default 2)")
    batching.add_argument("--max-queue-images", type=int,
                          help="most images waiting for a forward pass; a request past it gets 503 at once (default: no limit "
                               "but --max-queue-wait-s)")
    batching.add_argument("--torch-threads", type=int,
                          help="torch CPU threads per process (default: 1 on a GPU; on the CPU each worker's share of "
                               "the cores, torch's one per core with --workers 1); see docs/serving.md#performance")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-body-bytes", type=int, help="largest request body (default 16 MiB)")
    limits.add_argument("--max-images-per-request", type=int, help="most images in one request (default 256)")
    limits.add_argument("--max-image-pixels", type=int, help="largest decoded PNG/JPEG in pixels (default 4096*4096)")
    security = parser.add_argument_group("security")
    security.add_argument("--api-keys-file", type=Path, help="one key per line, 'name:secret' or a bare secret")
    security.add_argument("--allow-anonymous", action="store_const", const=True,
                          help="serve without keys on a --host other machines can reach (anyone may then query the model)")
    security.add_argument("--budget-images", type=int, help="images each key may query in total (default unlimited)")
    security.add_argument("--budget-db", type=Path,
                          help="SQLite file of budget counts and rate-limit buckets (default stingy-budget.sqlite3)")
    security.add_argument("--state", help="where budgets and rate limits live: 'sqlite' (the --budget-db file, default) "
                                          "or redis://host:port/db, shared by every server")
    security.add_argument("--rate-limit", type=float, help="requests per second per key (default unlimited)")
    security.add_argument("--rate-burst", type=int, help="token-bucket size (default ceil(rate limit))")
    security.add_argument("--auth-failure-rate", type=float,
                          help="failed authentications per second per client address before 429 (default 1)")
    security.add_argument("--auth-failure-burst", type=int, help="failed authentications allowed at once (default 30)")
    parser.set_defaults(handler=serve)
    return parser


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """Settings from the environment, overridden by the flags given on the command line (the policy flags
    replace the environment's policy fields all together)."""
    given = {name: value for name, value in _given(args).items() if value not in (None, []) and name not in POLICY_FLAGS}
    try:
        return ServeSettings(**given, **policy_flags(args))
    except ValidationError as error:
        raise UsageError("invalid settings: " + describe_validation_errors(error.errors(include_input=False, include_url=False))) from None


def serve(args: argparse.Namespace) -> int:
    """Check the settings and the checkpoint, then run the server until it is stopped."""
    settings = settings_from_args(args)
    _, card = load_checkpoint(settings.checkpoint)  # every tensor verified now: a tampered file stops here, in one line
    try:
        settings.release_policy.released_count(card.num_classes)  # e.g. k larger than the number of classes
        settings.check_disclosure(card.num_classes)  # a policy that releases more than N < K logits per image
        app = create_app(settings)  # the API keys: unreadable file, empty secret, repeated name, none on an open host
    except (ValueError, OSError) as error:
        raise UsageError(str(error)) from error
    check_can_listen(settings.host, settings.port)
    configure_logging(settings)
    config: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_level": settings.log_level, "access_log": False,
        "lifespan": "on", "timeout_graceful_shutdown": settings.graceful_timeout_s,
        "timeout_keep_alive": settings.keep_alive_timeout_s, "header_timeout_s": settings.header_timeout_s,
        "max_header_bytes": settings.max_header_bytes,
    }
    if settings.workers > 1:
        share_with_workers(_given(args))
        started = run_workers(ServerConfig("app.cli:worker_app", factory=True, workers=settings.workers,
                                           timeout_worker_healthcheck=WORKER_HEALTHCHECK_S, **config))
        return 0 if started else EXIT_NOT_STARTED
    server = uvicorn.Server(ServerConfig(app, **config))
    server.run()
    return 0 if server.started else EXIT_NOT_STARTED


def worker_app() -> FastAPI:
    """The app of one ``--workers`` process (uvicorn calls it in each worker): the parent's settings, checked
    there already (the service takes this worker's share of the CPU, :meth:`ServeSettings.cpu_threads`), and
    ``/metrics`` summed over the workers."""
    settings = settings_from_args(argparse.Namespace(**arguments_from_parent()))
    configure_logging(settings)
    return create_app(settings, metrics_dir_from_parent())


def configure_logging(settings: ServeSettings) -> None:
    """The service's log lines on stderr at ``log_level`` (uvicorn configures its own loggers)."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed command line without the handler."""
    return {name: value for name, value in vars(args).items() if name != "handler"}


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, exits=[ErrorExit((ListenError,), EXIT_NOT_STARTED)], resume_hint="")


if __name__ == "__main__":
    sys.exit(main())
