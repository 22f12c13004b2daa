"""``stingy-bench``: run the paper's experiments and render their tables and figures.

    stingy-bench presets
    stingy-bench run --preset fmnist-cpu --out runs/bench/fmnist-cpu
    stingy-bench run --preset paper-cifar100 --out /shared/bench --executor ray --address auto --gpus-per-run 1
    stingy-bench report runs/bench/fmnist-cpu       (or: stingy-bench report --out runs/bench/fmnist-cpu)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.console import EXIT_USAGE, ErrorExit, add_folder_argument, folder_argument, run_command
from training.reproduction.plan import plan
from training.reproduction.presets import PRESETS
from training.reproduction.report import write_report
from training.reproduction.results import BenchmarkError
from training.reproduction.runner import run_benchmark


def cmd_presets(args: argparse.Namespace) -> int:
    for name, preset in PRESETS.items():
        print(f"{name:20s} {len(plan(preset)):4d} runs  {preset.summary}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    preset = PRESETS[args.preset].scaled(args.max_epochs, args.train_subset, args.test_subset)
    run_benchmark(preset, args.out, args.data_root, args.download, executor=args.executor, address=args.address,
                  gpus_per_run=args.gpus_per_run)
    print(f"report: {write_report(args.out)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    print(f"report: {write_report(folder_argument(args))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stingy-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("presets", help="list the presets").set_defaults(handler=cmd_presets)
    run = commands.add_parser("run", help="run a preset (finished runs are skipped, interrupted ones resume)")
    run.add_argument("--preset", required=True, choices=sorted(PRESETS))
    run.add_argument("--out", required=True, type=Path, help="benchmark folder: results.jsonl, report.md, figures, runs/")
    run.add_argument("--data-root", help="folder holding the preset's dataset")
    run.add_argument("--download", action="store_true", help="download the dataset if it is missing")
    where = run.add_argument_group("where the runs execute")
    where.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local: one run after another in this process (default); ray: each run a Ray task (pip install '.[ray]')")
    where.add_argument("--address", help="Ray cluster to join ('auto': the one `ray start` set up here; default: start a local one)")
    where.add_argument("--gpus-per-run", type=float, default=0, metavar="N", help="GPUs each Ray task reserves (default %(default)s)")
    quick = run.add_argument_group("trying a preset quickly (the results are then not the paper's settings)")
    quick.add_argument("--max-epochs", type=int, help="cap every schedule at this many epochs")
    quick.add_argument("--train-subset", type=int, help="train on this many images")
    quick.add_argument("--test-subset", type=int, help="evaluate on this many images")
    run.set_defaults(handler=cmd_run)
    report = commands.add_parser("report", help="render report.md and the figures of a benchmark folder")
    add_folder_argument(report, "benchmark folder (the --out of run)")
    report.set_defaults(handler=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, exits=(ErrorExit((BenchmarkError,), EXIT_USAGE),))


if __name__ == "__main__":
    sys.exit(main())
