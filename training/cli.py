"""``stingy-train``: train a teacher, distil a student through a release policy, train a Nasty Teacher.

    stingy-train teacher --dataset fashion-mnist --arch cnn_small --epochs 5 --out runs/teacher
    stingy-train kd --teacher runs/teacher/teacher.safetensors --student lenet5 --policy stingy --sparse-ratio 0.2 --out runs/kd
    stingy-train nasty --adversary runs/teacher/teacher.safetensors --temperature 4 --omega 0.04 --out runs/nasty
    stingy-train import --arch torchvision:resnet50 --weights model.pth --class-names classes.txt --out model.safetensors
    stingy-train models | datasets | policies

Data-parallel on N GPUs (or N CPU processes with gloo): torchrun --nproc_per_node N -m training.cli teacher ...
(--batch-size is per process; rank 0 writes the run folder and prints).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from defense import POLICIES, LogitPolicy, policy_from_fields, policy_parameters
from training.checkpoint import load_checkpoint
from training.console import (
    EXIT_USAGE, ErrorExit, UsageError, add_optimizer_options, add_policy_options, policy_flags, run_command, train_config,
)
from training.data import ImageDataset, dataset_names, load_dataset
from training.devices import resolve_device
from training.distributed import init_from_environment, is_main_process, shutdown
from training.engine import STATE_FILE, FitResult, TrainConfig
from training.import_command import IMPORT_ERRORS, add_import_parser
from training.losses import KD_ALPHA, KD_TEMPERATURE
from training.models import list_models, list_namespaces
from training.objectives import CrossEntropy, Distillation, HardLabelDistillation, NastyTraining
from training.runs import RESULT_FILE, run_training, teacher_signal


def add_data_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", required=required, choices=dataset_names(), help="dataset name")
    group.add_argument("--data-root", help="folder holding the dataset (default: the dataset's usual place)")
    group.add_argument("--download", action="store_true", help="download the dataset if it is missing")
    group.add_argument("--train-subset", type=int, help="train on a seeded random subset of this many images")
    group.add_argument("--image-size", type=int, help="input size for imagefolder/synthetic datasets")


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """Optimisation options; defaults are the paper's."""
    defaults = TrainConfig()
    group = parser.add_argument_group("optimisation (defaults: the paper's)")
    add_optimizer_options(group, defaults)
    group.add_argument("--grad-clip", type=float, help="clip the gradient norm to this value (off by default)")
    group.add_argument("--no-augment", action="store_true", help="turn off random crop and flip")
    group.add_argument("--seed", type=int, default=defaults.seed, help="seed of the initialisation, data order and --train-subset (default %(default)s)")
    group.add_argument("--num-workers", type=int, default=0, help="data-loading processes (file-based datasets; default %(default)s)")
    run = parser.add_argument_group("run folder")
    run.add_argument("--out", required=True, type=Path, help="run folder: checkpoint, metrics.jsonl, state.pt, result.json "
                     "(under torchrun: written by rank 0; on several machines, shared storage)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved epoch")
    run.add_argument("--force", action="store_true", help="start over even if --out holds a run")


def policy_from_args(args: argparse.Namespace) -> LogitPolicy:
    """The release policy of ``stingy-train kd``'s policy flags."""
    flags = policy_flags(args)
    try:
        return policy_from_fields(**flags)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from error


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's settings; under ``torchrun`` this process also joins the process group (NCCL on CUDA, gloo on CPU)."""
    config = train_config(args, grad_clip=args.grad_clip, augment=not args.no_augment, seed=args.seed, num_workers=args.num_workers)
    init_from_environment(config.device)
    return config


def load_splits(args: argparse.Namespace, dataset: str) -> tuple[ImageDataset, ImageDataset]:
    options = {"image_size": args.image_size} if args.image_size else {}
    train = load_dataset(dataset, "train", args.data_root, download=args.download, **options)
    test = load_dataset(dataset, "test", args.data_root, download=args.download, **options)
    if args.train_subset:
        train = train.first(args.train_subset, seed=args.seed)
    return train, test


def check_run_folder(args: argparse.Namespace) -> None:
    if (args.out / STATE_FILE).exists() and not (args.resume or args.force):
        raise UsageError(f"{args.out} already holds a run: pass --resume to continue it or --force to start over")


def report(result: FitResult, out: Path, checkpoint: str) -> None:
    if not is_main_process():
        return
    status = f"DIVERGED at step {result.diverged_step}" if result.diverged else "done"
    accuracy = "n/a" if result.test_accuracy is None else f"{result.test_accuracy:.2f}%"
    print(f"{status}: test accuracy {accuracy}, max gradient norm {result.max_grad_norm:.3g}, "
          f"{result.seconds:.1f}s -> {out / checkpoint} ({out / RESULT_FILE})")


