"""The real `IletiMerkeziClient` against the sandbox over loopback: each call, each answer the
client must read, and each fault the sandbox injects mapped to the client's exceptions."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from scheduler.provider.client import (
    Balance,
    CancelAnswer,
    IletiMerkeziClient,
    Report,
    ReportStatus,
    SendResult,
)
from scheduler.provider.errors import (
    ProviderAuthError,
    ProviderError,
    ProviderStatusError,
    ProviderTransientError,
)
from scheduler.provider.sandbox import ENDPOINTS, Faults, Sandbox

START = datetime(2026, 5, 1, 6, 0, tzinfo=UTC)
SEND_AT = START + timedelta(hours=1)
# Made once: an httpx transport builds a default SSL context (~50 ms) unless given one.
_TLS = ssl.create_default_context()


class MutableClock:
    """One clock for the client and the sandbox; the test moves it by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> MutableClock:
    return MutableClock(START)


@pytest.fixture
def sandbox_options(clock: MutableClock) -> dict[str, Any]:
    return {"clock": clock, "seed": 11}


@pytest.fixture
def client_options(clock: MutableClock) -> dict[str, Any]:
    """Clients of this module read the test's clock and wait 2 s unless told otherwise."""
    return {"timeout": 2.0, "clock": clock}


def send(client: IletiMerkeziClient, **overrides: Any) -> SendResult:
    arguments: dict[str, Any] = {
        "sender": "ACME",
        "numbers": ["+905551112233"],
        "text": "Merhaba",
        "send_at": SEND_AT,
    }
    arguments.update(overrides)
    return client.send_sms(**arguments)


def do_call(client: IletiMerkeziClient, endpoint: str, order_id: str) -> object:
    """Make the client's call for `endpoint` (`order_id` where the call takes one)."""
    calls: dict[str, Callable[[], object]] = {
        "send-sms": lambda: send(client),
        "get-report": lambda: client.get_report(order_id),
        "cancel-order": lambda: client.cancel_order(order_id),
        "get-balance": client.get_balance,
        "get-reports": lambda: client.get_reports(date(2026, 11, 25), date(2026, 12, 4)),
    }
    return calls[endpoint]()


def wait_for(predicate: Callable[[], bool], seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "the sandbox never got there"
        time.sleep(0.02)


# -- each call ------------------------------------------------------------------------------


def test_send_sms_schedules_the_order_at_the_right_instant(
    client: IletiMerkeziClient, sandbox: Sandbox
) -> None:
    result = send(client)
    order = sandbox.truth()["orders"][result.order_id]
    assert order["send_at"] == SEND_AT.isoformat()  # sendDateTime went out in Istanbul time
    assert order["state"] == "pending"


def test_send_sms_without_iys_is_accepted(client: IletiMerkeziClient, sandbox: Sandbox) -> None:
    result = send(client, iys=False)
    assert result.order_id in sandbox.truth()["orders"]


@pytest.mark.parametrize(
    ("overrides", "code"),
    [({"sender": "ABCDEFGHIJKL"}, 460), ({"numbers": ["123"]}, 452), ({"text": ""}, 454)],
)
def test_send_sms_refusals_are_status_errors(
    client: IletiMerkeziClient, overrides: dict[str, Any], code: int
) -> None:
    with pytest.raises(ProviderStatusError) as raised:
        send(client, **overrides)
    assert raised.value.code == code
    assert raised.value.endpoint == "send-sms"


def test_get_report_follows_the_order_from_pending_to_completed(
    client: IletiMerkeziClient, clock: MutableClock
) -> None:
    order_id = send(client).order_id
    seen = []
    for now in (START, SEND_AT - timedelta(minutes=2), SEND_AT + timedelta(minutes=1)):
        clock.now = now
        seen.append(client.get_report(order_id))
    assert seen == [
        Report(order_id, ReportStatus.PENDING, 456),
        Report(order_id, ReportStatus.SENDING, 113, total=1, delivered=0, undelivered=0, waiting=1),
        Report(
            order_id, ReportStatus.COMPLETED, 114, total=1, delivered=1, undelivered=0, waiting=0
        ),
    ]


def test_cancel_is_accepted_once_and_the_report_then_says_not_sent(
    client: IletiMerkeziClient, sandbox: Sandbox
) -> None:
    order_id = send(client).order_id
    assert client.cancel_order(order_id) is CancelAnswer.ACCEPTED
    assert client.cancel_order(order_id) is CancelAnswer.NOT_FOUND
    assert client.get_report(order_id).status is ReportStatus.NOT_SENT
    truth = sandbox.truth()["orders"][order_id]
    assert (truth["state"], truth["cancel_calls"], truth["cancels_accepted"]) == ("cancelled", 2, 1)


def test_cancel_in_the_carrier_queue_is_not_found(
    client: IletiMerkeziClient, sandbox: Sandbox, clock: MutableClock
) -> None:
    order_id = send(client).order_id
    clock.now = SEND_AT - timedelta(minutes=2)
    assert client.cancel_order(order_id) is CancelAnswer.NOT_FOUND
    assert sandbox.truth()["orders"][order_id]["state"] == "sending"


def test_unknown_orders_are_not_found(client: IletiMerkeziClient) -> None:
    assert client.get_report("999") == Report("999", ReportStatus.NOT_FOUND, 455)
    assert client.cancel_order("999") is CancelAnswer.NOT_FOUND


def test_get_balance(client: IletiMerkeziClient) -> None:
    assert client.get_balance() == Balance(amount="1000.00", sms=5000)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_wrong_credentials_raise_provider_auth_error(
    make_client: Callable[..., IletiMerkeziClient], sandbox: Sandbox, endpoint: str
) -> None:
    sandbox.add_order("777", SEND_AT)
    client = make_client(sandbox, hash="not-the-hash")
    with pytest.raises(ProviderAuthError) as raised:
        do_call(client, endpoint, "777")
    assert raised.value.endpoint == endpoint
    assert "not-the-hash" not in str(raised.value)
    assert sandbox.truth()["orders"]["777"]["state"] == "pending"


# -- each fault -----------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_503_is_transient_and_not_delivered(
    client: IletiMerkeziClient, sandbox: Sandbox, endpoint: str
) -> None:
    sandbox.add_order("777", SEND_AT)
    sandbox.set_faults(Faults(fail_next={endpoint: 1}))
    with pytest.raises(ProviderTransientError) as raised:
        do_call(client, endpoint, "777")
    assert (raised.value.code, raised.value.maybe_delivered) == (503, False)
    truth = sandbox.truth()
    assert list(truth["orders"]) == ["777"]  # no order sent
    assert truth["orders"]["777"]["state"] == "pending"  # not cancelled
    assert truth["totals"][endpoint]["injected_errors"] == 1


