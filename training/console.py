"""The option toolkit every ``stingy-*`` command shares (stingy-train, stingy-bench, stingy-serve, stingy-attack).

- :func:`run_command`: parse, call the chosen ``handler(args) -> int``, and turn a user mistake into one line
  on stderr with a documented exit status (:data:`EXIT_USAGE`), never a traceback; Ctrl-C says how to continue.
- :func:`parse_spec` / :func:`parse_params`: the one syntax for "a name plus parameters",
  ``NAME:key=value,key=value`` (strategies) and ``key=value`` (``--policy-param``); values are JSON
  (``5``, ``0.2``, ``true``, ``"x"``), ``none`` means "not set", anything else stays a string.
- :func:`add_policy_options`: the release-policy flags of ``stingy-train kd`` and ``stingy-serve``, read back
  by :func:`policy_flags` into the fields a policy is built from (never built here).
- :func:`add_optimizer_options` / :func:`train_config`: the student-training flags of ``stingy-train`` and
  ``stingy-attack``, and the :class:`~training.engine.TrainConfig` they give.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defense import POLICIES
from training.checkpoint import CheckpointError
from training.data import DatasetDownloadError, DatasetFormatError, DatasetNotFoundError
from training.devices import DeviceError, resolve_device
from training.engine import TrainConfig

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


class UsageError(Exception):
    """A mistake on the command line or in its inputs."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    UsageError, DatasetNotFoundError, DatasetDownloadError, DatasetFormatError, CheckpointError, DeviceError,
)


@dataclass(frozen=True)
class ErrorExit:
    """Errors a command reports as ``PROG: LABEL: message`` with exit ``status``; ``resumable`` appends the
    command's resume hint (what was kept, how to continue)."""

    errors: tuple[type[BaseException], ...]
    status: int
    label: str = "error"
    resumable: bool = False


def run_command(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, *, exits: Sequence[ErrorExit] = (),
    resume_hint: str | Callable[[argparse.Namespace], str] = "run the same command again to continue",
) -> int:
    """Parse ``argv`` and return the chosen subcommand's ``handler(args)``.

    :data:`USER_ERRORS` exit with :data:`EXIT_USAGE`, the errors of ``exits`` (checked first) with their
    status, Ctrl-C with :data:`EXIT_INTERRUPTED`; each prints one line on stderr. A callable ``resume_hint``
    is asked when the error happens (it may look at what the command left behind).
    """
    args = parser.parse_args(argv)

    def hint() -> str:
        return resume_hint(args) if callable(resume_hint) else resume_hint

    rules = (*exits, ErrorExit(USER_ERRORS, EXIT_USAGE))
    try:
        return int(args.handler(args))
    except tuple(error for rule in rules for error in rule.errors) as error:
        rule = next(rule for rule in rules if isinstance(error, rule.errors))
        more = f"; {hint()}" if rule.resumable and hint() else ""
        print(f"{parser.prog}: {rule.label}: {error}{more}", file=sys.stderr)
        return rule.status
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted" + (f"; {hint()}" if hint() else ""), file=sys.stderr)
        return EXIT_INTERRUPTED


def add_folder_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """The folder a ``report`` reads, given either way: ``report DIR`` or ``report --out DIR`` (the flag that
    made it); :func:`folder_argument` reads it back."""
    parser.add_argument("folder", nargs="?", type=Path, help=help)
    parser.add_argument("--out", dest="out_folder", type=Path, metavar="DIR", help="the same, as a flag")


def folder_argument(args: argparse.Namespace) -> Path:
    """The folder of :func:`add_folder_argument`; :class:`UsageError` when it is missing or given twice, differently."""
    given = {folder for folder in (args.folder, args.out_folder) if folder is not None}
    if len(given) != 1:
        raise UsageError("name one folder: `report DIR` (or `report --out DIR`)")
    return given.pop()


# ---- NAME:key=value ------------------------------------------------------------------------------------

def parse_value(text: str) -> Any:
    """A parameter value: JSON when it parses (``5``, ``0.2``, ``true``, ``[1, 2]``), ``None`` for
    ``none``/``null``, else the text itself."""
    text = text.strip()
    if text.lower() == "none":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_params(items: Iterable[str], what: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; ``ValueError`` names ``what`` for an item without ``=``."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} needs NAME=VALUE, got {item!r}")
        params[key.strip()] = parse_value(value)
    return params


