"""Where the library's log events go: the application's logging, never a stream of our own.

Library code logs through `get_logger(name)` with names under ``smsledger``. Each call goes to
the application's structlog pipeline if structlog is configured (by the application, or by the
command and the daemon, which write the JSON-lines file), and otherwise to the standard
`logging` logger of the same name. The ``smsledger`` logger carries a `logging.NullHandler`, so
an application that configured nothing sees nothing (not even `logging.lastResort` on stderr),
and one that configured `logging` receives every event as a record: the message is the event
and its fields in logfmt, the fields themselves are in ``record.smsledger``.

`scheduler/provider/_log.py` holds the same router for the provider package, which must not
import `ledger` (tests/unit/test_library_logging.py keeps the two alike).
"""

from __future__ import annotations

import logging
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from ledger.logsetup import redactor

__all__ = ["ROOT", "get_logger"]

#: The root of every logger name the distribution uses.
ROOT = "smsledger"

_root = logging.getLogger(ROOT)
if not any(isinstance(h, logging.NullHandler) for h in _root.handlers):
    _root.addHandler(logging.NullHandler())

_logfmt = structlog.processors.LogfmtRenderer(key_order=["event"], drop_missing=True)


def _to_stdlib(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> Any:
    """The last processor: (args, kwargs) for `logging.Logger.<level>`."""
    exc_info = event_dict.pop("exc_info", None)
    fields = dict(event_dict)
    message = _logfmt(_logger, _method, dict(event_dict))
    return (message,), {"exc_info": exc_info, "extra": {ROOT: fields}}


_STDLIB_PROCESSORS: list[Processor] = [
    structlog.stdlib.filter_by_level,  # nothing to do below the application's level
    structlog.contextvars.merge_contextvars,
    redactor,
    _to_stdlib,
]


class Logger:
    """A logger that decides at each call where the event goes (see the module docstring).

    Deciding per call, not at import, lets an application configure logging after importing
    `ledger`, and lets `structlog.testing.capture_logs()` see every event.
    """

    __slots__ = ("_name", "_stdlib")

    def __init__(self, name: str) -> None:
        self._name = name
        self._stdlib = structlog.stdlib.BoundLogger(
            logging.getLogger(name), processors=_STDLIB_PROCESSORS, context={}
        )

    def _target(self) -> Any:
        if structlog.is_configured():
            return structlog.get_logger(self._name)
        return self._stdlib

    def debug(self, event: str, **fields: Any) -> None:
        self._target().debug(event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self._target().info(event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._target().warning(event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._target().error(event, **fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._target().exception(event, **fields)


def get_logger(name: str) -> Logger:
    """The logger library code uses; `name` must start with ``smsledger.``."""
    if not name.startswith(ROOT + "."):
        raise ValueError(f"logger name {name!r} is not under {ROOT!r}")
    return Logger(name)
