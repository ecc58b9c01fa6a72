"""The sandbox's get-reports and its panel controls, over real HTTP: creation-day selection,
30 a page, the 10-day limit (458), the listing status of orders not yet due (113 by default),
panel orders and cancels, undelivered counts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from helpers import FakeClock

from scheduler.provider.client import IletiMerkeziClient, ReportStatus
from scheduler.provider.errors import ProviderAuthError
from scheduler.provider.sandbox import DEFAULT_HASH, DEFAULT_KEY, Sandbox
from scheduler.provider.wire import REPORTS_PAGE_SIZE

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)  # 12:00 in Istanbul
TODAY = date(2026, 12, 1)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def sandbox_options(clock: FakeClock) -> dict[str, Any]:
    return {"clock": clock}


def control(sandbox: Sandbox, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{sandbox.url}{path}", json=body)


def test_orders_are_listed_by_creation_day_in_the_provider_zone(
    sandbox: Sandbox, client: IletiMerkeziClient
) -> None:
    # 22:30 UTC on Nov 20 is 01:30 on Nov 21 in Istanbul.
    late = sandbox.add_panel_order(
        T0 + timedelta(hours=2), created_at=datetime(2026, 11, 20, 22, 30, tzinfo=UTC)
    )
    old = sandbox.add_panel_order(
        T0 - timedelta(days=9), created_at=datetime(2026, 11, 20, 20, 0, tzinfo=UTC)
    )
    listed = client.get_reports(date(2026, 11, 21), TODAY)
    assert [o.order_id for o in listed.orders] == [late]
    assert [
        o.order_id for o in client.get_reports(date(2026, 11, 20), date(2026, 11, 20)).orders
    ] == [old]
    assert listed.orders[0].send_at == T0 + timedelta(hours=2)
    assert listed.orders[0].submit_at == datetime(2026, 11, 20, 22, 30, tzinfo=UTC)


def test_more_than_30_orders_are_paged(sandbox: Sandbox, client: IletiMerkeziClient) -> None:
    made = [
        sandbox.add_panel_order(T0 - timedelta(hours=1), created_at=T0 - timedelta(minutes=n))
        for n in range(REPORTS_PAGE_SIZE + 5, 0, -1)
    ]
    first = client.get_reports(TODAY, TODAY)
    second = client.get_reports(TODAY, TODAY, page=2)
    assert (first.count, first.pages, len(first.orders), len(second.orders)) == (35, 2, 30, 5)
    assert [o.order_id for o in first.orders + second.orders] == made
    assert client.get_reports(TODAY, TODAY, page=3).orders == ()


def test_a_range_over_10_days_answers_458(sandbox: Sandbox) -> None:
    body = {
        "request": {
            "authentication": {"key": DEFAULT_KEY, "hash": DEFAULT_HASH},
            "filter": {"start": "2026-11-20", "end": "2026-12-01"},
        }
    }
    reply = httpx.post(f"{sandbox.url}/v1/get-reports/json", json=body)
    assert (reply.status_code, reply.json()["response"]["status"]["code"]) == (458, 458)
    body["request"]["filter"] = {"start": "2026-11-21", "end": "not a day"}
    assert httpx.post(f"{sandbox.url}/v1/get-reports/json", json=body).status_code == 458


def test_page_beside_the_filter_is_read_like_the_official_sdk(sandbox: Sandbox) -> None:
    for n in range(REPORTS_PAGE_SIZE + 1):
        sandbox.add_panel_order(T0, created_at=T0 - timedelta(seconds=n + 1))
    body = {
        "request": {
            "authentication": {"key": DEFAULT_KEY, "hash": DEFAULT_HASH},
            "filter": {"start": "2026-12-01", "end": "2026-12-01"},
            "page": 2,
        }
    }
    reply = httpx.post(f"{sandbox.url}/v1/get-reports/json", json=body).json()["response"]
    assert (reply["count"], len(reply["orders"])) == (31, 1)


def test_not_yet_due_orders_list_as_113_by_default_while_still_cancellable(
    sandbox: Sandbox, client: IletiMerkeziClient
) -> None:
    order_id = sandbox.add_panel_order(T0 + timedelta(hours=3), created_at=T0)
    (listed,) = client.get_reports(TODAY, TODAY).orders
    assert listed.status == 113
    assert client.get_report(order_id).status is ReportStatus.PENDING
    reply = control(sandbox, "/_sandbox/listing", {"pending_status": 115})
    assert reply.status_code == 200
    assert client.get_reports(TODAY, TODAY).orders[0].status == 115
    assert control(sandbox, "/_sandbox/listing", {"pending_status": 456}).status_code == 400


def test_panel_orders_cancels_and_undelivered_counts_through_the_control_api(
    sandbox: Sandbox, client: IletiMerkeziClient, clock: FakeClock
) -> None:
    reply = control(
        sandbox,
        "/_sandbox/panel/orders",
        {
            "send_at": (T0 + timedelta(hours=1)).isoformat(),
            "created_at": (T0 - timedelta(days=2)).isoformat(),
            "recipients": 4,
        },
    )
    assert reply.status_code == 200
    sent = reply.json()["order_id"]
    cancelled = control(
        sandbox,
        "/_sandbox/panel/orders",
        {"send_at": (T0 + timedelta(hours=1)).isoformat(), "created_at": T0.isoformat()},
    ).json()["order_id"]
    assert control(sandbox, "/_sandbox/panel/cancel", {"order_id": cancelled}).status_code == 200
    assert (
        control(sandbox, "/_sandbox/undelivered", {"order_id": sent, "undelivered": 1}).status_code
        == 200
    )
    clock.advance(2 * 3600)
    report = client.get_report(sent)
    assert (report.code, report.total, report.delivered, report.undelivered) == (114, 4, 3, 1)
    assert client.get_report(cancelled).code == 115
    listed = {o.order_id: o for o in client.get_reports(TODAY - timedelta(days=2), TODAY).orders}
    assert (listed[sent].status, listed[sent].delivered, listed[sent].undelivered) == (114, 3, 1)
    assert listed[cancelled].status == 115
    truth = sandbox.truth()["orders"]
    assert truth[cancelled]["cancelled_in_panel"] is True
    assert truth[cancelled]["cancel_calls"] == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/_sandbox/panel/orders", {"send_at": "2026-12-01T10:00+00:00"}),
        (
            "/_sandbox/panel/orders",
            {"send_at": "2026-12-01T10:00+00:00", "created_at": "2027-01-01T00:00+00:00"},
        ),
        ("/_sandbox/panel/cancel", {"order_id": "nope"}),
        ("/_sandbox/undelivered", {"order_id": "nope", "undelivered": 1}),
    ],
)
def test_bad_control_requests_answer_400(sandbox: Sandbox, path: str, body: dict[str, Any]) -> None:
    reply = control(sandbox, path, body)
    assert reply.status_code == 400
    assert reply.json()["error"]


def test_a_panel_cancel_past_the_window_is_refused(sandbox: Sandbox, clock: FakeClock) -> None:
    order_id = sandbox.add_panel_order(T0 + timedelta(minutes=1), created_at=T0)
    with pytest.raises(ValueError, match="past its cancel window"):
        sandbox.cancel_in_panel(order_id)


def test_get_reports_needs_credentials(
    make_client: Callable[..., IletiMerkeziClient], sandbox: Sandbox
) -> None:
    with pytest.raises(ProviderAuthError):
        make_client(sandbox, hash="wrong").get_reports(TODAY, TODAY)
