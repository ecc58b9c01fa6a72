"""The iletiMerkezi client against `httpx.MockTransport`: what it sends, how it reads answers."""

from __future__ import annotations

import json
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import structlog.testing

from scheduler.provider.client import (
    MAX_ANSWER_BYTES,
    Balance,
    CancelAnswer,
    IletiMerkeziClient,
    Report,
    ReportStatus,
    SendResult,
    format_send_datetime,
)
from scheduler.provider.errors import (
    CODE_MEANINGS,
    ProviderAuthError,
    ProviderError,
    ProviderStatusError,
    ProviderTransientError,
    SendTimeError,
)

BASE_URL = "https://api.iletimerkezi.test"
KEY = "KEY-7f3c9e1a55d04b2e-distinctive"
HASH = "HASH-b41d0c88e9aa4f61-distinctive"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SEND_AT = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
ISTANBUL = ZoneInfo("Europe/Istanbul")
OK_MESSAGE = "İşlem başarılı"

Handler = Callable[[httpx.Request], httpx.Response]
ClientFactory = Callable[..., IletiMerkeziClient]


def answer(
    code: Any, message: str = OK_MESSAGE, *, http_status: int | None = None, **extra: Any
) -> httpx.Response:
    """A provider answer whose HTTP status mirrors the body's code, as the provider does."""
    if http_status is None:
        numeric = int(code) if str(code).isdigit() else 200
        http_status = numeric if numeric >= 200 else 200
    body = {"response": {"status": {"code": code, "message": message}, **extra}}
    return httpx.Response(http_status, json=body)


def body_of(request: httpx.Request) -> Any:
    return json.loads(request.content)