def test_a_dropped_cancel_is_transient_and_was_carried_out(
    client: IletiMerkeziClient, sandbox: Sandbox
) -> None:
    order_id = send(client).order_id
    sandbox.set_faults(Faults(drop_next={"cancel-order": 1}))
    with pytest.raises(ProviderTransientError) as raised:
        client.cancel_order(order_id)
    assert raised.value.maybe_delivered is True
    truth = sandbox.truth()["orders"][order_id]
    assert (truth["state"], truth["cancels_accepted"]) == ("cancelled", 1)
    # What the client must do next: verify rather than cancel again.
    assert client.get_report(order_id).status is ReportStatus.NOT_SENT


def test_a_dropped_send_is_transient_and_the_order_exists(
    client: IletiMerkeziClient, sandbox: Sandbox
) -> None:
    sandbox.set_faults(Faults(drop_next={"send-sms": 1}))
    with pytest.raises(ProviderTransientError) as raised:
        send(client)
    assert raised.value.maybe_delivered is True
    assert len(sandbox.truth()["orders"]) == 1


@pytest.mark.parametrize("endpoint", ["send-sms", "cancel-order"])
def test_a_garbled_answer_is_transient_and_the_work_was_done(
    client: IletiMerkeziClient, sandbox: Sandbox, endpoint: str
) -> None:
    sandbox.add_order("777", SEND_AT)
    sandbox.set_faults(Faults(garbage_next={endpoint: 1}))
    with pytest.raises(ProviderTransientError) as raised:
        do_call(client, endpoint, "777")
    assert raised.value.maybe_delivered is True
    truth = sandbox.truth()["orders"]
    if endpoint == "send-sms":
        assert len(truth) == 2
    else:
        assert truth["777"]["cancels_accepted"] == 1


@pytest.mark.parametrize("endpoint", ["get-report", "get-balance"])
def test_a_garbled_read_is_transient(
    client: IletiMerkeziClient, sandbox: Sandbox, endpoint: str
) -> None:
    sandbox.add_order("777", SEND_AT)
    sandbox.set_faults(Faults(garbage_next={endpoint: 1}))
    with pytest.raises(ProviderTransientError):
        do_call(client, endpoint, "777")


def test_latency_beyond_the_timeout_is_transient_and_the_cancel_may_still_land(
    make_client: Callable[..., IletiMerkeziClient], sandbox: Sandbox
) -> None:
    sandbox.add_order("777", SEND_AT)
    sandbox.set_faults(Faults(latency=0.6, endpoints=frozenset({"cancel-order"})))
    client = make_client(sandbox, timeout=0.2)
    with pytest.raises(ProviderTransientError) as raised:
        client.cancel_order("777")
    assert raised.value.maybe_delivered is True
    assert client.get_balance().sms == 5000  # other endpoints stay fast
    # The provider finishes the work after the client gave up: why a timed-out cancel is unknown.
    wait_for(lambda: sandbox.truth()["orders"]["777"]["cancels_accepted"] == 1)


