"""A local HTTP stand-in for the iletiMerkezi JSON API.

The sandbox answers the four endpoints smsledger uses (send-sms, get-report, cancel-order,
get-balance) with the provider's documented bodies and codes, moves every order through the
provider's lifecycle by an injectable clock, and misbehaves on request (latency, 503s, lost
answers, unreadable answers) so that tests, benchmarks, ``smsledger demo`` and dry runs meet the
failures the real service produces. It keeps the truth -- what the provider really did -- so a
test can prove, for example, that no order was cancelled twice.

An order's life, by the sandbox's clock::

    state       while                                get-report    cancel-order
    pending     now < send_at - queue_lead           456           200 once, then 455
    sending     now < send_at + send_duration        200 / 113     455
    completed   afterwards                           200 / 114     455
    cancelled   after an accepted cancel             200 / 115     455

Faults apply to provider endpoints only. For each request, in this order: a pending
``fail_next`` / ``drop_next`` / ``garbage_next`` / ``drip_next`` / ``nested_next`` /
``huge_next`` count for its endpoint wins; otherwise, when the endpoint is in ``Faults.endpoints``
(None: all of them), one draw of the seeded random generator picks an error (503, work not done),
a drop (work done, connection closed without an answer), garbage (work done, an HTML page with
HTTP 200), a drip (work done, the real answer written one byte every ``drip_interval``, head
included), a nested answer (work done, HTTP 200 with JSON nested `NESTED_DEPTH` deep) or a huge
one (work done, HTTP 200 with a body that never ends). ``latency`` delays every in-scope answer.
``clock_offset`` runs the sandbox's clock ahead of (or behind) the one it was given; every answer's
``Date`` header is read from it.

Control endpoints, for a sandbox running in its own process (no credentials, never faulted)::

    GET  /_sandbox/truth    the truth (see `Sandbox.truth`)
    GET  /_sandbox/faults   the current faults, as `Faults.to_dict`
    POST /_sandbox/faults   replace the faults: `Faults.to_dict` fields, plus an optional "seed"
    POST /_sandbox/orders   {"order_id": "...", "send_at": ISO-8601 with offset}: see `add_order`

``python -m scheduler.sandbox --help`` runs one from the shell; exit codes: 0 stopped by SIGINT or
SIGTERM, 1 could not listen, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import json
import logging
import math
import random
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Final, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog

__all__ = [
    "DEFAULT_HASH",
    "DEFAULT_KEY",
    "ENDPOINTS",
    "FIRST_ORDER_ID",
    "HUGE_MAX_BYTES",
    "NESTED_DEPTH",
    "Faults",
    "Sandbox",
    "add_arguments",
    "run_from_args",
]

log = structlog.get_logger(__name__)

#: The provider endpoints the sandbox serves, as named in `Faults` and in the truth's totals.
ENDPOINTS: Final = ("send-sms", "get-report", "cancel-order", "get-balance")
DEFAULT_KEY: Final = "sandbox-key"
DEFAULT_HASH: Final = "sandbox-hash"
DEFAULT_QUEUE_LEAD: Final = 120.0  # seconds before send_at an order enters the carrier queue
DEFAULT_SEND_DURATION: Final = 30.0  # seconds an order spends sending after send_at
DEFAULT_ZONE: Final = ZoneInfo("Europe/Istanbul")
#: The first order id handed out; later ones count up from it.
FIRST_ORDER_ID: Final = 312891245
BALANCE: Final = {"amount": "1000.00", "sms": 5000}
#: How deep a "nested" fault's JSON answer is nested: far beyond any parser's recursion limit.
NESTED_DEPTH: Final = 50_000
#: Where a "huge" fault's endless answer stops if the client never hangs up (1 GiB).
HUGE_MAX_BYTES: Final = 1024**3

_IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may sit idle before the sandbox closes it
_POLL_INTERVAL = 0.05  # seconds between checks for stop() in the accept loop
_STOP_JOIN_SECONDS = 5.0  # longest stop() waits for request threads to finish
_MAX_BODY = 4 * 1024 * 1024
_SENDER_MAX = 11
_TIMESTAMP = "%Y-%m-%d %H:%M:%S"  # submitAt / sendAt, in the sandbox's zone
_FORMAT = "%d/%m/%Y %H:%M"  # sendDateTime, the provider's "dd/MM/yyyy HH:mm"
_SECONDS_FORMAT = "%d/%m/%Y %H:%M:%S"
_SEND_DATETIME = re.compile(r"\d{2}/\d{2}/\d{4} \d{2}:\d{2}(?P<seconds>:\d{2})?")
_MOBILE = re.compile(r"\+?\d{10,13}")
_IYS_LISTS = frozenset({"BIREYSEL", "TACIR"})
_PROVIDER_PATHS = {f"/v1/{name}/json": name for name in ENDPOINTS}

_MESSAGES: Final = {
    200: "İşlem başarılı",
    400: "İstek çözümlenemedi",
    401: "Üyelik bilgileri hatalı",
    404: "Geçersiz API metodu",
    452: "Alıcı numaraları hatalı",
    454: "Mesaj metni boş",
    455: "Sipariş bulunamadı",
    456: "Sipariş gönderim tarihi henüz gelmedi",
    457: "Gönderim tarihi formatı hatalı",
    459: "Gönderici adı boş",
    460: "Gönderici adı 11 karakterden uzun veya Türkçe karakter içeriyor",
    468: "İYS bilgisi eksik",
    469: "İYS listesi eksik veya hatalı",
    500: "Sandbox iç hatası",
    503: "Sunucu geçici olarak servis dışı",
}
_REASONS: Final = {
    452: "Invalid Recipients",
    454: "Empty Message Text",
    455: "Order Not Found",
    456: "Send Date Not Reached",
    457: "Invalid Send Date",
    459: "Empty Sender",
    460: "Invalid Sender",
    468: "IYS Flag Missing",
    469: "IYS List Missing",
}
_NESTED_BODY = b"[" * NESTED_DEPTH + b"]" * NESTED_DEPTH
# A chunk of a "huge" answer: the start of a documented body whose message never ends.
_HUGE_CHUNK = b"A" * 65536
_HUGE_START = b'{"response":{"status":{"code":200,"message":"'
_GARBAGE_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def _utcnow() -> datetime:
    # Not ledger._clock.utcnow: importing `ledger` loads the database stack (about a second),
    # and the sandbox stands for the provider, whose clock is not the ledger's anyway.
    return datetime.now(UTC)


_Fault = Literal["error", "drop", "garbage", "drip", "nested", "huge"]
_State = Literal["pending", "sending", "completed", "cancelled"]
# state -> (order.status, status of each message in order.message[])
_REPORT_STATUSES: Final[dict[_State, tuple[int, int]]] = {
    "sending": (113, 110),
    "completed": (114, 111),
    "cancelled": (115, 112),
}


# -- faults ---------------------------------------------------------------------------------


@dataclass
class Faults:
    """What the sandbox does wrong, and on which endpoints.

    Rates are shares of requests in [0, 1] and together at most 1. `endpoints` limits `latency`
    and the rates (None: every provider endpoint); the `*_next` counts are per endpoint already
    and always apply: the next N requests to that endpoint get a 503 (`fail_next`, work not
    done), lose their answer (`drop_next`, work done) or get an unreadable one (`garbage_next`,
    work done). The sandbox keeps its own copy and counts that copy down.

    Three more kinds do the work and spoil only the answer: `drip` writes the real answer, head
    and body, one byte every `drip_interval` seconds (each byte well within any read timeout,
    the whole answer minutes long); `nested` answers HTTP 200 with a JSON array nested
    `NESTED_DEPTH` deep; `huge` answers HTTP 200 with a body that never ends (until the client
    hangs up, the sandbox stops or `HUGE_MAX_BYTES` went out). `clock_offset` (seconds, either
    sign) puts the sandbox's clock that far ahead of the clock it was given: the orders'
    lifecycle and every answer's `Date` header follow it.

    `report_lag` (seconds of sandbox time) stands for an eventually consistent provider: after
    an accepted cancel, get-report keeps answering 456 for that long before it answers 115 (a
    cancel-order meanwhile answers 455: the order is cancelled).
    """

    latency: float = 0.0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    garbage_rate: float = 0.0
    endpoints: frozenset[str] | None = None
    fail_next: dict[str, int] = field(default_factory=dict)
    drop_next: dict[str, int] = field(default_factory=dict)
    garbage_next: dict[str, int] = field(default_factory=dict)
    drip_rate: float = 0.0
    nested_rate: float = 0.0
    huge_rate: float = 0.0
    drip_next: dict[str, int] = field(default_factory=dict)
    nested_next: dict[str, int] = field(default_factory=dict)
    huge_next: dict[str, int] = field(default_factory=dict)
    drip_interval: float = 0.5
    clock_offset: float = 0.0
    report_lag: float = 0.0

    def __post_init__(self) -> None:
        _check_number("latency", self.latency, upper=math.inf)
        _check_number("drip_interval", self.drip_interval, upper=math.inf)
        _check_number("report_lag", self.report_lag, upper=math.inf)
        for name in _RATES:
            _check_number(name, getattr(self, name), upper=1.0)
        if sum(getattr(self, name) for name in _RATES) > 1.0:
            raise ValueError(f"{' + '.join(_RATES)} must not exceed 1")
        if (
            isinstance(self.clock_offset, bool)
            or not isinstance(self.clock_offset, int | float)
            or not math.isfinite(self.clock_offset)
        ):
            raise ValueError(f"clock_offset must be a finite number, got {self.clock_offset!r}")
        if self.endpoints is not None:
            self.endpoints = _endpoint_set(self.endpoints)
        for name in _NEXT_COUNTS:
            setattr(self, name, _counters(name, getattr(self, name)))

    def applies_to(self, endpoint: str) -> bool:
        """Whether `latency` and the rates apply to `endpoint`."""
        return self.endpoints is None or endpoint in self.endpoints

    def to_dict(self) -> dict[str, Any]:
        """The faults as JSON-ready data, the shape `from_dict` and the control endpoint take."""
        return {
            "latency": self.latency,
            "error_rate": self.error_rate,
            "drop_rate": self.drop_rate,
            "garbage_rate": self.garbage_rate,
            "endpoints": None if self.endpoints is None else sorted(self.endpoints),
            "fail_next": dict(self.fail_next),
            "drop_next": dict(self.drop_next),
            "garbage_next": dict(self.garbage_next),
            "drip_rate": self.drip_rate,
            "nested_rate": self.nested_rate,
            "huge_rate": self.huge_rate,
            "drip_next": dict(self.drip_next),
            "nested_next": dict(self.nested_next),
            "huge_next": dict(self.huge_next),
            "drip_interval": self.drip_interval,
            "clock_offset": self.clock_offset,
            "report_lag": self.report_lag,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Faults:
        """Build faults from `to_dict`-shaped data; missing fields keep their defaults."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        if values.get("endpoints") is not None:
            values["endpoints"] = _endpoint_set(values["endpoints"])
        return cls(**values)

    def _copy(self) -> Faults:
        return Faults.from_dict(self.to_dict())


