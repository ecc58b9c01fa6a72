"""The sandbox over real loopback HTTP, spoken to with plain httpx: bodies, codes, lifecycle,
faults, control endpoints, concurrency and the `python -m scheduler.provider.sandbox` process."""

from __future__ import annotations

import argparse
import email.utils
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from scheduler.provider.sandbox import (
    FIRST_ORDER_ID,
    NESTED_DEPTH,
    Faults,
    Sandbox,
    add_arguments,
    run_from_args,
)

AUTH = {"key": "sandbox-key", "hash": "sandbox-hash"}
START = datetime(2026, 5, 1, 6, 0, tzinfo=UTC)  # 09:00 in Istanbul
SEND_LOCAL = "01/05/2026 10:00"  # one hour after START, Istanbul time
SEND_AT = datetime(2026, 5, 1, 7, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]
_DROP = object()  # an override that removes the field
# Made once: an httpx.Client builds a default SSL context (~50 ms) unless given one.
_TLS = ssl.create_default_context()


def new_client(base_url: str, **kwargs: Any) -> httpx.Client:
    """A plain httpx client of the sandbox at `base_url`."""
    return httpx.Client(base_url=base_url, verify=_TLS, **kwargs)


class MutableClock:
    """A clock the test moves by hand; the sandbox reads it from its request threads."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, now: datetime) -> None:
        self.now = now


@pytest.fixture
def clock() -> MutableClock:
    return MutableClock(START)


@pytest.fixture
def sandbox_options(clock: MutableClock) -> dict[str, Any]:
    return {"clock": clock, "seed": 7}


@pytest.fixture
def http(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with new_client(sandbox.url, timeout=5.0) as client:
        yield client


def sms_order(**overrides: Any) -> dict[str, Any]:
    """A valid send-sms `order`; an override of `_DROP` removes that field."""
    order: dict[str, Any] = {
        "sender": "ACME",
        "sendDateTime": SEND_LOCAL,
        "iys": "1",
        "iysList": "BIREYSEL",
        "message": {"text": "Merhaba", "receipents": {"number": ["+905551112233"]}},
    }
    order.update(overrides)
    return {name: value for name, value in order.items() if value is not _DROP}


def call(
    http: httpx.Client,
    endpoint: str,
    order: dict[str, Any] | None = None,
    auth: Any = AUTH,
) -> httpx.Response:
    request: dict[str, Any] = {}
    if auth is not _DROP:
        request["authentication"] = auth
    if order is not None:
        request["order"] = order
    return http.post(f"/v1/{endpoint}/json", json={"request": request})


def code_of(response: httpx.Response) -> int:
    """The body's status code, after checking the HTTP status mirrors it."""
    code = response.json()["response"]["status"]["code"]
    assert response.status_code == code
    assert response.headers["content-type"].startswith("application/json")
    return int(code)


def schedule(http: httpx.Client, **overrides: Any) -> str:
    response = call(http, "send-sms", sms_order(**overrides))
    assert code_of(response) == 200
    order_id = response.json()["response"]["order"]["id"]
    assert isinstance(order_id, str)
    return order_id


def report(http: httpx.Client, order_id: str | int) -> httpx.Response:
    return call(http, "get-report", {"id": order_id})


def cancel(http: httpx.Client, order_id: str | int) -> httpx.Response:
    return call(http, "cancel-order", {"id": order_id})


# -- happy paths ----------------------------------------------------------------------------


def test_send_sms_answers_200_with_increasing_string_ids(http: httpx.Client) -> None:
    response = call(http, "send-sms", sms_order())
    assert code_of(response) == 200
    assert response.json()["response"]["status"]["message"] == "İşlem başarılı"
    first = response.json()["response"]["order"]["id"]
    second = schedule(http)
    assert first == str(FIRST_ORDER_ID)
    assert int(second) == int(first) + 1


def test_send_date_time_is_read_as_istanbul_time(http: httpx.Client, sandbox: Sandbox) -> None:
    order_id = schedule(http)
    order = sandbox.truth()["orders"][order_id]
    assert order["send_at"] == SEND_AT.isoformat()
    assert order["state"] == "pending"
    assert order["cancel_calls"] == order["cancels_accepted"] == order["report_calls"] == 0


def test_the_zone_is_configurable(clock: MutableClock) -> None:
    with (
        Sandbox(clock=clock, zone=ZoneInfo("UTC")) as utc_sandbox,
        new_client(utc_sandbox.url) as client,
    ):
        order_id = schedule(client)
        send_at = utc_sandbox.truth()["orders"][order_id]["send_at"]
    assert send_at == datetime(2026, 5, 1, 10, 0, tzinfo=UTC).isoformat()


def test_message_may_be_a_list_of_texts_to_different_numbers(
    http: httpx.Client, clock: MutableClock
) -> None:
    message = [
        {"text": "bir", "receipents": {"number": ["+905551112233", "05551112234"]}},
        {"text": "iki", "receipents": {"number": ["5551112235"]}},
    ]
    order_id = schedule(http, message=message)
    clock.set(SEND_AT + timedelta(minutes=5))
    order = report(http, order_id).json()["response"]["order"]
    assert (order["total"], order["delivered"], order["waiting"]) == (3, 3, 0)
    assert [m["number"] for m in order["message"]] == [
        "+905551112233",
        "05551112234",
        "5551112235",
    ]


def test_get_balance_answers_the_fixed_balance(http: httpx.Client) -> None:
    response = call(http, "get-balance")
    assert code_of(response) == 200
    assert response.json()["response"]["balance"] == {"amount": "1000.00", "sms": 5000}


