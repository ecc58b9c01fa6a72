"""`smsledger backup PATH`: a consistent copy of a SQLite ledger taken while a daemon writes to
it, restored and read; PostgreSQL refused with the pg_dump line; an existing file never
overwritten."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import SMSLEDGER, clean_env, needs_smsledger, wait_for

from ledger import Ledger, OrderState
from scheduler.provider.sandbox import Faults, Sandbox

pytestmark = needs_smsledger

CONFIG = """\
[ledger]
url = "{url}"
synchronous = "NORMAL"
[api]
base_url = "{base_url}"
key = "k-backup"
hash = "h-backup"
timeout_seconds = 2
[scheduler]
poll_seconds = 0.2
[log]
path = "log.jsonl"
"""
ORDERS = 120


@pytest.fixture
def sandbox_options() -> dict[str, Any]:
    return {"key": "k-backup", "hash": "h-backup"}


def smsledger(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert SMSLEDGER is not None
    return subprocess.run(
        [SMSLEDGER, *args],
        cwd=folder,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write_config(folder: Path, sandbox: Sandbox, url: str = "sqlite:///ledger.db") -> None:
    (folder / "smsledger.toml").write_text(CONFIG.format(url=url, base_url=sandbox.url))


def test_a_backup_taken_while_a_daemon_cancels_restores_to_a_consistent_ledger(
    tmp_path: Path, make_sandbox: Any, started: list[subprocess.Popen[bytes]]
) -> None:
    # Each provider call takes 20 ms: the daemon is still writing while the backup runs.
    sandbox = make_sandbox(Faults(latency=0.02))
    live = tmp_path / "live"
    live.mkdir()
    write_config(live, sandbox)
    send_at = datetime.now(UTC) + timedelta(hours=1)
    ids = [str(500000 + n) for n in range(ORDERS)]
    with Ledger(f"sqlite:///{live / 'ledger.db'}", synchronous="NORMAL") as ledger:
        ledger.register_many([(oid, send_at) for oid in ids])
        for oid in ids:
            sandbox.add_order(oid, send_at)
        for oid in ids:
            ledger.request_cancel(oid)
        assert SMSLEDGER is not None
        started.append(
            subprocess.Popen(
                [SMSLEDGER, "run"],
                cwd=live,
                env=clean_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

        def some_cancelled() -> bool:
            return bool(ledger.orders(state=OrderState.CANCELLED, limit=1))

        wait_for(some_cancelled, timeout=60, what="the daemon cancelling")
        done = smsledger(live, "backup", str(tmp_path / "copy.db"))
        at_backup_end = {o.order_id: o.state for o in ledger.store.orders()}
    assert done.returncode == 0, done.stderr
    assert f"{ORDERS} orders" in done.stdout
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())
    assert not (tmp_path / "copy.db-wal").exists()  # one self-contained file

    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copy(tmp_path / "copy.db", restored / "ledger.db")
    write_config(restored, sandbox)
    listed = smsledger(restored, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    with Ledger(f"sqlite:///{restored / 'ledger.db'}", must_exist=True) as copy:
        orders = copy.store.orders()
        assert {o.order_id for o in orders} == set(ids)
        # A snapshot: every order's state is the one its last history row says, and none is
        # further along than the live ledger was when the backup ended.
        for order in orders:
            history = copy.history(order.order_id)
            assert history[-1].to_state is order.state
        states = {o.state for o in orders}
        progressed = [o for o in orders if o.state is not OrderState.CANCEL_REQUESTED]
    assert progressed  # taken mid-run: some cancels were already done
    assert states <= {
        OrderState.CANCEL_REQUESTED,
        OrderState.CANCELLING,
        OrderState.CANCELLED,
    }
    final_live = {oid for oid, state in at_backup_end.items() if state is OrderState.CANCELLED}
    assert {o.order_id for o in orders if o.state is OrderState.CANCELLED} <= final_live


def test_backup_refuses_postgresql_with_the_pg_dump_line_and_never_overwrites(
    tmp_path: Path, make_sandbox: Any
) -> None:
    sandbox = make_sandbox()
    write_config(tmp_path, sandbox)
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        ledger.register("1", datetime.now(UTC) + timedelta(hours=1))
    (tmp_path / "taken.db").write_text("keep me")
    taken = smsledger(tmp_path, "backup", "taken.db")
    pg = tmp_path / "pg"
    pg.mkdir()
    write_config(pg, sandbox, url="postgresql+psycopg://smsledger@db.invalid/smsledger")
    refused = smsledger(pg, "backup", "copy.db")
    missing = tmp_path / "missing"
    missing.mkdir()
    write_config(missing, sandbox)
    nothing = smsledger(missing, "backup", "copy.db")

    assert taken.returncode == 2
    assert "already exists" in taken.stderr
    assert (tmp_path / "taken.db").read_text() == "keep me"
    assert refused.returncode == 2
    assert "pg_dump --format=custom" in refused.stderr
    assert not (pg / "copy.db").exists()
    assert nothing.returncode == 1
    assert "no ledger exists" in nothing.stderr
    assert not (missing / "ledger.db").exists()
    for result in (taken, refused, nothing):
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
