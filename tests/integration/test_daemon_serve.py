"""`Daemon.serve` as a service: passes keep coming when the wall clock steps back, and the daemon
ends (status 1) when its SQLite ledger file is removed or replaced under it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time
from helpers import wait_for
from structlog.testing import capture_logs

from ledger import Ledger
from scheduler.daemon import Daemon, PassReport
from scheduler.provider.client import IletiMerkeziClient

NO_PROVIDER = "http://127.0.0.1:9"  # never called: these ledgers hold no cancel requests


class CountingDaemon(Daemon):
    """A daemon that counts its passes."""

    passes = 0

    def run_pass(self, *, wait: bool = False) -> PassReport:
        self.passes += 1
        return super().run_pass(wait=wait)


@pytest.fixture
def client() -> Iterator[IletiMerkeziClient]:
    made = IletiMerkeziClient(NO_PROVIDER, "key", "hash", timeout=1.0)
    yield made
    made.close()


def serving(
    daemon: Daemon, poll_seconds: float
) -> tuple[threading.Thread, threading.Event, list[int]]:
    stop = threading.Event()
    status: list[int] = []
    thread = threading.Thread(
        target=lambda: status.append(daemon.serve(poll_seconds, stop=stop)), daemon=True
    )
    thread.start()
    return thread, stop, status


def test_passes_keep_coming_after_the_wall_clock_steps_back_an_hour(
    ledger: Ledger, client: IletiMerkeziClient
) -> None:
    daemon = CountingDaemon(ledger, client)
    with freeze_time(datetime(2031, 3, 1, 12, tzinfo=UTC), tick=True) as wall:
        thread, stop, status = serving(daemon, 0.1)
        try:
            wait_for(lambda: daemon.passes >= 3, timeout=10, what="the first passes")
            with capture_logs() as logs:
                wall.move_to(datetime.now(UTC) - timedelta(hours=1))
                before = daemon.passes
                wait_for(
                    lambda: daemon.passes >= before + 3, timeout=10, what="passes after the step"
                )
        finally:
            stop.set()
            thread.join(15)
    assert status == [0]
    assert [e for e in logs if e["event"] == "wall_clock_stepped_back"]


@pytest.mark.parametrize("fault", ["removed", "replaced"])
def test_the_daemon_ends_with_status_1_when_its_ledger_file_is_removed_or_replaced(
    fault: str, ledger: Ledger, client: IletiMerkeziClient, tmp_path: Path
) -> None:
    daemon = CountingDaemon(ledger, client)
    path = tmp_path / "ledger.db"
    with capture_logs() as logs:
        thread, stop, status = serving(daemon, 0.1)
        try:
            wait_for(lambda: daemon.passes >= 1, timeout=10, what="a first pass")
            if fault == "removed":
                path.unlink()
            else:
                other = tmp_path / "other.db"
                other.write_bytes(path.read_bytes())
                other.replace(path)
            thread.join(15)
        finally:
            stop.set()
            thread.join(15)
    assert status == [1]
    event = "ledger_file_missing" if fault == "removed" else "ledger_file_replaced"
    [entry] = [e for e in logs if e["event"] == event]
    assert entry["log_level"] == "error"
    assert entry["path"] == str(path)
