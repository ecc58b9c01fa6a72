"""`Ledger`, the library calls: registration, cancel requests and their margins, reads."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from freezegun import freeze_time
from structlog.testing import capture_logs

from ledger import (
    CancelNotPossible,
    CancelRefused,
    InvalidInput,
    Ledger,
    LedgerError,
    LedgerUnavailable,
    NaiveDatetimeError,
    NoLedger,
    Order,
    OrderNotFound,
    OrderState,
    RegistrationConflict,
)

S = OrderState
T0 = datetime(2030, 6, 1, 9, 0, tzinfo=UTC)
SEND_AT = T0 + timedelta(hours=1)


class ManualClock:
    """The `clock=` injection: the time is whatever the test last set."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, now: datetime) -> None:
        self.now = now


def snapshot(ledger: Ledger) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every column of every order and event row, to prove a refused call wrote nothing."""
    with ledger.store.read() as conn:
        orders = conn.exec_driver_sql("SELECT * FROM smsledger_orders ORDER BY order_id").all()
        events = conn.exec_driver_sql("SELECT * FROM smsledger_order_events ORDER BY id").all()
    return [tuple(r) for r in orders], [tuple(r) for r in events]


@pytest.fixture(params=["freezegun", "clock_injection"])
def frozen(
    request: pytest.FixtureRequest, ledger_factory: Callable[..., Ledger]
) -> Iterator[tuple[Ledger, Callable[[datetime], None]]]:
    """A ledger at T0 with the default margins, and a function that moves its clock."""
    if request.param == "freezegun":
        with freeze_time(T0, ignore=["_pytest"]) as frozen_time:  # keep pytest timings real
            yield ledger_factory(), frozen_time.move_to
    else:
        clock = ManualClock(T0)
        yield ledger_factory(clock=clock), clock.set


# -- opening -----------------------------------------------------------------------------------


def test_a_new_ledger_file_uses_wal_a_busy_timeout_and_full_synchronous_writes(
    tmp_ledger: Ledger,
) -> None:
    with tmp_ledger.store.engine.connect() as conn:
        pragmas = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
        }

    assert pragmas == {
        "journal_mode": "wal",
        "synchronous": 2,
        "busy_timeout": 30_000,
        "foreign_keys": 1,
    }


def test_synchronous_and_busy_timeout_can_be_set(ledger_factory: Callable[..., Ledger]) -> None:
    ledger = ledger_factory(synchronous="normal", busy_timeout=2.5)

    with ledger.store.engine.connect() as conn:
        synchronous = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        busy_timeout = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()

    assert (synchronous, busy_timeout) == (1, 2500)


def test_wal_mode_is_stored_in_the_file_for_every_later_reader(tmp_ledger: Ledger) -> None:
    path = sa.make_url(tmp_ledger.store.url).database
    assert path is not None
    tmp_ledger.close()

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


@pytest.mark.parametrize(
    ("warn", "refuse"),
    [(timedelta(minutes=5), timedelta(minutes=5)), (timedelta(minutes=5), timedelta(minutes=10))],
    ids=["equal", "refuse-wider-than-warn"],
)
def test_a_refuse_margin_not_smaller_than_the_warn_margin_is_a_clear_error(
    tmp_path: Path, warn: timedelta, refuse: timedelta
) -> None:
    with pytest.raises(
        InvalidInput, match=r"refuse_before \(\d+ s\) must be smaller than warn_before \(\d+ s\)"
    ):
        Ledger(f"sqlite:///{tmp_path / 'x.db'}", warn_before=warn, refuse_before=refuse)

    assert not (tmp_path / "x.db").exists()


def test_a_negative_refuse_margin_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="refuse_before must not be negative"):
        Ledger(f"sqlite:///{tmp_path / 'x.db'}", refuse_before=timedelta(seconds=-1))


@pytest.mark.parametrize(
    "url",
    ["not a database url", "sqlite:////no/such/folder/ledger.db"],
    ids=["not-a-url", "no-folder"],
)
def test_a_ledger_that_cannot_be_opened_raises_ledger_unavailable(url: str) -> None:
    with pytest.raises(LedgerUnavailable):
        Ledger(url)


# -- margins -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "warned"),
    [
        (timedelta(minutes=15, microseconds=1), False),
        (timedelta(minutes=15), True),
        (timedelta(minutes=5, microseconds=1), True),
    ],
    ids=["just-outside-warn", "exactly-warn-before-left", "just-outside-refuse"],
)
def test_a_cancel_outside_the_refuse_margin_is_accepted_with_a_warning_only_inside_warn(
    frozen: tuple[Ledger, Callable[[datetime], None]], left: timedelta, warned: bool
) -> None:
    ledger, move_to = frozen
    ledger.register("o1", send_at=SEND_AT)
    move_to(SEND_AT - left)

    with capture_logs() as logs:
        order = ledger.request_cancel("o1")

    assert order.state is S.CANCEL_REQUESTED
    assert order.cancel_requested_at == SEND_AT - left
    assert ledger.get("o1") == order
    warnings = [e for e in logs if e["event"] == "cancel_close_to_dispatch"]
    if warned:
        assert warnings == [
            {
                "event": "cancel_close_to_dispatch",
                "log_level": "warning",
                "order_id": "o1",
                "seconds_left": round(left.total_seconds(), 3),
                "warn_before_seconds": 900.0,
            }
        ]
    else:
        assert warnings == []
    last = ledger.history("o1")[-1]
    assert (last.from_state, last.to_state, last.details) == (
        S.SCHEDULED,
        S.CANCEL_REQUESTED,
        {"seconds_left": round(left.total_seconds(), 3)},
    )


@pytest.mark.parametrize(
    ("left", "reason"),
    [
        (timedelta(minutes=5), "inside the refuse margin: 300 s before dispatch"),
        (timedelta(minutes=5) - timedelta(microseconds=1), "inside the refuse margin"),
        (timedelta(seconds=1), "inside the refuse margin: 1 s before dispatch"),
        (timedelta(0), "send time passed"),
        (-timedelta(minutes=1), "send time passed 60 s ago"),
    ],
    ids=[
        "exactly-refuse-before-left",
        "just-inside-refuse",
        "one-second-left",
        "at-send-time",
        "past",
    ],
)
def test_a_cancel_inside_the_refuse_margin_or_past_dispatch_is_recorded_as_refused_and_raises(
    frozen: tuple[Ledger, Callable[[datetime], None]], left: timedelta, reason: str
) -> None:
    ledger, move_to = frozen
    ledger.register("o1", send_at=SEND_AT)
    move_to(SEND_AT - left)

    with pytest.raises(CancelRefused, match=f"cancel of order o1 refused: {reason}") as refused:
        ledger.request_cancel("o1")

    assert refused.value.seconds_left == left.total_seconds()
    assert refused.value.order == ledger.get("o1")
    assert refused.value.order.state is S.CANCEL_REFUSED
    assert refused.value.order.reason is not None
    assert refused.value.order.reason.startswith(reason)
    last = ledger.history("o1")[-1]
    assert (last.from_state, last.to_state, last.reason, last.details) == (
        S.SCHEDULED,
        S.CANCEL_REFUSED,
        refused.value.order.reason,
        {"seconds_left": round(left.total_seconds(), 3)},
    )


def test_a_refused_cancel_asked_again_is_refused_again_without_a_new_event(
    frozen: tuple[Ledger, Callable[[datetime], None]],
) -> None:
    ledger, move_to = frozen
    ledger.register("o1", send_at=SEND_AT)
    move_to(SEND_AT - timedelta(minutes=1))
    with pytest.raises(CancelRefused):
        ledger.request_cancel("o1")
    before = snapshot(ledger)
    move_to(SEND_AT - timedelta(seconds=30))

    with pytest.raises(CancelRefused) as again:
        ledger.request_cancel("o1")

    assert again.value.seconds_left == 30.0
    assert snapshot(ledger) == before


def test_a_cancel_exactly_at_send_time_is_refused_as_passed_0_s_ago_not_minus_0(
    ledger_factory: Callable[..., Ledger],
) -> None:
    clock = ManualClock(T0)
    ledger = ledger_factory(clock=clock)
    ledger.register("o1", send_at=SEND_AT)
    clock.set(SEND_AT)

    with pytest.raises(CancelRefused) as refused:
        ledger.request_cancel("o1")

    assert refused.value.order.reason == "send time passed 0 s ago"


def test_the_margins_given_to_the_ledger_are_the_ones_applied(
    ledger_factory: Callable[..., Ledger],
) -> None:
    clock = ManualClock(T0)
    ledger = ledger_factory(
        clock=clock, warn_before=timedelta(seconds=60), refuse_before=timedelta(seconds=10)
    )
    ledger.register("calm", send_at=SEND_AT)
    ledger.register("close", send_at=SEND_AT + timedelta(seconds=1))
    clock.set(SEND_AT - timedelta(seconds=11))

    with capture_logs() as logs:
        accepted = ledger.request_cancel("calm")
    clock.set(SEND_AT - timedelta(seconds=9))
    with pytest.raises(CancelRefused, match="refuse_before is 10 s"):
        ledger.request_cancel("close")

    assert accepted.state is S.CANCEL_REQUESTED
    assert [e["seconds_left"] for e in logs if e["event"] == "cancel_close_to_dispatch"] == [11.0]


# -- idempotence -------------------------------------------------------------------------------


def test_registering_the_same_order_and_time_again_changes_nothing(
    tmp_ledger: Ledger, order_factory: Callable[..., Order]
) -> None:
    order = order_factory(order_id="o1", label="campaign")
    before = snapshot(tmp_ledger)

    again = tmp_ledger.register("o1", send_at=order.send_at, label="campaign")
    istanbul = tmp_ledger.register(
        "o1", send_at=order.send_at.astimezone(ZoneInfo("Europe/Istanbul"))
    )

    assert again == istanbul == order
    assert snapshot(tmp_ledger) == before


def test_a_registered_order_keeps_its_send_time_to_the_microsecond_and_in_utc(
    tmp_ledger: Ledger,
) -> None:
    local = datetime(2099, 1, 2, 3, 4, 5, 678901, tzinfo=ZoneInfo("Europe/Istanbul"))

    order = tmp_ledger.register("o1", send_at=local, label="x")

    assert order.send_at == local
    assert order.send_at.tzinfo is UTC
    assert tmp_ledger.get("o1").send_at == datetime(2099, 1, 2, 0, 4, 5, 678901, tzinfo=UTC)


@pytest.mark.parametrize("state", [S.CANCEL_REQUESTED, S.CANCELLING, S.CANCELLED])
def test_asking_again_for_a_cancel_already_under_way_or_done_changes_nothing(
    tmp_ledger: Ledger, order_factory: Callable[..., Order], state: OrderState
) -> None:
    order = order_factory()
    tmp_ledger.request_cancel(order.order_id)
    now = tmp_ledger.now()
    if state is not S.CANCEL_REQUESTED:
        tmp_ledger.store.transition(
            order.order_id, S.CANCEL_REQUESTED, S.CANCELLING, now=now, reason="sent"
        )
    if state is S.CANCELLED:
        tmp_ledger.store.transition(order.order_id, S.CANCELLING, S.CANCELLED, now=now, reason="ok")
    before = snapshot(tmp_ledger)

    with capture_logs() as logs:
        again = tmp_ledger.request_cancel(order.order_id)

    assert again.state is state
    assert again == tmp_ledger.get(order.order_id)
    assert snapshot(tmp_ledger) == before
    assert logs == []


@pytest.mark.parametrize("state", [S.TOO_LATE, S.NOT_FOUND, S.NEEDS_ATTENTION])
def test_asking_for_a_cancel_that_can_no_longer_happen_raises_cancel_not_possible_with_the_order(
    tmp_ledger: Ledger, order_factory: Callable[..., Order], state: OrderState
) -> None:
    """A normal return means "cancelled or on its way": a final outcome other than cancelled is
    an error the caller cannot mistake for an accepted cancel."""
    order = order_factory()
    tmp_ledger.request_cancel(order.order_id)
    now = tmp_ledger.now()
    if state is S.NEEDS_ATTENTION:
        tmp_ledger.store.transition(
            order.order_id, S.CANCEL_REQUESTED, S.CANCELLING, now=now, reason="sent"
        )
        tmp_ledger.store.transition(order.order_id, S.CANCELLING, state, now=now, reason="unknown")
    else:
        tmp_ledger.store.transition(
            order.order_id, S.CANCEL_REQUESTED, state, now=now, reason="pre-check"
        )
    before = snapshot(tmp_ledger)

    with pytest.raises(CancelNotPossible) as impossible:
        tmp_ledger.request_cancel(order.order_id)

    assert not isinstance(impossible.value, CancelRefused)
    assert isinstance(impossible.value, LedgerError)
    assert impossible.value.order == tmp_ledger.get(order.order_id)
    assert impossible.value.order.state is state
    assert str(impossible.value) == (
        f"order {order.order_id} cannot be cancelled: it is {state.value} "
        f"({impossible.value.order.reason})"
    )
    assert snapshot(tmp_ledger) == before


def test_asking_for_a_cancel_of_a_dispatched_order_is_refused_without_a_new_event(
    tmp_ledger: Ledger, order_factory: Callable[..., Order]
) -> None:
    order = order_factory()
    now = tmp_ledger.now()
    tmp_ledger.store.transition(order.order_id, S.SCHEDULED, S.DISPATCHED, now=now, reason="due")
    before = snapshot(tmp_ledger)

    with pytest.raises(CancelRefused) as refused:
        tmp_ledger.request_cancel(order.order_id)

    assert refused.value.order.state is S.DISPATCHED
    assert str(refused.value) == f"cancel of order {order.order_id} refused: due"
    assert snapshot(tmp_ledger) == before


def test_every_refused_cancel_is_also_a_cancel_not_possible(
    frozen: tuple[Ledger, Callable[[datetime], None]],
) -> None:
    """One `except CancelNotPossible` handles every cancel that will not happen."""
    ledger, move_to = frozen
    ledger.register("o1", send_at=SEND_AT)
    move_to(SEND_AT - timedelta(minutes=1))

    with pytest.raises(CancelNotPossible) as refused:
        ledger.request_cancel("o1")

    assert isinstance(refused.value, CancelRefused)
    assert refused.value.order.state is S.CANCEL_REFUSED
    assert refused.value.seconds_left == 60.0


# -- register_many -----------------------------------------------------------------------------


def test_register_many_returns_how_many_orders_were_new(
    tmp_ledger: Ledger, order_factory: Callable[..., Order]
) -> None:
    known = order_factory(order_id="known")
    send_at = known.send_at + timedelta(minutes=1)

    new = tmp_ledger.register_many(
        [("known", known.send_at), ("a", send_at), ("b", send_at, "own label"), ("a", send_at)],
        label="batch",
    )

    assert new == 2
    assert [(o.order_id, o.label) for o in tmp_ledger.orders()] == [
        ("known", None),
        ("a", "batch"),
        ("b", "own label"),
    ]
    assert all(len(tmp_ledger.history(oid)) == 1 for oid in ("known", "a", "b"))
    assert tmp_ledger.register_many([("a", send_at), ("b", send_at)]) == 0
    assert tmp_ledger.register_many([]) == 0


def test_register_many_writes_the_whole_batch_in_one_transaction(tmp_ledger: Ledger) -> None:
    send_at = tmp_ledger.now() + timedelta(hours=1)
    begins: list[object] = []

    def count_begin(conn: object) -> None:
        begins.append(conn)

    sa.event.listen(tmp_ledger.store.engine, "begin", count_begin)
    new = tmp_ledger.register_many((f"o{n}", send_at + timedelta(seconds=n)) for n in range(1200))
    sa.event.remove(tmp_ledger.store.engine, "begin", count_begin)

    assert new == 1200
    assert len(begins) == 1
    registered_at = {e.at for oid in ("o0", "o600", "o1199") for e in tmp_ledger.history(oid)}
    assert len(registered_at) == 1
    assert len(tmp_ledger.orders()) == 1200


def _far(ledger: Ledger, minutes: int = 60) -> datetime:
    return ledger.now() + timedelta(minutes=minutes)


BAD_BATCHES = [
    pytest.param(
        lambda lg: [("b1", _far(lg)), ("b2", datetime(2099, 1, 1))],
        NaiveDatetimeError,
        id="naive-time",
    ),
    pytest.param(
        lambda lg: [("b1", _far(lg)), ("b 2", _far(lg))], InvalidInput, id="id-with-space"
    ),
    pytest.param(lambda lg: [("b1", _far(lg)), ("", _far(lg))], InvalidInput, id="empty-id"),
    pytest.param(lambda lg: [("b1", _far(lg)), ["b2", _far(lg)]], InvalidInput, id="not-a-tuple"),
    pytest.param(lambda lg: [("b1", _far(lg)), ("b2",)], InvalidInput, id="short-tuple"),
    pytest.param(
        lambda lg: [("b1", _far(lg)), ("b1", _far(lg, 61))],
        RegistrationConflict,
        id="two-times-in-batch",
    ),
    pytest.param(
        lambda lg: [("b1", _far(lg)), ("known", _far(lg, 99))],
        RegistrationConflict,
        id="known-id-other-time",
    ),
    pytest.param(
        lambda lg: [("b1", _far(lg)), ("b2", _far(lg, -1))], InvalidInput, id="time-in-the-past"
    ),
    pytest.param(
        lambda lg: [("b1", _far(lg)), ("b2", _far(lg), "x" * 201)],
        InvalidInput,
        id="label-too-long",
    ),
]


@pytest.mark.parametrize(("batch", "error"), BAD_BATCHES)
def test_register_many_with_one_bad_item_registers_nothing(
    tmp_ledger: Ledger,
    order_factory: Callable[..., Order],
    batch: Callable[[Ledger], list[Any]],
    error: type[Exception],
) -> None:
    order_factory(order_id="known")
    before = snapshot(tmp_ledger)

    with pytest.raises(error):
        tmp_ledger.register_many(batch(tmp_ledger))

    assert snapshot(tmp_ledger) == before


# -- bad input ---------------------------------------------------------------------------------


BAD_CALLS = [
    pytest.param(
        lambda lg: lg.register("new", send_at=datetime(2099, 1, 1, 12)),
        NaiveDatetimeError,
        "send_at 2099-01-01T12:00:00 is naive",
        id="naive-send-time",
    ),
    pytest.param(
        lambda lg: lg.register("new", send_at="2099-01-01T12:00:00+00:00"),
        NaiveDatetimeError,
        "send_at must be a datetime, got str",
        id="send-time-as-text",
    ),
    pytest.param(
        lambda lg: lg.register("", send_at=_far(lg)),
        InvalidInput,
        "order id is empty",
        id="empty-id",
    ),
    pytest.param(
        lambda lg: lg.register("   ", send_at=_far(lg)),
        InvalidInput,
        "order id is empty",
        id="blank-id",
    ),
    pytest.param(
        lambda lg: lg.register("9" * 10_000, send_at=_far(lg)),
        InvalidInput,
        "is 10000 characters long; at most 64",
        id="10000-character-id",
    ),
    pytest.param(
        lambda lg: lg.register("x" * 65, send_at=_far(lg)),
        InvalidInput,
        "at most 64",
        id="65-character-id",
    ),
    pytest.param(
        lambda lg: lg.register("12 34", send_at=_far(lg)),
        InvalidInput,
        "contains spaces or control characters",
        id="id-with-space",
    ),
    pytest.param(
        lambda lg: lg.register("12\n34", send_at=_far(lg)),
        InvalidInput,
        "contains spaces or control characters",
        id="id-with-newline",
    ),
    pytest.param(
        lambda lg: lg.register(None, send_at=_far(lg)),
        InvalidInput,
        "must be text, got NoneType",
        id="id-none",
    ),
    pytest.param(
        lambda lg: lg.register("known", send_at=lg.get("known").send_at + timedelta(minutes=1)),
        RegistrationConflict,
        r"order known is already registered for 2\S+; refusing to register it again for 2\S+",
        id="known-id-other-time",
    ),
    pytest.param(
        lambda lg: lg.register("new", send_at=lg.now()),
        InvalidInput,
        "is not in the future",
        id="send-time-now",
    ),
    pytest.param(
        lambda lg: lg.register("new", send_at=_far(lg), label="x" * 201),
        InvalidInput,
        "label is 201 characters long",
        id="label-too-long",
    ),
    pytest.param(
        lambda lg: lg.register("new", send_at=_far(lg), label="two\nlines"),
        InvalidInput,
        "label contains the control character U\\+000A at position 4",
        id="label-newline",
    ),
    pytest.param(
        lambda lg: lg.register("new", send_at=_far(lg), label="\x1b[31mred"),
        InvalidInput,
        "label contains the control character U\\+001B at position 1",
        id="label-escape-sequence",
    ),
    pytest.param(
        lambda lg: lg.register("new", send_at=_far(lg), label="abc\u202e"),
        InvalidInput,
        "U\\+202E",
        id="label-bidi-override",
    ),
    pytest.param(
        lambda lg: lg.register_many([("n1", _far(lg)), ("n2", _far(lg), "a\x9bb")]),
        InvalidInput,
        "order n2: label contains the control character U\\+009B",
        id="batch-label-c1-control",
    ),
    pytest.param(
        lambda lg: lg.register_many([("n1", _far(lg))], label="\u2028"),
        InvalidInput,
        "U\\+2028",
        id="batch-default-label-line-separator",
    ),
    pytest.param(
        lambda lg: lg.request_cancel("unknown"),
        OrderNotFound,
        "order unknown is not in the ledger",
        id="cancel-unknown",
    ),
    pytest.param(
        lambda lg: lg.request_cancel("a b"), InvalidInput, "contains spaces", id="cancel-bad-id"
    ),
    pytest.param(
        lambda lg: lg.get("unknown"), OrderNotFound, "not in the ledger", id="get-unknown"
    ),
    pytest.param(
        lambda lg: lg.history("unknown"), OrderNotFound, "not in the ledger", id="history-unknown"
    ),
    pytest.param(
        lambda lg: lg.orders(state="sent"),
        InvalidInput,
        "unknown state in",
        id="orders-unknown-state",
    ),
    pytest.param(
        lambda lg: lg.orders(send_after=datetime(2030, 1, 1)),
        NaiveDatetimeError,
        "send_after",
        id="orders-naive",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD_CALLS)
def test_bad_input_is_a_clear_ledger_error_and_leaves_the_ledger_unchanged(
    tmp_ledger: Ledger,
    order_factory: Callable[..., Order],
    call: Callable[[Ledger], object],
    error: type[LedgerError],
    message: str,
) -> None:
    order_factory(order_id="known")
    tmp_ledger.request_cancel("known")
    before = snapshot(tmp_ledger)

    with pytest.raises(error, match=message) as raised:
        call(tmp_ledger)

    assert isinstance(raised.value, LedgerError)
    assert snapshot(tmp_ledger) == before


def test_a_registration_conflict_names_both_send_times(
    tmp_ledger: Ledger, order_factory: Callable[..., Order]
) -> None:
    first = order_factory(order_id="o1", send_at=datetime(2099, 1, 1, 12, tzinfo=UTC))

    with pytest.raises(RegistrationConflict) as conflict:
        tmp_ledger.register("o1", send_at=datetime(2099, 1, 1, 13, tzinfo=UTC))

    assert "2099-01-01T12:00:00+00:00" in str(conflict.value)
    assert "2099-01-01T13:00:00+00:00" in str(conflict.value)
    assert (conflict.value.existing, conflict.value.requested) == (
        first.send_at,
        first.send_at + timedelta(hours=1),
    )


def test_a_naive_datetime_error_is_invalid_input_a_ledger_error_and_a_value_error() -> None:
    assert issubclass(NaiveDatetimeError, InvalidInput)
    assert issubclass(NaiveDatetimeError, LedgerError)
    assert issubclass(NaiveDatetimeError, ValueError)


def test_a_numeric_order_id_is_stored_as_text(tmp_ledger: Ledger) -> None:
    tmp_ledger.register(312891245, send_at=_far(tmp_ledger))  # type: ignore[arg-type]

    assert tmp_ledger.get("312891245").order_id == "312891245"


# -- reads -------------------------------------------------------------------------------------


def test_history_lists_every_state_change_oldest_first_starting_with_registration(
    frozen: tuple[Ledger, Callable[[datetime], None]],
) -> None:
    ledger, move_to = frozen
    ledger.register("o1", send_at=SEND_AT, label="spring")
    move_to(T0 + timedelta(minutes=1))
    ledger.request_cancel("o1")
    ledger.store.transition(
        "o1", S.CANCEL_REQUESTED, S.CANCELLING, now=T0 + timedelta(minutes=2), reason="sent"
    )

    history = ledger.history("o1")

    assert [(e.from_state, e.to_state, e.reason, e.at) for e in history] == [
        (None, S.SCHEDULED, "registered", T0),
        (S.SCHEDULED, S.CANCEL_REQUESTED, "cancel requested", T0 + timedelta(minutes=1)),
        (S.CANCEL_REQUESTED, S.CANCELLING, "sent", T0 + timedelta(minutes=2)),
    ]
    assert all(e.order_id == "o1" for e in history)


def test_orders_are_listed_by_send_time_and_filtered_by_state_and_send_time_range(
    tmp_ledger: Ledger, order_factory: Callable[..., Order]
) -> None:
    base = _far(tmp_ledger)
    for order_id, minutes in [("c", 30), ("a", 10), ("d", 40), ("b", 20)]:
        order_factory(order_id=order_id, send_at=base + timedelta(minutes=minutes))
    tmp_ledger.request_cancel("b")
    tmp_ledger.request_cancel("d")

    def ids(**filters: Any) -> list[str]:
        return [o.order_id for o in tmp_ledger.orders(**filters)]

    assert ids() == ["a", "b", "c", "d"]
    assert ids(state="cancel_requested") == ["b", "d"]
    assert ids(state=S.SCHEDULED) == ["a", "c"]
    assert ids(state=[S.SCHEDULED, "cancel_requested"]) == ["a", "b", "c", "d"]
    assert ids(state=S.CANCELLED) == []
    assert ids(send_after=base + timedelta(minutes=20)) == ["b", "c", "d"]
    assert ids(send_before=base + timedelta(minutes=30)) == ["a", "b"]
    assert ids(
        state=S.SCHEDULED,
        send_after=(base + timedelta(minutes=10)).astimezone(ZoneInfo("Europe/Istanbul")),
        send_before=base + timedelta(minutes=31),
    ) == ["a", "c"]
    assert ids(limit=3) == ["a", "b", "c"]


# -- opening: a ledger that must exist, a damaged file -------------------------------------------


def test_must_exist_refuses_a_missing_file_without_creating_it(tmp_path: Path) -> None:
    path = tmp_path / "gone" / "ledger.db"
    (tmp_path / "gone").mkdir()

    with pytest.raises(NoLedger, match=rf"no ledger exists at {path} \(no such file\)"):
        Ledger(f"sqlite:///{path}", must_exist=True)

    assert list((tmp_path / "gone").iterdir()) == []


def test_must_exist_refuses_an_empty_file_and_a_database_without_ledger_tables(
    tmp_path: Path,
) -> None:
    (tmp_path / "empty.db").touch()
    with contextlib.closing(sqlite3.connect(tmp_path / "other.db")) as db, db:
        db.execute("CREATE TABLE unrelated (x)")

    with pytest.raises(NoLedger, match="the file is empty"):
        Ledger(f"sqlite:///{tmp_path / 'empty.db'}", must_exist=True)
    with pytest.raises(NoLedger, match="holds no ledger tables"):
        Ledger(f"sqlite:///{tmp_path / 'other.db'}", must_exist=True)

    assert (tmp_path / "empty.db").stat().st_size == 0
    with contextlib.closing(sqlite3.connect(tmp_path / "other.db")) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    assert tables == ["unrelated"]


def test_must_exist_opens_an_existing_ledger_and_never_recreates_it_once_removed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(f"sqlite:///{path}") as first:
        first.register("1", first.now() + timedelta(hours=1))

    with Ledger(f"sqlite:///{path}", must_exist=True) as ledger:
        assert [o.order_id for o in ledger.orders()] == ["1"]
        ledger.store.dispose()
        for leftover in tmp_path.iterdir():
            leftover.unlink()
        with pytest.raises(LedgerUnavailable, match="unable to open database file"):
            ledger.orders()

    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"\x00\xff" * 4096, b"just some text\n" * 300])
def test_a_damaged_or_foreign_file_is_one_line_ledger_unavailable(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(content)

    for must_exist in (False, True):
        with pytest.raises(LedgerUnavailable) as caught:
            Ledger(f"sqlite:///{path}", must_exist=must_exist)
        message = str(caught.value)
        assert message.startswith(f"ledger sqlite:///{path} is damaged or not a database ("), (
            message
        )
        assert "\n" not in message
    assert path.read_bytes() == content