# Each fault's rate and its per-endpoint count, in the order a request meets them.
_FAULT_FIELDS: Final[tuple[tuple[_Fault, str, str], ...]] = (
    ("error", "error_rate", "fail_next"),
    ("drop", "drop_rate", "drop_next"),
    ("garbage", "garbage_rate", "garbage_next"),
    ("drip", "drip_rate", "drip_next"),
    ("nested", "nested_rate", "nested_next"),
    ("huge", "huge_rate", "huge_next"),
)
_RATES: Final = tuple(rate for _, rate, _ in _FAULT_FIELDS)
_NEXT_COUNTS: Final = tuple(count for _, _, count in _FAULT_FIELDS)


def _check_number(name: str, value: object, *, upper: float) -> None:
    """Raise ValueError unless `value` is a finite number in [0, upper]."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0.0 <= value <= upper
    ):
        bound = "a finite number >= 0" if upper == math.inf else f"a number in [0, {upper:g}]"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def _endpoint_set(names: Iterable[str] | str) -> frozenset[str]:
    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    chosen = frozenset(names)
    unknown = chosen - set(ENDPOINTS)
    if unknown:
        raise ValueError(
            f"unknown endpoints {', '.join(sorted(map(str, unknown)))}; "
            f"choose from {', '.join(ENDPOINTS)}"
        )
    return chosen


def _counters(name: str, counts: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(counts, Mapping):
        raise ValueError(f"{name} must map endpoint names to counts, got {counts!r}")
    _endpoint_set(counts)
    for endpoint, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{name}[{endpoint!r}] must be an int >= 0, got {count!r}")
    return {endpoint: count for endpoint, count in counts.items() if count}


# -- provider state -------------------------------------------------------------------------


class _Refusal(Exception):
    """A provider answer other than success, raised by the checks of a request."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _require(condition: object, code: int) -> None:
    if not condition:
        raise _Refusal(code)


