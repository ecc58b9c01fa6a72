"""Cancelling a whole campaign (`Ledger.request_cancel_many`) on both engines: every margin and
state in one label, counts checked against the ledger, the same decisions as `request_cancel`,
batches, and a dry run that writes nothing."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import FakeClock
from postgres import ENGINES, ledger_url_for

from ledger import (
    CancelNotPossible,
    CancelOutcome,
    InvalidInput,
    Ledger,
    OrderState,
)
from ledger import api as ledger_api
from ledger.config import ALERT_EVENTS
from ledger.outbox import AlertPolicy, alerts_t
from ledger.store import BulkMismatch, Store, seconds_left_detail

T0 = datetime(2030, 6, 1, 9, 0, tzinfo=UTC)
S = OrderState
Out = CancelOutcome

#: (how many, minutes before dispatch at cancel time, state to leave it in, expected outcome)
CAMPAIGN: list[tuple[int, float, OrderState, CancelOutcome]] = [
    (1200, 120, S.SCHEDULED, Out.REQUESTED),
    (150, 10, S.SCHEDULED, Out.WARNED),  # inside warn_before (15 min)
    (120, 3, S.SCHEDULED, Out.REFUSED),  # inside refuse_before (5 min)
    (30, -2, S.SCHEDULED, Out.REFUSED),  # send time passed, dispatch not recorded yet
    (100, 120, S.CANCEL_REQUESTED, Out.ALREADY),
    (40, 120, S.CANCELLING, Out.ALREADY),
    (40, 120, S.CANCELLED, Out.ALREADY),
    (30, 120, S.TOO_LATE, Out.FINAL),
    (20, 120, S.NOT_FOUND, Out.FINAL),
    (20, 120, S.NEEDS_ATTENTION, Out.FINAL),
    (25, 4, S.CANCEL_REFUSED, Out.FINAL),
    (25, -30, S.DISPATCHED, Out.FINAL),
]
#: How each state is reached from scheduled, one guarded transition at a time.
PATHS: dict[OrderState, list[OrderState]] = {
    S.SCHEDULED: [],
    S.CANCEL_REQUESTED: [S.CANCEL_REQUESTED],
    S.CANCELLING: [S.CANCEL_REQUESTED, S.CANCELLING],
    S.CANCELLED: [S.CANCEL_REQUESTED, S.CANCELLED],
    S.TOO_LATE: [S.CANCEL_REQUESTED, S.TOO_LATE],
    S.NOT_FOUND: [S.CANCEL_REQUESTED, S.NOT_FOUND],
    S.NEEDS_ATTENTION: [S.CANCEL_REQUESTED, S.CANCELLING, S.NEEDS_ATTENTION],
    S.CANCEL_REFUSED: [S.CANCEL_REFUSED],
    S.DISPATCHED: [S.DISPATCHED],
}


@pytest.fixture(params=ENGINES)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with ledger_url_for(str(request.param), tmp_path) as url:
        yield url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def build(
    ledger: Ledger, clock: FakeClock, label: str = "spring", prefix: str = ""
) -> dict[str, CancelOutcome]:
    """Register CAMPAIGN under `label` (times relative to T0 + 1 day, when the cancel runs) and
    leave every group in its state; return the expected outcome of each order id."""
    cancel_at = T0 + timedelta(days=1)
    expected: dict[str, CancelOutcome] = {}
    rows = []
    for group, (count, minutes, _state, outcome) in enumerate(CAMPAIGN):
        for n in range(count):
            oid = f"{prefix}{group:02d}-{n:04d}"
            rows.append((oid, cancel_at + timedelta(minutes=minutes), label))
            expected[oid] = outcome
    ledger.register_many(rows)
    clock.set(cancel_at)
    for group, (count, _minutes, state, _outcome) in enumerate(CAMPAIGN):
        for n in range(count):
            current = S.SCHEDULED
            for step in PATHS[state]:
                result = ledger.store.transition(
                    f"{prefix}{group:02d}-{n:04d}", current, step, now=T0, reason="set up"
                )
                assert result.applied
                current = step
    return expected


#: The campaign tests' batch size: the campaign spans several batches without 10,000 orders.
SMALL_BATCH = 400


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_api, "CANCEL_BATCH", SMALL_BATCH)


@pytest.mark.usefixtures("small_batches")
def test_a_campaign_mixing_every_margin_and_state_is_counted_as_the_ledger_shows_it(
    ledger_url: str, clock: FakeClock
) -> None:
    with Ledger(ledger_url, clock=clock) as ledger:
        expected = build(ledger, clock)
        ledger.register_many(
            [(f"other-{n}", T0 + timedelta(days=1, hours=2), "autumn") for n in range(300)]
            + [(f"bare-{n}", T0 + timedelta(days=1, hours=2)) for n in range(50)]
        )

        summary = ledger.request_cancel_many(label="spring")

        assert len(summary) == len(expected) > 3 * SMALL_BATCH
        assert {r.order_id: r.outcome for r in summary.results} == expected
        wanted = Counter(expected.values())
        assert (
            summary.requested,
            summary.warned,
            summary.refused,
            summary.already,
            summary.final,
            summary.unknown,
        ) == (wanted[Out.REQUESTED], wanted[Out.WARNED], wanted[Out.REFUSED], wanted[Out.ALREADY],
              wanted[Out.FINAL], 0)  # fmt: skip
        assert summary.earliest_refused_send_at == T0 + timedelta(days=1, minutes=-2)

        orders = ledger.get_many(expected)
        assert {r.order_id: r.state for r in summary.results} == {
            oid: o.state for oid, o in orders.items()
        }
        states = Counter(o.state for o in orders.values())
        assert states[S.CANCEL_REQUESTED] == summary.requested + summary.warned + 100
        assert states[S.CANCEL_REFUSED] == summary.refused + 25
        others = ledger.get_many(
            [f"other-{n}" for n in range(300)] + [f"bare-{n}" for n in range(50)]
        )
        assert {o.state for o in others.values()} == {S.SCHEDULED}, "other labels are untouched"

        requested = next(oid for oid, out in expected.items() if out is Out.REQUESTED)
        refused = next(oid for oid, out in expected.items() if out is Out.REFUSED)
        assert [(e.from_state, e.to_state, e.details) for e in ledger.history(requested)] == [
            (None, S.SCHEDULED, {}),
            (S.SCHEDULED, S.CANCEL_REQUESTED, {"seconds_left": 7200.0}),
        ]
        assert ledger.get(requested).cancel_requested_at == clock.now()
        assert ledger.history(refused)[-1].reason == (
            "inside the refuse margin: 180 s before dispatch (refuse_before is 300 s)"
        )
        already = next(oid for oid, out in expected.items() if out is Out.ALREADY)
        assert len(ledger.history(already)) == 2, "asking again writes no event"

        again = ledger.request_cancel_many(label="spring")
        assert again.requested == again.warned == again.refused == 0
        assert again.already == summary.requested + summary.warned + summary.already


@pytest.mark.parametrize("by", ["ids", "label"])
def test_each_order_ends_exactly_as_request_cancel_would_leave_it(
    tmp_path: Path, clock: FakeClock, by: str
) -> None:
    """Two ledgers with the same campaign: one order at a time through `request_cancel`, all at
    once through `request_cancel_many` (by ids: decided one by one; by label: the far-off orders
    written set-based); states, reasons and history rows are the same."""
    one_clock = FakeClock(T0)
    with (
        Ledger(f"sqlite:///{tmp_path / 'one.db'}", clock=one_clock) as one,
        Ledger(f"sqlite:///{tmp_path / 'many.db'}", clock=clock) as many,
    ):
        expected = build(one, one_clock)
        build(many, clock)
        for ledger in (one, many):  # refusals alert, in the transaction that refuses
            ledger.store.alerts = AlertPolicy(frozenset(ALERT_EVENTS))
        for oid in expected:
            with contextlib.suppress(CancelNotPossible):
                one.request_cancel(oid)
        if by == "ids":
            many.request_cancel_many(list(expected))
        else:
            many.request_cancel_many(label="spring")

        def story(ledger: Ledger) -> dict[str, object]:
            return {
                oid: (
                    o.state,
                    o.reason,
                    o.cancel_requested_at,
                    [(e.from_state, e.to_state, e.reason, e.details, e.at)
                     for e in ledger.history(oid)],
                )
                for oid, o in ledger.get_many(expected).items()
            }  # fmt: skip

        def alerts(ledger: Ledger) -> list[tuple[object, ...]]:
            with ledger.store.read() as conn:
                rows = conn.execute(
                    sa.select(alerts_t.c.event, alerts_t.c.order_id, alerts_t.c.state,
                              alerts_t.c.reason, alerts_t.c.text)
                ).all()  # fmt: skip
            return sorted(tuple(r) for r in rows)

        assert story(many) == story(one)
        refused = alerts(many)
        assert len(refused) == 150 and refused == alerts(one)


def test_a_dry_run_says_what_would_happen_and_writes_nothing(
    ledger_url: str, clock: FakeClock
) -> None:
    with Ledger(ledger_url, clock=clock) as ledger:
        expected = build(ledger, clock)
        before = {
            oid: (o, len(ledger.history(oid))) for oid, o in ledger.get_many(expected).items()
        }

        dry = ledger.request_cancel_many(label="spring", dry_run=True)

        assert dry.dry_run
        assert {r.order_id: r.outcome for r in dry.results} == expected
        after = {oid: (o, len(ledger.history(oid))) for oid, o in ledger.get_many(expected).items()}
        assert after == before
        real = ledger.request_cancel_many(label="spring")
        assert real.counts == dry.counts


def test_ids_unknown_to_the_ledger_are_counted_and_the_others_still_cancelled(
    ledger_url: str, clock: FakeClock
) -> None:
    with Ledger(ledger_url, clock=clock) as ledger:
        ledger.register("a", T0 + timedelta(hours=2))
        ledger.register("b", T0 + timedelta(hours=2))

        summary = ledger.request_cancel_many(["a", "ghost", "b", "a"])

        assert [(r.order_id, r.outcome, r.state) for r in summary.results] == [
            ("a", Out.REQUESTED, S.CANCEL_REQUESTED),
            ("ghost", Out.UNKNOWN, None),
            ("b", Out.REQUESTED, S.CANCEL_REQUESTED),
        ]
        assert summary.unknown == 1
        assert ledger.request_cancel_many(label="nobody-uses-this").results == ()


def test_a_batch_s_writes_find_their_orders_by_id_or_by_label_on_sqlite(tmp_path: Path) -> None:
    """Given ``order_id IN (...) AND state = ?``, SQLite's planner took the (state, send_at)
    index and scanned every order in that state for each batch: a 100,000-order campaign's
    cancel grew with the square of its size (3.2 s, 1.8 s once fixed; bench/bulk_cancel.py).
    A batch by ids must look its orders up by primary key; a label's set-based writes must
    range over the label index."""
    plans: list[str] = []
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        ledger.register_many(
            [(f"o-{n}", T0 + timedelta(days=1), "spring") for n in range(50)]
            + [(f"x-{n}", T0 + timedelta(days=1), "autumn") for n in range(50)]
        )

        def explain(
            conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
        ) -> None:
            writes = ("UPDATE smsledger_orders", "INSERT INTO smsledger_order_events")
            if statement.startswith(writes) and not many:
                found = cursor.connection.execute("EXPLAIN QUERY PLAN " + statement, params)
                plans.append(" / ".join(row[3] for row in found))

        sa.event.listen(ledger.store.db.engine, "before_cursor_execute", explain)
        by_ids = ledger.request_cancel_many([f"x-{n}" for n in range(50)])
        by_ids_plans, plans[:] = list(plans), []
        by_label = ledger.request_cancel_many(label="spring")

    assert by_ids.requested == by_label.requested == 50
    assert by_ids_plans, "the batch ran its guarded UPDATE"
    pk = "sqlite_autoindex_smsledger_orders_1 (order_id=?)"
    assert all(pk in plan for plan in by_ids_plans), by_ids_plans
    assert len(plans) == 2, plans  # INSERT ... SELECT and UPDATE
    label_range = "ix_smsledger_orders_label_order_id (label=? AND order_id>? AND order_id<?)"
    assert all(label_range in plan for plan in plans), plans


#: Send times a day after T0, to the microsecond: each side of a half millisecond.
MICROS = (0, 1, 499, 500, 501, 999, 123_456, 999_500, 999_999)


def test_far_orders_written_set_based_record_what_one_by_one_records(
    ledger_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The set-based write computes each history row's ``seconds_left`` in SQL; it must be the
    value `request_cancel` records for the same order at the same instant, on both dialects
    (and the set-based write must really have run, not its one-by-one fallback)."""
    real = Store._apply_bulk
    written: list[object] = []

    def recorded(self: Store, conn: Any, *args: Any, **kwargs: Any) -> bool:
        try:
            done = real(self, conn, *args, **kwargs)
        except BulkMismatch as exc:
            written.append(exc)
            raise
        written.append(done)
        return done

    monkeypatch.setattr(Store, "_apply_bulk", recorded)
    with Ledger(ledger_url, clock=clock) as ledger:
        for label in ("bulk", "single"):
            ledger.register_many(
                [
                    (f"{label}-{n}", T0 + timedelta(days=1, hours=n, microseconds=micros), label)
                    for n, micros in enumerate(MICROS)
                ]
            )
        clock.set(T0 + timedelta(microseconds=250_777))
        for n in range(len(MICROS)):
            ledger.request_cancel(f"single-{n}")

        summary = ledger.request_cancel_many(label="bulk")

        assert summary.requested == len(MICROS)
        assert written == [True], written
        for n, micros in enumerate(MICROS):
            send_at = T0 + timedelta(days=1, hours=n, microseconds=micros)
            bulk, single = ledger.history(f"bulk-{n}")[-1], ledger.history(f"single-{n}")[-1]
            expected = seconds_left_detail(send_at, clock())
            assert bulk.details == single.details == {"seconds_left": expected}, n
            assert (bulk.to_state, bulk.reason, bulk.at) == (
                single.to_state,
                single.reason,
                single.at,
            )


