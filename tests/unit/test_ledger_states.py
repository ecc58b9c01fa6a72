"""The transition table and `Store.transition`, the one guarded way an order changes state."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from ledger import FINAL_STATES, TRANSITIONS, Event, IllegalTransition, Ledger, Order, OrderState
from ledger.states import BY_PERSON_ONLY, SETTLING, is_legal
from ledger.store import Store

S = OrderState


def _shortest_walks() -> dict[OrderState, list[tuple[OrderState, OrderState]]]:
    """For every state, the shortest walk of legal transitions that leads there from scheduled."""
    walks: dict[OrderState, list[tuple[OrderState, OrderState]]] = {S.SCHEDULED: []}
    queue = deque([S.SCHEDULED])
    while queue:
        here = queue.popleft()
        for to_state in S:
            if is_legal(here, to_state) and to_state not in walks:
                walks[to_state] = [*walks[here], (here, to_state)]
                queue.append(to_state)
    return walks


WALKS = _shortest_walks()
LEGAL = sorted((f, t) for f, t in TRANSITIONS if f is not None)
ILLEGAL_SAMPLE = [
    (S.SCHEDULED, S.SCHEDULED),
    (S.SCHEDULED, S.CANCELLING),  # a cancel is never sent without being requested first
    (S.SCHEDULED, S.TOO_LATE),
    (S.CANCEL_REQUESTED, S.SCHEDULED),  # no way back
    (S.CANCEL_REQUESTED, S.DISPATCHED),  # a requested cancel must be resolved, not forgotten
    (S.CANCELLING, S.CANCEL_REQUESTED),
    (S.CANCELLED, S.SCHEDULED),
    (S.CANCELLED, S.CANCELLING),
    (S.CANCEL_REFUSED, S.CANCEL_REQUESTED),
    (S.DISPATCHED, S.CANCEL_REQUESTED),
    (S.TOO_LATE, S.CANCELLED),
    (S.NOT_FOUND, S.CANCELLING),
    (S.NEEDS_ATTENTION, S.SCHEDULED),
    (S.NEEDS_ATTENTION, S.DISPATCHED),
    (S.DISPATCHED, S.TOO_LATE),
    (S.DISPATCHED, S.SCHEDULED),
    (S.CANCELLED, S.DISPATCHED),
]


def _pair_id(pair: tuple[OrderState, OrderState]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


def put_in_state(store: Store, order: Order, state: OrderState, now: datetime) -> Order:
    """Move a freshly registered order into `state` along legal transitions only."""
    current = order
    for from_state, to_state in WALKS[state]:
        result = store.transition(
            order.order_id, from_state, to_state, now=now, reason=f"walk to {state.value}"
        )
        assert result.applied
        assert result.order is not None
        current = result.order
    return current


@pytest.fixture
def store(tmp_ledger: Ledger) -> Store:
    return tmp_ledger.store


@pytest.fixture
def now(tmp_ledger: Ledger) -> datetime:
    return tmp_ledger.now()


# -- the table ---------------------------------------------------------------------------------


def test_every_state_can_be_reached_from_scheduled_by_legal_transitions() -> None:
    assert set(WALKS) == set(OrderState)


def test_only_the_provider_truth_and_a_person_leave_a_final_state() -> None:
    """dispatched and needs_attention are left only for the provider's later word or by hand;
    cancelled, cancel_refused, too_late and not_found are never left."""
    assert {pair for pair in TRANSITIONS if pair[0] in FINAL_STATES} == SETTLING
    assert {
        (S.DISPATCHED, S.CANCELLED),
        (S.DISPATCHED, S.NOT_FOUND),
        (S.NEEDS_ATTENTION, S.CANCELLED),
        (S.NEEDS_ATTENTION, S.TOO_LATE),
        (S.NEEDS_ATTENTION, S.NOT_FOUND),
    } == SETTLING


def test_needs_attention_to_not_found_is_taken_only_by_a_person(
    store: Store, now: datetime, order_factory: Callable[..., Order]
) -> None:
    assert {(S.NEEDS_ATTENTION, S.NOT_FOUND)} == BY_PERSON_ONLY
    assert not is_legal(S.NEEDS_ATTENTION, S.NOT_FOUND)
    assert is_legal(S.NEEDS_ATTENTION, S.NOT_FOUND, by_person=True)
    order = put_in_state(store, order_factory(), S.NEEDS_ATTENTION, now)
    with pytest.raises(IllegalTransition, match="only a person"):
        store.transition(order.order_id, S.NEEDS_ATTENTION, S.NOT_FOUND, now=now, reason="auto")


def test_the_only_way_into_the_ledger_is_registration_as_scheduled() -> None:
    assert [pair for pair in TRANSITIONS if pair[0] is None] == [(None, S.SCHEDULED)]


def test_order_states_are_strings_stored_by_their_value() -> None:
    as_text: str = S.CANCEL_REQUESTED  # a str enum: compares equal to its stored value
    assert as_text == "cancel_requested"
    assert {s.value for s in S} == {
        "scheduled",
        "cancel_requested",
        "cancelling",
        "cancelled",
        "cancel_refused",
        "too_late",
        "not_found",
        "dispatched",
        "needs_attention",
    }


# -- legal transitions -------------------------------------------------------------------------


def test_registration_is_recorded_as_the_transition_from_nothing_to_scheduled(
    tmp_ledger: Ledger, order_factory: Callable[..., Order]
) -> None:
    order = order_factory()

    assert order.state is S.SCHEDULED
    assert tmp_ledger.history(order.order_id) == [
        Event(order.order_id, order.created_at, None, S.SCHEDULED, "registered", {})
    ]


@pytest.mark.parametrize(("from_state", "to_state"), LEGAL, ids=[_pair_id(p) for p in LEGAL])
def test_every_legal_transition_updates_the_row_and_appends_its_history_row(
    tmp_ledger: Ledger,
    store: Store,
    now: datetime,
    order_factory: Callable[..., Order],
    from_state: OrderState,
    to_state: OrderState,
) -> None:
    order = put_in_state(store, order_factory(), from_state, now)
    before = tmp_ledger.history(order.order_id)
    at = now + timedelta(seconds=7, microseconds=123)

    result = store.transition(
        order.order_id,
        from_state,
        to_state,
        now=at,
        reason="under test",
        details={"provider_code": 200, "note": "şğü", "nested": {"pages": [1, 2]}},
        by_person=(from_state, to_state) in BY_PERSON_ONLY,
    )

    assert result.applied
    assert result.order == store.get(order.order_id)
    assert result.order is not None
    assert (result.order.state, result.order.reason, result.order.updated_at) == (
        to_state,
        "under test",
        at,
    )
    assert tmp_ledger.history(order.order_id) == [
        *before,
        Event(
            order.order_id,
            at,
            from_state,
            to_state,
            "under test",
            {"provider_code": 200, "note": "şğü", "nested": {"pages": [1, 2]}},
        ),
    ]


def test_a_transition_sets_the_given_values_and_increments_counters_in_the_same_update(
    store: Store, now: datetime, order_factory: Callable[..., Order]
) -> None:
    order = put_in_state(store, order_factory(), S.CANCEL_REQUESTED, now)

    result = store.transition(
        order.order_id,
        S.CANCEL_REQUESTED,
        S.CANCELLING,
        now=now,
        reason="cancel sent",
        values={"last_provider_code": 200},
        increment=["cancel_attempts"],
    )
    again = store.transition(
        order.order_id,
        S.CANCELLING,
        S.CANCELLING,
        now=now,
        reason="cancel sent again",
        increment=["cancel_attempts", "check_attempts"],
    )

    assert result.order is not None
    assert (result.order.cancel_attempts, result.order.last_provider_code) == (1, 200)
    assert again.order is not None
    assert (again.order.cancel_attempts, again.order.check_attempts) == (2, 1)


def test_an_empty_details_mapping_reads_back_as_an_empty_dict(
    tmp_ledger: Ledger, store: Store, now: datetime, order_factory: Callable[..., Order]
) -> None:
    order = order_factory()

    store.transition(order.order_id, S.SCHEDULED, S.DISPATCHED, now=now, reason="due", details={})

    assert tmp_ledger.history(order.order_id)[-1].details == {}


# -- illegal transitions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("from_state", "to_state"), ILLEGAL_SAMPLE, ids=[_pair_id(p) for p in ILLEGAL_SAMPLE]
)
def test_an_illegal_transition_raises_and_leaves_the_row_and_history_unchanged(
    tmp_ledger: Ledger,
    store: Store,
    now: datetime,
    order_factory: Callable[..., Order],
    from_state: OrderState,
    to_state: OrderState,
) -> None:
    assert not is_legal(from_state, to_state)
    order = put_in_state(store, order_factory(), from_state, now)
    history = tmp_ledger.history(order.order_id)

    with pytest.raises(IllegalTransition, match=f"{from_state.value} -> {to_state.value}"):
        store.transition(order.order_id, from_state, to_state, now=now, reason="illegal")

    assert store.get(order.order_id) == order
    assert tmp_ledger.history(order.order_id) == history


def test_every_pair_outside_the_table_raises_illegal_transition_before_touching_the_ledger(
    tmp_ledger: Ledger, store: Store, now: datetime, order_factory: Callable[..., Order]
) -> None:
    order = order_factory()
    illegal = [(f, t) for f in S for t in S if (f, t) not in TRANSITIONS]
    assert len(illegal) == len(S) ** 2 - len(LEGAL)

    for from_state, to_state in illegal:
        with pytest.raises(IllegalTransition):
            store.transition(order.order_id, from_state, to_state, now=now, reason="illegal")

    assert store.get(order.order_id) == order
    assert len(tmp_ledger.history(order.order_id)) == 1


# -- the guard ---------------------------------------------------------------------------------


def test_a_transition_from_a_state_the_order_has_left_is_not_applied_and_writes_no_event(
    ledger_factory: Callable[..., Ledger], now: datetime, order_factory: Callable[..., Order]
) -> None:
    order = order_factory()
    first, second = ledger_factory().store, ledger_factory().store  # two processes, one file
    won = first.transition(order.order_id, S.SCHEDULED, S.CANCEL_REQUESTED, now=now, reason="a")

    lost = second.transition(order.order_id, S.SCHEDULED, S.CANCEL_REFUSED, now=now, reason="b")

    assert won.applied
    assert not lost.applied
    assert lost.order == won.order
    assert lost.order is not None
    assert lost.order.state is S.CANCEL_REQUESTED
    assert [(e.from_state, e.to_state) for e in second.history(order.order_id)] == [
        (None, S.SCHEDULED),
        (S.SCHEDULED, S.CANCEL_REQUESTED),
    ]


def test_a_transition_of_an_unknown_order_is_not_applied_and_reports_no_order(
    store: Store, now: datetime
) -> None:
    result = store.transition("no-such-order", S.SCHEDULED, S.DISPATCHED, now=now, reason="due")

    assert (result.applied, result.order) == (False, None)
    assert store.history("no-such-order") == []


def test_a_transition_guarded_by_a_claim_is_not_applied_for_a_worker_whose_claim_was_taken_over(
    tmp_ledger: Ledger, store: Store, now: datetime, order_factory: Callable[..., Order]
) -> None:
    order = put_in_state(store, order_factory(), S.CANCEL_REQUESTED, now)
    store.claim(order.order_id, S.CANCEL_REQUESTED, owner="a", expires_at=now, now=now)
    taken = store.claim(
        order.order_id,
        S.CANCEL_REQUESTED,
        owner="b",
        expires_at=now + timedelta(seconds=30),
        now=now,
    )
    history = tmp_ledger.history(order.order_id)

    stale = store.transition(
        order.order_id, S.CANCEL_REQUESTED, S.CANCELLING, now=now, reason="a", expect_owner="a"
    )
    live = store.transition(
        order.order_id, S.CANCEL_REQUESTED, S.CANCELLING, now=now, reason="b", expect_owner="b"
    )

    assert not stale.applied
    assert stale.order == taken
    assert live.applied
    assert tmp_ledger.history(order.order_id)[len(history) :] == [
        Event(order.order_id, now, S.CANCEL_REQUESTED, S.CANCELLING, "b", {})
    ]


def test_moving_to_cancelling_keeps_the_claim_and_moving_to_a_final_state_releases_it(
    store: Store, now: datetime, order_factory: Callable[..., Order]
) -> None:
    order = put_in_state(store, order_factory(), S.CANCEL_REQUESTED, now)
    expires = now + timedelta(seconds=30)
    store.claim(order.order_id, S.CANCEL_REQUESTED, owner="w", expires_at=expires, now=now)

    cancelling = store.transition(
        order.order_id, S.CANCEL_REQUESTED, S.CANCELLING, now=now, reason="sent", expect_owner="w"
    ).order
    done = store.transition(
        order.order_id, S.CANCELLING, S.CANCELLED, now=now, reason="verified", expect_owner="w"
    ).order

    assert cancelling is not None
    assert (cancelling.claim_owner, cancelling.claim_expires_at) == ("w", expires)
    assert done is not None
    assert (done.claim_owner, done.claim_expires_at) == (None, None)


# -- transition_due ----------------------------------------------------------------------------


def test_transition_due_dispatches_exactly_the_scheduled_orders_due_by_the_given_time(
    tmp_ledger: Ledger, store: Store, now: datetime, order_factory: Callable[..., Order]
) -> None:
    due_by = now + timedelta(hours=1)
    early = order_factory(order_id="early", send_at=due_by - timedelta(seconds=10))
    on_time = order_factory(order_id="on-time", send_at=due_by)
    just_after = order_factory(order_id="just-after", send_at=due_by + timedelta(microseconds=1))
    later = order_factory(order_id="later", send_at=due_by + timedelta(hours=1))
    requested = put_in_state(
        store,
        order_factory(order_id="requested", send_at=due_by - timedelta(seconds=20)),
        S.CANCEL_REQUESTED,
        now,
    )
    at = now + timedelta(seconds=1)

    moved = store.transition_due(
        S.SCHEDULED, S.DISPATCHED, due_by=due_by, now=at, reason="send time passed"
    )

    assert [o.order_id for o in moved] == ["early", "on-time"]
    assert all(o.state is S.DISPATCHED and o.reason == "send time passed" for o in moved)
    assert {o.order_id: o.state for o in tmp_ledger.orders()} == {
        "requested": S.CANCEL_REQUESTED,
        "early": S.DISPATCHED,
        "on-time": S.DISPATCHED,
        "just-after": S.SCHEDULED,
        "later": S.SCHEDULED,
    }
    for order in (early, on_time):
        assert tmp_ledger.history(order.order_id)[-1] == Event(
            order.order_id, at, S.SCHEDULED, S.DISPATCHED, "send time passed", {}
        )
    for order in (just_after, later):
        assert len(tmp_ledger.history(order.order_id)) == 1
    assert len(tmp_ledger.history(requested.order_id)) == 2


def test_transition_due_moves_at_most_limit_orders_the_most_urgent_first(
    store: Store, now: datetime, order_factory: Callable[..., Order]
) -> None:
    for minutes in (30, 10, 20):
        order_factory(order_id=f"in-{minutes}", send_at=now + timedelta(minutes=minutes))

    first = store.transition_due(
        S.SCHEDULED, S.DISPATCHED, due_by=now + timedelta(hours=1), now=now, reason="due", limit=2
    )
    rest = store.transition_due(
        S.SCHEDULED, S.DISPATCHED, due_by=now + timedelta(hours=1), now=now, reason="due", limit=2
    )

    assert [o.order_id for o in first] == ["in-10", "in-20"]
    assert [o.order_id for o in rest] == ["in-30"]


def test_transition_due_with_nothing_due_writes_nothing(
    tmp_ledger: Ledger, store: Store, now: datetime, order_factory: Callable[..., Order]
) -> None:
    order = order_factory()

    assert store.transition_due(S.SCHEDULED, S.DISPATCHED, due_by=now, now=now, reason="x") == []
    assert len(tmp_ledger.history(order.order_id)) == 1


def test_transition_due_refuses_an_illegal_pair(store: Store, now: datetime) -> None:
    with pytest.raises(IllegalTransition, match="cancel_requested -> dispatched"):
        store.transition_due(S.CANCEL_REQUESTED, S.DISPATCHED, due_by=now, now=now, reason="x")


# -- claims ------------------------------------------------------------------------------------


@pytest.fixture
def requested(store: Store, now: datetime, order_factory: Callable[..., Order]) -> Order:
    """An order waiting for the daemon, nobody's claim on it."""
    return put_in_state(store, order_factory(), S.CANCEL_REQUESTED, now)