@dataclass
class _Order:
    order_id: str
    sender: str
    numbers: list[str]
    submit_at: datetime
    send_at: datetime
    cancelled_at: datetime | None = None
    cancel_calls: int = 0
    cancels_accepted: int = 0
    report_calls: int = 0


@dataclass
class _Totals:
    requests: int = 0
    injected_errors: int = 0
    dropped: int = 0
    garbled: int = 0
    dripped: int = 0
    nested: int = 0
    huge: int = 0
    codes: dict[int, int] = field(default_factory=dict)


# The truth's name for the count of each injected fault.
_FAULT_TOTALS: Final[dict[_Fault, str]] = {
    "error": "injected_errors",
    "drop": "dropped",
    "garbage": "garbled",
    "drip": "dripped",
    "nested": "nested",
    "huge": "huge",
}


@dataclass(frozen=True)
class _Reply:
    code: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    drop: bool = False  # close the connection without writing anything
    close: bool = False  # answer, then close the connection
    drip: float | None = None  # seconds between bytes: write the answer one byte at a time
    endless: bool = False  # a chunked body that never ends (`body` is where it starts)


_DROP = _Reply(0, drop=True)
_GARBAGE = _Reply(200, _GARBAGE_PAGE, "text/html; charset=utf-8")
_NESTED = _Reply(200, _NESTED_BODY)
_HUGE = _Reply(200, _HUGE_START, endless=True, close=True)
# The answers that replace the real one whatever it was.
_SPOILT: Final[dict[_Fault | None, _Reply]] = {
    "drop": _DROP,
    "garbage": _GARBAGE,
    "nested": _NESTED,
    "huge": _HUGE,
}


def _json_reply(code: int, data: object, *, close: bool = False) -> _Reply:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return _Reply(code, body, close=close)


def _provider_reply(code: int, extra: Mapping[str, Any] | None = None) -> _Reply:
    status = {"code": code, "message": _MESSAGES[code] if code in _MESSAGES else _reason(code)}
    return _json_reply(code, {"response": {"status": status, **(extra or {})}})


def _reason(code: int) -> str:
    if code in _REASONS:
        return _REASONS[code]
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


