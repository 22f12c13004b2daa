"""What every ``stingy-*`` command shares: user mistakes become one line on stderr and exit status 2,
never a traceback; Ctrl-C says how to continue."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from training.checkpoint import CheckpointError
from training.data import DatasetFormatError, DatasetNotFoundError
from training.devices import DeviceError


class UsageError(Exception):
    """A mistake on the command line or in its inputs."""


USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, DatasetNotFoundError, DatasetFormatError, CheckpointError, DeviceError)


def run_command(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, user_errors: tuple[type[BaseException], ...] = (),
    interrupted_hint: str = "run the same command again to continue",
) -> int:
    """Parse ``argv`` and call the chosen subcommand's ``handler(args) -> int``."""
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except USER_ERRORS + user_errors as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; {interrupted_hint}", file=sys.stderr)
        return 130
