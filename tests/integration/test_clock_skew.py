"""Clock skew: a sandbox whose clock (Date header and order lifecycle) runs 10 minutes ahead makes
the daemon warn, alert, and refuse a cancel the unwidened margins would have sent."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from receiver import Receiver
from structlog.testing import capture_logs

from ledger import Ledger, OrderState
from ledger.config import ALERT_EVENTS, AlertsConfig
from ledger.outbox import AlertPolicy, recent
from scheduler.daemon import Daemon
from scheduler.provider.client import CallObserved, IletiMerkeziClient
from scheduler.provider.sandbox import Faults, Sandbox
from scheduler.skew import SkewEstimator

TEN_MINUTES = 600.0


@pytest.mark.parametrize(("offset", "ends"), [(TEN_MINUTES, "cancel_refused"), (0.0, "cancelled")])
def test_a_provider_clock_ten_minutes_ahead_is_warned_alerted_and_widens_the_margins(
    tmp_path: Path,
    make_sandbox: Callable[..., Sandbox],
    make_client: Callable[..., IletiMerkeziClient],
    open_ledger: Callable[..., Ledger],
    receiver: Receiver,
    offset: float,
    ends: str,
) -> None:
    # queue_lead 0: the order stays pending at the provider until its (provider's) send time.
    sandbox = make_sandbox(Faults(clock_offset=offset), queue_lead=0)
    ledger = open_ledger()
    ledger.store.alerts = AlertPolicy(frozenset(ALERT_EVENTS))
    # 12 minutes ahead on our clock: outside the 5-minute refuse margin, so the unwidened
    # margins send the cancel; 2 minutes ahead on the provider's.
    send_at = ledger.now() + timedelta(minutes=12)
    sandbox.add_order("8001", send_at)
    ledger.register("8001", send_at)
    ledger.request_cancel("8001")
    daemon = Daemon(
        ledger,
        make_client(sandbox),
        alerts=AlertsConfig(webhook_url=receiver.url, timeout_seconds=2),
    )
    try:
        with capture_logs() as logs:
            daemon.run_once(30)
            daemon.run_once(30)  # the skew learnt in the first is checked at a pass's end
    finally:
        ledger.close()

    assert ledger.get("8001").state.value == ends
    cancel_calls = sandbox.truth()["orders"]["8001"]["cancel_calls"]
    skews = [e for e in logs if e["event"] == "clock_skew"]
    events = {r.payload["event"] for r in receiver.received}
    if offset:
        assert cancel_calls == 0
        assert daemon.skew.skew_seconds == pytest.approx(TEN_MINUTES, abs=2)
        assert len(skews) == 1
        assert skews[0]["log_level"] == "warning"
        assert {"clock_skew", "cancel_refused"} <= events
    else:
        assert cancel_calls == 1
        assert skews == []
        assert "clock_skew" not in events
    assert ledger.get("8001").state is OrderState(ends)
    assert {a.event for a in recent(ledger.store) if a.event == "clock_skew"} == (
        {"clock_skew"} if offset else set()
    )


def test_the_skew_is_the_median_against_each_calls_midpoint() -> None:
    from datetime import UTC, datetime

    estimator = SkewEstimator()
    sent = datetime(2031, 1, 1, 12, 0, 0, tzinfo=UTC)
    for seconds_ahead, took in ((10, 2.0), (10, 0.2), (300, 0.1)):
        provider = sent + timedelta(seconds=took / 2 + seconds_ahead)
        estimator.observe(
            CallObserved(
                endpoint="get-report",
                outcome="ok",
                seconds=took,
                sent_at=sent,
                answered_at=sent + timedelta(seconds=took),
                date_header=provider.strftime("%a, %d %b %Y %H:%M:%S GMT"),
            )
        )

    assert estimator.skew_seconds == pytest.approx(10, abs=1)
    assert estimator.widening() == timedelta(seconds=abs(estimator.skew_seconds or 0))
    assert SkewEstimator().widening() == timedelta(0)  # unknown: nothing to widen by