def test_iys_zero_needs_no_iys_list(http: httpx.Client) -> None:
    assert code_of(call(http, "send-sms", sms_order(iys="0", iysList=_DROP))) == 200


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        pytest.param({"sender": ""}, 459, id="empty-sender"),
        pytest.param({"sender": _DROP}, 459, id="missing-sender"),
        pytest.param({"sender": "ABCDEFGHIJKL"}, 460, id="sender-12-chars"),
        pytest.param({"sender": "ŞİRKET"}, 460, id="sender-turkish-letters"),
        pytest.param({"message": {"text": "", "receipents": {"number": ["+905551112233"]}}}, 454),
        pytest.param({"message": _DROP}, 454, id="missing-message"),
        pytest.param({"message": {"text": "x", "receipents": {"number": []}}}, 452, id="none"),
        pytest.param({"message": {"text": "x"}}, 452, id="no-receipents"),
        pytest.param({"message": {"text": "x", "receipents": {"number": ["12345"]}}}, 452),
        pytest.param({"message": {"text": "x", "receipents": {"number": ["+90555abc2233"]}}}, 452),
        pytest.param(
            {"message": {"text": "x", "receipents": {"number": ["+905551112233", "1"]}}},
            452,
            id="one-bad-among-good",
        ),
        pytest.param({"sendDateTime": "2026-05-01 10:00"}, 457, id="iso-date"),
        pytest.param({"sendDateTime": "1/5/2026 10:00"}, 457, id="one-digit-day"),
        pytest.param({"sendDateTime": "31/02/2026 10:00"}, 457, id="no-such-day"),
        pytest.param({"sendDateTime": "01/05/2026 10"}, 457, id="no-minutes"),
        pytest.param({"sendDateTime": 1777618800}, 457, id="epoch-number"),
        pytest.param({"iys": _DROP}, 468, id="missing-iys"),
        pytest.param({"iys": "2"}, 468, id="iys-not-0-or-1"),
        pytest.param({"iysList": _DROP}, 469, id="missing-iys-list"),
        pytest.param({"iysList": "HERKES"}, 469, id="unknown-iys-list"),
    ],
)
def test_send_sms_validation_codes(
    http: httpx.Client, sandbox: Sandbox, overrides: dict[str, Any], code: int
) -> None:
    assert code_of(call(http, "send-sms", sms_order(**overrides))) == code
    assert sandbox.truth()["orders"] == {}


def test_non_standard_codes_carry_a_reason_phrase(http: httpx.Client) -> None:
    response = report(http, "1")
    assert code_of(response) == 455
    assert response.reason_phrase == "Order Not Found"
    assert response.json()["response"]["status"]["message"] == "Sipariş bulunamadı"


@pytest.mark.parametrize("send_date_time", [_DROP, "", "01/05/2026 08:00", "01/05/2026 10:00:00"])
def test_these_send_times_mean_send_immediately(
    http: httpx.Client, sandbox: Sandbox, send_date_time: Any
) -> None:
    """Absent, empty, past, and (as the real service reportedly does) a time with seconds."""
    order_id = schedule(http, sendDateTime=send_date_time)
    assert sandbox.truth()["orders"][order_id]["send_at"] == START.isoformat()
    response = report(http, order_id)
    assert code_of(response) == 200
    assert response.json()["response"]["order"]["status"] == 113
    assert code_of(cancel(http, order_id)) == 455


# -- auth, parse errors, unknown paths ------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["send-sms", "get-report", "cancel-order", "get-balance"])
@pytest.mark.parametrize(
    "auth",
    [
        {"key": "wrong", "hash": "sandbox-hash"},
        {"key": "sandbox-key", "hash": "wrong"},
        {"key": "sandbox-key"},
        "sandbox-key",
        _DROP,
    ],
    ids=["wrong-key", "wrong-hash", "no-hash", "not-an-object", "missing"],
)
def test_bad_credentials_answer_401(
    http: httpx.Client, sandbox: Sandbox, endpoint: str, auth: Any
) -> None:
    sandbox.add_order("777", SEND_AT)
    response = call(http, endpoint, sms_order() if endpoint == "send-sms" else {"id": "777"}, auth)
    assert code_of(response) == 401
    assert response.json()["response"]["status"]["message"] == "Üyelik bilgileri hatalı"
    truth = sandbox.truth()
    assert list(truth["orders"]) == ["777"]
    assert truth["orders"]["777"]["state"] == "pending"
    assert truth["orders"]["777"]["cancel_calls"] == truth["orders"]["777"]["report_calls"] == 0


def test_custom_credentials_are_the_only_ones_accepted(clock: MutableClock) -> None:
    with (
        Sandbox(key="k1", hash="h1", clock=clock) as custom,
        new_client(custom.url) as client,
    ):
        assert code_of(call(client, "get-balance")) == 401
        assert code_of(call(client, "get-balance", auth={"key": "k1", "hash": "h1"})) == 200


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"req": {}}', b'{"request": "x"}', b"\xff\xfe", b""],
    ids=["not-json", "array", "no-request", "request-not-object", "bad-utf8", "empty"],
)
def test_unparsable_bodies_answer_400(http: httpx.Client, body: bytes) -> None:
    response = http.post("/v1/get-balance/json", content=body)
    assert code_of(response) == 400