def test_a_free_order_is_claimed_without_a_state_change_or_event(
    tmp_ledger: Ledger, store: Store, now: datetime, requested: Order
) -> None:
    expires = now + timedelta(seconds=30)

    claimed = store.claim(
        requested.order_id, S.CANCEL_REQUESTED, owner="w1", expires_at=expires, now=now
    )

    assert claimed is not None
    assert (claimed.state, claimed.claim_owner, claimed.claim_expires_at) == (
        S.CANCEL_REQUESTED,
        "w1",
        expires,
    )
    assert store.get(requested.order_id) == claimed
    assert len(tmp_ledger.history(requested.order_id)) == 2


def test_the_claim_holder_renews_its_own_live_claim(
    store: Store, now: datetime, requested: Order
) -> None:
    oid = requested.order_id
    store.claim(
        oid, S.CANCEL_REQUESTED, owner="w1", expires_at=now + timedelta(seconds=30), now=now
    )

    renewed = store.claim(
        oid, S.CANCEL_REQUESTED, owner="w1", expires_at=now + timedelta(seconds=90), now=now
    )

    assert renewed is not None
    assert renewed.claim_expires_at == now + timedelta(seconds=90)


def test_someone_elses_live_claim_is_not_taken(
    store: Store, now: datetime, requested: Order
) -> None:
    oid = requested.order_id
    held = store.claim(
        oid, S.CANCEL_REQUESTED, owner="w1", expires_at=now + timedelta(seconds=30), now=now
    )

    taken = store.claim(
        oid,
        S.CANCEL_REQUESTED,
        owner="w2",
        expires_at=now + timedelta(seconds=60),
        now=now + timedelta(seconds=29),
    )

    assert taken is None
    assert store.get(oid) == held
    assert store.claimable(S.CANCEL_REQUESTED, now, limit=10) == []


