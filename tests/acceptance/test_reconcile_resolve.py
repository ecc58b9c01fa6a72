"""The real `smsledger reconcile` and `smsledger resolve` commands: output, exit codes, and the
ledger they leave (a sandbox in this process on the real clock, the command in a subprocess)."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import CONFIG as BASE_CONFIG
from helpers import SMSLEDGER, clean_env, needs_smsledger

from ledger import Ledger, OrderState
from scheduler.provider.sandbox import DEFAULT_HASH, DEFAULT_KEY, Faults, Sandbox

pytestmark = needs_smsledger

CONFIG = (
    BASE_CONFIG
    + """\
[api]
base_url = "{url}"
key = "{key}"
hash = "{hash}"
[reconcile]
import_label = "from-panel"
"""
)
S = OrderState


@pytest.fixture
def work(tmp_path: Path, sandbox: Sandbox) -> Path:
    (tmp_path / "smsledger.toml").write_text(
        CONFIG.format(zone="Europe/Istanbul", url=sandbox.url, key=DEFAULT_KEY, hash=DEFAULT_HASH)
    )
    return tmp_path


def smsledger(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert SMSLEDGER is not None
    return subprocess.run(
        [SMSLEDGER, *args],
        cwd=work,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ledger_of(work: Path) -> Ledger:
    return Ledger(f"sqlite:///{work / 'ledger.db'}")


def test_reconcile_imports_a_panel_order_and_a_second_run_changes_nothing(
    work: Path, sandbox: Sandbox
) -> None:
    now = datetime.now(UTC)
    send_at = (now + timedelta(hours=3)).replace(second=0, microsecond=0)
    order_id = sandbox.add_panel_order(send_at, created_at=now - timedelta(days=1))

    dry = smsledger(work, "reconcile", "--dry-run", "--json")
    assert dry.returncode == 1  # no ledger yet: a dry run creates none
    assert "no ledger exists" in dry.stderr

    first = smsledger(work, "reconcile", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {
        "imported": 1,
        "cancelled_outside": 0,
        "delivery_updated": 0,
        "missing": 0,
        "unchanged": 0,
        "pages": 1,
        "orders_seen": 1,
    }
    with ledger_of(work) as ledger:
        order = ledger.get(order_id)
        assert (order.state, order.label, order.send_at) == (S.SCHEDULED, "from-panel", send_at)
        events = len(ledger.history(order_id))

    second = smsledger(work, "reconcile", "--days", "3")
    assert second.returncode == 0, second.stderr
    assert "imported           0" in second.stdout
    assert "unchanged          1" in second.stdout
    with ledger_of(work) as ledger:
        assert len(ledger.history(order_id)) == events

    cancel = smsledger(work, "cancel", order_id)
    assert cancel.returncode == 0, cancel.stderr


def test_reconcile_dry_run_writes_nothing(work: Path, sandbox: Sandbox) -> None:
    now = datetime.now(UTC)
    with ledger_of(work) as ledger:
        ledger.register("999000", now + timedelta(hours=1))
    sandbox.add_panel_order(now + timedelta(hours=2), created_at=now - timedelta(hours=1))
    before = (work / "ledger.db").read_bytes()

    done = smsledger(work, "reconcile", "--dry-run")

    assert done.returncode == 0, done.stderr
    assert "imported           1" in done.stdout
    assert "missing            1" in done.stdout
    assert "dry run: nothing was written" in done.stdout
    with ledger_of(work) as ledger:
        assert [o.order_id for o in ledger.orders()] == ["999000"]
    assert (work / "ledger.db").read_bytes() == before


def test_reconcile_exits_1_on_a_provider_error(work: Path, sandbox: Sandbox) -> None:
    sandbox.set_faults(Faults(fail_next={"get-reports": 1}))
    done = smsledger(work, "reconcile", "--json")
    assert done.returncode == 1
    assert "reconcile stopped" in done.stderr
    assert json.loads(done.stdout)["pages"] == 0


def test_reconcile_refuses_a_bad_days_value(work: Path) -> None:
    done = smsledger(work, "reconcile", "--days", "0")
    assert done.returncode == 2
    assert "--days" in done.stderr


def put_in_needs_attention(work: Path) -> str:
    with ledger_of(work) as ledger:
        order = ledger.register("4242", datetime.now(UTC) + timedelta(hours=1))
        now = ledger.now()
        for from_state, to_state in [
            (S.SCHEDULED, S.CANCEL_REQUESTED),
            (S.CANCEL_REQUESTED, S.CANCELLING),
            (S.CANCELLING, S.NEEDS_ATTENTION),
        ]:
            ledger.store.transition(order.order_id, from_state, to_state, now=now, reason="walk")
    return "4242"


def test_resolve_settles_needs_attention_with_note_and_name(work: Path) -> None:
    order_id = put_in_needs_attention(work)

    done = smsledger(
        work, "resolve", order_id, "--as", "not_found", "--note", "not in the panel", "--by", "ayse"
    )

    assert done.returncode == 0, done.stderr
    assert "not_found" in done.stdout
    history = json.loads(smsledger(work, "history", order_id, "--json").stdout)
    assert history[-1]["details"] == {"note": "not in the panel", "by": "ayse", "by_person": True}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--as", "cancelled", "--note", "x"], 2, "is scheduled, not needs_attention"),
        (["--as", "dispatched", "--note", "x"], 2, "invalid choice"),
        (["--as", "cancelled"], 2, "--note"),
        (["--as", "cancelled", "--note", ""], 2, "a note is required"),
    ],
)
def test_resolve_errors_are_one_line_with_their_exit_code(
    work: Path, args: list[str], code: int, message: str
) -> None:
    with ledger_of(work) as ledger:
        ledger.register("5151", datetime.now(UTC) + timedelta(hours=1))
    done = smsledger(work, "resolve", "5151", *args)
    assert done.returncode == code
    assert message in done.stderr
    assert done.stderr.count("\n") == 1
    with ledger_of(work) as ledger:
        assert ledger.get("5151").state is S.SCHEDULED


def test_resolve_of_an_unknown_order_is_exit_2(work: Path) -> None:
    with ledger_of(work):
        pass
    done = smsledger(work, "resolve", "nope", "--as", "cancelled", "--note", "x")
    assert done.returncode == 2
    assert "nope" in done.stderr


def test_resolve_without_a_ledger_is_exit_1(work: Path) -> None:
    done = smsledger(work, "resolve", "1", "--as", "cancelled", "--note", "x")
    assert done.returncode == 1
    assert not (work / "ledger.db").exists()