def test_a_set_based_write_that_takes_other_orders_is_decided_again_one_by_one(
    ledger_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: an order of the label registered during the batch makes the set-based write
    take one more than the batch read; the batch rolls back and is decided without it."""
    real = Store._apply_bulk
    tries: list[int] = []

    def one_mismatch(self: Store, conn: Any, *args: Any, **kwargs: Any) -> bool:
        tries.append(1)
        done = real(self, conn, *args, **kwargs)
        if len(tries) == 1:
            raise BulkMismatch("simulated: another order of the label appeared")
        return done

    monkeypatch.setattr(Store, "_apply_bulk", one_mismatch)
    with Ledger(ledger_url, clock=clock) as ledger:
        ledger.register_many([(f"o-{n}", T0 + timedelta(days=1), "spring") for n in range(30)])

        summary = ledger.request_cancel_many(label="spring")

        assert summary.requested == 30 and len(tries) == 1, "the retry went one by one"
        for n in range(30):
            events = ledger.history(f"o-{n}")
            assert [e.to_state for e in events] == [S.SCHEDULED, S.CANCEL_REQUESTED]


def test_an_alert_on_the_target_state_writes_the_far_orders_one_by_one(
    ledger_url: str, clock: FakeClock
) -> None:
    """Alerts need the order rows: an alert on ``cancel_requested`` (a policy a program may
    set) keeps the far-off orders out of the set-based write, and each gets its alert."""
    with Ledger(ledger_url, clock=clock) as ledger:
        ledger.register_many([(f"o-{n}", T0 + timedelta(days=1), "spring") for n in range(20)])
        ledger.store.alerts = AlertPolicy(frozenset({"cancel_requested"}))

        summary = ledger.request_cancel_many(label="spring")

        with ledger.store.read() as conn:
            alerted = conn.execute(sa.select(alerts_t.c.order_id)).scalars().all()
        assert summary.requested == 20
        assert sorted(alerted) == sorted(f"o-{n}" for n in range(20))


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((["a"],), {"label": "x"}), (("a",), {}), ((["a b"],), {}), ((), {"label": "\n"})],
)
def test_bad_arguments_are_invalid_input_and_write_nothing(
    tmp_ledger: Ledger, args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    tmp_ledger.register("a", tmp_ledger.now() + timedelta(hours=2), label="x")
    with pytest.raises(InvalidInput):
        tmp_ledger.request_cancel_many(*args, **kwargs)  # type: ignore[arg-type]
    assert tmp_ledger.get("a").state is S.SCHEDULED


def test_register_many_counts_earlier_registrations_and_repeats_as_already(
    ledger_url: str, clock: FakeClock
) -> None:
    when = T0 + timedelta(hours=2)
    with Ledger(ledger_url, clock=clock) as ledger:
        first = ledger.register_many([("a", when), ("b", when), ("a", when)])
        second = ledger.register_many([("a", when), ("c", when)])

    assert (first, first.already) == (2, 1)
    assert (second, second.already) == (1, 1)
    assert isinstance(second, int) and second + 1 == 2, "still the count of new orders"


def test_summary_counts_each_labels_states_next_send_and_cancels_at_risk(
    ledger_url: str, clock: FakeClock
) -> None:
    with Ledger(ledger_url, clock=clock) as ledger:
        expected = build(ledger, clock)
        ledger.register_many([(f"bare-{n}", T0 + timedelta(days=1, hours=3)) for n in range(5)])
        near = T0 + timedelta(days=1, minutes=10)
        ledger.register_many([(f"risk-{n}", near, "autumn") for n in range(4)])
        ledger.request_cancel_many([f"risk-{n}" for n in range(3)])  # warned: now at risk

        autumn, spring, bare = ledger.summary()
        only = ledger.summary("autumn")

    want: Counter[OrderState] = Counter()
    for count, _minutes, state, _outcome in CAMPAIGN:
        want[state] += count
    assert spring.label == "spring" and spring.total == len(expected)
    assert {s: n for s, n in spring.states.items() if n} == dict(want)
    assert spring.next_send_at == T0 + timedelta(days=1, minutes=3), "the earliest still to come"
    assert spring.at_risk == 0, "its pending cancels are two hours out"
    assert (autumn.label, autumn.at_risk, autumn.next_send_at) == ("autumn", 3, near)
    assert autumn.states[S.CANCEL_REQUESTED] == 3 and autumn.states[S.SCHEDULED] == 1
    assert (bare.label, bare.total) == (None, 5)
    assert only == [autumn]


def test_orders_filter_by_label_send_time_and_limit(ledger_url: str, clock: FakeClock) -> None:
    with Ledger(ledger_url, clock=clock) as ledger:
        base = T0 + timedelta(hours=1)
        ledger.register_many(
            [(f"s-{n}", base + timedelta(minutes=n), "spring") for n in range(10)]
            + [(f"a-{n}", base + timedelta(minutes=n), "autumn") for n in range(10)]
        )

        window = ledger.orders(
            label="spring",
            send_after=base + timedelta(minutes=2),
            send_before=base + timedelta(minutes=8),
            limit=4,
        )

        assert [o.order_id for o in window] == ["s-2", "s-3", "s-4", "s-5"]
        assert len(ledger.orders(label="autumn")) == 10
        with pytest.raises(InvalidInput):
            ledger.orders(limit=-1)
