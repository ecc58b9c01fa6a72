"""`scheduler.reconcile` against the sandbox over HTTP: each case of the issue, paging and
slicing, listing statuses of orders not yet due never trusted alone, idempotence, dry runs and a
provider error half way."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import FakeClock
from structlog.testing import capture_logs

import scheduler
from ledger import Ledger, OrderState
from scheduler.provider.client import IletiMerkeziClient
from scheduler.provider.sandbox import Faults, Sandbox
from scheduler.reconciling import IMPORT_REASON, ReconcileIncomplete, ReconcileReport, day_slices

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)  # 12:00 in Istanbul
TODAY = date(2026, 12, 1)
SINCE = TODAY - timedelta(days=9)
S = OrderState


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def sandbox_options(clock: FakeClock) -> dict[str, Any]:
    return {"clock": clock}


@pytest.fixture
def ledger_options(clock: FakeClock) -> dict[str, Any]:
    return {"clock": clock}


def run(ledger: Ledger, client: IletiMerkeziClient, **options: Any) -> ReconcileReport:
    return scheduler.reconcile(ledger, client, since=SINCE, until=TODAY, **options)


def all_rows(ledger: Ledger) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the ledger's tables, to prove that nothing was written."""
    with ledger.store.read() as conn:
        return {
            name: sorted(tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {name}")))
            for name in ("smsledger_orders", "smsledger_order_events")
        }


def known(sandbox: Sandbox, ledger: Ledger, send_at: datetime, **options: Any) -> str:
    """An order the provider has and the ledger registered, created an hour ago."""
    order_id = sandbox.add_panel_order(send_at, created_at=T0 - timedelta(hours=1), **options)
    ledger.register(order_id, send_at)
    return order_id


# -- the cases ---------------------------------------------------------------------------------


def test_an_unknown_future_order_confirmed_pending_is_imported_and_can_be_cancelled(
    sandbox: Sandbox, client: IletiMerkeziClient, ledger: Ledger
) -> None:
    send_at = T0 + timedelta(hours=5)
    order_id = sandbox.add_panel_order(send_at, created_at=T0 - timedelta(days=2))

    report = run(ledger, client)

    assert (report.imported, report.orders_seen, report.pages) == (1, 1, 1)
    order = ledger.get(order_id)
    assert (order.state, order.send_at, order.label, order.reason) == (
        S.SCHEDULED,
        send_at,
        "imported",
        IMPORT_REASON,
    )
    assert ledger.request_cancel(order_id).state is S.CANCEL_REQUESTED


def test_unknown_orders_already_sent_or_cancelled_are_not_imported(
    sandbox: Sandbox, client: IletiMerkeziClient, ledger: Ledger
) -> None:
    sandbox.add_panel_order(T0 - timedelta(hours=3), created_at=T0 - timedelta(hours=4))
    cancelled = sandbox.add_panel_order(T0 + timedelta(hours=3), created_at=T0)
    sandbox.cancel_in_panel(cancelled)
    report = run(ledger, client)
    assert (report.imported, report.unchanged) == (0, 2)
    assert ledger.orders() == []


def test_a_known_scheduled_order_cancelled_in_the_panel_becomes_cancelled_outside(
    sandbox: Sandbox, client: IletiMerkeziClient, ledger: Ledger
) -> None:
    order_id = known(sandbox, ledger, T0 + timedelta(hours=2))
    sandbox.cancel_in_panel(order_id)

    report = run(ledger, client)

    assert report.cancelled_outside == 1
    order = ledger.get(order_id)
    assert order.state is S.CANCELLED
    assert order.reason == "cancelled outside smsledger (provider reports 115)"
    event = ledger.history(order_id)[-1]
    assert (event.from_state, event.to_state) == (S.SCHEDULED, S.CANCELLED)
    assert event.details["source"] == "reconcile (get-report)"
    truth = sandbox.truth()["orders"][order_id]
    assert truth["cancel_calls"] == 0  # reconcile never sends a cancel


@pytest.mark.parametrize("listing_status", [113, 114, 115])
def test_a_not_yet_due_listing_status_alone_changes_nothing(
    sandbox: Sandbox,
    client: IletiMerkeziClient,
    ledger: Ledger,
    listing_status: int,
) -> None:
    """Whatever the listing says of an order not yet due, get-report's 456 wins."""
    sandbox.set_pending_listing_status(listing_status)
    order_id = known(sandbox, ledger, T0 + timedelta(hours=2))
    before = all_rows(ledger)

    report = run(ledger, client)

    assert (report.unchanged, report.cancelled_outside, report.delivery_updated) == (1, 0, 0)
    assert all_rows(ledger) == before
    assert ledger.get(order_id).state is S.SCHEDULED


def test_past_orders_take_the_listing_outcome_with_delivery_counters(
    sandbox: Sandbox, client: IletiMerkeziClient, ledger: Ledger, clock: FakeClock
) -> None:
    sent = known(sandbox, ledger, T0 + timedelta(minutes=30), recipients=4)
    sandbox.set_undelivered(sent, 1)
    dispatched = known(sandbox, ledger, T0 + timedelta(minutes=30), recipients=2)
    sending = known(sandbox, ledger, T0 + timedelta(minutes=60), recipients=3)
    cancelled_late = known(sandbox, ledger, T0 + timedelta(minutes=40))
    sandbox.cancel_in_panel(cancelled_late)
    clock.set(T0 + timedelta(hours=1))  # sending is within its 30 s of sending
    ledger.store.transition(
        dispatched, S.SCHEDULED, S.DISPATCHED, now=clock(), reason="send time passed"
    )

    report = run(ledger, client)

    assert (report.delivery_updated, report.cancelled_outside) == (3, 1)
    order = ledger.get(sent)
    assert order.state is S.DISPATCHED
    assert order.delivery is not None
    assert (order.delivery.total, order.delivery.delivered, order.delivery.undelivered) == (4, 3, 1)
    assert ledger.history(sent)[-1].details["provider_code"] == 114
    assert ledger.get(dispatched).delivery is not None
    assert ledger.get(dispatched).last_provider_code == 114
    in_flight = ledger.get(sending)
    assert (in_flight.state, in_flight.last_provider_code, in_flight.waiting) == (
        S.SCHEDULED,
        113,
        3,
    )
    assert ledger.get(cancelled_late).state is S.CANCELLED

    clock.set(T0 + timedelta(hours=2))  # the 113 one completed: a later run records it
    again = run(ledger, client)
    assert again.delivery_updated == 1
    assert ledger.get(sending).state is S.DISPATCHED
    assert ledger.get(sending).delivered == 3


def test_a_known_order_the_provider_does_not_list_is_reported_missing_and_kept(
    sandbox: Sandbox, client: IletiMerkeziClient, ledger: Ledger
) -> None:
    ledger.register("999000", T0 + timedelta(hours=1))
    with capture_logs() as logs:
        report = run(ledger, client)
    assert report.missing == 1
    assert [e["order_id"] for e in logs if e["event"] == "reconcile_missing"] == ["999000"]
    assert ledger.get("999000").state is S.SCHEDULED
    assert len(ledger.history("999000")) == 1


def test_a_send_time_that_differs_is_warned_with_both_and_the_ledger_keeps_its_own(
    sandbox: Sandbox, client: IletiMerkeziClient, ledger: Ledger
) -> None:
    provider_time = T0 + timedelta(hours=3)
    order_id = sandbox.add_panel_order(provider_time, created_at=T0)
    ledger.register(order_id, T0 + timedelta(hours=2))
    with capture_logs() as logs:
        run(ledger, client)
    (warning,) = [e for e in logs if e["event"] == "send_time_mismatch"]
    assert warning["provider_send_at"] == provider_time.isoformat()
    assert warning["ledger_send_at"] == (T0 + timedelta(hours=2)).isoformat()
    assert ledger.get(order_id).send_at == T0 + timedelta(hours=2)


# -- paging, slicing, idempotence, dry run, errors ---------------------------------------------


def test_more_than_30_orders_are_read_page_by_page(
    sandbox: Sandbox, client: IletiMerkeziClient, ledger: Ledger
) -> None:
    for n in range(45):
        sandbox.add_panel_order(T0 + timedelta(hours=1), created_at=T0 - timedelta(minutes=n))
    report = run(ledger, client)
    assert (report.pages, report.orders_seen, report.imported) == (2, 45, 45)
    assert len(ledger.orders()) == 45


def test_a_range_over_10_days_is_read_in_slices(
    sandbox: Sandbox, client: IletiMerkeziClient, ledger: Ledger
) -> None:
    since = TODAY - timedelta(days=24)
    assert list(day_slices(since, TODAY)) == [
        (since, since + timedelta(days=9)),
        (since + timedelta(days=10), since + timedelta(days=19)),
        (since + timedelta(days=20), TODAY),
    ]
    for days_ago in (24, 15, 1):
        sandbox.add_panel_order(T0 + timedelta(hours=1), created_at=T0 - timedelta(days=days_ago))
    report = scheduler.reconcile(ledger, client, since=since, until=TODAY)
    assert (report.pages, report.imported) == (3, 3)
    assert sandbox.truth()["totals"]["get-reports"]["codes"] == {"200": 3}  # never a 458


def test_a_second_run_right_after_the_first_writes_no_event(
    sandbox: Sandbox, client: IletiMerkeziClient, ledger: Ledger, clock: FakeClock
) -> None:
    sandbox.add_panel_order(T0 + timedelta(hours=5), created_at=T0)
    cancelled = known(sandbox, ledger, T0 + timedelta(hours=2))
    sandbox.cancel_in_panel(cancelled)
    past = known(sandbox, ledger, T0 + timedelta(minutes=10), recipients=2)
    ledger.register("999000", T0 + timedelta(hours=1))
    clock.set(T0 + timedelta(minutes=30))
    first = run(ledger, client)
    assert (first.imported, first.cancelled_outside, first.delivery_updated) == (1, 1, 1)
    assert ledger.get(past).state is S.DISPATCHED
    after_first = all_rows(ledger)

    second = run(ledger, client)

    assert (second.imported, second.cancelled_outside, second.delivery_updated) == (0, 0, 0)
    assert second.unchanged == second.orders_seen == 3
    assert all_rows(ledger) == after_first


def test_a_dry_run_writes_nothing_and_counts_what_it_would_do(
    sandbox: Sandbox, client: IletiMerkeziClient, ledger: Ledger, clock: FakeClock
) -> None:
    sandbox.add_panel_order(T0 + timedelta(hours=5), created_at=T0)
    cancelled = known(sandbox, ledger, T0 + timedelta(hours=2))
    sandbox.cancel_in_panel(cancelled)
    known(sandbox, ledger, T0 + timedelta(minutes=10))
    clock.set(T0 + timedelta(minutes=30))
    before = all_rows(ledger)

    report = run(ledger, client, dry_run=True)

    assert (report.imported, report.cancelled_outside, report.delivery_updated) == (1, 1, 1)
    assert all_rows(ledger) == before


def test_a_provider_error_half_way_keeps_what_was_done(
    sandbox: Sandbox, client: IletiMerkeziClient, ledger: Ledger
) -> None:
    for n in range(35):
        sandbox.add_panel_order(T0 + timedelta(hours=1), created_at=T0 - timedelta(minutes=n + 1))
    real_get_reports = client.get_reports

    def fail_on_page_two(start: date, end: date, page: int = 1) -> Any:
        if page == 2:
            sandbox.set_faults(Faults(fail_next={"get-reports": 1}))
        return real_get_reports(start, end, page)

    client.get_reports = fail_on_page_two  # type: ignore[method-assign]
    with pytest.raises(ReconcileIncomplete) as raised:
        run(ledger, client)
    assert raised.value.report.imported == 30
    assert len(ledger.orders()) == 30
    assert raised.value.code == 503


def test_until_before_since_is_refused(ledger: Ledger, client: IletiMerkeziClient) -> None:
    with pytest.raises(ValueError, match="before since"):
        scheduler.reconcile(ledger, client, since=TODAY, until=SINCE)