def _parse_object(raw: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, deep nesting
        return None
    return data if isinstance(data, dict) else None


def _parse_request(raw: bytes) -> dict[str, Any] | None:
    """The `request` object of a provider call, or None when the body is not one (400)."""
    body = _parse_object(raw)
    request = body.get("request") if body is not None else None
    return request if isinstance(request, dict) else None


def _as_order_id(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _recipients(message: object) -> list[str]:
    """Every number of `message` (one object or a list of them); raise 454 or 452."""
    parts = message if isinstance(message, list) else [message]
    _require(parts, 454)
    numbers: list[str] = []
    for part in parts:
        if not isinstance(part, dict):
            raise _Refusal(454)
        text = part.get("text")
        _require(isinstance(text, str) and text.strip(), 454)
        receipents = part.get("receipents")  # sic: the provider's spelling
        listed = receipents.get("number") if isinstance(receipents, dict) else None
        if isinstance(listed, str | int):
            listed = [listed]
        if not isinstance(listed, list) or not listed:
            raise _Refusal(452)
        for number in listed:
            plain = str(number).strip() if isinstance(number, str | int) else ""
            _require(not isinstance(number, bool) and _MOBILE.fullmatch(plain), 452)
            numbers.append(plain)
    return numbers


class Sandbox:
    """A provider stand-in serving HTTP on a background thread; thread-safe throughout.

    State survives `stop()`: a stopped sandbox may be started again, on the same port, to stand
    for a provider outage.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        key: str = DEFAULT_KEY,
        hash: str = DEFAULT_HASH,
        queue_lead: float = DEFAULT_QUEUE_LEAD,
        send_duration: float = DEFAULT_SEND_DURATION,
        zone: ZoneInfo = DEFAULT_ZONE,
        faults: Faults | None = None,
        seed: int | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        _check_number("queue_lead", queue_lead, upper=math.inf)
        _check_number("send_duration", send_duration, upper=math.inf)
        self._host = host
        self._port = port
        self._key = key
        self._hash = hash
        self._queue_lead = timedelta(seconds=queue_lead)
        self._send_duration = timedelta(seconds=send_duration)
        self._zone = zone
        self._clock = clock
        self._lock = threading.Lock()  # guards everything below
        self._faults = (faults or Faults())._copy()
        self._random = random.Random(seed)
        self._orders: dict[str, _Order] = {}
        self._next_id = FIRST_ORDER_ID
        self._totals = {endpoint: _Totals() for endpoint in ENDPOINTS}
        self._connections = 0
        # Lifecycle: start() and stop() only.
        self._lifecycle = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._handlers: dict[str, Callable[[dict[str, Any], datetime], dict[str, Any]]] = {
            "send-sms": self._send_sms,
            "get-report": self._get_report,
            "cancel-order": self._cancel_order,
            "get-balance": lambda request, now: {"balance": dict(BALANCE)},
        }
        self._control: dict[tuple[str, str], Callable[[bytes], _Reply]] = {
            ("GET", "/_sandbox/truth"): lambda raw: _json_reply(200, self.truth()),
            ("GET", "/_sandbox/faults"): lambda raw: _json_reply(200, self._faults_dict()),
            ("POST", "/_sandbox/faults"): self._control_faults,
            ("POST", "/_sandbox/orders"): self._control_orders,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to give a client, such as "http://127.0.0.1:40123"."""
        if self._port == 0:
            raise RuntimeError("the sandbox picks its port in start(); start it first")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    def start(self) -> Sandbox:
        """Listen and serve on a background thread; return self."""
        with self._lifecycle:
            if self._server is not None:
                raise RuntimeError("the sandbox is already running")
            self._stopping.clear()
            server = _Server((self._host, self._port), self)
            self._port = server.server_port
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL},
                name=f"sandbox-{self._port}",
                daemon=True,
            )
            self._thread.start()
        log.debug("sandbox_started", url=self.url)
        return self

    def stop(self) -> None:
        """Stop serving: close the listening socket and every open connection. Idempotent."""
        with self._lifecycle:
            server, thread = self._server, self._thread
            if server is None or thread is None:
                return
            self._stopping.set()  # wakes requests sleeping out an injected latency
            server.shutdown()
            server.close_connections()
            server.server_close()
            thread.join()
            server.join_request_threads(_STOP_JOIN_SECONDS)
            self._server = self._thread = None
        log.debug("sandbox_stopped", url=self.url)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- test and control helpers ------------------------------------------------------------

    def set_faults(self, faults: Faults, *, seed: int | None = None) -> None:
        """Replace the faults (a copy is kept); with `seed`, also reseed the fault generator."""
        copy = faults._copy()
        with self._lock:
            self._faults = copy
            if seed is not None:
                self._random.seed(seed)

    def add_order(self, order_id: str, send_at: datetime) -> None:
        """Create an order as if send-sms had scheduled it for `send_at` (aware), one recipient.

        Raises ValueError for an empty id, a naive `send_at` or an id already in use.
        """
        order_id = str(order_id).strip()
        if not order_id:
            raise ValueError("order_id must not be empty")
        if send_at.tzinfo is None or send_at.utcoffset() is None:
            raise ValueError(f"send_at {send_at.isoformat()} is naive; pass an aware datetime")
        with self._lock:
            if order_id in self._orders:
                raise ValueError(f"order {order_id} already exists in the sandbox")
            self._orders[order_id] = _Order(
                order_id=order_id,
                sender="SANDBOX",
                numbers=["+905000000000"],
                submit_at=self._now(),
                send_at=send_at.astimezone(UTC),
            )

    def truth(self) -> dict[str, Any]:
        """What the provider really did, as JSON-ready data::

        {"now": ISO UTC,
         "orders": {order_id: {"order_id", "state", "send_at" (ISO UTC), "submit_at",
                               "cancelled_at" (ISO UTC or None), "cancel_calls",
                               "cancels_accepted", "report_calls"}},
         "totals": {endpoint: {"requests", "injected_errors", "dropped", "garbled",
                               "dripped", "nested", "huge", "codes": {"200": n, ...}}},
         "connections": TCP connections accepted since construction,
         "faults": the current faults (`Faults.to_dict`, counters as left)}

        `cancel_calls` and `report_calls` count every authenticated request naming the order,
        injected 503s included; `cancels_accepted` counts cancels carried out, whether the 200
        reached the caller or was dropped or garbled on the way.
        """
        with self._lock:
            now = self._now()
            return {
                "now": now.isoformat(),
                "orders": {oid: self._order_truth(o, now) for oid, o in self._orders.items()},
                "totals": {
                    endpoint: {
                        "requests": totals.requests,
                        "injected_errors": totals.injected_errors,
                        "dropped": totals.dropped,
                        "garbled": totals.garbled,
                        "dripped": totals.dripped,
                        "nested": totals.nested,
                        "huge": totals.huge,
                        "codes": {str(code): n for code, n in sorted(totals.codes.items())},
                    }
                    for endpoint, totals in self._totals.items()
                },
                "connections": self._connections,
                "faults": self._faults.to_dict(),
            }

    def _order_truth(self, order: _Order, now: datetime) -> dict[str, Any]:
        return {
            "order_id": order.order_id,
            "state": self._state(order, now),
            "send_at": order.send_at.isoformat(),
            "submit_at": order.submit_at.isoformat(),
            "cancelled_at": None if order.cancelled_at is None else order.cancelled_at.isoformat(),
            "cancel_calls": order.cancel_calls,
            "cancels_accepted": order.cancels_accepted,
            "report_calls": order.report_calls,
        }

    def _note_connection(self) -> None:
        with self._lock:
            self._connections += 1

    # -- serving (called on request threads) -------------------------------------------------

    def _handle(self, method: str, path: str, raw: bytes) -> _Reply:
        endpoint = _PROVIDER_PATHS.get(path)
        if endpoint is not None and method == "POST":
            return self._serve_provider(endpoint, raw)
        control = self._control.get((method, path))
        if control is not None:
            return control(raw)
        return _provider_reply(404)

    def _serve_provider(self, endpoint: str, raw: bytes) -> _Reply:
        latency, fault, drip_interval = self._plan(endpoint)
        if latency and self._stopping.wait(latency):
            return _DROP  # stopping: nobody is waiting for this answer any more
        request = _parse_request(raw)
        with self._lock:
            now = self._now()
            if request is not None and self._authenticated(request):
                self._note_call(endpoint, request)
            code, extra = (503, {}) if fault == "error" else self._answer(endpoint, request, now)
            codes = self._totals[endpoint].codes
            codes[code] = codes.get(code, 0) + 1
        if fault is not None:
            log.debug("sandbox_fault_injected", endpoint=endpoint, fault=fault, code=code)
        if fault in _SPOILT:
            return _SPOILT[fault]
        reply = _provider_reply(code, extra)
        if fault == "drip":
            return _Reply(reply.code, reply.body, drip=drip_interval, close=True)
        return reply

    def _plan(self, endpoint: str) -> tuple[float, _Fault | None, float]:
        """Count the request and choose its latency, its fault and the drip interval."""
        with self._lock:
            totals = self._totals[endpoint]
            totals.requests += 1
            faults = self._faults
            fault = self._take_next(faults, endpoint) or self._roll(faults, endpoint)
            if fault is not None:
                name = _FAULT_TOTALS[fault]
                setattr(totals, name, getattr(totals, name) + 1)
            latency = faults.latency if faults.applies_to(endpoint) else 0.0
            return latency, fault, faults.drip_interval

    @staticmethod
    def _take_next(faults: Faults, endpoint: str) -> _Fault | None:
        for fault, _, count_name in _FAULT_FIELDS:
            counts: dict[str, int] = getattr(faults, count_name)
            if counts.get(endpoint):
                counts[endpoint] -= 1
                return fault
        return None

    def _roll(self, faults: Faults, endpoint: str) -> _Fault | None:
        if not faults.applies_to(endpoint):
            return None
        rates = [(fault, getattr(faults, rate)) for fault, rate, _ in _FAULT_FIELDS]
        if not any(share for _, share in rates):
            return None
        draw = self._random.random()
        bound = 0.0
        for fault, share in rates:
            bound += share
            if draw < bound:
                return fault
        return None

    def _answer(
        self, endpoint: str, request: dict[str, Any] | None, now: datetime
    ) -> tuple[int, dict[str, Any]]:
        """Do the work of one provider call; return its code and the body beside `status`."""
        if request is None:
            return 400, {}
        if not self._authenticated(request):
            return 401, {}
        try:
            return 200, self._handlers[endpoint](request, now)
        except _Refusal as refusal:
            return refusal.code, {}

    def _authenticated(self, request: dict[str, Any]) -> bool:
        auth = request.get("authentication")
        return (
            isinstance(auth, dict)
            and auth.get("key") == self._key
            and auth.get("hash") == self._hash
        )

    def _note_call(self, endpoint: str, request: dict[str, Any]) -> None:
        if endpoint not in ("cancel-order", "get-report"):
            return
        order = self._find(request)
        if order is None:
            return
        if endpoint == "cancel-order":
            order.cancel_calls += 1
        else:
            order.report_calls += 1

    def _find(self, request: dict[str, Any]) -> _Order | None:
        order = request.get("order")
        order_id = _as_order_id(order.get("id")) if isinstance(order, dict) else None
        return None if order_id is None else self._orders.get(order_id)

    def _now(self) -> datetime:
        """The sandbox's time: its clock, moved by `Faults.clock_offset`."""
        now = self._clock()
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError(f"the sandbox clock returned a naive datetime: {now.isoformat()}")
        # One attribute read, safe without the lock: set_faults swaps the whole object.
        offset = self._faults.clock_offset
        return now.astimezone(UTC) + timedelta(seconds=offset)

    def _state(self, order: _Order, now: datetime) -> _State:
        if order.cancelled_at is not None:
            return "cancelled"
        if now < order.send_at - self._queue_lead:
            return "pending"
        if now < order.send_at + self._send_duration:
            return "sending"
        return "completed"

    # -- the provider endpoints (called with the lock held) ----------------------------------

    def _send_sms(self, request: dict[str, Any], now: datetime) -> dict[str, Any]:
        order = request.get("order")
        if not isinstance(order, dict):
            raise _Refusal(400)
        sender = order.get("sender")
        if not isinstance(sender, str) or not sender.strip():
            raise _Refusal(459)
        _require(len(sender) <= _SENDER_MAX and sender.isascii(), 460)
        numbers = _recipients(order.get("message"))
        send_at = self._send_at(order.get("sendDateTime"), now)
        iys = order.get("iys")
        _require(not isinstance(iys, bool) and str(iys) in ("0", "1"), 468)
        _require(str(iys) == "0" or order.get("iysList") in _IYS_LISTS, 469)
        order_id = self._new_order_id()
        self._orders[order_id] = _Order(
            order_id=order_id, sender=sender, numbers=numbers, submit_at=now, send_at=send_at
        )
        return {"order": {"id": order_id}}

    def _send_at(self, value: object, now: datetime) -> datetime:
        """When an order goes out: `sendDateTime` in the sandbox's zone, or now (457 if bad)."""
        if value is None or value == "":
            return now
        match = _SEND_DATETIME.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise _Refusal(457)
        with_seconds = match.group("seconds") is not None
        try:
            local = datetime.strptime(match.group(), _SECONDS_FORMAT if with_seconds else _FORMAT)
        except ValueError:  # 31/02, 25:00 and the like
            raise _Refusal(457) from None
        if with_seconds:
            return now  # the real backend reportedly drops the schedule of a time with seconds
        return max(local.replace(tzinfo=self._zone).astimezone(UTC), now)

    def _new_order_id(self) -> str:
        while str(self._next_id) in self._orders:  # skip ids taken by add_order
            self._next_id += 1
        self._next_id += 1
        return str(self._next_id - 1)

    def _get_report(self, request: dict[str, Any], now: datetime) -> dict[str, Any]:
        order = self._existing(request)
        state = self._state(order, now)
        _require(state != "pending", 456)
        lag = timedelta(seconds=self._faults.report_lag)
        # An eventually consistent provider: the cancel took, the report does not show it yet.
        _require(order.cancelled_at is None or now >= order.cancelled_at + lag, 456)
        status, message_status = _REPORT_STATUSES[state]
        total = len(order.numbers)
        options = request["order"]
        page = max(_int_option(options.get("page"), 1), 1)
        rows = min(max(_int_option(options.get("rowCount"), 1000), 1), 1000)
        shown = order.numbers[(page - 1) * rows : page * rows]
        return {
            "order": {
                "id": order.order_id,
                "status": status,
                "total": total,
                "delivered": total if state == "completed" else 0,
                "undelivered": total if state == "cancelled" else 0,
                "waiting": total if state == "sending" else 0,
                "submitAt": order.submit_at.astimezone(self._zone).strftime(_TIMESTAMP),
                "sendAt": order.send_at.astimezone(self._zone).strftime(_TIMESTAMP),
                "sender": order.sender,
                "price": total,
                "message": [{"number": number, "status": message_status} for number in shown],
            }
        }

    def _cancel_order(self, request: dict[str, Any], now: datetime) -> dict[str, Any]:
        order = self._existing(request)
        # 455 covers all three: already cancelled, already queued or sending, already finished.
        _require(self._state(order, now) == "pending", 455)
        order.cancelled_at = now
        order.cancels_accepted += 1
        return {}

    def _existing(self, request: dict[str, Any]) -> _Order:
        _require(isinstance(request.get("order"), dict), 400)
        order = self._find(request)
        if order is None:
            raise _Refusal(455)
        return order

    # -- control endpoints -------------------------------------------------------------------

    def _faults_dict(self) -> dict[str, Any]:
        with self._lock:
            return self._faults.to_dict()

    def _control_faults(self, raw: bytes) -> _Reply:
        data = _parse_object(raw)
        if data is None:
            return _json_reply(400, {"error": "the body must be a JSON object of fault fields"})
        seed = data.pop("seed", None)
        try:
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise ValueError(f"seed must be an integer, got {seed!r}")
            self.set_faults(Faults.from_dict(data), seed=seed)
        except (TypeError, ValueError) as exc:
            return _json_reply(400, {"error": str(exc)})
        return _json_reply(200, self._faults_dict())

    def _control_orders(self, raw: bytes) -> _Reply:
        data = _parse_object(raw) or {}
        order_id, send_at = data.get("order_id"), data.get("send_at")
        try:
            if not isinstance(order_id, str | int) or not isinstance(send_at, str):
                raise ValueError('the body must be {"order_id": "...", "send_at": "ISO-8601"}')
            self.add_order(str(order_id), datetime.fromisoformat(send_at))
        except ValueError as exc:
            return _json_reply(400, {"error": str(exc)})
        with self._lock:
            order = self._orders[str(order_id).strip()]
            return _json_reply(200, self._order_truth(order, self._now()))


