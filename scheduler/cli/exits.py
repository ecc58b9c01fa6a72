"""What the command's exit codes mean: the codes, the one table from error to code, the one text.

`EXIT_CODES_TEXT` is the only description of the codes; ``smsledger --help`` shows it, and the
README and docstrings point to it rather than repeat it. Every error is one line on stderr,
``smsledger: error: ...`` (`scheduler.cli.output.say_error`), naming the bad value; ``--debug``
adds the traceback.
"""

from __future__ import annotations

from ledger import (
    CancelNotPossible,
    ConfigError,
    InvalidInput,
    LedgerError,
    LedgerUnavailable,
    OrderNotFound,
    RegistrationConflict,
)
from scheduler.provider.errors import ProviderError, SendTimeError

__all__ = [
    "EXIT_CODES_TEXT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandFailed",
    "UsageError",
    "exit_code_for",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EXIT_CODES_TEXT = f"""\
exit codes:
  {EXIT_OK:<5}done
  {EXIT_FAILED:<5}refused or ended badly (cancel refused, too late, not found, needs attention,
       dispatched, not final after --wait; provider error, reconcile included;
       ledger unreachable or damaged; no ledger yet for status, list, history,
       check, cancel, resolve)
  {EXIT_USAGE:<5}usage, input or config error (bad flag, time or state; unknown order id;
       resolve of an order that is not needs_attention; config missing or wrong;
       missing credentials)
  {EXIT_INTERRUPTED:<5}interrupted
"""


class UsageError(Exception):
    """A command-line value the command cannot use (exit 2)."""


class CommandFailed(Exception):
    """The command could not do what was asked, for a reason it explains (exit 1)."""


#: The one table from exception to exit code; the first matching class wins.
_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (UsageError, EXIT_USAGE),
    (ConfigError, EXIT_USAGE),
    (InvalidInput, EXIT_USAGE),
    (OrderNotFound, EXIT_USAGE),
    (RegistrationConflict, EXIT_USAGE),
    (SendTimeError, EXIT_USAGE),
    (CancelNotPossible, EXIT_FAILED),
    (LedgerUnavailable, EXIT_FAILED),
    (LedgerError, EXIT_FAILED),
    (ProviderError, EXIT_FAILED),
    (CommandFailed, EXIT_FAILED),
)


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code for an error the command expects, or None for a bug."""
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return None