def parse_spec(spec: str, what: str) -> tuple[str, dict[str, Any]]:
    """``"NAME:key=value,key=value"`` -> ``(NAME, {key: value, ...})``; a bare ``NAME`` has no parameters."""
    name, _, params = spec.strip().partition(":")
    return name, parse_params(filter(None, params.split(",")), f"{what} {name!r}")


# ---- shared option groups ------------------------------------------------------------------------------

def add_policy_options(parser: argparse.ArgumentParser, default: str | None = "stingy") -> None:
    """``--policy``, ``--sparse-ratio``, ``--k`` and repeatable ``--policy-param NAME=VALUE``."""
    group = parser.add_argument_group("release policy")
    group.add_argument("--policy", default=default, choices=sorted(POLICIES), help="release policy (default stingy)")
    group.add_argument("--sparse-ratio", type=float,
                       help="r: keep N = max(1, round(r K)) of the K classes (default: the policy's, 0.1 for stingy)")
    group.add_argument("--k", type=int, help="keep exactly N classes")
    group.add_argument("--policy-param", action="append", default=[], metavar="NAME=VALUE",
                       help="other policy parameters, e.g. decimals=2, sigma=0.05 (repeatable)")


def policy_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The policy flags given, as the fields a policy is built from: ``policy``, ``sparse_ratio``, ``k`` and
    ``policy_params`` (the ``--policy-param`` pairs); ``make_policy(policy, sparse_ratio=, k=, **policy_params)``
    builds it. An empty dict when no policy flag was given."""
    if args.policy is None and args.sparse_ratio is None and args.k is None and not args.policy_param:
        return {}
    try:
        params = parse_params(args.policy_param, "--policy-param")
    except ValueError as error:
        raise UsageError(str(error)) from error
    return {"policy": args.policy or "stingy", "sparse_ratio": args.sparse_ratio, "k": args.k, "policy_params": params}


def add_optimizer_options(group: argparse._ArgumentGroup, defaults: TrainConfig, batch_flag: str = "--batch-size") -> None:
    """How a model is trained: epochs, batch size (``batch_flag``), SGD/Adam settings, lr schedule, device."""
    group.add_argument("--epochs", type=int, default=defaults.epochs, help=f"(default {defaults.epochs})")
    group.add_argument(batch_flag, dest="train_batch_size", type=int, default=defaults.batch_size,
                       help=f"training batch size, per process under torchrun (default {defaults.batch_size})")
    group.add_argument("--lr", type=float, default=defaults.lr, help=f"learning rate (default {defaults.lr})")
    group.add_argument("--momentum", type=float, default=defaults.momentum, help=f"(default {defaults.momentum})")
    group.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help=f"(default {defaults.weight_decay})")
    group.add_argument("--milestones", type=float, nargs="*", default=list(defaults.milestones),
                       help="epochs at which lr is multiplied by --gamma; values below 1 are fractions of --epochs "
                            f"(default {' '.join(f'{m:g}' for m in defaults.milestones)})")
    group.add_argument("--gamma", type=float, default=defaults.gamma, help=f"(default {defaults.gamma})")
    group.add_argument("--optimizer", choices=["sgd", "adam"], default=defaults.optimizer, help=f"(default {defaults.optimizer})")
    group.add_argument("--device", default="auto", help="auto (CUDA when present; the default), cpu, cuda, cuda:1, ...")
    group.add_argument("--no-amp", action="store_true", help="full precision on CUDA")


def train_config(args: argparse.Namespace, **fixed: Any) -> TrainConfig:
    """The :class:`TrainConfig` of :func:`add_optimizer_options`' flags plus ``fixed`` fields (e.g. ``seed``);
    the device is checked now, before any data is loaded or any server queried."""
    try:
        resolve_device(args.device)
        return TrainConfig(
            epochs=args.epochs, batch_size=args.train_batch_size, lr=args.lr, momentum=args.momentum,
            weight_decay=args.weight_decay, milestones=tuple(args.milestones), gamma=args.gamma, optimizer=args.optimizer,
            device=args.device, amp=not args.no_amp, **fixed,
        )
    except ValueError as error:
        raise UsageError(str(error)) from error