def _int_option(value: object, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return default


# -- HTTP plumbing ----------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    """The HTTP server, tracking its connections and request threads so stop() can end them."""

    daemon_threads = True
    block_on_close = False  # stop() joins the threads itself, with a deadline
    request_queue_size = 256  # bursts of new connections from benchmarks

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sandbox = sandbox
        self._tracked_lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._request_threads: set[threading.Thread] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host's FQDN, which can stall on a bad resolver.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        with self._tracked_lock:
            if isinstance(request, socket.socket):
                self._open.add(request)
            self._request_threads.add(thread)
        self.sandbox._note_connection()
        thread.start()

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        with self._tracked_lock:
            if isinstance(request, socket.socket):
                self._open.discard(request)
            self._request_threads.discard(threading.current_thread())
        super().shutdown_request(request)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        # A client that hangs up mid-answer is routine here; never print a traceback.
        log.debug("sandbox_connection_error", client=str(client_address), exc_info=True)

    def close_connections(self) -> None:
        with self._tracked_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def join_request_threads(self, seconds: float) -> None:
        with self._tracked_lock:
            threads = list(self._request_threads)
        deadline = time.monotonic() + seconds
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))


class _Handler(BaseHTTPRequestHandler):
    """One connection: reads requests (keep-alive), asks the sandbox, writes its replies."""

    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "smsledger-sandbox"
    sys_version = ""
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    timeout = _IDLE_TIMEOUT

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no line per request."""

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The `Date` header, read from the sandbox's clock (`Faults.clock_offset` included)."""
        if timestamp is not None:
            return super().date_time_string(timestamp)
        try:
            now = self.server.sandbox._now()
        except ValueError:  # a naive test clock: the answer is a 500 already
            return super().date_time_string()
        return email.utils.format_datetime(now, usegmt=True)

    def _serve(self, method: str) -> None:
        raw = self._read_body()
        if raw is None:
            self._write(_json_reply(400, {"error": "unreadable request body"}, close=True))
            return
        path = urlsplit(self.path).path
        try:
            reply = self.server.sandbox._handle(method, path, raw)
        except Exception:
            log.exception("sandbox_internal_error", method=method, path=path)
            reply = _provider_reply(500)
        self._write(reply)

    def _read_body(self) -> bytes | None:
        """The request body (Content-Length or chunked); None when it cannot be framed."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            return None
        if not 0 <= size <= _MAX_BODY:
            return None
        return self.rfile.read(size)

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        while True:
            try:
                size = int(self.rfile.readline(1024).split(b";")[0].strip(), 16)
            except ValueError:
                return None
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers, up to the blank line
                    pass
                return b"".join(chunks)
            total += size
            if total > _MAX_BODY:
                return None
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)  # the CRLF closing the chunk

    def _write(self, reply: _Reply) -> None:
        if reply.drop:
            self.close_connection = True
            return
        if reply.drip is not None:
            self._drip(reply)
            return
        self.send_response(reply.code, _reason(reply.code))
        self.send_header("Content-Type", reply.content_type)
        if reply.endless:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(reply.body)))
        if reply.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        if reply.endless:
            self.end_headers()
            self._write_endless(reply.body)
        else:
            self.end_headers()
            self.wfile.write(reply.body)

    def _drip(self, reply: _Reply) -> None:
        """Write the whole answer, head and body, one byte every `reply.drip` seconds."""
        assert reply.drip is not None
        self.close_connection = True
        head = (
            f"{self.protocol_version} {reply.code} {_reason(reply.code)}\r\n"
            f"Server: {self.version_string()}\r\n"
            f"Date: {self.date_time_string()}\r\n"
            f"Content-Type: {reply.content_type}\r\n"
            f"Content-Length: {len(reply.body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        answer = head.encode("latin-1") + reply.body
        stopping = self.server.sandbox._stopping
        for index in range(len(answer)):
            if index and stopping.wait(reply.drip):
                return  # stopping: the connection is being closed anyway
            self.wfile.write(answer[index : index + 1])

    def _write_endless(self, start: bytes) -> None:
        """Write chunks until the client hangs up, the sandbox stops or HUGE_MAX_BYTES went out."""
        stopping = self.server.sandbox._stopping
        written = 0
        chunk = start
        while written < HUGE_MAX_BYTES and not stopping.is_set():
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            written += len(chunk)
            chunk = _HUGE_CHUNK
        if not stopping.is_set():
            self.wfile.write(b"0\r\n\r\n")


# -- command line -----------------------------------------------------------------------------


def _number_arg(upper: float) -> Callable[[str], float]:
    """An argparse type: a number in [0, upper], checked as `Faults` checks its fields."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        try:
            _check_number("the value", value, upper=upper)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return parse


