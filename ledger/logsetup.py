"""JSON-lines logging for smsledger, and the processor that keeps credentials out of it.

Importing `ledger` configures nothing, and library code never writes a stream of its own (see
`ledger._log`): an application keeps its own structlog and `logging` setup. Only the command, the
daemon and ``Ledger.from_config(..., setup_logging=True)`` call `configure_logging`, which
configures structlog for the whole process.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

from ledger.config import LogConfig

__all__ = [
    "SecretRedactor",
    "configure_logging",
    "log_write_failures",
    "redactor",
    "reopen_log_files",
]

REDACTED = "[REDACTED]"
_SENSITIVE_KEYS = frozenset({"key", "hash", "api_key", "api_hash", "authentication", "password"})


class SecretRedactor:
    """A structlog processor that removes known secret values wherever they appear in an event.

    It replaces values under sensitive key names and any occurrence of a registered secret inside
    strings, lists, tuples and dicts, so an exception text or a response body that echoes the
    credentials cannot carry them into the log.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Register more secret values (empty strings are ignored)."""
        with self._lock:
            merged = set(self._secrets) | {s for s in secrets if s}
            # Longest first so a secret that contains another is replaced whole.
            self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def scrub(self, value: Any) -> Any:  # noqa: PLR0911 - one return per kind of value
        """Return `value` with every registered secret replaced."""
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, dict):
            return {
                self.scrub(k): (
                    REDACTED if str(k).lower() in _SENSITIVE_KEYS and v else self.scrub(v)
                )
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return type(value)(self.scrub(v) for v in value)
        if isinstance(value, bytes | bytearray):
            return self.scrub(bytes(value).decode("utf-8", errors="replace"))
        if isinstance(value, BaseException):
            return self.scrub(f"{type(value).__name__}: {value}")
        # Anything else would be stringified by the renderer: scrub that string now.
        return self.scrub(str(value))

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        for key in list(event_dict):
            value = event_dict[key]
            if key.lower() in _SENSITIVE_KEYS and value:
                event_dict[key] = REDACTED
            else:
                event_dict[key] = self.scrub(value)
        return event_dict


#: The process-wide redactor; `configure_logging` installs it and registers the config's secrets.
redactor = SecretRedactor()


_failures_lock = threading.Lock()
_failures = 0
_reported = False


def log_write_failures() -> int:
    """How many log lines this process could not write (a full disk, a broken file, ...)."""
    with _failures_lock:
        return _failures


def _write_failed(where: str, exc: OSError) -> None:
    """Count a lost log line; say so on stderr the first time only, then carry on.

    Logging must never stop or falsify work: a worker that died on a full disk left its order
    ``cancelling`` and made `cancel` report failure for a committed request.
    """
    global _failures, _reported  # noqa: PLW0603 - one count per process, read by metrics
    with _failures_lock:
        _failures += 1
        first = not _reported
        _reported = True
    if first:
        with contextlib.suppress(Exception):  # stderr may be the broken sink itself
            sys.stderr.write(
                f"smsledger: cannot write the log {where}: {exc.strerror or exc}; "
                "carrying on without it\n"
            )
            sys.stderr.flush()


class _AppendLogger:
    """Writes each line with one `write(2)` on an O_APPEND descriptor.

    On a local file system that keeps whole lines from several processes from interleaving.
    """

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self._path = path
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        data = (message + "\n").encode("utf-8")
        try:
            with self._lock:
                written = os.write(self._fd, data)
        except OSError as exc:
            _write_failed(self._path, exc)
            return
        if written < len(data):  # a full disk can take part of a line: the rest is lost
            _write_failed(self._path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class _StreamLogger(structlog.WriteLogger):
    """structlog's `WriteLogger`, counting a line it cannot write instead of raising."""

    def msg(self, message: str) -> None:
        try:
            super().msg(message)
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            _write_failed("on stderr", exc if isinstance(exc, OSError) else OSError(str(exc)))

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


_open_fds: dict[str, int] = {}


def reopen_log_files() -> list[str]:
    """Reopen every log file this process writes (after logrotate moved it: SIGHUP).

    The new file takes the old descriptor's number (`dup2`), so a line being written goes whole
    to one file or the other and none is lost. Returns the paths reopened.
    """
    reopened = []
    for path, fd in list(_open_fds.items()):
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            new = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            _write_failed(path, exc)
            continue
        try:
            os.dup2(new, fd)
        finally:
            os.close(new)
        reopened.append(path)
    return reopened


def configure_logging(
    log: LogConfig, *, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> None:
    """Send structlog events to `log.path` as JSON lines (``-`` writes to `stream` or stderr).

    Every line carries an ISO-8601 UTC ``timestamp``, ``level`` and ``event``; secrets are
    redacted before rendering.
    """
    redactor.add(*secrets)
    logger: _AppendLogger | _StreamLogger
    if log.path == "-":
        logger = _StreamLogger(stream or sys.stderr)
    else:
        path = str(Path(log.path).expanduser())
        fd = _open_fds.get(path)
        if fd is None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            _open_fds[path] = fd
        logger = _AppendLogger(fd, path)
    level = logging.getLevelNamesMapping()[log.level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor,
            structlog.processors.JSONRenderer(ensure_ascii=False, default=str),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *args: logger,
        cache_logger_on_first_use=False,
    )
