"""`Daemon.serve`'s signal handlers only set flags: no log line, no I/O.

A Python signal handler runs on the main thread between any two bytecodes, maybe while that
thread is writing a log line and holds the writer's lock (not reentrant). A handler that logged
there would deadlock the daemon, which then ignores SIGTERM (CI saw a daemon not stop within
30 s of SIGTERM right after a SIGHUP). Here another thread holds the writer's lock, as a line
being written does; every handler must still return at once.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import structlog

from ledger.config import LogConfig
from ledger.logsetup import configure_logging
from scheduler.daemon import ServeSignals


def test_the_handlers_return_while_a_log_line_is_being_written(tmp_path: Path) -> None:
    configure_logging(LogConfig(path=str(tmp_path / "log.jsonl")))
    writer = structlog.get_config()["logger_factory"]()
    signals = ServeSignals(threading.Event())

    def deliver() -> None:
        signals.on_hangup(signal.SIGHUP, None)
        signals.on_stop(signal.SIGTERM, None)
        signals.on_stop(signal.SIGINT, None)

    with writer._lock:  # a line being written
        handler = threading.Thread(target=deliver, daemon=True)
        handler.start()
        handler.join(timeout=2)
        assert not handler.is_alive(), "a signal handler waited for the log writer"

    assert signals.hangup.is_set() and signals.stop.is_set()
    assert signals.received == signal.SIGTERM, "the first stop signal is the one logged"
    assert (tmp_path / "log.jsonl").read_text() == "", "the loop logs, not the handlers"
