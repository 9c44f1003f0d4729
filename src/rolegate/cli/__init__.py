"""The `rolegate` command line (typer, help drawn by rich). Results go to stdout,
diagnostics to stderr.

typer only parses: each command returns the call to make (`rolegate.cli.common.later`), and
`main` makes it inside the error handling below, so that exit codes and messages are this
module's, not typer's. Heavy modules (the MCP SDK, uvicorn, rich's tables and help) are
imported by the commands that need them, never at start: `check` and `route` stay quick."""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from rolegate import __version__
from rolegate.cli.common import Call
from rolegate.errors import RequestError, RolegateError

#: Exit code when stdout's reader closed the pipe early (128 + SIGPIPE, as a shell says).
CLOSED_PIPE = 141
#: Exit code for bad arguments (as argparse had it, and as click's usage errors have it).
BAD_ARGUMENTS = 2
EXIT_CODES = """\
exit codes:
  0    ok
  1    policy, ledger or plugin error
  2    bad request or arguments
  3    refused (route, or a budget check that does not fit)
  4    eval: not every case could be judged
  130  interrupted (Ctrl-C)
  141  stdout closed early by its reader (e.g. `rolegate audit | head -1`): output stops quietly
"""
COMPLETION = """\
shell completion: `rolegate --install-completion` adds it to your shell's startup file;
`rolegate --show-completion SHELL` prints the script (bash, zsh, fish, powershell).
"""


def _version(value: bool) -> None:
    if value:
        print(f"rolegate {__version__}")
        raise typer.Exit


def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """Make a model-routing policy executable."""


def build_app() -> typer.Typer:
    """The whole command tree, in the order `rolegate --help` lists it."""
    from rolegate.cli import core, evals, tools, topology
    from rolegate.cli.dashboard import dashboard
    from rolegate.cli.replay import replay
    from rolegate.cli.report import report

    # The leading newline keeps the code table's indentation: rich help dedents the epilog
    # by the indentation its lines after the first share.
    app = typer.Typer(
        name="rolegate",
        epilog="\n" + EXIT_CODES + "\n" + COMPLETION,
        rich_markup_mode="rich",
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    core.register(app)
    tools.register(app)
    topology.register(app)
    evals.register(app)
    app.command()(dashboard)
    app.command()(replay)
    app.command()(report)
    return app


_CHOICE = re.compile(r"Invalid value for (.+?): (?:Value error, )?('.*') is not one of (.*?)\.?$")


def _message(exc: typer.TyperException) -> str:
    """One line: what was wrong, as argparse said it where scripts may match on it."""
    text = exc.format_message().replace("Value error, ", "")
    choice = _CHOICE.match(text)
    if choice is not None:
        return f"argument {choice[1]}: invalid choice: {choice[2]} (choose from {choice[3]})"
    return text.replace("\n", " ")


def _parse(argv: Sequence[str] | None) -> Call | int:
    """The command to run, or the exit code when parsing was all there was to do (--help,
    --version, completion, a bad argument)."""
    command = typer.main.get_command(build_app())
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        got = command.main(args=args, prog_name="rolegate", standalone_mode=False)
    except typer.TyperException as exc:
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "rolegate"
        print(f"{where}: error: {_message(exc)} (see `{where} --help`)", file=sys.stderr)
        return BAD_ARGUMENTS
    except SystemExit as exc:
        # stdout closed under the help text (`rolegate --help | head -1`): rich (pointing
        # stdout at devnull) or typer (wrapping it) exits 1. Say 141, as the commands do.
        if exc.code == 1 and _stdout_given_up():
            return _closed_pipe()
        raise
    return got if callable(got) else int(got or 0)


def _stdout_given_up() -> bool:
    if type(sys.stdout).__name__ == "PacifyFlushWrapper":
        return True
    try:
        return os.path.samestat(os.fstat(sys.stdout.fileno()), os.stat(os.devnull))
    except (OSError, ValueError):
        return False


def _closed_pipe() -> int:
    # stdout goes to devnull so that Python's own flush at exit does not fail again (Python
    # docs, "Note on SIGPIPE"); 141 is what a shell reports for a writer SIGPIPE ended.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return CLOSED_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    parsed = _parse(argv)
    if isinstance(parsed, int):
        return parsed
    try:
        result: int = parsed()
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except RolegateError as exc:  # every error rolegate raises on purpose: CODE: sentence
        print(str(exc), file=sys.stderr)
        return 2 if isinstance(exc, RequestError) else 1
    except BrokenPipeError:
        # The reader went away (`rolegate audit | head -1`): stop quietly.
        return _closed_pipe()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return result


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The options a command line hands its command, without running it (defaults filled
    in); SystemExit with the exit code when parsing is all there is (--help, a bad option)."""
    parsed = _parse(argv)
    if isinstance(parsed, int):
        raise SystemExit(parsed)
    assert isinstance(parsed, functools.partial)
    namespace: argparse.Namespace = parsed.args[0]
    return namespace