_seconds = _number_arg(math.inf)
_share = _number_arg(1.0)


def _offset_arg(text: str) -> float:
    """An argparse type: a finite number of seconds, either sign."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _endpoints_arg(text: str) -> frozenset[str]:
    try:
        return _endpoint_set(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _zone_arg(text: str) -> ZoneInfo:
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown time zone {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sandbox's options to `parser` (used by `smsledger sandbox`)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    parser.add_argument("--key", default=DEFAULT_KEY, help="API key the sandbox accepts")
    parser.add_argument("--hash", default=DEFAULT_HASH, help="API hash the sandbox accepts")
    parser.add_argument(
        "--queue-lead",
        type=_seconds,
        default=DEFAULT_QUEUE_LEAD,
        metavar="SECONDS",
        help="how long before its send time an order enters the carrier queue (no more cancel)",
    )
    parser.add_argument(
        "--send-duration",
        type=_seconds,
        default=DEFAULT_SEND_DURATION,
        metavar="SECONDS",
        help="how long an order spends sending after its send time",
    )
    parser.add_argument(
        "--zone",
        type=_zone_arg,
        default=DEFAULT_ZONE,
        help="time zone sendDateTime is read in (default Europe/Istanbul)",
    )
    faults = parser.add_argument_group("fault injection")
    faults.add_argument(
        "--latency", type=_seconds, default=0.0, metavar="SECONDS", help="delay every answer"
    )
    faults.add_argument(
        "--error-rate",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of requests answered 503, not done",
    )
    faults.add_argument(
        "--drop-rate",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of requests done but whose answer is lost (connection closed)",
    )
    faults.add_argument(
        "--garbage-rate",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of requests done but answered with an unreadable HTML page",
    )
    faults.add_argument(
        "--drip-rate",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of requests done but answered one byte every --drip-interval",
    )
    faults.add_argument(
        "--nested-rate",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help=f"share of requests done but answered with JSON nested {NESTED_DEPTH} deep",
    )
    faults.add_argument(
        "--huge-rate",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of requests done but answered with a body that never ends",
    )
    faults.add_argument(
        "--drip-interval",
        type=_seconds,
        default=0.5,
        metavar="SECONDS",
        help="seconds between the bytes of a dripped answer (default 0.5)",
    )
    faults.add_argument(
        "--clock-offset",
        type=_offset_arg,
        default=0.0,
        metavar="SECONDS",
        help="run the sandbox's clock this far ahead (negative: behind); sets the Date header",
    )
    faults.add_argument(
        "--fault-endpoints",
        type=_endpoints_arg,
        default=None,
        metavar="A,B",
        help=f"limit faults to these endpoints ({', '.join(ENDPOINTS)}; default all)",
    )
    faults.add_argument("--seed", type=int, default=None, help="seed of the fault generator")


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; return 0, or 1 when it cannot listen, 2 for bad faults.

    Must run on the main thread (it installs signal handlers, restored on return).
    """
    try:
        faults = Faults(
            latency=args.latency,
            error_rate=args.error_rate,
            drop_rate=args.drop_rate,
            garbage_rate=args.garbage_rate,
            endpoints=args.fault_endpoints,
            drip_rate=args.drip_rate,
            nested_rate=args.nested_rate,
            huge_rate=args.huge_rate,
            drip_interval=args.drip_interval,
            clock_offset=args.clock_offset,
        )
    except ValueError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    sandbox = Sandbox(
        args.host,
        args.port,
        key=args.key,
        hash=args.hash,
        queue_lead=args.queue_lead,
        send_duration=args.send_duration,
        zone=args.zone,
        faults=faults,
        seed=args.seed,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            sandbox.start()
        except OSError as exc:
            print(f"sandbox: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        print(f"sandbox listening on {sandbox.url}", flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        sandbox.stop()
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    # Alone, show lifecycle lines only; `smsledger sandbox` configures logging itself.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    _parser = argparse.ArgumentParser(
        prog="python -m scheduler.sandbox",
        description="A local stand-in for the iletiMerkezi JSON API.",
    )
    add_arguments(_parser)
    sys.exit(run_from_args(_parser.parse_args()))
