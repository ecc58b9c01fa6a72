"""Operations through the real command: alerts listed, tested and never lost to a SIGKILL, the
no-daemon warning of `cancel` and `check`, and `check`'s clock line."""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import SMSLEDGER, clean_env, needs_smsledger, wait_for
from receiver import Receiver

from ledger import Ledger
from ledger.heartbeats import NO_DAEMON, daemons
from ledger.outbox import recent
from scheduler.provider.sandbox import Faults, Sandbox

pytestmark = needs_smsledger

SECRET = "alert-hmac-acc-31f"
CONFIG = """\
[ledger]
url = "sqlite:///ledger.db"
synchronous = "NORMAL"
[api]
base_url = "{base_url}"
key = "k-ops"
hash = "h-ops"
timeout_seconds = 1
[scheduler]
poll_seconds = 0.2
[alerts]
webhook_url = "{webhook}"
timeout_seconds = 1
[log]
path = "log.jsonl"
"""


@pytest.fixture
def sandbox_options() -> dict[str, Any]:
    return {"key": "k-ops", "hash": "h-ops"}


def setup(tmp_path: Path, sandbox: Sandbox, webhook: str = "") -> Ledger:
    (tmp_path / "smsledger.toml").write_text(CONFIG.format(base_url=sandbox.url, webhook=webhook))
    return Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", synchronous="NORMAL")


def smsledger(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert SMSLEDGER is not None
    return subprocess.run(
        [SMSLEDGER, *args],
        cwd=tmp_path,
        env=clean_env(SMSLEDGER_ALERT_SECRET=SECRET),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def start_daemon(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    assert SMSLEDGER is not None
    proc = subprocess.Popen(
        [SMSLEDGER, "run"],
        cwd=tmp_path,
        env=clean_env(SMSLEDGER_ALERT_SECRET=SECRET),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(proc)
    return proc


def future(minutes: float) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


def test_cancel_and_check_warn_while_no_daemon_runs_and_not_once_one_does(
    tmp_path: Path, make_sandbox: Any, started: list[subprocess.Popen[bytes]]
) -> None:
    sandbox = make_sandbox()
    with setup(tmp_path, sandbox) as ledger:
        for order_id in ("7001", "7002"):
            sandbox.add_order(order_id, future(60))
            ledger.register(order_id, future(60))

        alone = smsledger(tmp_path, "cancel", "7001")
        check_alone = smsledger(tmp_path, "check")
        start_daemon(tmp_path, started)
        wait_for(lambda: bool(daemons(ledger.store)), timeout=30, what="a heartbeat")
        served = smsledger(tmp_path, "cancel", "7002")
        check_served = smsledger(tmp_path, "check")

    assert alone.returncode == 0
    assert f"warning: {NO_DAEMON}" in alone.stderr
    assert NO_DAEMON in check_alone.stderr
    assert "none seen" in check_alone.stdout
    assert served.returncode == 0
    assert NO_DAEMON not in served.stderr
    assert NO_DAEMON not in check_served.stdout + check_served.stderr
    daemons_line = next(x for x in check_served.stdout.splitlines() if x.startswith("daemons"))
    assert " ok " in daemons_line
    assert "last pass" in daemons_line


def test_alerts_lists_pending_alerts_and_alerts_test_reports_the_receivers_answer(
    tmp_path: Path, make_sandbox: Any, receiver: Receiver
) -> None:
    with setup(tmp_path, make_sandbox(), receiver.url) as ledger:
        ledger.register("7101", future(2), label="flash sale")
    refused = smsledger(tmp_path, "cancel", "7101")
    listed = smsledger(tmp_path, "alerts", "--pending", "--json")
    table = smsledger(tmp_path, "alerts")
    tested = smsledger(tmp_path, "alerts", "test")
    receiver.mode = "down"
    failed = smsledger(tmp_path, "alerts", "test")

    assert refused.returncode == 1
    [alert] = json.loads(listed.stdout)
    assert alert["event"] == "cancel_refused"
    assert alert["order_id"] == "7101"
    assert alert["label"] == "flash sale"
    assert alert["delivery"] == "pending"
    assert "cancel_refused" in table.stdout
    assert tested.returncode == 0, tested.stderr
    assert "answered 204" in tested.stdout
    [got] = receiver.received
    assert got.payload["event"] == "test"
    assert got.signed_by(SECRET)
    assert failed.returncode == 1
    assert "HTTP 503" in failed.stderr
    everything = (
        "".join([*(r.stdout + r.stderr for r in (refused, listed, table, tested, failed))])
        + (tmp_path / "log.jsonl").read_text()
    )
    assert SECRET not in everything
    assert "s3cr3t-path" not in everything


def test_an_alert_whose_daemon_was_sigkilled_before_delivery_is_delivered_after_restart(
    tmp_path: Path, make_sandbox: Any, receiver: Receiver, started: list[subprocess.Popen[bytes]]
) -> None:
    receiver.mode = "down"
    with setup(tmp_path, make_sandbox(), receiver.url) as ledger:
        ledger.register("7201", future(2))
        assert smsledger(tmp_path, "cancel", "7201").returncode == 1  # refused: an alert row
        first = start_daemon(tmp_path, started)
        wait_for(lambda: receiver.attempts >= 1, timeout=30, what="a delivery attempt")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert receiver.received == []
        assert recent(ledger.store)[0].status == "pending"

        receiver.mode = "ok"
        start_daemon(tmp_path, started)
        wait_for(lambda: len(receiver.received) >= 1, timeout=60, what="the delivery")
        wait_for(
            lambda: recent(ledger.store)[0].status == "delivered", timeout=30, what="delivered"
        )

    assert [r.payload["order_id"] for r in receiver.received] == ["7201"]


@pytest.mark.parametrize(("offset", "exit_code"), [(0.0, 0), (600.0, 1)])
def test_check_prints_the_clock_skew_and_fails_above_the_limit(
    tmp_path: Path, make_sandbox: Any, offset: float, exit_code: int
) -> None:
    with setup(tmp_path, make_sandbox(Faults(clock_offset=offset))):
        pass
    checked = smsledger(tmp_path, "check")

    clock = next(x for x in checked.stdout.splitlines() if x.startswith("clock"))
    assert checked.returncode == exit_code, checked.stdout + checked.stderr
    if offset:
        assert "FAIL" in clock
        assert "ahead of this host's" in clock
        assert "600." in clock or "599." in clock or "601." in clock
    else:
        assert " ok " in clock