def never_called(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no request was expected, got {request.method} {request.url}")


@pytest.fixture
def make_client() -> Iterator[ClientFactory]:
    """Build clients on a MockTransport with a frozen clock; close them all afterwards."""
    clients: list[IletiMerkeziClient] = []

    def factory(handler: Handler, **overrides: Any) -> IletiMerkeziClient:
        options: dict[str, Any] = {
            "transport": httpx.MockTransport(handler),
            "clock": lambda: NOW,
        }
        options.update(overrides)
        client = IletiMerkeziClient(BASE_URL, KEY, HASH, **options)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


class Recorder:
    """A handler that records every request and returns one canned answer."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.response


def send(client: IletiMerkeziClient, **overrides: Any) -> SendResult:
    arguments: dict[str, Any] = {
        "sender": "eMarka Test",
        "numbers": ["+905333128320", "+905551112233"],
        "text": "Randevunuz yarin 10:00",
        "send_at": SEND_AT,
    }
    arguments.update(overrides)
    return client.send_sms(**arguments)


AUTH = {"key": KEY, "hash": HASH}

# -- request building --------------------------------------------------------------------------


def test_send_sms_posts_the_documented_body(make_client: ClientFactory) -> None:
    recorder = Recorder(answer(200, order={"id": "312891245"}))
    client = make_client(recorder)

    assert send(client) == SendResult(order_id="312891245")

    (request,) = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == f"{BASE_URL}/v1/send-sms/json"
    assert request.headers["content-type"] == "application/json"
    assert body_of(request) == {
        "request": {
            "authentication": AUTH,
            "order": {
                "sender": "eMarka Test",
                "sendDateTime": "01/12/2026 10:00",
                "iys": "1",
                "iysList": "BIREYSEL",
                "message": {
                    "text": "Randevunuz yarin 10:00",
                    "receipents": {"number": ["+905333128320", "+905551112233"]},
                },
            },
        }
    }


def test_send_sms_takes_the_iys_list_it_is_given(make_client: ClientFactory) -> None:
    recorder = Recorder(answer(200, order={"id": "1"}))
    send(make_client(recorder), iys_list="TACIR")

    assert body_of(recorder.requests[0])["request"]["order"]["iysList"] == "TACIR"


def test_a_transactional_send_has_iys_zero_and_no_iys_list(make_client: ClientFactory) -> None:
    recorder = Recorder(answer(200, order={"id": "1"}))
    send(make_client(recorder), iys=False)

    order = body_of(recorder.requests[0])["request"]["order"]
    assert order["iys"] == "0"
    assert "iysList" not in order


@pytest.mark.parametrize(
    ("call", "path", "expected_request"),
    [
        (
            lambda c: c.get_report("312891245"),
            "/v1/get-report/json",
            {"authentication": AUTH, "order": {"id": "312891245"}},
        ),
        (
            lambda c: c.cancel_order("312891245"),
            "/v1/cancel-order/json",
            {"authentication": AUTH, "order": {"id": "312891245"}},
        ),
        (lambda c: c.get_balance(), "/v1/get-balance/json", {"authentication": AUTH}),
    ],
    ids=["get-report", "cancel-order", "get-balance"],
)
def test_each_read_or_cancel_posts_exactly_the_documented_body(
    make_client: ClientFactory,
    call: Callable[[IletiMerkeziClient], object],
    path: str,
    expected_request: dict[str, Any],
) -> None:
    recorder = Recorder(answer(200, order={"status": 114}, balance={"amount": "1", "sms": 1}))
    call(make_client(recorder))

    (request,) = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == f"{BASE_URL}{path}"
    assert body_of(request) == {"request": expected_request}


def test_a_trailing_slash_on_the_base_url_is_ignored() -> None:
    recorder = Recorder(answer(456))
    client = IletiMerkeziClient(
        BASE_URL + "/", KEY, HASH, transport=httpx.MockTransport(recorder), clock=lambda: NOW
    )
    with client:
        client.get_report("1")

    assert str(recorder.requests[0].url) == f"{BASE_URL}/v1/get-report/json"


def test_every_call_carries_the_configured_timeout(make_client: ClientFactory) -> None:
    recorder = Recorder(answer(456))
    make_client(recorder, timeout=2.5, monotonic=lambda: 100.0).get_report("1")

    assert recorder.requests[0].extensions["timeout"] == {
        "connect": 2.5,
        "read": 2.5,
        "write": 2.5,
        "pool": 2.5,
    }


@pytest.mark.parametrize(
    ("send_at", "expected"),
    [
        (datetime(2026, 12, 1, 7, 0, tzinfo=UTC), "01/12/2026 10:00"),
        (datetime(2026, 12, 31, 21, 30, tzinfo=UTC), "01/01/2027 00:30"),
        (datetime(2026, 12, 1, 10, 0, tzinfo=ISTANBUL), "01/12/2026 10:00"),
        (datetime(2026, 12, 1, 12, 5, tzinfo=timezone(timedelta(hours=5))), "01/12/2026 10:05"),
    ],
    ids=["utc-morning", "utc-evening-crosses-new-year", "already-istanbul", "other-offset"],
)
def test_send_date_time_is_istanbul_local_time_without_seconds(
    make_client: ClientFactory, send_at: datetime, expected: str
) -> None:
    recorder = Recorder(answer(200, order={"id": "1"}))
    send(make_client(recorder), send_at=send_at)

    assert body_of(recorder.requests[0])["request"]["order"]["sendDateTime"] == expected


BAD_SEND_TIMES = {
    "naive": datetime(2026, 12, 1, 7, 0),  # naive on purpose
    "seconds": datetime(2026, 12, 1, 7, 0, 30, tzinfo=UTC),
    "microseconds": datetime(2026, 12, 1, 7, 0, 0, 1, tzinfo=UTC),
    "past": NOW - timedelta(minutes=1),
    "now": NOW,
}


@pytest.mark.parametrize("send_at", BAD_SEND_TIMES.values(), ids=BAD_SEND_TIMES.keys())
def test_a_bad_send_time_is_refused_before_any_request(
    make_client: ClientFactory, send_at: datetime
) -> None:
    client = make_client(never_called)

    with pytest.raises(SendTimeError) as caught:
        send(client, send_at=send_at)

    assert isinstance(caught.value, ValueError)
    assert send_at.isoformat() in str(caught.value)


@pytest.mark.parametrize("send_at", BAD_SEND_TIMES.values(), ids=BAD_SEND_TIMES.keys())
def test_format_send_datetime_refuses_the_same_bad_times(send_at: datetime) -> None:
    with pytest.raises(SendTimeError):
        format_send_datetime(send_at, ISTANBUL, NOW)


def test_a_send_one_minute_ahead_is_accepted() -> None:
    assert format_send_datetime(NOW + timedelta(minutes=1), ISTANBUL, NOW) == "30/11/2026 15:01"


@pytest.mark.parametrize(
    ("numbers", "error"),
    [("+905333128320", TypeError), ([], ValueError)],
    ids=["a-single-string", "empty"],
)
def test_send_sms_refuses_bad_recipient_lists_before_any_request(
    make_client: ClientFactory, numbers: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        send(make_client(never_called), numbers=numbers)


def test_an_empty_order_id_is_refused_before_any_request(make_client: ClientFactory) -> None:
    client = make_client(never_called)
    with pytest.raises(ValueError, match="order_id"):
        client.get_report(" ")
    with pytest.raises(ValueError, match="order_id"):
        client.cancel_order("")


# -- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [200, "200"], ids=["int", "string"])
def test_a_status_code_is_read_as_int_or_numeric_string(
    make_client: ClientFactory, code: object
) -> None:
    order = {"id": "7", "status": 114, "total": 2, "delivered": 1, "undelivered": 1, "waiting": 0}
    client = make_client(lambda request: answer(code, order=order))

    assert client.get_report("7") == Report(
        order_id="7",
        status=ReportStatus.COMPLETED,
        code=114,
        total=2,
        delivered=1,
        undelivered=1,
        waiting=0,
    )


@pytest.mark.parametrize("order_id", [312891245, "312891245"], ids=["int", "string"])
def test_an_order_id_is_read_as_int_or_string(make_client: ClientFactory, order_id: object) -> None:
    client = make_client(lambda request: answer(200, order={"id": order_id}))

    assert send(client) == SendResult(order_id="312891245")


def test_an_http_455_with_a_json_body_is_read_not_treated_as_a_failure(
    make_client: ClientFactory,
) -> None:
    client = make_client(lambda request: answer(455, "Sipariş bulunamadı", http_status=455))

    assert client.get_report("9").status is ReportStatus.NOT_FOUND
    assert client.cancel_order("9") is CancelAnswer.NOT_FOUND


def test_the_body_code_decides_even_when_the_http_status_disagrees(
    make_client: ClientFactory,
) -> None:
    client = make_client(lambda request: answer(456, http_status=200))

    assert client.get_report("9").status is ReportStatus.PENDING


FULL_ORDER = {"id": "312891245", "status": 114, "total": 1, "delivered": 1, "undelivered": 0}
FULL_BALANCE = {"amount": "12.50", "sms": 100}
CALLS: dict[str, Callable[[IletiMerkeziClient], object]] = {
    "send-sms": send,
    "get-report": lambda c: c.get_report("312891245"),
    "cancel-order": lambda c: c.cancel_order("312891245"),
    "get-balance": lambda c: c.get_balance(),
}
#: Codes each call takes as an answer; every other code is an error.
ANSWERS: dict[str, dict[int, object]] = {
    "send-sms": {200: SendResult(order_id="312891245")},
    "get-report": {
        200: Report("312891245", ReportStatus.COMPLETED, 114, 1, 1, 0, None),
        455: Report("312891245", ReportStatus.NOT_FOUND, 455),
        456: Report("312891245", ReportStatus.PENDING, 456),
    },
    "cancel-order": {200: CancelAnswer.ACCEPTED, 455: CancelAnswer.NOT_FOUND},
    "get-balance": {200: Balance(amount="12.50", sms=100)},
}


@pytest.mark.parametrize("endpoint", CALLS)
@pytest.mark.parametrize("code", sorted(CODE_MEANINGS))
def test_every_documented_code_maps_to_an_answer_or_the_right_error(
    make_client: ClientFactory, endpoint: str, code: int
) -> None:
    provider_text = f"sağlayıcı metni {code}"
    client = make_client(
        lambda request: answer(code, provider_text, order=FULL_ORDER, balance=FULL_BALANCE)
    )
    call = CALLS[endpoint]

    if code in ANSWERS[endpoint]:
        assert call(client) == ANSWERS[endpoint][code]
        return
    with pytest.raises(ProviderError) as caught:
        call(client)
    error = caught.value
    assert error.endpoint == endpoint
    assert error.code == code
    assert endpoint in str(error)
    assert str(code) in str(error)
    if code == 401:
        assert type(error) is ProviderAuthError
    elif code == 503:
        assert type(error) is ProviderTransientError
        assert error.maybe_delivered is False
    else:
        assert type(error) is ProviderStatusError
        assert error.message == provider_text
        assert error.meaning == CODE_MEANINGS[code]
        assert provider_text not in str(error)  # the message is one English line


def test_an_undocumented_code_is_a_status_error(make_client: ClientFactory) -> None:
    client = make_client(lambda request: answer(499, "bilinmeyen"))

    with pytest.raises(ProviderStatusError) as caught:
        client.cancel_order("1")

    assert caught.value.code == 499
    assert caught.value.meaning == "undocumented code"


@pytest.mark.parametrize(("order_status", "expected"), [(113, "sending"), ("115", "not_sent")])
def test_a_report_reads_the_order_status_as_int_or_string(
    make_client: ClientFactory, order_status: object, expected: str
) -> None:
    client = make_client(lambda request: answer(200, order={"id": 5, "status": order_status}))

    report = client.get_report("5")

    assert report.status == expected
    assert report.code == int(str(order_status))


@pytest.mark.parametrize("order_status", [110, 111, 200, 999])
def test_a_report_with_an_unexpected_order_status_is_a_status_error_carrying_it(
    make_client: ClientFactory, order_status: int
) -> None:
    client = make_client(lambda request: answer(200, order={"id": 5, "status": order_status}))

    with pytest.raises(ProviderStatusError) as caught:
        client.get_report("5")

    assert caught.value.code == order_status
    assert f"order status {order_status}" in str(caught.value)


def test_report_counters_absent_from_the_answer_are_none(make_client: ClientFactory) -> None:
    client = make_client(lambda request: answer(200, order={"id": 5, "status": 113}))

    assert client.get_report("5") == Report("5", ReportStatus.SENDING, 113)


def test_report_counters_given_as_strings_are_read_as_ints(make_client: ClientFactory) -> None:
    order = {"status": 114, "total": "3", "delivered": "2", "undelivered": "1", "waiting": "0"}
    client = make_client(lambda request: answer(200, order=order))

    assert client.get_report("5") == Report("5", ReportStatus.COMPLETED, 114, 3, 2, 1, 0)


@pytest.mark.parametrize(
    ("balance", "expected"),
    [
        ({"amount": 12.5, "sms": "40"}, Balance(amount="12.5", sms=40)),
        ({"amount": 3}, Balance(amount="3", sms=None)),
        (None, Balance(amount=None, sms=None)),
    ],
    ids=["number-and-string", "sms-missing", "balance-missing"],
)
def test_a_balance_is_read_defensively(
    make_client: ClientFactory, balance: object, expected: Balance
) -> None:
    extra: dict[str, Any] = {} if balance is None else {"balance": balance}
    client = make_client(lambda request: answer(200, **extra))

    assert client.get_balance() == expected


UNREADABLE = {
    "html-502": httpx.Response(502, html="<html><body>Bad Gateway</body></html>"),
    "empty-200": httpx.Response(200, content=b""),
    "json-without-status": httpx.Response(200, json={"response": {"order": {"id": "1"}}}),
    "json-without-response": httpx.Response(200, json={"status": {"code": 200}}),
    "json-list": httpx.Response(200, json=[1, 2, 3]),
    "code-not-numeric": httpx.Response(200, json={"response": {"status": {"code": "OK"}}}),
    "code-null": httpx.Response(200, json={"response": {"status": {"code": None}}}),
    "code-boolean": httpx.Response(200, json={"response": {"status": {"code": True}}}),
    "not-utf8": httpx.Response(200, content=b"\xff\xfe\xfa{"),
}


@pytest.mark.parametrize("response", UNREADABLE.values(), ids=UNREADABLE.keys())
@pytest.mark.parametrize("endpoint", ["send-sms", "get-report"])
def test_an_unreadable_body_is_a_transient_error_that_may_have_been_delivered(
    make_client: ClientFactory, endpoint: str, response: httpx.Response
) -> None:
    client = make_client(lambda request: response)

    with pytest.raises(ProviderTransientError) as caught:
        CALLS[endpoint](client)

    assert caught.value.maybe_delivered is True
    assert caught.value.code is None
    assert caught.value.endpoint == endpoint
    assert f"HTTP {response.status_code}" in str(caught.value)


@pytest.mark.parametrize("endpoint", ["send-sms", "cancel-order"])
def test_a_deeply_nested_body_is_a_transient_error_not_a_recursion_error(
    make_client: ClientFactory, endpoint: str
) -> None:
    # 200 KB, under the size cap: deeper than every supported Python's parser goes (3.13's
    # parses 2000 levels).
    nested = b"[" * 100_000 + b"]" * 100_000
    client = make_client(lambda request: httpx.Response(200, content=nested))

    with pytest.raises(ProviderTransientError) as caught:
        CALLS[endpoint](client)

    assert caught.value.maybe_delivered is True
    assert "is not JSON" in str(caught.value)


class CountingStream(httpx.SyncByteStream):
    """An answer body of `chunks` chunks of 64 KiB that counts how many were read."""

    def __init__(self, first: bytes, chunks: int, *, on_chunk: Callable[[], None] = lambda: None):
        self.first = first
        self.chunks = chunks
        self.on_chunk = on_chunk
        self.read = 0

    def __iter__(self) -> Iterator[bytes]:
        for index in range(self.chunks):
            self.read += 1
            self.on_chunk()
            yield self.first if index == 0 else b" " * 65536


def test_an_answer_over_the_cap_is_not_read_further_even_when_it_is_valid_json(
    make_client: ClientFactory,
) -> None:
    """A documented answer padded with 4 MiB of whitespace: the client stops after 1 MiB."""
    documented = json.dumps({"response": {"status": {"code": 200, "message": "ok"}}}).encode()
    stream = CountingStream(documented, 64)
    client = make_client(lambda request: httpx.Response(200, stream=stream))

    with pytest.raises(ProviderTransientError) as caught:
        client.get_balance()

    assert caught.value.maybe_delivered is True
    assert f"over {MAX_ANSWER_BYTES} bytes" in str(caught.value)
    assert stream.read <= MAX_ANSWER_BYTES // 65536 + 2


def test_an_answer_declaring_a_length_over_the_cap_is_refused_unread(
    make_client: ClientFactory,
) -> None:
    stream = CountingStream(b"{", 2)
    headers = {"Content-Length": str(400 * 1024 * 1024)}
    client = make_client(lambda request: httpx.Response(200, headers=headers, stream=stream))

    with pytest.raises(ProviderTransientError, match="over"):
        client.cancel_order("1")

    assert stream.read == 0


def test_an_answer_at_the_cap_is_read() -> None:
    assert MAX_ANSWER_BYTES == 1024 * 1024
    body = json.dumps({"response": {"status": {"code": 456, "message": "x"}}}).encode()
    padded = body + b" " * (MAX_ANSWER_BYTES - len(body))
    client = IletiMerkeziClient(
        BASE_URL,
        KEY,
        HASH,
        transport=httpx.MockTransport(lambda request: httpx.Response(456, content=padded)),
        clock=lambda: NOW,
    )
    with client:
        assert client.get_report("1").status is ReportStatus.PENDING


class FakeMonotonic:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_answer_still_arriving_at_the_deadline_is_a_transient_error_naming_it(
    make_client: ClientFactory,
) -> None:
    """Each chunk takes 0.4 s of the 1 s deadline: the third is never waited for."""
    monotonic = FakeMonotonic()

    def slow_chunk() -> None:
        monotonic.now += 0.4

    documented = json.dumps({"response": {"status": {"code": 200, "message": "ok"}}}).encode()
    stream = CountingStream(documented, 10, on_chunk=slow_chunk)
    client = make_client(
        lambda request: httpx.Response(200, stream=stream), timeout=1.0, monotonic=monotonic
    )

    with pytest.raises(ProviderTransientError) as caught:
        client.cancel_order("1")

    assert caught.value.maybe_delivered is True
    assert "call deadline of 1 s" in str(caught.value)
    assert stream.read == 3


def test_each_phase_starts_with_no_more_than_the_call_deadline(make_client: ClientFactory) -> None:
    recorder = Recorder(answer(456))
    client = make_client(recorder, timeout=3.0)

    client.get_report("1")

    assert client.call_deadline == 3.0
    assert set(recorder.requests[0].extensions["timeout"]) == {"connect", "read", "write", "pool"}
    assert all(0 < t <= 3.0 for t in recorder.requests[0].extensions["timeout"].values())


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf")])
def test_a_call_deadline_must_be_a_positive_finite_number(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        IletiMerkeziClient(BASE_URL, KEY, HASH, timeout=timeout)


def test_send_date_time_is_written_in_the_provider_zone_by_default(
    make_client: ClientFactory,
) -> None:
    """Whatever zone people use, the provider reads Istanbul time: 07:00 UTC is 10:00 there."""
    recorder = Recorder(answer(200, order={"id": "1"}))
    send(make_client(recorder))

    assert body_of(recorder.requests[0])["request"]["order"]["sendDateTime"] == "01/12/2026 10:00"


@pytest.mark.parametrize("order", [None, {}, {"id": ""}, {"id": None}], ids=str)
def test_an_accepted_send_without_an_order_id_may_have_created_the_order(
    make_client: ClientFactory, order: object
) -> None:
    extra: dict[str, Any] = {} if order is None else {"order": order}
    client = make_client(lambda request: answer(200, **extra))

    with pytest.raises(ProviderTransientError) as caught:
        send(client)

    assert caught.value.maybe_delivered is True


def test_a_report_without_an_order_status_is_a_transient_error(make_client: ClientFactory) -> None:
    client = make_client(lambda request: answer(200, order={"id": "5"}))

    with pytest.raises(ProviderTransientError):
        client.get_report("5")


# -- transport failures ----------------------------------------------------------------------

TRANSPORT_FAILURES: list[tuple[type[httpx.RequestError], type[ProviderError], bool | None]] = [
    (httpx.ConnectError, ProviderTransientError, False),
    (httpx.ConnectTimeout, ProviderTransientError, False),
    (httpx.PoolTimeout, ProviderTransientError, False),
    (httpx.ReadTimeout, ProviderTransientError, True),
    (httpx.WriteTimeout, ProviderTransientError, True),
    (httpx.ReadError, ProviderTransientError, True),
    (httpx.WriteError, ProviderTransientError, True),
    (httpx.CloseError, ProviderTransientError, True),
    (httpx.RemoteProtocolError, ProviderTransientError, True),
    (httpx.LocalProtocolError, ProviderTransientError, True),
    (httpx.ProxyError, ProviderTransientError, True),
    (httpx.DecodingError, ProviderTransientError, True),
    (httpx.TooManyRedirects, ProviderTransientError, True),
    (httpx.TransportError, ProviderTransientError, True),
    (httpx.TimeoutException, ProviderTransientError, True),
    (httpx.NetworkError, ProviderTransientError, True),
    (httpx.ProtocolError, ProviderTransientError, True),
    (httpx.RequestError, ProviderTransientError, True),
    # A base URL with a scheme httpx cannot speak: no retry fixes it, so the root error.
    (httpx.UnsupportedProtocol, ProviderError, None),
]


@pytest.mark.parametrize(
    ("raised", "expected", "maybe_delivered"),
    TRANSPORT_FAILURES,
    ids=[raised.__name__ for raised, _, _ in TRANSPORT_FAILURES],
)
@pytest.mark.parametrize("endpoint", ["send-sms", "get-report"])
def test_every_httpx_error_maps_to_a_provider_error_with_its_cause(
    make_client: ClientFactory,
    endpoint: str,
    raised: type[httpx.RequestError],
    expected: type[ProviderError],
    maybe_delivered: bool | None,
) -> None:
    """Even an httpx error whose text echoes the credentials yields a clean message."""
    original: list[httpx.RequestError] = []

    def fail(request: httpx.Request) -> httpx.Response:
        original.append(raised(f"boom while sending {KEY}/{HASH}", request=request))
        raise original[0]

    with pytest.raises(ProviderError) as caught:
        CALLS[endpoint](make_client(fail))

    error = caught.value
    assert type(error) is expected
    assert error.__cause__ is original[0]
    assert error.endpoint == endpoint
    assert error.code is None
    assert raised.__name__ in str(error)
    assert endpoint in str(error)
    assert "\n" not in str(error)
    if maybe_delivered is not None:
        assert isinstance(error, ProviderTransientError)
        assert error.maybe_delivered is maybe_delivered
    assert KEY not in str(error)
    assert HASH not in str(error)


# -- secrets ---------------------------------------------------------------------------------


def test_repr_shows_the_base_url_and_no_secret(make_client: ClientFactory) -> None:
    client = make_client(never_called)

    assert repr(client) == f"IletiMerkeziClient(base_url={BASE_URL!r})"


ECHOES = {
    "auth-401": (401, ProviderAuthError),
    "sender-450": (450, ProviderStatusError),
    "unavailable-503": (503, ProviderTransientError),
}


@pytest.mark.parametrize(("code", "expected"), ECHOES.values(), ids=ECHOES.keys())
def test_credentials_echoed_by_the_provider_reach_no_message_traceback_or_log(
    make_client: ClientFactory, code: int, expected: type[ProviderError]
) -> None:
    echo = f"Üyelik bilgileri hatalı: key={KEY} hash={HASH}"
    client = make_client(lambda request: answer(code, echo))

    with structlog.testing.capture_logs() as logs, pytest.raises(expected) as caught:
        client.get_balance()

    error = caught.value
    text = "".join(traceback.format_exception(error))
    for secret in (KEY, HASH):
        assert secret not in str(error)
        assert secret not in text
        assert secret not in repr(vars(error))
        assert secret not in repr(logs)
    assert logs


def test_an_unreadable_body_echoing_the_credentials_stays_out_of_the_error_chain(
    make_client: ClientFactory,
) -> None:
    """The JSON decoder's error keeps the whole body in `.doc`, so it is not chained."""
    echo = f"<html>invalid key {KEY} or hash {HASH}</html>".encode()
    client = make_client(lambda request: httpx.Response(500, content=echo))

    with structlog.testing.capture_logs() as logs, pytest.raises(ProviderTransientError) as caught:
        client.get_report("1")

    error = caught.value
    assert error.__cause__ is None
    assert error.__suppress_context__
    text = "".join(traceback.format_exception(error))
    for secret in (KEY, HASH):
        assert secret not in text
        assert secret not in repr(vars(error))
        assert secret not in repr(logs)


def test_a_transport_failure_traceback_does_not_show_the_credentials(
    make_client: ClientFactory,
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(ProviderTransientError) as caught:
        send(make_client(refuse))

    text = "".join(traceback.format_exception(caught.value))
    assert "Connection refused" in text
    assert KEY not in text
    assert HASH not in text


# -- logging ---------------------------------------------------------------------------------


def test_a_successful_call_logs_one_provider_call_event(make_client: ClientFactory) -> None:
    client = make_client(lambda request: answer(200, order={"id": 5, "status": 113}))

    with structlog.testing.capture_logs() as logs:
        client.get_report("5")

    (entry,) = logs
    duration = entry.pop("duration_ms")
    assert isinstance(duration, float)
    assert duration >= 0
    assert entry == {
        "event": "provider_call",
        "log_level": "info",
        "endpoint": "get-report",
        "code": 200,
        "outcome": "ok",
        "order_id": "5",
    }


def test_a_send_logs_the_order_id_the_provider_gave(make_client: ClientFactory) -> None:
    client = make_client(lambda request: answer(200, order={"id": 42}))

    with structlog.testing.capture_logs() as logs:
        send(client)

    assert logs[0]["order_id"] == "42"


def test_a_balance_call_logs_no_order_id(make_client: ClientFactory) -> None:
    client = make_client(lambda request: answer(200, balance=FULL_BALANCE))

    with structlog.testing.capture_logs() as logs:
        client.get_balance()

    assert "order_id" not in logs[0]


def _timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


FAILED_CALLS = {
    "auth": (lambda request: answer(401, "Üyelik bilgileri hatalı"), 401, "auth"),
    "status-error": (lambda request: answer(457, "Tarih hatalı"), 457, "status_error"),
    "unavailable": (lambda request: answer(503, "Servis dışı"), 503, "transient"),
    "timeout": (_timeout, None, "transient"),
    "unreadable": (lambda request: httpx.Response(200, text="ok"), None, "transient"),
}


@pytest.mark.parametrize(("handler", "code", "outcome"), FAILED_CALLS.values(), ids=FAILED_CALLS)
def test_a_failed_call_logs_its_outcome_as_a_warning(
    make_client: ClientFactory, handler: Handler, code: int | None, outcome: str
) -> None:
    client = make_client(handler)

    with structlog.testing.capture_logs() as logs, pytest.raises(ProviderError) as caught:
        client.cancel_order("77")

    (entry,) = logs
    assert entry["event"] == "provider_call"
    assert entry["log_level"] == "warning"
    assert entry["endpoint"] == "cancel-order"
    assert entry["code"] == code
    assert entry["outcome"] == outcome
    assert entry["order_id"] == "77"
    assert entry["error"] == type(caught.value).__name__


# -- lifecycle and concurrency ---------------------------------------------------------------


def test_the_client_closes_its_pool_when_used_as_a_context_manager() -> None:
    recorder = Recorder(answer(456))
    with IletiMerkeziClient(
        BASE_URL, KEY, HASH, transport=httpx.MockTransport(recorder), clock=lambda: NOW
    ) as client:
        client.get_report("1")

    with pytest.raises(RuntimeError, match="closed"):
        client.get_report("1")


REPORT_BY_REMAINDER: list[tuple[httpx.Response, ReportStatus]] = [
    (answer(456), ReportStatus.PENDING),
    (answer(455, http_status=455), ReportStatus.NOT_FOUND),
    (answer(200, order={"status": 113}), ReportStatus.SENDING),
    (answer("200", order={"status": "114"}), ReportStatus.COMPLETED),
    (answer(200, order={"status": 115}), ReportStatus.NOT_SENT),
]


def test_thirty_two_threads_share_one_client_and_each_gets_its_own_answer(
    make_client: ClientFactory,
) -> None:
    threads = 32
    barrier = threading.Barrier(threads)

    def by_order_id(request: httpx.Request) -> httpx.Response:
        order_id = int(body_of(request)["request"]["order"]["id"])
        response = REPORT_BY_REMAINDER[order_id % len(REPORT_BY_REMAINDER)][0]
        return httpx.Response(response.status_code, content=response.content)

    client = make_client(by_order_id)

    def report(order_id: int) -> Report:
        barrier.wait(timeout=10)
        return client.get_report(str(order_id))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        reports = list(pool.map(report, range(threads)))

    for order_id, got in enumerate(reports):
        assert got.order_id == str(order_id)
        assert got.status is REPORT_BY_REMAINDER[order_id % len(REPORT_BY_REMAINDER)][1]
