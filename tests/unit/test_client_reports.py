"""`IletiMerkeziClient.get_reports` against `httpx.MockTransport`: the request it sends, the
10-day limit checked before any call, and a defensive reading of the listing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from typing import Any

import httpx
import pytest

from scheduler.provider.client import IletiMerkeziClient, ListedOrder, ReportsPage
from scheduler.provider.errors import ProviderAuthError, ProviderStatusError, ProviderTransientError
from scheduler.provider.wire import REPORTS_MAX_DAYS, REPORTS_PAGE_SIZE

BASE_URL = "https://api.iletimerkezi.test"
KEY = "KEY-reports-distinctive"
HASH = "HASH-reports-distinctive"
START = date(2026, 11, 25)
END = date(2026, 12, 4)

Handler = Callable[[httpx.Request], httpx.Response]


def answer(code: Any, **extra: Any) -> httpx.Response:
    numeric = int(code) if str(code).isdigit() else 200
    body = {"response": {"status": {"code": code, "message": "x"}, **extra}}
    return httpx.Response(numeric, json=body)


def never_called(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no request was expected, got {request.url}")


@pytest.fixture
def make_client() -> Iterator[Callable[[Handler], IletiMerkeziClient]]:
    made: list[IletiMerkeziClient] = []

    def make(handler: Handler) -> IletiMerkeziClient:
        client = IletiMerkeziClient(BASE_URL, KEY, HASH, transport=httpx.MockTransport(handler))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


LISTED = {
    "id": 312988299,
    "status": 114,
    "total": 3,
    "delivered": 2,
    "undelivered": 1,
    "waiting": 0,
    "submitAt": "2026-11-29 04:32:24",
    "sendAt": "2026-12-01 10:00:00",
    "sender": "eMarka Test",
}


def test_get_reports_posts_the_documented_filter(
    make_client: Callable[[Handler], IletiMerkeziClient],
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(200, count=1, orders=[LISTED])

    page = make_client(handler).get_reports(START, END, page=2)
    assert seen[0].url.path == "/v1/get-reports/json"
    assert json.loads(seen[0].content) == {
        "request": {
            "authentication": {"key": KEY, "hash": HASH},
            "filter": {"start": "2026-11-25", "end": "2026-12-04", "page": 2},
        }
    }
    assert page == ReportsPage(
        page=2,
        count=1,
        orders=(
            ListedOrder(
                order_id="312988299",
                status=114,
                total=3,
                delivered=2,
                undelivered=1,
                waiting=0,
                # the provider's zone (UTC+3) read into UTC
                submit_at=datetime(2026, 11, 29, 1, 32, 24, tzinfo=UTC),
                send_at=datetime(2026, 12, 1, 7, 0, tzinfo=UTC),
                sender="eMarka Test",
            ),
        ),
    )


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (START, date.fromordinal(START.toordinal() + REPORTS_MAX_DAYS + 1)),
        (END, START),
    ],
)
def test_a_range_the_provider_refuses_is_refused_before_any_call(
    make_client: Callable[[Handler], IletiMerkeziClient], start: date, end: date
) -> None:
    with pytest.raises(ValueError, match="get-reports range refused"):
        make_client(never_called).get_reports(start, end)


def test_ten_days_apart_is_taken(make_client: Callable[[Handler], IletiMerkeziClient]) -> None:
    end = date.fromordinal(START.toordinal() + REPORTS_MAX_DAYS)
    page = make_client(lambda r: answer(200, count=0, orders=[])).get_reports(START, end)
    assert (page.count, page.orders, page.pages) == (0, (), 1)


@pytest.mark.parametrize("page", [0, -1, True])
def test_a_bad_page_is_refused_before_any_call(
    make_client: Callable[[Handler], IletiMerkeziClient], page: Any
) -> None:
    with pytest.raises(ValueError, match="page"):
        make_client(never_called).get_reports(START, END, page=page)


def test_datetimes_are_not_dates(make_client: Callable[[Handler], IletiMerkeziClient]) -> None:
    with pytest.raises(TypeError):
        make_client(never_called).get_reports(datetime(2026, 11, 25, tzinfo=UTC), END)


def test_numbers_as_strings_and_missing_fields_are_read(
    make_client: Callable[[Handler], IletiMerkeziClient],
) -> None:
    orders = [
        {"id": "7", "status": "113", "total": "2", "delivered": "0", "waiting": "2"},
        {"id": 8, "status": "sending", "sendAt": "yesterday", "sender": 5},
        {"status": 114},  # no id: nothing can be done with it
        "not an object",
    ]
    page = make_client(lambda r: answer("200", count="61", orders=orders)).get_reports(START, END)
    assert page.count == 61
    assert page.pages == 3
    assert page.skipped == 2
    first, second = page.orders
    assert (first.order_id, first.status, first.total, first.waiting) == ("7", 113, 2, 2)
    assert first.undelivered is None and first.send_at is None
    assert (second.order_id, second.status, second.send_at, second.sender) == (
        "8",
        None,
        None,
        None,
    )


def test_a_missing_count_assumes_another_page_after_a_full_one(
    make_client: Callable[[Handler], IletiMerkeziClient],
) -> None:
    full = [{"id": n} for n in range(REPORTS_PAGE_SIZE)]
    page = make_client(lambda r: answer(200, orders=full)).get_reports(START, END)
    assert page.pages == 2
    short = make_client(lambda r: answer(200, orders=full[:3])).get_reports(START, END)
    assert short.pages == 1


def test_orders_that_are_not_a_list_are_undocumented(
    make_client: Callable[[Handler], IletiMerkeziClient],
) -> None:
    with pytest.raises(ProviderTransientError):
        make_client(lambda r: answer(200, count=1, orders={"id": 1})).get_reports(START, END)


def test_458_and_401_are_errors(make_client: Callable[[Handler], IletiMerkeziClient]) -> None:
    with pytest.raises(ProviderStatusError) as raised:
        make_client(lambda r: answer(458)).get_reports(START, END)
    assert raised.value.code == 458
    with pytest.raises(ProviderAuthError):
        make_client(lambda r: answer(401)).get_reports(START, END)