@pytest.mark.parametrize("after_expiry", [timedelta(0), timedelta(seconds=5)])
def test_an_expired_claim_is_taken_over_from_the_moment_it_expires(
    store: Store, now: datetime, requested: Order, after_expiry: timedelta
) -> None:
    oid = requested.order_id
    expires = now + timedelta(seconds=30)
    store.claim(oid, S.CANCEL_REQUESTED, owner="w1", expires_at=expires, now=now)
    later = expires + after_expiry

    assert [o.order_id for o in store.claimable(S.CANCEL_REQUESTED, later, limit=10)] == [oid]
    taken = store.claim(
        oid, S.CANCEL_REQUESTED, owner="w2", expires_at=later + timedelta(seconds=30), now=later
    )

    assert taken is not None
    assert taken.claim_owner == "w2"


def test_an_order_that_left_the_claimed_state_or_does_not_exist_cannot_be_claimed(
    store: Store, now: datetime, requested: Order
) -> None:
    expires = now + timedelta(seconds=30)

    wrong_state = store.claim(
        requested.order_id, S.CANCELLING, owner="w1", expires_at=expires, now=now
    )
    unknown = store.claim(
        "no-such-order", S.CANCEL_REQUESTED, owner="w1", expires_at=expires, now=now
    )

    assert (wrong_state, unknown) == (None, None)
    assert store.get(requested.order_id) == requested


def test_releasing_a_claim_frees_the_order_but_only_for_its_owner(
    store: Store, now: datetime, requested: Order
) -> None:
    oid = requested.order_id
    store.claim(
        oid, S.CANCEL_REQUESTED, owner="w1", expires_at=now + timedelta(seconds=30), now=now
    )

    store.release(oid, owner="w2")
    still_held = store.get(oid)
    store.release(oid, owner="w1")

    assert still_held is not None
    assert still_held.claim_owner == "w1"
    assert store.get(oid) == requested


def test_the_at_risk_warning_is_recorded_once_for_the_first_caller_only(
    store: Store, now: datetime, order_factory: Callable[..., Order]
) -> None:
    order = order_factory(send_at=now + timedelta(minutes=10))

    first = store.mark_warned(order.order_id, now)
    second = store.mark_warned(order.order_id, now + timedelta(seconds=1))

    assert (first, second) == (True, False)
    warned = store.get(order.order_id)
    assert warned is not None
    assert warned.warned_at == now
    assert store.unwarned([S.SCHEDULED], before=now + timedelta(hours=1)) == []
