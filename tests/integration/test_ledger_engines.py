"""The ledger's contract, run on every engine it supports: a SQLite file and PostgreSQL.

Each test gets an empty ledger on each engine (see ``tests/postgres.py``); the PostgreSQL half is
skipped, with the reason shown, when ``SMSLEDGER_TEST_POSTGRES_URL`` is not set.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from postgres import ENGINES, fresh_schema, ledger_url_for, require_postgres

from ledger import (
    CancelRefused,
    Event,
    IllegalTransition,
    Ledger,
    LedgerUnavailable,
    NaiveDatetimeError,
    Order,
    OrderNotFound,
    OrderState,
    RegistrationConflict,
)
from ledger.store import Store

S = OrderState
T0 = datetime(2030, 6, 1, 9, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


class ManualClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=ENGINES)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty ledger database, once per engine."""
    with ledger_url_for(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def ledger_options(clock: ManualClock) -> dict[str, Any]:
    return {"clock": clock}


@pytest.fixture
def store(ledger: Ledger) -> Store:
    return ledger.store


def requested(ledger: Ledger, n: int, *, prefix: str = "o", step: int = 60) -> list[str]:
    """Register `n` orders one hour ahead (each `step` s after the last) and ask to cancel all."""
    ids = [f"{prefix}{i:04d}" for i in range(n)]
    ledger.register_many(
        [(oid, T0 + timedelta(hours=1, seconds=i * step)) for i, oid in enumerate(ids)]
    )
    for oid in ids:
        ledger.request_cancel(oid)
    return ids


def transitions(ledger: Ledger, order_id: str) -> list[tuple[OrderState | None, OrderState]]:
    return [(e.from_state, e.to_state) for e in ledger.history(order_id)]


# -- registration ------------------------------------------------------------------------------


def test_a_registered_order_comes_back_aware_utc_to_the_microsecond(ledger: Ledger) -> None:
    send_at = datetime(2030, 6, 1, 12, 30, 15, 123456, tzinfo=ZoneInfo("Europe/Istanbul"))

    order = ledger.register("1001", send_at, label="kampanya çarşamba")
    again = ledger.get("1001")

    assert again == order
    assert again.send_at == send_at
    assert again.send_at.tzinfo is UTC
    assert again.send_at.hour == 9  # Istanbul is UTC+3
    assert (again.state, again.label, again.created_at) == (S.SCHEDULED, "kampanya çarşamba", T0)


def test_registering_again_changes_nothing_and_another_send_time_is_a_conflict(
    ledger: Ledger,
) -> None:
    send_at = T0 + timedelta(hours=1)
    first = ledger.register("a", send_at)

    assert ledger.register("a", send_at) == first
    with pytest.raises(RegistrationConflict, match="already registered"):
        ledger.register("a", send_at + timedelta(minutes=1))
    with pytest.raises(NaiveDatetimeError):
        ledger.register("b", datetime(2030, 6, 1, 10, 0))  # naive on purpose
    assert transitions(ledger, "a") == [(None, S.SCHEDULED)]
    assert [o.order_id for o in ledger.orders()] == ["a"]


def test_register_many_counts_new_orders_and_is_all_or_nothing(ledger: Ledger) -> None:
    send_at = T0 + timedelta(hours=1)
    assert ledger.register_many([("a", send_at), ("b", send_at, "vip")], label="bulk") == 2
    assert ledger.register_many([("a", send_at), ("c", send_at)]) == 1

    with pytest.raises(RegistrationConflict):
        ledger.register_many([("d", send_at), ("a", send_at + timedelta(seconds=1))])

    assert {o.order_id: o.label for o in ledger.orders()} == {"a": "bulk", "b": "vip", "c": None}


def test_register_many_takes_a_large_batch_in_one_go(ledger: Ledger) -> None:
    batch = [(f"big{i:05d}", T0 + timedelta(hours=1, seconds=i)) for i in range(5000)]

    assert ledger.register_many(batch) == 5000

    assert len(ledger.orders(S.SCHEDULED)) == 5000
    assert transitions(ledger, "big04999") == [(None, S.SCHEDULED)]


def test_ledgers_registering_the_same_orders_at_once_each_register_them_once(
    open_ledger: Callable[..., Ledger],
) -> None:
    ledgers = [open_ledger() for _ in range(4)]
    batch = [(f"race{i:03d}", T0 + timedelta(hours=1, seconds=i)) for i in range(200)]
    start = threading.Barrier(len(ledgers))

    def register(each: Ledger) -> int:
        start.wait()
        return each.register_many(batch)

    with ThreadPoolExecutor(len(ledgers)) as pool:
        counts = list(pool.map(register, ledgers))

    assert sum(counts) == len(batch)
    assert all(transitions(ledgers[0], oid) == [(None, S.SCHEDULED)] for oid, _ in batch)


# -- cancel requests ---------------------------------------------------------------------------


def test_a_cancel_is_accepted_outside_the_margin_and_refused_inside_it(
    ledger: Ledger, clock: ManualClock
) -> None:
    ledger.register("far", T0 + timedelta(hours=1))
    ledger.register("near", T0 + timedelta(minutes=4))

    accepted = ledger.request_cancel("far")
    with pytest.raises(CancelRefused, match="inside the refuse margin"):
        ledger.request_cancel("near")
    with pytest.raises(CancelRefused):
        ledger.request_cancel("near")  # asked again: refused again, no new event
    with pytest.raises(OrderNotFound):
        ledger.request_cancel("nobody")

    assert (accepted.state, accepted.cancel_requested_at) == (S.CANCEL_REQUESTED, T0)
    assert ledger.request_cancel("far") == accepted
    assert transitions(ledger, "near") == [(None, S.SCHEDULED), (S.SCHEDULED, S.CANCEL_REFUSED)]
    assert ledger.history("far")[-1].details == {"seconds_left": 3600.0}


# -- transitions -------------------------------------------------------------------------------


def test_a_transition_is_guarded_by_the_expected_state_and_writes_its_event(
    ledger: Ledger, store: Store
) -> None:
    ledger.register("a", T0 + timedelta(hours=1))
    details = {"attempt": 2, "code": 456, "why": "İşlem başarılı", "nested": {"x": [1, 2.5]}}

    moved = store.transition(
        "a", S.SCHEDULED, S.CANCEL_REQUESTED, now=T0, reason="asked", details=details
    )
    lost = store.transition("a", S.SCHEDULED, S.CANCEL_REQUESTED, now=T0, reason="again")

    assert moved.applied
    assert moved.order is not None
    assert moved.order.state is S.CANCEL_REQUESTED
    assert (lost.applied, lost.order) == (False, moved.order)
    assert ledger.history("a")[-1] == Event(
        "a", T0, S.SCHEDULED, S.CANCEL_REQUESTED, "asked", details
    )
    with pytest.raises(IllegalTransition):
        store.transition("a", S.CANCEL_REQUESTED, S.SCHEDULED, now=T0, reason="back")
    unknown = store.transition("zz", S.SCHEDULED, S.DISPATCHED, now=T0, reason="due")
    assert (unknown.applied, unknown.order) == (False, None)


def test_a_transition_sets_values_counts_attempts_and_releases_the_claim_when_final(
    ledger: Ledger, store: Store
) -> None:
    (oid,) = requested(ledger, 1)
    later = T0 + timedelta(seconds=5)
    store.claim(oid, S.CANCEL_REQUESTED, owner="w", expires_at=T0 + LEASE, now=T0)

    cancelling = store.transition(
        oid,
        S.CANCEL_REQUESTED,
        S.CANCELLING,
        now=later,
        reason="sending",
        increment=("cancel_attempts",),
        values={"claim_expires_at": later + LEASE},
        expect_owner="w",
    ).order
    stranger = store.transition(
        oid, S.CANCELLING, S.CANCELLED, now=later, reason="x", expect_owner="other"
    )
    done = store.transition(
        oid,
        S.CANCELLING,
        S.CANCELLED,
        now=later,
        reason="verified",
        values={"last_provider_code": 115},
        expect_owner="w",
    ).order

    assert cancelling is not None
    assert (cancelling.claim_owner, cancelling.claim_expires_at) == ("w", later + LEASE)
    assert (cancelling.cancel_attempts, cancelling.updated_at) == (1, later)
    assert not stranger.applied
    assert done is not None
    assert (done.state, done.claim_owner, done.claim_expires_at) == (S.CANCELLED, None, None)
    assert done.last_provider_code == 115


def test_transition_due_moves_only_due_orders_in_batches_with_their_events(
    ledger: Ledger, store: Store
) -> None:
    ledger.register_many([(f"d{i}", T0 + timedelta(minutes=i + 1)) for i in range(5)])

    first = store.transition_due(
        S.SCHEDULED, S.DISPATCHED, due_by=T0 + timedelta(minutes=3), now=T0, reason="due", limit=2
    )
    rest = store.transition_due(
        S.SCHEDULED, S.DISPATCHED, due_by=T0 + timedelta(minutes=3), now=T0, reason="due"
    )

    assert [o.order_id for o in first] == ["d0", "d1"]
    assert [o.order_id for o in rest] == ["d2"]
    assert [o.order_id for o in ledger.orders(S.SCHEDULED)] == ["d3", "d4"]
    assert transitions(ledger, "d2") == [(None, S.SCHEDULED), (S.SCHEDULED, S.DISPATCHED)]
    with pytest.raises(IllegalTransition):
        store.transition_due(S.DISPATCHED, S.SCHEDULED, due_by=T0, now=T0, reason="no")


# -- claims ------------------------------------------------------------------------------------


def test_a_claim_is_renewed_by_its_owner_refused_to_others_and_free_once_expired(
    ledger: Ledger, store: Store
) -> None:
    (oid,) = requested(ledger, 1)
    expires = T0 + LEASE

    mine = store.claim(oid, S.CANCEL_REQUESTED, owner="a", expires_at=expires, now=T0)
    theirs = store.claim(oid, S.CANCEL_REQUESTED, owner="b", expires_at=expires, now=T0)
    renewed = store.claim(oid, S.CANCEL_REQUESTED, owner="a", expires_at=expires + LEASE, now=T0)
    early = store.claim(oid, S.CANCEL_REQUESTED, owner="b", expires_at=expires, now=expires)
    taken = store.claim(
        oid, S.CANCEL_REQUESTED, owner="b", expires_at=expires + 2 * LEASE, now=expires + LEASE
    )
    wrong_state = store.claim(oid, S.CANCELLING, owner="b", expires_at=expires, now=T0)

    assert mine is not None
    assert mine.claim_owner == "a"
    assert theirs is None
    assert renewed is not None
    assert renewed.claim_expires_at == expires + LEASE
    assert early is None
    assert taken is not None
    assert taken.claim_owner == "b"
    assert wrong_state is None
    assert transitions(ledger, oid)[-1] == (S.SCHEDULED, S.CANCEL_REQUESTED)  # claims: no events
    store.release(oid, "a")  # not ours any more: changes nothing
    assert ledger.get(oid).claim_owner == "b"
    store.release(oid, "b")
    assert ledger.get(oid).claim_owner is None


def test_a_claim_of_a_known_dead_owner_is_taken_at_once(ledger: Ledger, store: Store) -> None:
    (oid,) = requested(ledger, 1)
    store.claim(oid, S.CANCEL_REQUESTED, owner="dead", expires_at=T0 + LEASE, now=T0)

    taken = store.claim(
        oid, S.CANCEL_REQUESTED, owner="me", expires_at=T0 + LEASE, now=T0, steal_from="dead"
    )

    assert taken is not None
    assert taken.claim_owner == "me"


def test_claim_next_takes_the_most_urgent_free_orders_and_skips_live_claims_and_exclusions(
    ledger: Ledger, store: Store
) -> None:
    ids = requested(ledger, 6)
    store.claim(ids[0], S.CANCEL_REQUESTED, owner="x", expires_at=T0 + LEASE, now=T0)
    store.claim(ids[1], S.CANCEL_REQUESTED, owner="x", expires_at=T0, now=T0)  # expired at T0

    claimed = store.claim_next(
        S.CANCEL_REQUESTED, owner="me", expires_at=T0 + LEASE, now=T0, limit=3, exclude=[ids[2]]
    )

    assert [o.order_id for o in claimed] == [ids[1], ids[3], ids[4]]
    assert {(o.claim_owner, o.claim_expires_at) for o in claimed} == {("me", T0 + LEASE)}
    assert store.claim_next(S.CANCELLING, owner="me", expires_at=T0, now=T0, limit=5) == []
    rest = store.claim_next(S.CANCEL_REQUESTED, owner="me", expires_at=T0 + LEASE, now=T0, limit=10)
    assert [o.order_id for o in rest] == [ids[2], ids[5]]
    assert store.claimable(S.CANCEL_REQUESTED, T0, limit=10) == []


def test_ledgers_claiming_at_once_split_the_orders_without_overlap(
    open_ledger: Callable[..., Ledger],
) -> None:
    ids = requested(open_ledger(), 300, step=1)
    stores = [open_ledger().store for _ in range(6)]
    start = threading.Barrier(len(stores))

    def claim_all(n: int) -> list[str]:
        start.wait()
        mine: list[str] = []
        while got := stores[n].claim_next(
            S.CANCEL_REQUESTED, owner=f"w{n}", expires_at=T0 + LEASE, now=T0, limit=7
        ):
            mine += [o.order_id for o in got]
        return mine

    with ThreadPoolExecutor(len(stores)) as pool:
        shares = list(pool.map(claim_all, range(len(stores))))

    everything = [oid for share in shares for oid in share]
    assert sorted(everything) == ids  # each order claimed exactly once
    owners = {o.order_id: o.claim_owner for o in stores[0].orders()}
    assert all(owners[oid] == f"w{n}" for n, share in enumerate(shares) for oid in share)


# -- reads -------------------------------------------------------------------------------------


def test_orders_are_listed_by_send_time_and_filtered_by_state_and_range(
    ledger: Ledger, store: Store
) -> None:
    ledger.register_many([(f"r{i}", T0 + timedelta(hours=1, minutes=i)) for i in range(5)])
    ledger.request_cancel("r3")
    start, end = T0 + timedelta(hours=1, minutes=1), T0 + timedelta(hours=1, minutes=4)

    listed = [o.order_id for o in ledger.orders()]
    scheduled = [o.order_id for o in ledger.orders("scheduled")]
    in_range = [o.order_id for o in ledger.orders(send_after=start, send_before=end)]
    both = [o.order_id for o in ledger.orders([S.CANCEL_REQUESTED, "scheduled"], limit=2)]

    assert listed == ["r0", "r1", "r2", "r3", "r4"]
    assert scheduled == ["r0", "r1", "r2", "r4"]
    assert in_range == ["r1", "r2", "r3"]  # after inclusive, before exclusive
    assert both == ["r0", "r1"]


def test_history_lists_every_change_oldest_first(ledger: Ledger, store: Store) -> None:
    (oid,) = requested(ledger, 1)
    store.claim(oid, S.CANCEL_REQUESTED, owner="w", expires_at=T0 + LEASE, now=T0)
    store.transition(oid, S.CANCEL_REQUESTED, S.CANCELLING, now=T0, reason="1", expect_owner="w")
    store.transition(oid, S.CANCELLING, S.CANCELLING, now=T0, reason="2", expect_owner="w")
    store.transition(oid, S.CANCELLING, S.CANCELLED, now=T0, reason="ok", expect_owner="w")

    assert [e.reason for e in ledger.history(oid)] == [
        "registered",
        "cancel requested",
        "1",
        "2",
        "ok",
    ]
    with pytest.raises(OrderNotFound):
        ledger.history("nobody")


def test_unwarned_orders_are_warned_once(ledger: Ledger, store: Store) -> None:
    ids = requested(ledger, 2, step=3600)
    pending = (S.CANCEL_REQUESTED, S.CANCELLING)

    due = store.unwarned(pending, T0 + timedelta(hours=1, minutes=30))

    assert [o.order_id for o in due] == [ids[0]]
    assert store.mark_warned(ids[0], T0)
    assert not store.mark_warned(ids[0], T0)
    assert store.unwarned(pending, T0 + timedelta(hours=1, minutes=30)) == []
    assert ledger.get(ids[0]).warned_at == T0


def test_every_order_value_survives_the_round_trip(ledger: Ledger, store: Store) -> None:
    (oid,) = requested(ledger, 1)
    store.claim(oid, S.CANCEL_REQUESTED, owner="host:1:abc", expires_at=T0 + LEASE, now=T0)

    order = ledger.get(oid)

    assert order == Order(
        order_id=oid,
        send_at=T0 + timedelta(hours=1),
        state=S.CANCEL_REQUESTED,
        label=None,
        reason="cancel requested",
        cancel_requested_at=T0,
        cancel_attempts=0,
        check_attempts=0,
        last_provider_code=None,
        warned_at=None,
        claim_owner="host:1:abc",
        claim_expires_at=T0 + LEASE,
        created_at=T0,
        updated_at=T0,
    )


# -- PostgreSQL specifics ----------------------------------------------------------------------


@pytest.mark.postgres
def test_postgresql_stores_naive_utc_whatever_the_session_time_zone() -> None:
    """`timestamp without time zone` holds the UTC wall time; the session zone changes nothing."""
    with fresh_schema(require_postgres(), options="-ctimezone=Asia/Tokyo") as url:
        with Ledger(url, clock=ManualClock(T0)) as tokyo:
            tokyo.register("tz", datetime(2030, 6, 1, 10, 0, tzinfo=UTC))
            with tokyo.store.read() as conn:
                raw = conn.exec_driver_sql("SELECT send_at, created_at FROM smsledger_orders").one()
                zone = conn.exec_driver_sql("SHOW timezone").scalar()
            reread = tokyo.get("tz").send_at
        with Ledger(url) as utc_session:
            late = utc_session.orders(send_after=datetime(2030, 6, 1, 10, 0, tzinfo=UTC))

    assert zone == "Asia/Tokyo"
    assert tuple(raw) == (datetime(2030, 6, 1, 10, 0), T0.replace(tzinfo=None))
    assert reread == datetime(2030, 6, 1, 10, 0, tzinfo=UTC)
    assert [o.order_id for o in late] == ["tz"]


def test_a_postgresql_url_with_a_driver_not_installed_says_what_to_install() -> None:
    with pytest.raises(LedgerUnavailable, match=r"pip install 'smsledger\[postgres\]'"):
        Store("postgresql+nosuchdriver://u@localhost/db")
