"""`Ledger.resolve`: a person settles a needs_attention order; every refusal leaves it as it was."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ledger import InvalidInput, Ledger, NotResolvable, Order, OrderNotFound, OrderState
from ledger.api import os_user

S = OrderState


def needs_attention(ledger: Ledger, order: Order) -> Order:
    """Walk a registered order to needs_attention the way the daemon does."""
    now = ledger.now()
    for from_state, to_state in [
        (S.SCHEDULED, S.CANCEL_REQUESTED),
        (S.CANCEL_REQUESTED, S.CANCELLING),
        (S.CANCELLING, S.NEEDS_ATTENTION),
    ]:
        assert ledger.store.transition(
            order.order_id, from_state, to_state, now=now, reason="walk"
        ).applied
    return ledger.get(order.order_id)


@pytest.mark.parametrize("target", ["cancelled", "too_late", "not_found"])
def test_resolve_settles_needs_attention_with_the_note_and_the_person_in_the_history(
    tmp_ledger: Ledger, order_factory: Callable[..., Order], target: str
) -> None:
    order = needs_attention(tmp_ledger, order_factory())
    settled = tmp_ledger.resolve(order.order_id, target, note="panel shows it cancelled", by="ayse")
    assert settled.state is S(target)
    last = tmp_ledger.history(order.order_id)[-1]
    assert (last.from_state, last.to_state) == (S.NEEDS_ATTENTION, S(target))
    assert last.details == {"note": "panel shows it cancelled", "by": "ayse", "by_person": True}
    assert "ayse" in (last.reason or "")


def test_by_defaults_to_the_os_user(
    tmp_ledger: Ledger, order_factory: Callable[..., Order]
) -> None:
    order = needs_attention(tmp_ledger, order_factory())
    tmp_ledger.resolve(order.order_id, S.TOO_LATE, note="recipients got it")
    assert tmp_ledger.history(order.order_id)[-1].details["by"] == os_user()


@pytest.mark.parametrize("state", [S.SCHEDULED, S.CANCEL_REQUESTED, S.DISPATCHED, S.CANCEL_REFUSED])
def test_only_needs_attention_can_be_resolved_and_the_error_names_the_state(
    tmp_ledger: Ledger, order_factory: Callable[..., Order], state: OrderState
) -> None:
    order = order_factory()
    if state is not S.SCHEDULED:
        tmp_ledger.store.transition(
            order.order_id, S.SCHEDULED, state, now=tmp_ledger.now(), reason="walk"
        )
    before = tmp_ledger.history(order.order_id)
    with pytest.raises(NotResolvable, match=f"is {state.value}, not needs_attention"):
        tmp_ledger.resolve(order.order_id, "cancelled", note="n")
    assert tmp_ledger.history(order.order_id) == before


@pytest.mark.parametrize(
    ("target", "note", "by", "match"),
    [
        ("dispatched", "n", None, "cannot resolve an order as 'dispatched'"),
        ("scheduled", "n", None, "choose cancelled, not_found, too_late"),
        ("nonsense", "n", None, "cannot resolve"),
        ("cancelled", "", None, "a note is required"),
        ("cancelled", "   ", None, "a note is required"),
        ("cancelled", "line\nbreak", None, "control character"),
        ("cancelled", "n", "", "must not be empty"),
        ("cancelled", "n", "x\x1b[31m", "control character"),
    ],
)
def test_bad_arguments_are_refused_and_change_nothing(
    tmp_ledger: Ledger,
    order_factory: Callable[..., Order],
    target: str,
    note: str,
    by: str | None,
    match: str,
) -> None:
    order = needs_attention(tmp_ledger, order_factory())
    before = tmp_ledger.history(order.order_id)
    with pytest.raises(InvalidInput, match=match):
        tmp_ledger.resolve(order.order_id, target, note=note, by=by)
    assert tmp_ledger.history(order.order_id) == before
    assert tmp_ledger.get(order.order_id).state is S.NEEDS_ATTENTION


def test_an_unknown_order_is_not_found(tmp_ledger: Ledger) -> None:
    with pytest.raises(OrderNotFound):
        tmp_ledger.resolve("nope", "cancelled", note="n")
