"""``stingy-attack``: measure how much a model endpoint leaks to a black-box distillation attacker.

    stingy-attack run --url http://127.0.0.1:8000 --dataset fashion-mnist --student lenet5 --out runs/attack
    stingy-attack query --url URL --dataset NAME --out DIR [--api-key K] [--budget N]
    stingy-attack distill --out DIR --student ARCH [--strategies naive low_temperature:tau=2 ...]
    stingy-attack report DIR               (or: stingy-attack report --out DIR)
    stingy-attack compare DIR_NORMAL DIR_STINGY [--markdown FILE]
    stingy-attack strategies

Exit status: 0 done; 2 a usage mistake (bad option, missing data, wrong API key, a folder that holds
another target's responses); 3 the server's query budget ran out before the transfer set was complete
(everything answered is kept; ``run`` still distils and reports on it); 4 the server was unreachable or
answered nonsense after every retry (everything answered is kept; rerun to resume); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from attacker.distill import distill
from attacker.errors import AttackError, ProtocolError, ServerUnavailable
from attacker.query import QueryOutcome, QuerySettings, TargetMismatch, run_query
from attacker.report import ReportError, compare, write_report
from attacker.store import ResponseStore, StoreError
from attacker.strategies import DEFAULT_STRATEGIES, STRATEGIES, Strategy, make_strategy
from attacker.transport import RetryPolicy
from training.console import (
    EXIT_USAGE, ErrorExit, UsageError, add_folder_argument, add_optimizer_options, folder_argument, run_command, train_config,
)
from training.data import dataset_names
from training.engine import TrainConfig
from training.io import atomic_write_text
from training.models import list_models

EXIT_BUDGET, EXIT_SERVER = 3, 4
API_KEY_ENV = "STINGY_API_KEY"
# Student training defaults: sized for a full Fashion-MNIST transfer set (60,000 images) on a CPU.
STUDENT_DEFAULTS = TrainConfig(epochs=10, batch_size=128, lr=0.01, milestones=(0.5, 0.75), gamma=0.1, augment=False)


def add_server_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("--url", required=True, help="base URL of the server, e.g. http://127.0.0.1:8000")
    group.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                       help=f"API key, sent as 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})")
    group.add_argument("--protocol", choices=["auto", "v1", "v2"], default="auto",
                       help="auto (the default): v2 when the server has the model there, else v1")
    group.add_argument("--model", help="v2 model name (default: the name GET /v1/model gives)")
    group.add_argument("--batch-size", type=int, default=256, help="images per request; halved when the server answers 413 (default 256)")
    group.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    group.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one answer (default 60)")
    group.add_argument("--retries", type=int, default=5, help="retries of a request after a connection error or 5xx (default 5)")
    group.add_argument("--max-retry-after", type=float, default=300.0,
                       help="stop instead of waiting when a 429 asks to wait longer than this many seconds (default 300)")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("transfer set")
    group.add_argument("--dataset", required=True, choices=dataset_names(), help="the attacker's images")
    group.add_argument("--split", choices=["train", "test"], default="train",
                       help="split to query (default train; students are always tested on test)")
    group.add_argument("--data-root", help="folder holding the dataset (default: the dataset's usual place)")
    group.add_argument("--image-size", type=int, help="input size for imagefolder/synthetic datasets")
    group.add_argument("--budget", type=int, help="query a seeded random subset of this many images (default: the whole split)")


def add_student_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("students")
    group.add_argument("--student", required=True, help="student architecture (see `stingy-train models`)")
    group.add_argument("--strategies", "--strategy", dest="strategies", nargs="+", action="extend", metavar="S",
                       help=f"strategies, each NAME or NAME:KEY=VALUE,... (default: {', '.join(DEFAULT_STRATEGIES)})")
    add_optimizer_options(group, STUDENT_DEFAULTS, batch_flag="--train-batch-size")


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="attack folder: response store, students, report")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --budget subset and of student training (default 0)")


def query_settings(args: argparse.Namespace) -> QuerySettings:
    try:
        return QuerySettings(
            url=args.url, dataset=args.dataset, split=args.split, data_root=args.data_root,
            dataset_options={"image_size": args.image_size} if args.image_size else {}, budget=args.budget,
            seed=args.seed, batch_size=args.batch_size, concurrency=args.concurrency, api_key=args.api_key,
            protocol=args.protocol, model=args.model, timeout=args.timeout,
            retry=RetryPolicy(attempts=args.retries + 1, max_retry_after=args.max_retry_after),
        )
    except ValueError as error:
        raise UsageError(str(error)) from error


def student_plan(args: argparse.Namespace) -> tuple[list[Strategy], TrainConfig]:
    if args.student not in {entry.name for entry in list_models()}:
        raise UsageError(f"unknown architecture {args.student!r}; see `stingy-train models`")
    config = train_config(args, augment=False, seed=args.seed)
    try:
        strategies = [make_strategy(spec) for spec in (args.strategies or DEFAULT_STRATEGIES)]
    except ValueError as error:
        raise UsageError(str(error)) from error
    specs = [strategy.spec() for strategy in strategies]
    if len(set(specs)) != len(specs):
        raise UsageError(f"a strategy is listed twice: {' '.join(specs)}")
    return strategies, config


def do_query(args: argparse.Namespace) -> QueryOutcome:
    outcome = run_query(query_settings(args), args.out)
    print(outcome.message(args.out))
    return outcome


def do_distill_and_report(args: argparse.Namespace, strategies: list[Strategy], config: TrainConfig, data_root: str | None) -> None:
    distill(args.out, args.student, strategies, config, data_root)
    do_report(args)


def do_report(args: argparse.Namespace) -> dict[str, Any]:
    report = write_report(args.out)
    for row in report["strategies"]:
        if row["diverged"]:
            print(f"{row['strategy']}: DIVERGED at step {row['diverged_step']}")
        elif row["leakage"] is not None:
            print(f"{row['strategy']}: {row['student_accuracy']:.2f}% vs scratch {row['scratch_accuracy']:.2f}% "
                  f"-> leakage {row['leakage']:+.2f} pp")
        elif row["student_accuracy"] is not None:
            print(f"{row['strategy']}: {row['student_accuracy']:.2f}% vs scratch {row['scratch_accuracy']:.2f}%")
    if report["warning"] is not None:
        print(f"no leakage measured: {report['warning']}")
    print(f"report: {args.out / 'report.md'} ({args.out / 'report.json'}, {args.out / 'report.png'})")
    return report


def cmd_query(args: argparse.Namespace) -> int:
    return 0 if do_query(args).complete else EXIT_BUDGET


def cmd_run(args: argparse.Namespace) -> int:
    strategies, config = student_plan(args)
    outcome = do_query(args)
    if outcome.stored == 0:
        print("nothing was stored, so there is nothing to distil", file=sys.stderr)
        return EXIT_BUDGET
    do_distill_and_report(args, strategies, config, args.data_root)
    return 0 if outcome.complete else EXIT_BUDGET


def cmd_distill(args: argparse.Namespace) -> int:
    strategies, config = student_plan(args)
    do_distill_and_report(args, strategies, config, args.data_root)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    args.out = folder_argument(args)
    do_report(args)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    table = compare(args.folders)
    print(table, end="")
    if args.markdown is not None:
        atomic_write_text(args.markdown, table)
    return 0


def cmd_strategies(args: argparse.Namespace) -> int:
    for name, cls in STRATEGIES.items():
        print(f"{name:16s} {cls.summary}; parameters: {', '.join(cls().parameters())}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stingy-attack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="query, distil and report in one go")
    add_server_options(run)
    add_data_options(run)
    add_student_options(run)
    add_common_options(run)
    run.set_defaults(handler=cmd_run)

    query = commands.add_parser("query", help="query the server with the transfer set and store the answers (resumable)")
    add_server_options(query)
    add_data_options(query)
    add_common_options(query)
    query.set_defaults(handler=cmd_query)

    distill_parser = commands.add_parser("distill", help="train the scratch baseline and a student per strategy, then report")
    add_student_options(distill_parser)
    add_common_options(distill_parser)
    distill_parser.add_argument("--data-root", help="where the transfer dataset is now (default: as when queried)")
    distill_parser.set_defaults(handler=cmd_distill)

    report = commands.add_parser("report", help="write report.json, report.md and report.png from the trained students")
    add_folder_argument(report, "attack folder (the --out of run, query and distill)")
    report.set_defaults(handler=cmd_report)

    comparison = commands.add_parser("compare", help="attack folders side by side (e.g. a normal and a stingy server)")
    comparison.add_argument("folders", nargs="+", type=Path, help="attack folders with trained students")
    comparison.add_argument("--markdown", type=Path, help="also write the table to this file")
    comparison.set_defaults(handler=cmd_compare)

    commands.add_parser("strategies", help="list the distillation strategies").set_defaults(handler=cmd_strategies)
    return parser


def main(argv: list[str] | None = None) -> int:
    exits = (ErrorExit((ServerUnavailable, ProtocolError), EXIT_SERVER, "server error", resumable=True),
             ErrorExit((AttackError, StoreError, TargetMismatch, ReportError), EXIT_USAGE))
    return run_command(build_parser(), argv, exits=exits, resume_hint=_kept)


def _kept(args: argparse.Namespace) -> str:
    """What an interrupted or failed query leaves behind (commands that query a server only, and only once
    the folder holds a response store: a server that was never reached leaves nothing to resume)."""
    if not hasattr(args, "url") or not ResponseStore(args.out).exists():
        return ""
    return f"the responses received so far are kept in {args.out}, rerun to resume"


if __name__ == "__main__":
    sys.exit(main())
