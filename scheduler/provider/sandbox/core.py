"""The sandbox's provider: orders and their lifecycle, the four endpoints, faults applied, truth.

`Sandbox` holds the state and answers each request with a `Reply`; `server.py` does the HTTP.
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from scheduler.provider._log import get_logger
from scheduler.provider.sandbox.faults import _FAULT_FIELDS, Faults, _check_number, _Fault
from scheduler.provider.sandbox.replies import (
    DROP,
    GARBAGE,
    HUGE,
    NESTED,
    Reply,
    json_reply,
    provider_reply,
)
from scheduler.provider.sandbox.server import Server
from scheduler.provider.wire import (
    CANCEL_ORDER,
    ENDPOINTS,
    GET_BALANCE,
    GET_REPORT,
    GET_REPORTS,
    PROVIDER_ZONE,
    REPORTS_DATE_FORMAT,
    REPORTS_PAGE_SIZE,
    SEND_DATETIME_FORMAT,
    SEND_SMS,
    TIMESTAMP_FORMAT,
    as_int,
    as_order_id,
    endpoint_path,
    reports_range_problem,
    utcnow,
)

__all__ = [
    "DEFAULT_HASH",
    "DEFAULT_KEY",
    "DEFAULT_PENDING_LISTING_STATUS",
    "DEFAULT_QUEUE_LEAD",
    "DEFAULT_SEND_DURATION",
    "FIRST_ORDER_ID",
    "Sandbox",
]

log = get_logger("smsledger.sandbox")

DEFAULT_KEY: Final = "sandbox-key"
DEFAULT_HASH: Final = "sandbox-hash"
DEFAULT_QUEUE_LEAD: Final = 120.0  # seconds before send_at an order enters the carrier queue
DEFAULT_SEND_DURATION: Final = 30.0  # seconds an order spends sending after send_at
#: The first order id handed out; later ones count up from it.
FIRST_ORDER_ID: Final = 312891245
BALANCE: Final = {"amount": "1000.00", "sms": 5000}
#: What get-reports lists for an order not yet due: undocumented at the real provider, so the
#: sandbox shows the worst case by default, 113 "sending" while the order is still cancellable.
DEFAULT_PENDING_LISTING_STATUS: Final = 113
_LISTING_STATUSES: Final = frozenset({113, 114, 115})

_POLL_INTERVAL = 0.05  # seconds between checks for stop() in the accept loop
_STOP_JOIN_SECONDS = 5.0  # longest stop() waits for request threads to finish
_SENDER_MAX = 11
_SECONDS_FORMAT = SEND_DATETIME_FORMAT + ":%S"  # a sendDateTime with seconds, sent at once
_SEND_DATETIME = re.compile(r"\d{2}/\d{2}/\d{4} \d{2}:\d{2}(?P<seconds>:\d{2})?")
_MOBILE = re.compile(r"\+?\d{10,13}")
_IYS_LISTS = frozenset({"BIREYSEL", "TACIR"})
_PROVIDER_PATHS = {endpoint_path(name): name for name in ENDPOINTS}

_State = Literal["pending", "sending", "completed", "cancelled"]
# state -> (order.status, status of each message in order.message[])
_REPORT_STATUSES: Final[dict[_State, tuple[int, int]]] = {
    "sending": (113, 110),
    "completed": (114, 111),
    "cancelled": (115, 112),
}


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
    #: How long before `send_at` this order enters the carrier queue (its own draw).
    queue_lead: timedelta
    cancelled_at: datetime | None = None
    cancel_calls: int = 0
    cancels_accepted: int = 0
    report_calls: int = 0
    undelivered: int = 0  # of the numbers, how many end undelivered once completed
    cancelled_in_panel: bool = False


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


# The answers that replace the real one whatever it was.
_SPOILT: Final[dict[_Fault | None, Reply]] = {
    "drop": DROP,
    "garbage": GARBAGE,
    "nested": NESTED,
    "huge": HUGE,
}


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
        queue_lead_jitter: float = 0.0,
        send_duration: float = DEFAULT_SEND_DURATION,
        zone: ZoneInfo = PROVIDER_ZONE,
        faults: Faults | None = None,
        seed: int | None = None,
        clock: Callable[[], datetime] = utcnow,
        pending_listing_status: int = DEFAULT_PENDING_LISTING_STATUS,
    ) -> None:
        _check_number("queue_lead", queue_lead, upper=math.inf)
        _check_number("queue_lead_jitter", queue_lead_jitter, upper=math.inf)
        _check_listing_status(pending_listing_status)
        self._pending_listing_status = pending_listing_status
        _check_number("send_duration", send_duration, upper=math.inf)
        self._host = host
        self._port = port
        self._key = key
        self._hash = hash
        self._queue_lead = queue_lead
        self._queue_lead_jitter = queue_lead_jitter
        # Leads have their own generator, so they never shift the faults' seeded sequence.
        self._lead_random = random.Random(seed)
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
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._handlers: dict[str, Callable[[dict[str, Any], datetime], dict[str, Any]]] = {
            SEND_SMS: self._send_sms,
            GET_REPORT: self._get_report,
            CANCEL_ORDER: self._cancel_order,
            GET_BALANCE: lambda request, now: {"balance": dict(BALANCE)},
            GET_REPORTS: self._get_reports,
        }
        self._control: dict[tuple[str, str], Callable[[bytes], Reply]] = {
            ("GET", "/_sandbox/truth"): lambda raw: json_reply(200, self.truth()),
            ("GET", "/_sandbox/faults"): lambda raw: json_reply(200, self._faults_dict()),
            ("POST", "/_sandbox/faults"): self._control_faults,
            ("POST", "/_sandbox/orders"): self._control_orders,
            ("POST", "/_sandbox/panel/orders"): self._control_panel_order,
            ("POST", "/_sandbox/panel/cancel"): self._control_panel_cancel,
            ("POST", "/_sandbox/undelivered"): self._control_undelivered,
            ("POST", "/_sandbox/listing"): self._control_listing,
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
            server = Server((self._host, self._port), self)
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
                queue_lead=self._draw_lead(),
            )

    def add_panel_order(
        self,
        send_at: datetime,
        *,
        created_at: datetime,
        recipients: int = 1,
        order_id: str | None = None,
    ) -> str:
        """Create an order as if scheduled in the provider's panel (or by another program): no
        ledger knows it. `created_at` (aware, not in the future) is its creation time, which
        get-reports selects by; `send_at` may be past or future. Returns its id.

        Raises ValueError for naive times, a creation time ahead of the sandbox's clock, fewer
        than one recipient or an id already in use.
        """
        for name, value in (("send_at", send_at), ("created_at", created_at)):
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValueError(f"{name} {value.isoformat()} is naive; pass an aware datetime")
        if isinstance(recipients, bool) or not isinstance(recipients, int) or recipients < 1:
            raise ValueError(f"recipients must be an int >= 1, got {recipients!r}")
        with self._lock:
            now = self._now()
            if created_at > now:
                raise ValueError(
                    f"created_at {created_at.isoformat()} is after the sandbox's now "
                    f"{now.isoformat()}"
                )
            if order_id is None:
                order_id = self._new_order_id()
            order_id = str(order_id).strip()
            if not order_id or order_id in self._orders:
                raise ValueError(f"order id {order_id!r} is empty or already in use")
            self._orders[order_id] = _Order(
                order_id=order_id,
                sender="PANEL",
                numbers=[f"+90500{n:07d}" for n in range(recipients)],
                submit_at=created_at.astimezone(UTC),
                send_at=send_at.astimezone(UTC),
                queue_lead=self._draw_lead(),
            )
            return order_id

    def cancel_in_panel(self, order_id: str) -> None:
        """Cancel an order from the provider's panel, outside any cancel-order call.

        Raises ValueError for an unknown order or one past its cancel window.
        """
        with self._lock:
            order = self._orders.get(str(order_id).strip())
            if order is None:
                raise ValueError(f"no order {order_id} in the sandbox")
            if self._state(order, self._now()) != "pending":
                raise ValueError(f"order {order_id} is past its cancel window")
            order.cancelled_at = self._now()
            order.cancelled_in_panel = True

    def set_undelivered(self, order_id: str, undelivered: int) -> None:
        """How many of the order's numbers end undelivered (the rest delivered) once completed."""
        with self._lock:
            order = self._orders.get(str(order_id).strip())
            if order is None:
                raise ValueError(f"no order {order_id} in the sandbox")
            if (
                isinstance(undelivered, bool)
                or not isinstance(undelivered, int)
                or not 0 <= undelivered <= len(order.numbers)
            ):
                raise ValueError(
                    f"undelivered must be an int in [0, {len(order.numbers)}], got {undelivered!r}"
                )
            order.undelivered = undelivered

    def set_pending_listing_status(self, status: int) -> None:
        """What get-reports lists for orders not yet due: 113 (the default), 114 or 115."""
        _check_listing_status(status)
        with self._lock:
            self._pending_listing_status = status

    def truth(self) -> dict[str, Any]:
        """What the provider really did, as JSON-ready data::

        {"now": ISO UTC,
         "orders": {order_id: {"order_id", "state", "send_at" (ISO UTC), "submit_at",
                               "queue_lead_seconds" (this order's true lead),
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
            "queue_lead_seconds": order.queue_lead.total_seconds(),
            "cancelled_at": None if order.cancelled_at is None else order.cancelled_at.isoformat(),
            "cancel_calls": order.cancel_calls,
            "cancels_accepted": order.cancels_accepted,
            "report_calls": order.report_calls,
            "recipients": len(order.numbers),
            "undelivered": order.undelivered,
            "cancelled_in_panel": order.cancelled_in_panel,
        }

    def _note_connection(self) -> None:
        with self._lock:
            self._connections += 1

    # -- serving (called on request threads) -------------------------------------------------

    def _handle(self, method: str, path: str, raw: bytes) -> Reply:
        endpoint = _PROVIDER_PATHS.get(path)
        if endpoint is not None and method == "POST":
            return self._serve_provider(endpoint, raw)
        control = self._control.get((method, path))
        if control is not None:
            return control(raw)
        return provider_reply(404)

    def _serve_provider(self, endpoint: str, raw: bytes) -> Reply:
        latency, fault, drip_interval = self._plan(endpoint)
        if latency and self._stopping.wait(latency):
            return DROP  # stopping: nobody is waiting for this answer any more
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
        reply = provider_reply(code, extra)
        if fault == "drip":
            return Reply(reply.code, reply.body, drip=drip_interval, close=True)
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
        if endpoint not in (CANCEL_ORDER, GET_REPORT):
            return
        order = self._find(request)
        if order is None:
            return
        if endpoint == CANCEL_ORDER:
            order.cancel_calls += 1
        else:
            order.report_calls += 1

    def _find(self, request: dict[str, Any]) -> _Order | None:
        order = request.get("order")
        order_id = as_order_id(order.get("id")) if isinstance(order, dict) else None
        return None if order_id is None else self._orders.get(order_id)

    def _now(self) -> datetime:
        """The sandbox's time: its clock, moved by `Faults.clock_offset`."""
        now = self._clock()
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError(f"the sandbox clock returned a naive datetime: {now.isoformat()}")
        # One attribute read, safe without the lock: set_faults swaps the whole object.
        offset = self._faults.clock_offset
        return now.astimezone(UTC) + timedelta(seconds=offset)

    def _draw_lead(self) -> timedelta:
        """A new order's queue lead: uniform within +- the jitter (never below 0). Hold the lock."""
        if not self._queue_lead_jitter:
            return timedelta(seconds=self._queue_lead)
        jitter = self._queue_lead_jitter
        drawn = self._queue_lead + self._lead_random.uniform(-jitter, jitter)
        return timedelta(seconds=max(0.0, drawn))

    def _state(self, order: _Order, now: datetime) -> _State:
        if order.cancelled_at is not None:
            return "cancelled"
        if now < order.send_at - order.queue_lead:
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
            order_id=order_id,
            sender=sender,
            numbers=numbers,
            submit_at=now,
            send_at=send_at,
            queue_lead=self._draw_lead(),
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
            form = _SECONDS_FORMAT if with_seconds else SEND_DATETIME_FORMAT
            local = datetime.strptime(match.group(), form)
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
        counters = self._counters(order, state)
        options = request["order"]
        page = as_int(options.get("page"))
        rows = as_int(options.get("rowCount"))
        page = max(1 if page is None else page, 1)
        rows = min(max(1000 if rows is None else rows, 1), 1000)
        shown = order.numbers[(page - 1) * rows : page * rows]
        return {
            "order": {
                "id": order.order_id,
                "status": status,
                **counters,
                "submitAt": order.submit_at.astimezone(self._zone).strftime(TIMESTAMP_FORMAT),
                "sendAt": order.send_at.astimezone(self._zone).strftime(TIMESTAMP_FORMAT),
                "sender": order.sender,
                "price": total,
                "message": [{"number": number, "status": message_status} for number in shown],
            }
        }

    @staticmethod
    def _counters(order: _Order, state: _State) -> dict[str, int]:
        """`total`, `delivered`, `undelivered`, `waiting` of an order in `state`."""
        total = len(order.numbers)
        undelivered = {"completed": order.undelivered, "cancelled": total}.get(state, 0)
        return {
            "total": total,
            "delivered": total - order.undelivered if state == "completed" else 0,
            "undelivered": undelivered,
            "waiting": total if state in ("pending", "sending") else 0,
        }

    def _get_reports(self, request: dict[str, Any], now: datetime) -> dict[str, Any]:
        """The orders created from `start` to `end` (days in the sandbox's zone), 30 a page.

        `page` is read from the filter, else beside it (the official Python SDK's way).
        """
        filter_ = request.get("filter")
        _require(isinstance(filter_, dict), 458)
        assert isinstance(filter_, dict)
        start, end = _day(filter_.get("start")), _day(filter_.get("end"))
        if start is None or end is None or reports_range_problem(start, end) is not None:
            raise _Refusal(458)
        page = as_int(filter_.get("page"))
        if page is None:
            page = as_int(request.get("page"))
        page = max(1 if page is None else page, 1)
        lag = timedelta(seconds=self._faults.report_lag)
        matching = sorted(
            (
                order
                for order in self._orders.values()
                if start <= order.submit_at.astimezone(self._zone).date() <= end
            ),
            key=lambda order: (order.submit_at, order.order_id),
        )
        listed = []
        for order in matching[(page - 1) * REPORTS_PAGE_SIZE : page * REPORTS_PAGE_SIZE]:
            state = self._state(order, now)
            if order.cancelled_at is not None and now < order.cancelled_at + lag:
                state = "pending"  # the cancel does not show yet (see `Faults.report_lag`)
            if state == "pending":
                status = self._pending_listing_status
            else:
                status = _REPORT_STATUSES[state][0]
            listed.append(
                {
                    "id": int(order.order_id) if order.order_id.isdigit() else order.order_id,
                    "status": status,
                    **self._counters(order, state),
                    "submitAt": order.submit_at.astimezone(self._zone).strftime(TIMESTAMP_FORMAT),
                    "sendAt": order.send_at.astimezone(self._zone).strftime(TIMESTAMP_FORMAT),
                    "sender": order.sender,
                }
            )
        return {"count": len(matching), "orders": listed}

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

    def _control_faults(self, raw: bytes) -> Reply:
        data = _parse_object(raw)
        if data is None:
            return json_reply(400, {"error": "the body must be a JSON object of fault fields"})
        seed = data.pop("seed", None)
        try:
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise ValueError(f"seed must be an integer, got {seed!r}")
            self.set_faults(Faults.from_dict(data), seed=seed)
        except (TypeError, ValueError) as exc:
            return json_reply(400, {"error": str(exc)})
        return json_reply(200, self._faults_dict())

    def _control_orders(self, raw: bytes) -> Reply:
        data = _parse_object(raw) or {}
        order_id, send_at = data.get("order_id"), data.get("send_at")
        try:
            if not isinstance(order_id, str | int) or not isinstance(send_at, str):
                raise ValueError('the body must be {"order_id": "...", "send_at": "ISO-8601"}')
            self.add_order(str(order_id), datetime.fromisoformat(send_at))
        except ValueError as exc:
            return json_reply(400, {"error": str(exc)})
        with self._lock:
            order = self._orders[str(order_id).strip()]
            return json_reply(200, self._order_truth(order, self._now()))

    def _control_panel_order(self, raw: bytes) -> Reply:
        data = _parse_object(raw) or {}
        try:
            send_at, created_at = data.get("send_at"), data.get("created_at")
            recipients = data.get("recipients", 1)
            order_id = data.get("order_id")
            if not isinstance(send_at, str) or not isinstance(created_at, str):
                raise ValueError(
                    'the body must be {"send_at": ISO-8601, "created_at": ISO-8601'
                    '[, "recipients": n][, "order_id": "..."]}'
                )
            if order_id is not None and not isinstance(order_id, str | int):
                raise ValueError(f"order_id must be text, got {order_id!r}")
            new_id = self.add_panel_order(
                datetime.fromisoformat(send_at),
                created_at=datetime.fromisoformat(created_at),
                recipients=recipients,
                order_id=None if order_id is None else str(order_id),
            )
        except ValueError as exc:
            return json_reply(400, {"error": str(exc)})
        return self._order_reply(new_id)

    def _control_panel_cancel(self, raw: bytes) -> Reply:
        data = _parse_object(raw) or {}
        order_id = data.get("order_id")
        try:
            if not isinstance(order_id, str | int):
                raise ValueError('the body must be {"order_id": "..."}')
            self.cancel_in_panel(str(order_id))
        except ValueError as exc:
            return json_reply(400, {"error": str(exc)})
        return self._order_reply(str(order_id).strip())

    def _control_undelivered(self, raw: bytes) -> Reply:
        data = _parse_object(raw) or {}
        order_id, undelivered = data.get("order_id"), data.get("undelivered")
        try:
            if not isinstance(order_id, str | int) or not isinstance(undelivered, int):
                raise ValueError('the body must be {"order_id": "...", "undelivered": n}')
            self.set_undelivered(str(order_id), undelivered)
        except ValueError as exc:
            return json_reply(400, {"error": str(exc)})
        return self._order_reply(str(order_id).strip())

    def _control_listing(self, raw: bytes) -> Reply:
        data = _parse_object(raw) or {}
        status = data.get("pending_status")
        try:
            if not isinstance(status, int):
                raise ValueError('the body must be {"pending_status": 113 | 114 | 115}')
            self.set_pending_listing_status(status)
        except ValueError as exc:
            return json_reply(400, {"error": str(exc)})
        return json_reply(200, {"pending_status": status})

    def _order_reply(self, order_id: str) -> Reply:
        with self._lock:
            return json_reply(200, self._order_truth(self._orders[order_id], self._now()))


def _check_listing_status(status: object) -> None:
    if isinstance(status, bool) or status not in _LISTING_STATUSES:
        raise ValueError(
            f"the listing status of orders not yet due must be 113, 114 or 115, got {status!r}"
        )


def _day(value: object) -> date | None:
    """A get-reports `start` or `end` ("YYYY-MM-DD"); None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, REPORTS_DATE_FORMAT).date()
    except ValueError:
        return None