def cmd_teacher(args: argparse.Namespace, checkpoint: str = "teacher.safetensors") -> int:
    check_run_folder(args)
    if args.arch not in {entry.name for entry in list_models()}:
        raise UsageError(f"unknown architecture {args.arch!r}; see `stingy-train models`")
    train, test = load_splits(args, args.dataset)
    config = config_from_args(args)
    result = run_training(arch=args.arch, objective=CrossEntropy(), train=train, test=test, config=config, out=args.out,
                          checkpoint_name=checkpoint, resume=args.resume, desc=args.command)
    report(result, args.out, checkpoint)
    return 0


def cmd_kd(args: argparse.Namespace) -> int:
    check_run_folder(args)
    policy = policy_from_args(args)
    config = config_from_args(args)
    teacher, card = load_checkpoint(args.teacher, resolve_device(config.device))
    train, test = load_splits(args, args.dataset or card.dataset)
    if train.info.num_classes != card.num_classes:
        raise UsageError(f"the teacher has {card.num_classes} classes but {train.info.name} has {train.info.num_classes}")
    signal = teacher_signal(teacher, card, policy, train, config, cache=args.teacher_cache)
    objective = HardLabelDistillation(signal) if args.hard_labels else Distillation(signal, tau=args.temperature, alpha=args.alpha)
    arch = card.arch if args.student == "self" else args.student
    result = run_training(arch=arch, objective=objective, train=train, test=test, config=config, out=args.out,
                          checkpoint_name="student.safetensors", resume=args.resume,
                          extra={"teacher": str(args.teacher), "teacher_arch": card.arch}, desc="kd")
    report(result, args.out, "student.safetensors")
    return 0


def cmd_nasty(args: argparse.Namespace) -> int:
    check_run_folder(args)
    config = config_from_args(args)
    adversary, card = load_checkpoint(args.adversary, resolve_device(config.device))
    train, test = load_splits(args, args.dataset or card.dataset)
    arch = args.arch or card.arch
    objective = NastyTraining(adversary, tau=args.temperature, omega=args.omega)
    result = run_training(arch=arch, objective=objective, train=train, test=test, config=config, out=args.out,
                          checkpoint_name="teacher.safetensors", resume=args.resume,
                          extra={"adversary": str(args.adversary), "nasty": True}, desc="nasty")
    report(result, args.out, "teacher.safetensors")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.command == "models":
        for entry in list_models():
            print(f"{entry.name:20s} {entry.summary}")
        for namespace in list_namespaces():
            print(f"{namespace.prefix + ':NAME':20s} {namespace.summary}")
    elif args.command == "datasets":
        print("\n".join(dataset_names()))
    else:
        for name in POLICIES:
            print(f"{name:16s} parameters: {', '.join(policy_parameters(name)) or '-'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stingy-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    for name, help_text in (("teacher", "train a teacher on labels"), ("scratch", "train a student on labels only (the baseline)")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--arch", required=True, help="architecture (see `stingy-train models`)")
        add_data_options(sub)
        add_train_options(sub)
        sub.set_defaults(handler=cmd_teacher if name == "teacher" else lambda a: cmd_teacher(a, "student.safetensors"))

    kd = commands.add_parser("kd", help="distil a student from a teacher checkpoint through a release policy (Eq. 1)")
    kd.add_argument("--teacher", required=True, type=Path, help="teacher checkpoint (.safetensors)")
    kd.add_argument("--student", required=True, help="student architecture, or 'self' for the teacher's (self-KD)")
    kd.add_argument("--temperature", "--tau", type=float, default=KD_TEMPERATURE, help=f"tau (paper: {KD_TEMPERATURE:g})")
    kd.add_argument("--alpha", type=float, default=KD_ALPHA, help=f"weight of the KL term (paper: {KD_ALPHA:g})")
    kd.add_argument("--hard-labels", action="store_true", help="distil the teacher's released top-1 only")
    kd.add_argument("--teacher-cache", action="store_true", help="compute teacher logits once per image (needs --no-augment)")
    add_policy_options(kd)
    add_data_options(kd, required=False)
    add_train_options(kd)
    kd.set_defaults(handler=cmd_kd)

    nasty = commands.add_parser("nasty", help="train a Nasty Teacher against a normal teacher (Eq. 2, Ma et al. 2021)")
    nasty.add_argument("--adversary", required=True, type=Path, help="the normal pre-trained teacher checkpoint")
    nasty.add_argument("--arch", help="nasty teacher architecture (default: the adversary's)")
    nasty.add_argument("--temperature", "--tau", type=float, default=4.0, help="tau_A (CIFAR-10: 4, CIFAR-100: 20; default %(default)s)")
    nasty.add_argument("--omega", type=float, default=0.04, help="adversarial weight (CIFAR-10: 0.04, CIFAR-100: 0.005; default %(default)s)")
    add_data_options(nasty, required=False)
    add_train_options(nasty)
    nasty.set_defaults(handler=cmd_nasty)

    add_import_parser(commands)
    for name in ("models", "datasets", "policies"):
        commands.add_parser(name, help=f"list the available {name}").set_defaults(handler=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return run_command(build_parser(), argv, exits=[ErrorExit(IMPORT_ERRORS, EXIT_USAGE)], resume_hint="continue with --resume")
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
