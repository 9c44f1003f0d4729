"""What every `rolegate` command shares: the options many of them take, and `later`, which
turns a parsed command line into the call that `main` runs."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import typer

#: A parsed command, ready to run: `main` calls it inside its own error handling.
Call = Callable[[], int]

PolicyOpt = Annotated[str | None, typer.Option(help="policy file (default: the embedded policy)")]
LedgerOpt = Annotated[
    str | None, typer.Option(help="ledger URL (default: the policy's, else the SQLite file)")
]
BlockOpt = Annotated[
    list[str] | None, typer.Option(help="block a plugin by name (repeatable)", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON")]
SinceOpt = Annotated[str, typer.Option(help="7d, 12h, 30m or an ISO date/time")]
UntilOpt = Annotated[str | None, typer.Option(help="same forms (default: now)")]
Format = Annotated[Literal["table", "json", "csv"], typer.Option("--format", help="output format")]


def later(
    func: Callable[[argparse.Namespace], int], params: Mapping[str, Any], **extra: Any
) -> Call:
    """``func`` on the parsed options, to run once parsing is done.

    The commands run outside typer on purpose: typer turns a closed stdout into exit 1 and
    Ctrl-C into a silent 130, where `main` reports 141 and "interrupted". They also keep
    taking an ``argparse.Namespace``, as `rolegate.server.serve.serve` does."""
    return functools.partial(func, argparse.Namespace(**params, **extra))


def repeated(values: list[str] | None) -> list[str]:
    """A repeatable option as a list, empty when not given (argparse's ``default=[]``)."""
    return list(values or ())