def test_latency_within_the_timeout_is_only_slow(
    make_client: Callable[..., IletiMerkeziClient], sandbox: Sandbox
) -> None:
    sandbox.set_faults(Faults(latency=0.2))
    client = make_client(sandbox, timeout=2.0)
    started = time.perf_counter()
    assert client.get_balance().amount == "1000.00"
    assert time.perf_counter() - started >= 0.2


def call_in_thread(call: Callable[[], object], seconds: float = 10.0) -> object:
    """Run `call` on a thread; return its result or exception, failing if it has not returned
    within `seconds` (a generous bound: what is asserted is that the call ends at all)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the call had not returned after {seconds} s"
    return outcome[0]


@pytest.mark.parametrize("transport", ["own", "injected"])
def test_a_dripping_answer_ends_at_the_call_deadline_and_the_cancel_may_have_landed(
    make_client: Callable[..., IletiMerkeziClient], sandbox: Sandbox, transport: str
) -> None:
    """One byte every 0.2 s never trips a read timeout; the whole answer would take a minute."""
    sandbox.add_order("777", SEND_AT)
    sandbox.set_faults(Faults(drip_next={"cancel-order": 1}, drip_interval=0.2))
    client = make_client(
        sandbox, timeout=1.0, **({"transport": None} if transport == "own" else {})
    )

    outcome = call_in_thread(lambda: client.cancel_order("777"))

    assert isinstance(outcome, ProviderTransientError), outcome
    assert outcome.maybe_delivered is True
    assert "call deadline of 1 s" in str(outcome)
    assert sandbox.truth()["orders"]["777"]["cancels_accepted"] == 1
    assert client.get_balance().sms == 5000  # the next call is not held up


def test_a_nested_answer_is_transient_and_the_send_may_have_created_the_order(
    client: IletiMerkeziClient, sandbox: Sandbox
) -> None:
    sandbox.set_faults(Faults(nested_next={"send-sms": 1}))
    with pytest.raises(ProviderTransientError) as raised:
        send(client)
    assert raised.value.maybe_delivered is True
    assert len(sandbox.truth()["orders"]) == 1


def test_an_endless_answer_is_transient_and_read_no_further_than_the_cap(
    make_client: Callable[..., IletiMerkeziClient], sandbox: Sandbox
) -> None:
    sandbox.add_order("777", SEND_AT)
    sandbox.set_faults(Faults(huge_next={"cancel-order": 1}))
    client = make_client(sandbox, timeout=5.0)

    outcome = call_in_thread(lambda: client.cancel_order("777"))

    assert isinstance(outcome, ProviderTransientError), outcome
    assert outcome.maybe_delivered is True
    assert "bytes, not read further" in str(outcome)
    assert sandbox.truth()["orders"]["777"]["cancels_accepted"] == 1


def test_a_stopped_sandbox_is_transient_and_never_delivered(
    client: IletiMerkeziClient, sandbox: Sandbox
) -> None:
    sandbox.stop()
    with pytest.raises(ProviderTransientError) as raised:
        client.get_balance()
    assert raised.value.maybe_delivered is False


def test_every_injected_fault_is_a_transient_error_and_nothing_else(
    client: IletiMerkeziClient, sandbox: Sandbox
) -> None:
    sandbox.set_faults(Faults(error_rate=0.2, drop_rate=0.2, garbage_rate=0.2), seed=5)
    outcomes: list[type[object]] = []
    for _ in range(60):
        try:
            client.get_balance()
        except ProviderError as exc:
            outcomes.append(type(exc))
        else:
            outcomes.append(Balance)
    totals = sandbox.truth()["totals"]["get-balance"]
    injected = totals["injected_errors"] + totals["dropped"] + totals["garbled"]
    assert outcomes.count(ProviderTransientError) == injected
    assert outcomes.count(Balance) == 60 - injected
    assert injected > 0


# -- concurrency ----------------------------------------------------------------------------


def test_one_client_from_many_threads_cancels_an_order_exactly_once(
    sandbox: Sandbox, make_client: Callable[..., IletiMerkeziClient]
) -> None:
    client = make_client(sandbox, transport=None)  # the client's own pool, as in production
    order_id = send(client).order_id
    barrier = threading.Barrier(16)

    def one(_: int) -> CancelAnswer:
        barrier.wait()
        return client.cancel_order(order_id)

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(one, range(16)))
    assert answers.count(CancelAnswer.ACCEPTED) == 1
    assert answers.count(CancelAnswer.NOT_FOUND) == 15
    assert sandbox.truth()["orders"][order_id]["cancels_accepted"] == 1


def test_one_client_sends_200_orders_from_16_threads(
    sandbox: Sandbox, make_client: Callable[..., IletiMerkeziClient]
) -> None:
    client = make_client(sandbox, transport=None)
    with ThreadPoolExecutor(max_workers=16) as pool:
        ids = list(pool.map(lambda _: send(client).order_id, range(200)))
    assert len(set(ids)) == 200
    assert sorted(sandbox.truth()["orders"]) == sorted(ids)
    assert sandbox.truth()["connections"] <= 16
