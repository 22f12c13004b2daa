"""``stingy-bench``: run the paper's experiments and render their tables and figures.

    stingy-bench presets
    stingy-bench run --preset fmnist-cpu --out runs/bench/fmnist-cpu
    stingy-bench run --preset fmnist-cpu --out runs/bench/fmnist-gpu --jobs 12 --device cuda --no-amp
    stingy-bench run --preset fmnist-cpu --out runs/bench/fmnist-cpu-seeds --seeds 0 1 2
    stingy-bench run --preset paper-cifar100 --out /shared/bench --executor ray --address auto --gpus-per-run 1
    stingy-bench report runs/bench/fmnist-cpu       (or: stingy-bench report --out runs/bench/fmnist-cpu)
    stingy-bench nasty-search --preset fmnist-cpu --omega 0.04 0.1 --tau 4 20 --students mlp lenet5 --out runs/nasty
    stingy-bench run --preset fmnist-cpu --nasty-from runs/nasty/pick.json --out runs/bench/fmnist-tuned
    stingy-bench run --preset fmnist-cpu --only 'kd/*/mlp/*' --list --out runs/bench/fmnist-cpu   (which runs; add no --list to run them)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from training.console import EXIT_USAGE, ErrorExit, UsageError, add_folder_argument, folder_argument, run_command
from training.devices import resolve_device
from training.models import list_models
from training.reproduction.nasty_pick import load_pick
from training.reproduction.nasty_search import PICK_FILE, SEARCH_REPORT, Search, grid, run_search
from training.reproduction.plan import Run, plan, select
from training.reproduction.presets import PRESETS, Preset
from training.reproduction.report import write_report
from training.reproduction.results import BenchmarkError
from training.reproduction.runner import run_benchmark


def cmd_presets(args: argparse.Namespace) -> int:
    for name, preset in PRESETS.items():
        print(f"{name:20s} {len(plan(preset)):4d} runs  {preset.summary}")
    return 0


def _preset(args: argparse.Namespace) -> Preset:
    """The chosen preset, scaled by the quick-try options, its schedules pinned by ``--device`` / ``--amp``
    (a device this machine lacks fails now, before any run starts)."""
    if args.device is not None:
        resolve_device(args.device)
    return PRESETS[args.preset].scaled(args.max_epochs, args.train_subset, args.test_subset).pinned(args.device, args.amp)


def _executor(args: argparse.Namespace) -> dict[str, Any]:
    """The options of :func:`run_benchmark` that say where the runs execute."""
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {args.jobs}")
    if args.jobs > 1 and args.executor == "ray":
        raise UsageError("--jobs is for the local executor; Ray runs as many tasks at once as the cluster has CPUs")
    return {"executor": args.executor, "address": args.address, "gpus_per_run": args.gpus_per_run, "jobs": args.jobs}


def _nasty_override(args: argparse.Namespace, preset: Preset) -> Preset:
    """``preset`` with the Nasty Teacher of ``--nasty-from`` (a search's pick.json) or ``--nasty-omega/--nasty-tau``."""
    if args.nasty_from is not None:
        if args.nasty_omega is not None or args.nasty_tau is not None:
            raise UsageError("give --nasty-from or --nasty-omega/--nasty-tau, not both")
        omega, tau, picked = load_pick(args.nasty_from, preset.name)
        if not picked.get("works"):
            print(f"note: {args.nasty_from} records that this Nasty Teacher does not hurt students: {picked.get('reason')}")
        return preset.with_nasty(omega, tau)
    try:
        return preset.with_nasty(args.nasty_omega, args.nasty_tau)
    except ValueError as error:
        raise UsageError(str(error)) from error


def _selected(args: argparse.Namespace, preset: Preset) -> list[Run]:
    """The preset's runs, narrowed by ``--only`` to the matching keys and the teachers they need."""
    runs = plan(preset)
    if not args.only:
        return runs
    try:
        return select(runs, args.only)
    except ValueError as error:
        raise UsageError(str(error)) from error


def cmd_run(args: argparse.Namespace) -> int:
    preset = _nasty_override(args, _preset(args))
    if args.seeds:
        if len(set(args.seeds)) != len(args.seeds):
            raise BenchmarkError(f"--seeds lists a seed twice: {' '.join(map(str, args.seeds))}")
        preset = replace(preset, seeds=tuple(args.seeds))
    runs = _selected(args, preset)
    if args.list:
        print("\n".join(run.key for run in runs))
        return 0
    run_benchmark(preset, args.out, args.data_root, args.download, runs=runs, **_executor(args))
    print(f"report: {write_report(args.out)}")
    return 0


def cmd_nasty_search(args: argparse.Namespace) -> int:
    preset = _preset(args)
    teacher = args.teacher or preset.teachers[0]
    known = {entry.name for entry in list_models()}
    unknown = [name for name in (teacher, *(s for s in args.students or () if s != "self")) if name not in known]
    if unknown:
        raise UsageError(f"unknown architecture(s) {', '.join(unknown)}; see `stingy-train models`")
    try:
        points = grid(args.omega, args.tau)
    except ValueError as error:
        raise UsageError(str(error)) from error
    search = Search(preset, teacher, tuple(points), tuple(args.students or preset.students), args.max_teacher_drop)
    result = run_search(search, args.out, args.data_root, args.download, **_executor(args))
    verdict = f"omega {result.setting.omega:g}, tau_A {result.setting.tau:g}" if result.works and result.setting else "no working setting"
    print(f"pick: {verdict} ({result.reason})\nreport: {args.out / SEARCH_REPORT}\npick: {args.out / PICK_FILE}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    print(f"report: {write_report(folder_argument(args))}")
    return 0


def _seed(text: str) -> int:
    """A seed: a non-negative integer."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a seed is a non-negative integer, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stingy-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("presets", help="list the presets").set_defaults(handler=cmd_presets)
    run = commands.add_parser("run", help="run a preset (finished runs are skipped, interrupted ones resume)")
    _add_run_options(run, "benchmark folder: results.jsonl, report.md, figures, runs/")
    run.add_argument("--seeds", type=_seed, nargs="+", metavar="N",
                     help="train every student cell once per seed (teachers once, on the preset's seed); the report shows "
                          "mean ± std and marks differences smaller than their spread. Rerun with more seeds to add them")
    nasty = run.add_argument_group("the Nasty Teacher (default: the preset's; recorded in OUT/preset.json)")
    nasty.add_argument("--nasty-from", type=Path, metavar="PICK", help="the setting picked by `stingy-bench nasty-search` (its pick.json)")
    nasty.add_argument("--nasty-omega", type=float, metavar="W", help="adversarial weight omega")
    nasty.add_argument("--nasty-tau", type=float, metavar="T", help="adversarial temperature tau_A")
    which = run.add_argument_group("which runs (default: all of the preset's)")
    which.add_argument("--only", nargs="+", metavar="PATTERN",
                       help="only the runs whose key matches one of these shell patterns (e.g. 'kd/*/mlp/*'), and the teachers "
                            "they need; the report covers what the folder holds")
    which.add_argument("--list", action="store_true", help="print the keys of the runs that would run, and exit")
    run.set_defaults(handler=cmd_run)
    search = commands.add_parser("nasty-search", help="tune the Nasty Teacher's omega and tau_A on a preset's data",
                                 description="One Nasty Teacher per (omega, tau_A), each student distilled from it by normal KD "
                                             "(the preset's tau and alpha, no clipping); writes OUT/search.jsonl, search.md, pick.json.")
    _add_run_options(search, "search folder: search.jsonl, search.md, pick.json, results.jsonl, runs/")
    grid_options = search.add_argument_group("the grid")
    grid_options.add_argument("--omega", type=float, nargs="+", required=True, metavar="W", help="adversarial weights omega")
    grid_options.add_argument("--tau", type=float, nargs="+", required=True, metavar="T", help="adversarial temperatures tau_A")
    grid_options.add_argument("--teacher", help="teacher architecture (default: the preset's first)")
    grid_options.add_argument("--students", nargs="+", metavar="ARCH", help="students ('self': the teacher's architecture; default: the preset's)")
    grid_options.add_argument("--max-teacher-drop", type=float, default=2.0, metavar="POINTS",
                              help="a setting is picked only if its teacher is at most this many points below the normal one (default %(default)s)")
    search.set_defaults(handler=cmd_nasty_search)
    report = commands.add_parser("report", help="render report.md and the figures of a benchmark folder")
    add_folder_argument(report, "benchmark folder (the --out of run)")
    report.set_defaults(handler=cmd_report)
    return parser


def _add_run_options(parser: argparse.ArgumentParser, out_help: str) -> None:
    """The options ``run`` and ``nasty-search`` share: the preset, the folder, the data, where the runs execute,
    and the quick-try caps."""
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    parser.add_argument("--out", required=True, type=Path, help=out_help)
    parser.add_argument("--data-root", help="folder holding the preset's dataset")
    parser.add_argument("--download", action="store_true", help="download the dataset if it is missing")
    where = parser.add_argument_group("where the runs execute")
    where.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local: runs in this process, or in --jobs worker processes (default); ray: each run a Ray task (pip install '.[ray]')")
    where.add_argument("--address", help="Ray cluster to join ('auto': the one `ray start` set up here; default: start a local one)")
    where.add_argument("--gpus-per-run", type=float, default=0, metavar="N", help="GPUs each Ray task reserves (default %(default)s)")
    where.add_argument("--jobs", type=int, default=1, metavar="N",
                       help="local executor: run up to N runs at once in N worker processes (default 1: one after another "
                            "in this process); each uses CPUs/N torch threads unless OMP_NUM_THREADS is set")
    where.add_argument("--device", help="train every run on this device (auto, cpu, cuda, cuda:1, ...) instead of the preset's; "
                                        "recorded in preset.json")
    where.add_argument("--amp", action=argparse.BooleanOptionalAction,
                       help="mixed precision on CUDA on (--amp) or off (--no-amp) for every run instead of the preset's; recorded in preset.json")
    quick = parser.add_argument_group("trying a preset quickly (the results are then not the paper's settings)")
    quick.add_argument("--max-epochs", type=int, help="cap every schedule at this many epochs")
    quick.add_argument("--train-subset", type=int, help="train on this many images")
    quick.add_argument("--test-subset", type=int, help="evaluate on this many images")


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, exits=(ErrorExit((BenchmarkError,), EXIT_USAGE),))


if __name__ == "__main__":
    sys.exit(main())
