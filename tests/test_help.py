"""``--help`` of the four commands shows every default that matters: each option with a default value says
it in its help text, and stingy-serve states the released count as N = max(1, round(r K))."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from app.cli import build_parser as serve_parser
from attacker.cli import build_parser as attack_parser
from training.reproduction.cli import build_parser as bench_parser
from training.cli import build_parser as train_parser

PARSERS = {"stingy-train": train_parser, "stingy-bench": bench_parser, "stingy-serve": serve_parser, "stingy-attack": attack_parser}


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


@pytest.mark.parametrize("name", PARSERS)
def test_every_default_is_in_the_help(name: str) -> None:
    hidden = []
    for parser in _parsers(PARSERS[name]()):
        for action in parser._actions:
            if not action.option_strings or action.default in (None, False, [], argparse.SUPPRESS) or action.help == argparse.SUPPRESS:
                continue
            if "default" not in (action.help or "") and "paper:" not in (action.help or ""):
                hidden.append(f"{parser.prog} {action.option_strings[0]} (default {action.default!r})")
    assert not hidden, hidden


def test_serve_help_states_the_released_count() -> None:
    assert "N = max(1, round(r K))" in serve_parser().format_help()