def test_an_order_field_that_is_not_an_object_answers_400(http: httpx.Client) -> None:
    assert code_of(call(http, "get-report", "312891245")) == 400  # type: ignore[arg-type]
    assert code_of(call(http, "send-sms", ["x"])) == 400  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/send-smss/json"),
        ("POST", "/v1/get-report-list/json"),
        ("POST", "/"),
        ("GET", "/v1/get-balance/json"),
        ("GET", "/_sandbox/nothing"),
    ],
)
def test_unknown_paths_answer_404(http: httpx.Client, method: str, path: str) -> None:
    response = http.request(method, path, json={"request": {"authentication": AUTH}})
    assert code_of(response) == 404


def test_a_chunked_request_body_is_read(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"request": {"authentication": '
        yield b'{"key": "sandbox-key", "hash": "sandbox-hash"}}}'

    response = http.post("/v1/get-balance/json", content=chunks())
    assert code_of(response) == 200


# -- lifecycle and cancel -------------------------------------------------------------------


def test_report_goes_456_then_113_then_114_by_the_clock(
    http: httpx.Client, sandbox: Sandbox, clock: MutableClock
) -> None:
    order_id = schedule(http)
    seen = []
    for now in (
        START,
        SEND_AT - timedelta(seconds=121),
        SEND_AT - timedelta(seconds=120),  # queue_lead reached: in the carrier queue
        SEND_AT + timedelta(seconds=29),
        SEND_AT + timedelta(seconds=30),  # send_duration over
    ):
        clock.set(now)
        response = report(http, order_id)
        code = code_of(response)
        order = response.json()["response"].get("order", {})
        seen.append((code, order.get("status"), sandbox.truth()["orders"][order_id]["state"]))
    assert seen == [
        (456, None, "pending"),
        (456, None, "pending"),
        (200, 113, "sending"),
        (200, 113, "sending"),
        (200, 114, "completed"),
    ]
    assert sandbox.truth()["orders"][order_id]["report_calls"] == 5


def test_a_report_body_has_the_documented_fields(http: httpx.Client, clock: MutableClock) -> None:
    order_id = schedule(http)
    clock.set(SEND_AT)
    order = report(http, order_id).json()["response"]["order"]
    assert order == {
        "id": order_id,
        "status": 113,
        "total": 1,
        "delivered": 0,
        "undelivered": 0,
        "waiting": 1,
        "submitAt": "2026-05-01 09:00:00",
        "sendAt": "2026-05-01 10:00:00",
        "sender": "ACME",
        "price": 1,
        "message": [{"number": "+905551112233", "status": 110}],
    }


def test_report_pages_its_messages(http: httpx.Client, clock: MutableClock) -> None:
    numbers = [f"+90555111220{i}" for i in range(5)]
    order_id = schedule(http, message={"text": "x", "receipents": {"number": numbers}})
    clock.set(SEND_AT + timedelta(hours=1))
    response = call(http, "get-report", {"id": order_id, "page": 2, "rowCount": 2})
    order = response.json()["response"]["order"]
    assert order["total"] == 5
    assert [m["number"] for m in order["message"]] == numbers[2:4]


def test_cancel_answers_200_once_then_455_and_report_says_115(
    http: httpx.Client, sandbox: Sandbox, clock: MutableClock
) -> None:
    order_id = schedule(http)
    clock.set(SEND_AT - timedelta(seconds=121))  # the last moment before the carrier queue
    first = cancel(http, order_id)
    assert code_of(first) == 200
    assert first.json() == {"response": {"status": {"code": 200, "message": "İşlem başarılı"}}}
    assert code_of(cancel(http, order_id)) == 455
    for now in (clock.now, SEND_AT + timedelta(hours=1)):
        clock.set(now)
        response = report(http, order_id)
        assert code_of(response) == 200
        order = response.json()["response"]["order"]
        assert (order["status"], order["undelivered"], order["delivered"]) == (115, 1, 0)
    truth = sandbox.truth()["orders"][order_id]
    assert truth["state"] == "cancelled"
    assert (truth["cancel_calls"], truth["cancels_accepted"]) == (2, 1)
    assert truth["cancelled_at"] == (SEND_AT - timedelta(seconds=121)).isoformat()


@pytest.mark.parametrize(
    "offset",
    [timedelta(seconds=-120), timedelta(seconds=0), timedelta(hours=1)],
    ids=["queued", "sending", "completed"],
)
def test_cancel_answers_455_once_the_order_is_queued(
    http: httpx.Client, sandbox: Sandbox, clock: MutableClock, offset: timedelta
) -> None:
    order_id = schedule(http)
    clock.set(SEND_AT + offset)
    assert code_of(cancel(http, order_id)) == 455
    truth = sandbox.truth()["orders"][order_id]
    assert truth["state"] != "cancelled"
    assert (truth["cancel_calls"], truth["cancels_accepted"]) == (1, 0)


@pytest.mark.parametrize("order_id", ["999", 999, "", None])
def test_cancel_and_report_of_unknown_ids_answer_455(http: httpx.Client, order_id: Any) -> None:
    assert code_of(cancel(http, order_id)) == 455
    assert code_of(report(http, order_id)) == 455


def test_order_ids_may_be_sent_as_integers(http: httpx.Client, sandbox: Sandbox) -> None:
    order_id = schedule(http)
    assert code_of(report(http, int(order_id))) == 456
    assert code_of(cancel(http, int(order_id))) == 200
    assert sandbox.truth()["orders"][order_id]["state"] == "cancelled"


def test_queue_lead_and_send_duration_are_configurable(clock: MutableClock) -> None:
    with (
        Sandbox(clock=clock, queue_lead=600, send_duration=60) as custom,
        new_client(custom.url) as client,
    ):
        order_id = schedule(client)
        clock.set(SEND_AT - timedelta(minutes=10))
        assert code_of(cancel(client, order_id)) == 455
        clock.set(SEND_AT + timedelta(seconds=59))
        assert report(client, order_id).json()["response"]["order"]["status"] == 113
        clock.set(SEND_AT + timedelta(seconds=60))
        assert report(client, order_id).json()["response"]["order"]["status"] == 114


def test_each_order_draws_its_own_lead_within_the_jitter_and_the_truth_shows_it(
    clock: MutableClock,
) -> None:
    """With a jitter the lead is a distribution: every order its own lead, each one honoured."""
    with (
        Sandbox(clock=clock, queue_lead=150, queue_lead_jitter=30, seed=7) as jittered,
        new_client(jittered.url) as client,
    ):
        ids = [schedule(client) for _ in range(20)]
        leads = {oid: jittered.truth()["orders"][oid]["queue_lead_seconds"] for oid in ids}
        assert all(120 <= lead <= 180 for lead in leads.values())
        assert len(set(leads.values())) == len(ids)
        for oid, lead in leads.items():
            clock.set(SEND_AT - timedelta(seconds=lead - 0.5))
            assert report(client, oid).json()["response"]["order"]["status"] == 113
            clock.set(SEND_AT - timedelta(seconds=lead + 0.5))
            assert code_of(report(client, oid)) == 456


def test_without_jitter_every_order_has_the_queue_lead(sandbox: Sandbox) -> None:
    sandbox.add_order("1", SEND_AT)
    sandbox.add_order("2", SEND_AT)
    orders = sandbox.truth()["orders"]
    assert orders["1"]["queue_lead_seconds"] == orders["2"]["queue_lead_seconds"] == 120.0


def test_the_lead_draws_do_not_shift_the_seeded_faults(clock: MutableClock) -> None:
    """Adding a jitter keeps a seeded fault run as it was: leads have a generator of their own."""
    outcomes = []
    for jitter in (0.0, 30.0):
        faults = Faults(error_rate=0.5, endpoints=frozenset({"get-report"}))
        with (
            Sandbox(clock=clock, queue_lead_jitter=jitter, faults=faults, seed=3) as box,
            new_client(box.url) as client,
        ):
            ids = [schedule(client) for _ in range(3)]
            outcomes.append([code_of(report(client, oid)) for oid in ids * 4])
    assert outcomes[0] == outcomes[1]


def test_add_order_creates_an_order_send_sms_never_made(
    http: httpx.Client, sandbox: Sandbox
) -> None:
    sandbox.add_order(str(FIRST_ORDER_ID), SEND_AT.astimezone(ZoneInfo("Europe/Istanbul")))
    assert sandbox.truth()["orders"][str(FIRST_ORDER_ID)]["send_at"] == SEND_AT.isoformat()
    assert code_of(report(http, FIRST_ORDER_ID)) == 456
    assert schedule(http) == str(FIRST_ORDER_ID + 1)  # generated ids skip the taken one


def test_add_order_refuses_naive_times_and_taken_ids(sandbox: Sandbox) -> None:
    sandbox.add_order("1", SEND_AT)
    with pytest.raises(ValueError, match="naive"):
        sandbox.add_order("2", datetime(2026, 5, 1, 10, 0))
    with pytest.raises(ValueError, match="already exists"):
        sandbox.add_order("1", SEND_AT)


def test_a_naive_clock_answers_500_not_a_hang(http: httpx.Client, clock: MutableClock) -> None:
    clock.set(datetime(2026, 5, 1, 6, 0))
    assert code_of(call(http, "get-balance")) == 500


# -- faults ---------------------------------------------------------------------------------


def test_error_rate_answers_503_without_doing_the_work(
    http: httpx.Client, sandbox: Sandbox
) -> None:
    sandbox.set_faults(Faults(error_rate=1.0))
    response = call(http, "send-sms", sms_order())
    assert code_of(response) == 503
    assert response.json()["response"]["status"]["message"] == "Sunucu geçici olarak servis dışı"
    truth = sandbox.truth()
    assert truth["orders"] == {}
    assert truth["totals"]["send-sms"] == {
        "requests": 1,
        "injected_errors": 1,
        "dropped": 0,
        "garbled": 0,
        "dripped": 0,
        "nested": 0,
        "huge": 0,
        "codes": {"503": 1},
    }


def test_faults_apply_only_to_their_endpoints(http: httpx.Client, sandbox: Sandbox) -> None:
    order_id = schedule(http)
    sandbox.set_faults(Faults(error_rate=1.0, endpoints=frozenset({"cancel-order"})))
    assert code_of(call(http, "get-balance")) == 200
    assert code_of(report(http, order_id)) == 456
    assert code_of(cancel(http, order_id)) == 503
    truth = sandbox.truth()["orders"][order_id]
    assert truth["state"] == "pending"
    assert (truth["cancel_calls"], truth["cancels_accepted"]) == (1, 0)


def test_a_dropped_cancel_is_still_carried_out(http: httpx.Client, sandbox: Sandbox) -> None:
    order_id = schedule(http)
    sandbox.set_faults(Faults(drop_rate=1.0, endpoints=frozenset({"cancel-order"})))
    with pytest.raises(httpx.RemoteProtocolError):
        cancel(http, order_id)
    truth = sandbox.truth()
    assert truth["orders"][order_id]["state"] == "cancelled"
    assert truth["orders"][order_id]["cancels_accepted"] == 1
    assert truth["totals"]["cancel-order"]["dropped"] == 1
    sandbox.set_faults(Faults())
    assert code_of(cancel(http, order_id)) == 455  # a blind retry learns nothing more
    assert sandbox.truth()["orders"][order_id]["cancels_accepted"] == 1


def test_a_garbled_send_is_still_carried_out(http: httpx.Client, sandbox: Sandbox) -> None:
    sandbox.set_faults(Faults(garbage_rate=1.0))
    response = call(http, "send-sms", sms_order())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    with pytest.raises(ValueError):
        response.json()
    truth = sandbox.truth()
    assert len(truth["orders"]) == 1
    assert truth["totals"]["send-sms"]["garbled"] == 1


def test_latency_delays_only_its_endpoints(http: httpx.Client, sandbox: Sandbox) -> None:
    sandbox.set_faults(Faults(latency=0.3, endpoints=frozenset({"get-balance"})))
    started = time.perf_counter()
    assert code_of(call(http, "get-balance")) == 200
    assert time.perf_counter() - started >= 0.3
    started = time.perf_counter()
    assert code_of(report(http, "1")) == 455
    assert time.perf_counter() - started < 0.3


def test_latency_beyond_a_client_timeout_times_out(sandbox: Sandbox) -> None:
    sandbox.set_faults(Faults(latency=1.0))
    with (
        new_client(sandbox.url, timeout=0.2) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        call(client, "get-balance")


def test_fail_next_answers_503_to_the_next_n_requests(http: httpx.Client, sandbox: Sandbox) -> None:
    order_id = schedule(http)
    faults = Faults(fail_next={"cancel-order": 2})
    sandbox.set_faults(faults)
    assert code_of(call(http, "get-balance")) == 200  # other endpoints are not affected
    codes = [code_of(cancel(http, order_id)) for _ in range(3)]
    assert codes == [503, 503, 200]
    truth = sandbox.truth()
    assert (
        truth["orders"][order_id]["cancel_calls"],
        truth["orders"][order_id]["cancels_accepted"],
    ) == (3, 1)
    assert truth["faults"]["fail_next"] == {"cancel-order": 0}
    assert faults.fail_next == {"cancel-order": 2}  # the caller's faults are left alone


def test_drop_next_loses_the_next_answers_but_does_the_work(
    http: httpx.Client, sandbox: Sandbox
) -> None:
    sandbox.set_faults(Faults(drop_next={"send-sms": 1}))
    with pytest.raises(httpx.RemoteProtocolError):
        call(http, "send-sms", sms_order())
    second = schedule(http)
    orders = sandbox.truth()["orders"]
    assert sorted(orders) == [str(FIRST_ORDER_ID), second]
    assert second == str(FIRST_ORDER_ID + 1)


def test_garbage_next_garbles_the_next_answers_but_does_the_work(
    http: httpx.Client, sandbox: Sandbox
) -> None:
    order_id = schedule(http)
    sandbox.set_faults(Faults(garbage_next={"cancel-order": 1}))
    garbled = cancel(http, order_id)
    assert garbled.status_code == 200
    assert garbled.text.startswith("<html>")
    assert sandbox.truth()["orders"][order_id]["cancels_accepted"] == 1
    assert code_of(cancel(http, order_id)) == 455


def test_counters_take_precedence_over_rates(http: httpx.Client, sandbox: Sandbox) -> None:
    sandbox.set_faults(Faults(garbage_rate=1.0, fail_next={"get-balance": 1}))
    assert code_of(call(http, "get-balance")) == 503
    assert call(http, "get-balance").text.startswith("<html>")


def test_rates_are_reproducible_with_a_seed(clock: MutableClock) -> None:
    faults = Faults(error_rate=0.3, drop_rate=0.2, garbage_rate=0.2)

    def outcomes(seed: int) -> list[str]:
        seen = []
        with (
            Sandbox(clock=clock, faults=faults, seed=seed) as seeded,
            new_client(seeded.url) as client,
        ):
            for _ in range(30):
                try:
                    response = call(client, "get-balance")
                except httpx.RemoteProtocolError:
                    seen.append("drop")
                    continue
                is_json = response.headers["content-type"].startswith("application/json")
                seen.append(str(response.status_code) if is_json else "garbage")
        return seen

    first = outcomes(42)
    assert first == outcomes(42)
    assert set(first) == {"200", "503", "drop", "garbage"}
    assert first != outcomes(43)


def test_set_faults_can_reseed(http: httpx.Client, sandbox: Sandbox) -> None:
    def codes() -> list[int]:
        sandbox.set_faults(Faults(error_rate=0.5), seed=3)
        return [call(http, "get-balance").status_code for _ in range(20)]

    assert codes() == codes()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"error_rate": 1.5},
        {"drop_rate": -0.1},
        {"error_rate": 0.6, "garbage_rate": 0.6},
        {"latency": -1.0},
        {"latency": float("nan")},
        {"latency": float("inf")},
        {"endpoints": frozenset({"send-email"})},
        {"fail_next": {"send-email": 1}},
        {"drop_next": {"send-sms": -1}},
        {"garbage_next": {"send-sms": "1"}},
    ],
)
def test_faults_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Faults(**kwargs)


