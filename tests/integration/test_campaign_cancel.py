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


def test_each_order_ends_exactly_as_request_cancel_would_leave_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Two ledgers with the same campaign: one order at a time through `request_cancel`, all at
    once through `request_cancel_many`; states, reasons and history rows are the same."""
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
        many.request_cancel_many(list(expected))

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


def test_a_batch_s_guarded_update_finds_its_orders_by_id_on_sqlite(tmp_path: Path) -> None:
    """Given ``order_id IN (...) AND state = ?``, SQLite's planner took the (state, send_at)
    index and scanned every order in that state for each batch: a 100,000-order campaign's
    cancel grew with the square of its size (3.2 s, 1.8 s once fixed; bench/bulk_cancel.py).
    Each guarded UPDATE must look its orders up by primary key."""
    plans: list[str] = []
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        ledger.register_many(
            [(f"o-{n}", T0 + timedelta(days=1), "spring") for n in range(50)]
            + [(f"x-{n}", T0 + timedelta(days=1), "autumn") for n in range(50)]
        )

        def explain(
            conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
        ) -> None:
            if statement.startswith("UPDATE smsledger_orders") and not many:
                found = cursor.connection.execute("EXPLAIN QUERY PLAN " + statement, params)
                plans.extend(row[3] for row in found)

        sa.event.listen(ledger.store.db.engine, "before_cursor_execute", explain)
        summary = ledger.request_cancel_many(label="spring")

    assert summary.requested == 50
    assert plans, "the batch ran its guarded UPDATE"
    assert all("sqlite_autoindex_smsledger_orders_1 (order_id=?)" in plan for plan in plans), plans


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
