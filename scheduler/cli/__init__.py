"""The ``smsledger`` command: parse the arguments, call the ledger or the provider, print.

`main` is the console script (``scheduler.cli:main``) and ``python -m scheduler``. The package:

- `scheduler.cli.parser`: every command, option and help text (`build_parser`);
- `scheduler.cli.commands`: what each command does once parsed (loaded only when a command
  needs it, so ``--help``, ``--version`` and ``logs`` start fast);
- `scheduler.cli.context`: the config, logging and the ledger every command starts from;
- `scheduler.cli.logs_command`: ``smsledger logs``;
- `scheduler.cli.exits`: the exit codes, which error means which, and `EXIT_CODES_TEXT`, the one
  description of them that ``smsledger --help`` shows;
- `scheduler.cli.output`: tables and JSON for orders and events, escaping, the error line;
- `scheduler.cli.logs`: reading, filtering and following the JSON-lines log;
- `scheduler.cli.times`: reading WHEN and writing times and countdowns;
- `scheduler.cli.demo`: ``smsledger demo``.

Every error is one line on stderr, ``smsledger: error: ...``, naming the bad value; ``--debug``
adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Sequence

from scheduler.cli.context import load_context
from scheduler.cli.exits import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    exit_code_for,
)
from scheduler.cli.output import say_error
from scheduler.cli.parser import build_parser

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "exit_code_for",
    "main",
]


def _dispatch(args: argparse.Namespace, extra: list[str]) -> int:
    if args.command == "logs":
        # Without the other commands' imports (the ledger's models, the daemon, httpx): `logs |
        # head -1` answers in a fraction of a second.
        from scheduler.cli.logs_command import run_logs  # noqa: PLC0415

        if extra:
            args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return run_logs(args, load_context(args))
    from scheduler.cli import commands  # noqa: PLC0415 -- see above: loaded once a command needs it

    if args.command == "sandbox":
        return commands.run_sandbox(extra)
    if extra:
        args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "demo":
        return commands.run_demo()
    return commands.HANDLERS[args.command](args, load_context(args))


def _report(exc: Exception, *, debug: bool) -> int:
    """Print `exc` as one line (after its traceback with --debug); return its exit code."""
    code = exit_code_for(exc)
    if debug:
        traceback.print_exception(exc)
    if code is None:
        hint = "" if debug else " (run again with --debug for the traceback)"
        say_error(f"internal error: {type(exc).__name__}: {exc}{hint}")
        return EXIT_FAILED
    say_error(str(exc))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit code (the console script exits with it)."""
    parser = build_parser()
    args: argparse.Namespace | None = None
    try:
        args, extra = parser.parse_known_args(argv)
        return _dispatch(args, extra)
    except SystemExit as exc:  # argparse: --help, usage errors
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or EXIT_OK
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`smsledger logs | head`): stop quietly.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        return _report(exc, debug=args is not None and bool(args.debug))