# -- answers spoilt after the work is done, and the sandbox's own clock ----------------------


def test_drip_next_writes_the_whole_answer_one_byte_at_a_time_and_does_the_work(
    http: httpx.Client, sandbox: Sandbox
) -> None:
    order_id = schedule(http)
    sandbox.set_faults(Faults(drip_next={"cancel-order": 1}, drip_interval=0.005))
    host, port = sandbox.url.removeprefix("http://").split(":")
    body = json.dumps({"request": {"authentication": AUTH, "order": {"id": order_id}}}).encode()
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(
            b"POST /v1/cancel-order/json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        first = raw.recv(4096)
        received = first
        while chunk := raw.recv(4096):
            received += chunk
    assert len(first) < 20, "the head is dripped too, not sent at once"
    head, _, answer = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(answer)["response"]["status"]["code"] == 200
    truth = sandbox.truth()
    assert truth["orders"][order_id]["cancels_accepted"] == 1
    assert truth["totals"]["cancel-order"]["dripped"] == 1


@pytest.mark.parametrize("by", ["next", "rate"])
def test_nested_answers_are_json_deeper_than_any_parser_and_the_work_is_done(
    http: httpx.Client, sandbox: Sandbox, by: str
) -> None:
    order_id = schedule(http)
    sandbox.set_faults(
        Faults(nested_next={"cancel-order": 1})
        if by == "next"
        else Faults(nested_rate=1.0, endpoints=frozenset({"cancel-order"}))
    )
    response = cancel(http, order_id)
    assert response.status_code == 200
    assert response.content == b"[" * NESTED_DEPTH + b"]" * NESTED_DEPTH
    with pytest.raises(RecursionError):
        json.loads(response.content)
    truth = sandbox.truth()
    assert truth["orders"][order_id]["cancels_accepted"] == 1
    assert truth["totals"]["cancel-order"]["nested"] == 1


@pytest.mark.parametrize("by", ["next", "rate"])
def test_huge_answers_never_end_and_the_work_is_done(
    http: httpx.Client, sandbox: Sandbox, by: str
) -> None:
    order_id = schedule(http)
    sandbox.set_faults(
        Faults(huge_next={"cancel-order": 1})
        if by == "next"
        else Faults(huge_rate=1.0, endpoints=frozenset({"cancel-order"}))
    )
    request = {"request": {"authentication": AUTH, "order": {"id": order_id}}}
    received = 0
    with http.stream("POST", "/v1/cancel-order/json", json=request) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received += len(chunk)
            if received > 8 * 1024 * 1024:
                break
    assert received > 8 * 1024 * 1024
    truth = sandbox.truth()
    assert truth["orders"][order_id]["cancels_accepted"] == 1
    assert truth["totals"]["cancel-order"]["huge"] == 1


def test_stop_is_prompt_while_answers_drip_and_never_end(sandbox: Sandbox) -> None:
    sandbox.set_faults(
        Faults(drip_next={"get-balance": 1}, huge_next={"get-report": 1}, drip_interval=0.5)
    )
    stopped = threading.Event()
    failures: list[BaseException] = []

    def drip() -> None:
        with new_client(sandbox.url, timeout=10.0) as client:
            try:
                call(client, "get-balance")
            except httpx.TransportError as exc:
                failures.append(exc)

    def endless() -> None:
        with (
            new_client(sandbox.url, timeout=10.0) as client,
            client.stream("POST", "/v1/get-report/json", json={}) as response,
        ):
            next(response.iter_raw())
            stopped.wait(10.0)  # a reader that stopped reading: the sandbox's writes block

    threads = [threading.Thread(target=drip), threading.Thread(target=endless)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5.0
    while not all(
        sandbox.truth()["totals"][endpoint][fault]
        for endpoint, fault in (("get-report", "huge"), ("get-balance", "dripped"))
    ):
        assert time.monotonic() < deadline, "the faults were never served"
        time.sleep(0.02)
    time.sleep(0.3)
    started = time.perf_counter()
    sandbox.stop()
    elapsed = time.perf_counter() - started
    stopped.set()
    for thread in threads:
        thread.join(5.0)
    assert elapsed < 3.0
    assert len(failures) == 1


@pytest.mark.parametrize("offset", [3600.0, -90.0])
def test_clock_offset_moves_the_lifecycle_and_the_date_header(
    http: httpx.Client, sandbox: Sandbox, offset: float
) -> None:
    order_id = schedule(http)  # sends at START + 1 h; queued 2 minutes before
    sandbox.set_faults(Faults(clock_offset=offset))
    response = report(http, order_id)
    if offset > 0:
        assert response.json()["response"]["order"]["status"] == 113  # sending already
    else:
        assert code_of(response) == 456
    shifted = START + timedelta(seconds=offset)
    assert email.utils.parsedate_to_datetime(response.headers["Date"]) == shifted
    assert datetime.fromisoformat(sandbox.truth()["now"]) == shifted


def test_every_answer_carries_the_sandbox_clock_in_its_date_header(http: httpx.Client) -> None:
    for response in (call(http, "get-balance"), call(http, "get-balance", auth={})):
        assert email.utils.parsedate_to_datetime(response.headers["Date"]) == START


@pytest.mark.parametrize(
    "kwargs",
    [
        {"drip_rate": 0.5, "huge_rate": 0.3, "error_rate": 0.3},
        {"nested_rate": 1.1},
        {"huge_rate": -0.1},
        {"drip_interval": -0.5},
        {"drip_interval": float("inf")},
        {"clock_offset": float("nan")},
        {"clock_offset": float("-inf")},
        {"clock_offset": "5"},
        {"drip_next": {"send-email": 1}},
        {"nested_next": {"send-sms": -1}},
        {"huge_next": {"send-sms": 1.5}},
    ],
)
def test_the_new_faults_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Faults(**kwargs)


def test_the_new_faults_travel_through_dicts_and_the_control_endpoint(
    http: httpx.Client, sandbox: Sandbox
) -> None:
    fields: dict[str, Any] = {
        "drip_rate": 0.1,
        "nested_rate": 0.2,
        "huge_rate": 0.3,
        "drip_next": {"cancel-order": 2},
        "nested_next": {"send-sms": 1},
        "huge_next": {"get-report": 3},
        "drip_interval": 0.25,
        "clock_offset": -12.5,
    }
    faults = Faults(**fields)
    assert Faults.from_dict(faults.to_dict()) == faults
    posted = http.post("/_sandbox/faults", json=fields)
    assert posted.status_code == 200
    assert {name: posted.json()[name] for name in fields} == fields
    assert sandbox.truth()["faults"] == faults.to_dict()


# -- control endpoints ----------------------------------------------------------------------


def test_control_truth_is_the_truth(http: httpx.Client, sandbox: Sandbox) -> None:
    order_id = schedule(http)
    cancel(http, order_id)
    response = http.get("/_sandbox/truth")
    assert response.status_code == 200
    assert response.json() == sandbox.truth()
    assert response.json()["orders"][order_id]["state"] == "cancelled"


def test_control_faults_replace_the_faults(http: httpx.Client) -> None:
    posted = http.post(
        "/_sandbox/faults", json={"error_rate": 1.0, "endpoints": ["get-balance"], "seed": 1}
    )
    assert posted.status_code == 200
    assert posted.json()["endpoints"] == ["get-balance"]
    assert http.get("/_sandbox/faults").json() == posted.json()
    assert code_of(call(http, "get-balance")) == 503
    assert code_of(report(http, "1")) == 455
    assert http.post("/_sandbox/faults", json={}).status_code == 200
    assert code_of(call(http, "get-balance")) == 200


@pytest.mark.parametrize(
    "body",
    [
        b"nope",
        b'{"error_rate": 2}',
        b'{"bogus": 1}',
        b'{"endpoints": ["send-email"]}',
        b'{"seed": "x"}',
        b'{"latency": "slow"}',
    ],
)
def test_control_faults_refuse_bad_bodies(
    http: httpx.Client, sandbox: Sandbox, body: bytes
) -> None:
    response = http.post("/_sandbox/faults", content=body)
    assert response.status_code == 400
    assert response.json()["error"]
    assert sandbox.truth()["faults"] == Faults().to_dict()


def test_control_orders_add_an_order(http: httpx.Client, sandbox: Sandbox) -> None:
    response = http.post(
        "/_sandbox/orders", json={"order_id": "555", "send_at": "2026-05-01T10:00:00+03:00"}
    )
    assert response.status_code == 200
    assert response.json()["send_at"] == SEND_AT.isoformat()
    assert response.json()["state"] == "pending"
    assert code_of(report(http, "555")) == 456
    assert code_of(cancel(http, "555")) == 200


@pytest.mark.parametrize(
    "body",
    [
        {"order_id": "555", "send_at": "2026-05-01T10:00:00"},
        {"order_id": "555", "send_at": "tomorrow"},
        {"order_id": "555"},
        {"send_at": "2026-05-01T10:00:00Z"},
        {"order_id": "dup", "send_at": "2026-05-01T10:00:00Z"},
    ],
    ids=["naive", "not-iso", "no-time", "no-id", "taken-id"],
)
def test_control_orders_refuse_bad_bodies(
    http: httpx.Client, sandbox: Sandbox, body: dict[str, Any]
) -> None:
    sandbox.add_order("dup", SEND_AT)
    response = http.post("/_sandbox/orders", json=body)
    assert response.status_code == 400
    assert response.json()["error"]
    assert list(sandbox.truth()["orders"]) == ["dup"]


def test_control_paths_need_no_credentials_and_are_never_faulted(
    http: httpx.Client, sandbox: Sandbox
) -> None:
    sandbox.set_faults(Faults(latency=2.0, error_rate=0.5, drop_rate=0.5))
    started = time.perf_counter()
    for _ in range(10):
        assert http.get("/_sandbox/truth").status_code == 200
        assert http.get("/_sandbox/faults").status_code == 200
    assert time.perf_counter() - started < 2.0


# -- concurrency, connections, lifecycle ----------------------------------------------------


def test_200_requests_from_16_threads_are_all_answered_correctly(
    sandbox: Sandbox,
) -> None:
    for n in range(50):
        sandbox.add_order(f"report-{n}", SEND_AT)
        sandbox.add_order(f"cancel-{n}", SEND_AT)
    limits = httpx.Limits(max_connections=16)
    with new_client(sandbox.url, limits=limits, timeout=10.0) as client:

        def one(i: int) -> tuple[str, int, Any]:
            kind, n = ("send-sms", "get-report", "cancel-order", "get-balance")[i % 4], i // 4
            order = {
                "send-sms": sms_order(),
                "get-report": {"id": f"report-{n}"},
                "cancel-order": {"id": f"cancel-{n}"},
                "get-balance": None,
            }[kind]
            response = call(client, kind, order)
            return kind, code_of(response), response.json()["response"]

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(one, range(200)))

    expected = {"send-sms": 200, "get-report": 456, "cancel-order": 200, "get-balance": 200}
    assert all(code == expected[kind] for kind, code, _ in results)
    new_ids = [body["order"]["id"] for kind, _, body in results if kind == "send-sms"]
    assert len(set(new_ids)) == 50
    truth = sandbox.truth()
    assert len(truth["orders"]) == 150
    assert all(truth["orders"][f"cancel-{n}"]["cancels_accepted"] == 1 for n in range(50))
    assert all(truth["orders"][f"report-{n}"]["report_calls"] == 1 for n in range(50))
    assert {name: t["requests"] for name, t in truth["totals"].items()} == {
        **dict.fromkeys(expected, 50),
        "get-reports": 0,
    }
    assert truth["connections"] <= 16


def test_simultaneous_cancels_of_one_order_are_accepted_once(
    http: httpx.Client, sandbox: Sandbox
) -> None:
    order_id = schedule(http)
    barrier = threading.Barrier(16)

    def one(_: int) -> int:
        with new_client(sandbox.url) as client:
            barrier.wait()
            return code_of(cancel(client, order_id))

    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = sorted(pool.map(one, range(16)))
    assert codes == [200] + [455] * 15
    assert sandbox.truth()["orders"][order_id]["cancels_accepted"] == 1


def test_a_pooled_client_reuses_one_connection(http: httpx.Client, sandbox: Sandbox) -> None:
    for _ in range(20):
        assert code_of(call(http, "get-balance")) == 200
    assert sandbox.truth()["connections"] == 1


def test_stop_closes_the_socket_and_a_restart_keeps_port_and_orders(
    clock: MutableClock,
) -> None:
    sandbox = Sandbox(clock=clock).start()
    url = sandbox.url
    with new_client(url) as client:
        order_id = schedule(client)
        sandbox.stop()
        sandbox.stop()  # idempotent
        with pytest.raises(httpx.TransportError):
            call(client, "get-balance")
    with sandbox, new_client(url) as client:
        assert sandbox.url == url
        assert code_of(report(client, order_id)) == 456


def test_stop_is_prompt_even_with_a_request_sleeping_out_latency(sandbox: Sandbox) -> None:
    sandbox.set_faults(Faults(latency=30.0))
    failures: list[BaseException] = []

    def slow() -> None:
        with new_client(sandbox.url, timeout=10.0) as client:
            try:
                call(client, "get-balance")
            except httpx.TransportError as exc:
                failures.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.2)
    started = time.perf_counter()
    sandbox.stop()
    thread.join(5.0)
    assert time.perf_counter() - started < 2.0
    assert len(failures) == 1


