"""The alerts outbox end to end: rows written with the transition, delivered by the daemon's
sender to a real receiver (an HTTP server in the test), at least once, signed, never lost."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from helpers import wait_for
from receiver import Receiver
from structlog.testing import capture_logs

from ledger import CancelRefused, Ledger, OrderState
from ledger.config import ALERT_EVENTS, AlertsConfig
from ledger.outbox import AlertPolicy, recent
from scheduler.alerting import AlertSender
from scheduler.daemon import Daemon
from scheduler.provider.client import IletiMerkeziClient
from scheduler.provider.sandbox import Sandbox

SECRET = "alert-hmac-7d1e9b"
PAYLOAD_KEYS = {
    "alert_id",
    "event",
    "order_id",
    "state",
    "reason",
    "send_at",
    "label",
    "at",
    "text",
}


@pytest.fixture
def ledger(open_ledger: Callable[..., Ledger]) -> Ledger:
    """The tier's ledger, recording every alert event."""
    opened = open_ledger()
    opened.store.alerts = AlertPolicy(frozenset(ALERT_EVENTS))
    return opened


def alerts_config(receiver: Receiver, **overrides: Any) -> AlertsConfig:
    values: dict[str, Any] = {"webhook_url": receiver.url, "secret": SECRET, "timeout_seconds": 2}
    return AlertsConfig(**{**values, **overrides})


def refuse(ledger: Ledger, *order_ids: str) -> None:
    """Register orders inside the refuse margin and ask to cancel them: each ends cancel_refused,
    and that transition writes an alert in its own transaction."""
    for order_id in order_ids:
        ledger.register(order_id, ledger.now() + timedelta(minutes=2), label=f"campaign {order_id}")
        with pytest.raises(CancelRefused):
            ledger.request_cancel(order_id)


def serving(daemon: Daemon) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=daemon.serve, args=(0.1,), kwargs={"stop": stop}, daemon=True)
    thread.start()
    return thread, stop


def test_a_state_alert_is_written_in_the_transition_and_reaches_the_receiver_once_signed(
    ledger: Ledger, receiver: Receiver, make_sandbox: Callable[..., Sandbox],
    make_client: Callable[..., IletiMerkeziClient],
) -> None:  # fmt: skip
    refuse(ledger, "5001", "5002", "5003")
    assert [a.order_id for a in recent(ledger.store, pending_only=True)] == ["5003", "5002", "5001"]
    daemon = Daemon(ledger, make_client(make_sandbox()), alerts=alerts_config(receiver))
    thread, stop = serving(daemon)
    try:
        wait_for(lambda: len(receiver.received) >= 3, timeout=20, what="three alerts")
    finally:
        stop.set()
        thread.join(20)

    assert sorted(receiver.ids().values()) == [1, 1, 1]
    for got in receiver.received:
        assert got.signed_by(SECRET)
        assert got.headers["idempotency-key"] == got.payload["alert_id"]
        assert got.headers["content-type"] == "application/json"
        assert set(got.payload) == PAYLOAD_KEYS
        assert got.payload["event"] == "cancel_refused"
        assert got.payload["state"] == "cancel_refused"
        assert got.payload["label"] == f"campaign {got.payload['order_id']}"
        assert got.payload["order_id"] in got.payload["text"]
    assert {a.status for a in recent(ledger.store)} == {"delivered"}


def test_a_change_that_does_not_apply_writes_no_alert_and_events_not_asked_for_none(
    ledger: Ledger,
) -> None:
    ledger.store.alerts = AlertPolicy(frozenset({"needs_attention"}))
    refuse(ledger, "5101")
    result = ledger.store.transition(
        "5101", OrderState.SCHEDULED, OrderState.CANCEL_REFUSED, now=ledger.now(), reason="again"
    )

    assert not result.applied
    assert recent(ledger.store) == []


def test_alerts_written_while_the_receiver_is_down_all_arrive_once_it_is_back(
    ledger: Ledger, receiver: Receiver
) -> None:
    receiver.mode = "down"
    refuse(ledger, "5201", "5202")
    sender = AlertSender(
        ledger.store, alerts_config(receiver), owner="t:1:a", poll_seconds=0.05,
        backoff_cap_seconds=0.2,
    )  # fmt: skip
    sender.start()
    try:
        wait_for(lambda: receiver.attempts >= 6, timeout=20, what="several refused deliveries")
        assert receiver.received == []
        assert all(a.status == "pending" and a.attempts >= 1 for a in recent(ledger.store))
        receiver.mode = "ok"
        wait_for(lambda: len(receiver.received) >= 2, timeout=20, what="both alerts")
    finally:
        sender.stop()
    assert sorted(receiver.ids().values()) == [1, 1]
    assert {a.status for a in recent(ledger.store)} == {"delivered"}


def test_an_alert_the_receiver_never_takes_is_given_up_loudly_without_the_secret(
    ledger: Ledger, receiver: Receiver
) -> None:
    receiver.mode = "down"
    refuse(ledger, "5301")
    sender = AlertSender(
        ledger.store, alerts_config(receiver, give_up_after_seconds=0.5), owner="t:1:a",
        poll_seconds=0.05, backoff_cap_seconds=0.1,
    )  # fmt: skip
    with capture_logs() as logs:
        sender.start()
        try:
            wait_for(
                lambda: recent(ledger.store)[0].status == "given_up", timeout=20, what="give up"
            )
        finally:
            sender.stop()

    given_up = [e for e in logs if e["event"] == "alert_given_up"]
    assert len(given_up) == 1
    assert given_up[0]["log_level"] == "error"
    text = json.dumps(logs, default=str) + json.dumps(
        [a.payload() for a in recent(ledger.store)] + [a.last_error for a in recent(ledger.store)]
    )
    assert SECRET not in text
    assert "s3cr3t-path" not in text


def test_two_daemons_send_each_alert_once(ledger: Ledger, receiver: Receiver) -> None:
    refuse(ledger, *(str(6000 + n) for n in range(30)))
    senders = [
        AlertSender(ledger.store, alerts_config(receiver), owner=f"t:1:{n}", poll_seconds=0.01)
        for n in range(2)
    ]
    for sender in senders:
        sender.start()
    try:
        wait_for(lambda: len(receiver.received) >= 30, timeout=120, what="thirty alerts")
    finally:
        for sender in senders:
            sender.stop()
    assert len(receiver.ids()) == 30
    assert set(receiver.ids().values()) == {1}


def test_a_hanging_receiver_does_not_hold_up_cancels(
    ledger: Ledger, receiver: Receiver, make_sandbox: Callable[..., Sandbox],
    make_client: Callable[..., IletiMerkeziClient],
) -> None:  # fmt: skip
    receiver.mode = "hang"
    refuse(ledger, "5401")
    sandbox = make_sandbox()
    send_at = ledger.now() + timedelta(hours=1)
    sandbox.add_order("5402", send_at)
    ledger.register("5402", send_at)
    daemon = Daemon(
        ledger, make_client(sandbox), alerts=alerts_config(receiver, timeout_seconds=60)
    )
    thread, stop = serving(daemon)
    try:
        wait_for(lambda: receiver.hanging >= 1, timeout=20, what="the sender to hang")
        ledger.request_cancel("5402")
        wait_for(
            lambda: ledger.get("5402").state is OrderState.CANCELLED, timeout=20, what="cancel"
        )
        assert receiver.hanging == 1  # still held: the cancel did not wait for it
        assert receiver.received == []
    finally:
        receiver.release()
        stop.set()
        thread.join(30)