def test_url_is_unknown_before_start_with_port_0() -> None:
    with pytest.raises(RuntimeError, match="start"):
        _ = Sandbox().url
    assert Sandbox(port=8642).url == "http://127.0.0.1:8642"


def test_start_twice_is_refused(sandbox: Sandbox) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        sandbox.start()


# -- command line ---------------------------------------------------------------------------


def test_add_arguments_parses_every_option() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--port",
            "8642",
            "--queue-lead",
            "60",
            "--send-duration",
            "5",
            "--latency",
            "0.1",
            "--error-rate",
            "0.1",
            "--drop-rate",
            "0.2",
            "--garbage-rate",
            "0.3",
            "--fault-endpoints",
            "cancel-order,get-report",
            "--seed",
            "9",
            "--zone",
            "UTC",
            "--drip-rate",
            "0.05",
            "--nested-rate",
            "0.06",
            "--huge-rate",
            "0.07",
            "--drip-interval",
            "0.4",
            "--clock-offset",
            "-30",
        ]
    )
    assert (args.host, args.port, args.key, args.hash) == (
        "127.0.0.1",
        8642,
        "sandbox-key",
        "sandbox-hash",
    )
    assert (args.queue_lead, args.send_duration, args.latency) == (60.0, 5.0, 0.1)
    assert (args.error_rate, args.drop_rate, args.garbage_rate) == (0.1, 0.2, 0.3)
    assert args.fault_endpoints == frozenset({"cancel-order", "get-report"})
    assert (args.seed, args.zone) == (9, ZoneInfo("UTC"))
    assert (args.drip_rate, args.nested_rate, args.huge_rate) == (0.05, 0.06, 0.07)
    assert (args.drip_interval, args.clock_offset) == (0.4, -30.0)
    assert args.queue_lead_jitter == 0.0
    jittered = parser.parse_args(["--queue-lead", "150", "--queue-lead-jitter", "30"])
    assert (jittered.queue_lead, jittered.queue_lead_jitter) == (150.0, 30.0)


@pytest.mark.parametrize(
    "argv",
    [
        ["--error-rate", "2"],
        ["--latency", "-1"],
        ["--fault-endpoints", "send-email"],
        ["--zone", "Mars/Olympus"],
        ["--huge-rate", "1.5"],
        ["--drip-interval", "-1"],
        ["--clock-offset", "nan"],
    ],
)
def test_add_arguments_refuses_bad_values(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(argv)
    assert exited.value.code == 2
    assert "error" in capsys.readouterr().err


def test_run_from_args_refuses_rates_over_1_with_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--error-rate", "0.7", "--drop-rate", "0.7"])
    assert run_from_args(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "must not exceed 1" in captured.err


def _read_line(proc: subprocess.Popen[str], seconds: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    assert ready, "the sandbox printed nothing"
    return proc.stdout.readline()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_module_runs_as_a_process_and_stops_on_a_signal(signum: int) -> None:
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scheduler.provider.sandbox",
            "--port",
            "0",
            "--fault-endpoints",
            "send-sms",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            line = _read_line(proc, 10.0)
            assert line.startswith("sandbox listening on http://127.0.0.1:")
            url = line.split()[-1]
            with new_client(url) as client:
                assert code_of(call(client, "get-balance")) == 200
            proc.send_signal(signum)
            started = time.perf_counter()
            assert proc.wait(timeout=2.0) == 0
            assert time.perf_counter() - started < 2.0
            assert proc.stderr is not None
            assert proc.stderr.read() == ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_process_exits_1_when_the_port_is_taken(sandbox: Sandbox) -> None:
    port = sandbox.url.rsplit(":", 1)[1]
    finished = subprocess.run(
        [sys.executable, "-m", "scheduler.provider.sandbox", "--port", port],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert finished.returncode == 1
    assert finished.stdout == ""
    assert f"cannot listen on 127.0.0.1:{port}" in finished.stderr
