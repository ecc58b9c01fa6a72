"""The iletiMerkezi JSON API client: the one module of smsledger that speaks HTTP.

Five calls (send-sms, get-report, cancel-order, get-balance, get-reports) share one pooled
`httpx.Client`, so one client may be used from many threads at once. The client never retries:
the daemon owns the retry policy, and a cancel in particular must never be repeated blindly.

How an answer is read:

- The body decides, not the HTTP status: the provider mirrors `status.code` into the HTTP status
  (a 455 arrives as HTTP 455 with a JSON body), so every answer's body is parsed.
- `status.code` may be an int or a numeric string, an order id an int or a string; both are
  normalised. A body that is not the documented JSON is a `ProviderTransientError`.
- httpx exceptions become `ProviderError`s in exactly one place, `_send`.
- Every call has one deadline, connect to last byte (`call_deadline`): httpx's own timeouts bound
  each phase or read, so a server dripping one byte at a time could otherwise hold a call open
  for hours. The answer is streamed and read at most `MAX_ANSWER_BYTES` far; a call past its
  deadline or an answer past the cap is a `ProviderTransientError` that may have been delivered.

The API key and hash live only in the client's private attributes and the request body. They are
never logged, never part of an exception message and never in `repr(client)`; a provider message
that echoes them is redacted before it is kept anywhere.
"""

from __future__ import annotations

import http.cookiejar
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol, Self, TypeVar
from zoneinfo import ZoneInfo

import httpcore
import httpx

from scheduler.provider._log import get_logger
from scheduler.provider.errors import (
    ProviderAuthError,
    ProviderError,
    ProviderStatusError,
    ProviderTransientError,
)
from scheduler.provider.wire import (
    CANCEL_ORDER,
    CODE_MEANINGS,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TIMEOUT_SECONDS,
    GET_BALANCE,
    GET_REPORT,
    GET_REPORTS,
    PROVIDER_ZONE,
    REPORTS_DATE_FORMAT,
    REPORTS_PAGE_SIZE,
    SEND_SMS,
    as_int,
    as_order_id,
    endpoint_path,
    format_send_datetime,
    parse_timestamp,
    reports_range_problem,
    utcnow,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_ANSWER_BYTES",
    "PROVIDER_ZONE",
    "ApiSettings",
    "Balance",
    "CallObserved",
    "CancelAnswer",
    "IletiMerkeziClient",
    "ListedOrder",
    "Report",
    "ReportStatus",
    "ReportsPage",
    "SendResult",
    "format_send_datetime",
]

#: The largest answer read, in bytes: the documented answers are well under a kilobyte, and a
#: report lists at most 1000 numbers a page.
MAX_ANSWER_BYTES = 1024 * 1024

# Decides on each call (the application's structlog or its `logging`), so a logging set up later,
# or captured in a test, still applies.
log = get_logger("smsledger.provider")
_REDACTED = "[REDACTED]"
_DETAIL_MAX_CHARS = 200

_T = TypeVar("_T")


class ReportStatus(StrEnum):
    """Where a scheduled order stands, as get-report tells it."""

    PENDING = "pending"  # 456: send date not reached, cancel window open
    SENDING = "sending"  # 200 + order.status 113
    COMPLETED = "completed"  # 200 + order.status 114
    NOT_SENT = "not_sent"  # 200 + order.status 115 (cancelled or rejected)
    NOT_FOUND = "not_found"  # 455


_ORDER_STATUSES = {
    113: ReportStatus.SENDING,
    114: ReportStatus.COMPLETED,
    115: ReportStatus.NOT_SENT,
}


@dataclass(frozen=True)
class Report:
    """One get-report answer for one order."""

    order_id: str
    status: ReportStatus
    code: int  # the deciding code: 456, 113, 114, 115 or 455
    total: int | None = None
    delivered: int | None = None
    undelivered: int | None = None
    waiting: int | None = None


@dataclass(frozen=True)
class ListedOrder:
    """One order of a get-reports page, read defensively: what is missing or unreadable is None.

    `status` is the listing's 113/114/115 as given (any other int is kept too): for an order whose
    `send_at` is still ahead it is undocumented (it may read 113 while the order is cancellable),
    so it must be confirmed with get-report before anything is decided from it.
    """

    order_id: str
    status: int | None
    total: int | None
    delivered: int | None
    undelivered: int | None
    waiting: int | None
    submit_at: datetime | None  # aware UTC, read from the provider's zone
    send_at: datetime | None  # aware UTC, read from the provider's zone
    sender: str | None


@dataclass(frozen=True)
class ReportsPage:
    """One get-reports page: `count` is every matching order (all pages), `orders` this page's.

    `skipped` counts listed entries without a usable order id (nothing can be done with them).
    """

    page: int
    count: int
    orders: tuple[ListedOrder, ...]
    skipped: int = 0

    @property
    def pages(self) -> int:
        """How many pages the listing has (at least 1), `REPORTS_PAGE_SIZE` orders each."""
        return max(1, math.ceil(self.count / REPORTS_PAGE_SIZE))


class CancelAnswer(StrEnum):
    """What cancel-order answered. Not a verdict: verify with get-report."""

    ACCEPTED = "accepted"  # 200: the provider says it cancelled the order
    NOT_FOUND = "not_found"  # 455: unknown id, too late, already finished, or a second cancel


@dataclass(frozen=True)
class SendResult:
    """A send-sms order the provider accepted."""

    order_id: str


@dataclass(frozen=True)
class Balance:
    """The account balance; either part may be missing from the answer."""

    amount: str | None  # kept as the provider's text, so no float rounding creeps in
    sms: int | None


# -- the call deadline ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Deadline:
    """When the call in progress on this thread must be over, by a monotonic clock."""

    at: float
    monotonic: Callable[[], float]

    def remaining(self) -> float:
        return self.at - self.monotonic()

    def bound(self, timeout: float | None, expired: type[httpcore.TimeoutException]) -> float:
        """`timeout` cut to the time left; raise `expired` (httpcore's) when none is left."""
        left = self.remaining()
        if left <= 0:
            raise expired("the call deadline passed")
        return left if timeout is None else min(timeout, left)


# Set by `IletiMerkeziClient._send` around one call; sync httpx does all of a request's I/O on
# the calling thread, so the sockets read it there. None outside a call: no extra bound.
_current_deadline: ContextVar[_Deadline | None] = ContextVar("_current_deadline", default=None)


def _bound(timeout: float | None, expired: type[httpcore.TimeoutException]) -> float | None:
    deadline = _current_deadline.get()
    return timeout if deadline is None else deadline.bound(timeout, expired)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the current call's deadline.

    httpcore reads the answer's head in a loop of reads, each with the full read timeout, so
    without this a head dripped one byte at a time would never time out.
    """

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bound(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bound(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bound(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """Opens `_DeadlineStream`s; connecting is bounded by the current call's deadline too."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bound(timeout, httpcore.ConnectTimeout)
        stream = self._inner.connect_tcp(host, port, bounded, local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bound(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, bounded, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _bound_by_deadline(transport: httpx.BaseTransport) -> None:
    """Put a `_DeadlineBackend` under an `httpx.HTTPTransport`'s connection pool.

    httpx has no public way to pass httpcore a network backend, so this reaches into the pool.
    Any other transport (MockTransport) is left alone: `_read_answer` still checks the deadline
    between chunks of the answer.
    """
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if (
        isinstance(pool, httpcore.ConnectionPool)
        and isinstance(backend, httpcore.NetworkBackend)
        and not isinstance(backend, _DeadlineBackend)
    ):
        pool._network_backend = _DeadlineBackend(backend)


def connection_limits(max_connections: int) -> httpx.Limits:
    """The limits of the client's one shared connection pool (also the benchmark's bare client).

    Every connection may stay open between calls: with httpx's default of 20 kept alive, workers
    beyond the twentieth opened a fresh connection for many of their calls.
    """
    return httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)


class _NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that keeps nothing: the API authenticates each request by its body, and
    reading every answer's headers for cookies was a tenth of httpx's work per call."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


class ApiSettings(Protocol):
    """What `IletiMerkeziClient.from_config` reads: the `[api]` section of smsledger's config."""

    @property
    def base_url(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def hash(self) -> str: ...
    @property
    def timeout_seconds(self) -> float: ...


@dataclass(frozen=True)
class CallObserved:
    """One provider call as an observer sees it: how long it took, how it ended, and the
    answer's `Date` header with our clock's readings around the call (for the clock skew)."""

    endpoint: str
    outcome: str
    seconds: float
    sent_at: datetime
    answered_at: datetime
    date_header: str | None


class IletiMerkeziClient:
    """A thread-safe client of the iletiMerkezi JSON API, without retries.

    `timeout` is each call's deadline, connect to last byte (see `call_deadline`). `zone` is the
    zone the provider reads `sendDateTime` in, not the zone people use: leave it at
    `PROVIDER_ZONE` unless standing in for a provider that reads another (a sandbox started with
    `--zone`). `monotonic` measures the deadline (a test may freeze it).
    """

    def __init__(
        self,
        base_url: str,
        key: str,
        hash: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        zone: ZoneInfo = PROVIDER_ZONE,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(timeout, bool) or not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self._base_url = base_url.rstrip("/")
        self._key = key
        self._hash = hash
        # Longest first, so a secret that contains the other is replaced whole.
        self._secrets = tuple(sorted({s for s in (key, hash) if s}, key=len, reverse=True))
        self._zone = zone
        self._clock = clock
        self._deadline_seconds = float(timeout)
        self._monotonic = monotonic
        self._urls: dict[str, httpx.URL] = {}
        self._observers: tuple[Callable[[CallObserved], object], ...] = ()
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            limits=connection_limits(max_connections),
            transport=transport,
            headers={"Accept": "application/json"},
            cookies=_NoCookies(),
        )
        for mounted in (self._http._transport, *self._http._mounts.values()):
            if mounted is not None:
                _bound_by_deadline(mounted)

    @classmethod
    def from_config(
        cls, api: ApiSettings, *, max_connections: int = DEFAULT_MAX_CONNECTIONS
    ) -> Self:
        """The client the command and the daemon use: the `[api]` section's URL, credentials and
        call deadline (`sendDateTime` always in the provider's zone, whatever `timezone` says)."""
        return cls(
            api.base_url or DEFAULT_BASE_URL,
            api.key,
            api.hash,
            timeout=api.timeout_seconds,
            max_connections=max_connections,
        )

    @property
    def call_deadline(self) -> float:
        """The longest any one call lasts, in seconds, from connecting to the answer's last byte.

        A call still unanswered then fails with a ProviderTransientError (`maybe_delivered`), so
        a claim held for longer than this outlives every call made under it.
        """
        return self._deadline_seconds

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._base_url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- the five calls ----------------------------------------------------------------------

    def send_sms(
        self,
        *,
        sender: str,
        numbers: Sequence[str],
        text: str,
        send_at: datetime,
        iys: bool = True,
        iys_list: str = "BIREYSEL",
    ) -> SendResult:
        """Schedule one text to `numbers` at `send_at` (aware, whole minute, in the future).

        The send time is checked before any request. On a ProviderTransientError with
        `maybe_delivered` the order may exist: reconcile, do not resend blindly.
        """
        if isinstance(numbers, str):
            raise TypeError("numbers must be a sequence of phone numbers, not a single string")
        recipients = [str(number) for number in numbers]
        if not recipients:
            raise ValueError("numbers must name at least one recipient")
        order: dict[str, Any] = {
            "sender": sender,
            "sendDateTime": format_send_datetime(send_at, self._zone, self._clock()),
            "iys": "1" if iys else "0",
            "message": {"text": text, "receipents": {"number": recipients}},
        }
        if iys:
            order["iysList"] = iys_list
        return self._call(SEND_SMS, order, _send_result)

    def get_report(self, order_id: str) -> Report:
        """Return where the order stands; 456 and 455 are answers here, not errors."""
        order_id = _require_order_id(order_id)
        return self._call(
            GET_REPORT,
            {"id": order_id},
            lambda code, message, body: _report(order_id, code, message, body),
            order_id=order_id,
        )

    def cancel_order(self, order_id: str) -> CancelAnswer:
        """Ask the provider to cancel the order. Not idempotent: never repeat it blindly."""
        order_id = _require_order_id(order_id)
        return self._call(
            CANCEL_ORDER,
            {"id": order_id},
            lambda code, message, body: _cancel_answer(order_id, code, message),
            order_id=order_id,
        )

    def get_balance(self) -> Balance:
        """Return the account balance; side-effect free, the right call to check credentials."""
        return self._call(GET_BALANCE, None, _balance)

    def get_reports(self, start: date, end: date, page: int = 1) -> ReportsPage:
        """Return one page of the orders created from `start` to `end` (days in the provider's
        zone, both included, at most `REPORTS_MAX_DAYS` apart; a wider range is refused with a
        ValueError before any request). Read only: listing statuses of orders not yet due are
        undocumented, confirm those with `get_report`."""
        if isinstance(start, datetime) or isinstance(end, datetime):
            raise TypeError("start and end are dates (days in the provider's zone), not datetimes")
        problem = reports_range_problem(start, end)
        if problem is not None:
            raise ValueError(f"get-reports range refused: {problem}")
        if isinstance(page, bool) or not isinstance(page, int) or page < 1:
            raise ValueError(f"page must be an int >= 1, got {page!r}")
        filter_ = {
            "start": start.strftime(REPORTS_DATE_FORMAT),
            "end": end.strftime(REPORTS_DATE_FORMAT),
            "page": page,
        }
        zone = self._zone
        return self._call(
            GET_REPORTS,
            filter_,
            lambda code, message, body: _reports_page(page, code, message, body, zone),
            section="filter",
        )

    # -- plumbing ----------------------------------------------------------------------------

    def _call(
        self,
        endpoint: str,
        order: Mapping[str, Any] | None,
        interpret: Callable[[int, str, Mapping[str, Any]], _T],
        *,
        order_id: str | None = None,
        section: str = "order",
    ) -> _T:
        """Make one call, read its answer with `interpret` and log the outcome.

        `order` goes into the request as `section` (get-reports takes a `filter`)."""
        started = time.perf_counter()
        sent_at = self._clock()
        deadline = _Deadline(self._monotonic() + self._deadline_seconds, self._monotonic)
        code: int | None = None
        date: list[str] = []  # the answer's Date header, once one came
        try:
            http_status, raw = self._send(
                endpoint, self._build_request(endpoint, order, section), deadline, date
            )
            code, message, body = self._read_envelope(endpoint, http_status, raw)
            result = interpret(code, message, body)
        except ProviderError as exc:
            self._log(
                endpoint,
                started,
                code=exc.code if exc.code is not None else code,
                outcome=_outcome(exc),
                order_id=order_id,
                error=type(exc).__name__,
            )
            self._observe(endpoint, _outcome(exc), started, sent_at, date)
            raise
        if isinstance(result, SendResult):
            order_id = result.order_id
        self._log(endpoint, started, code=code, outcome="ok", order_id=order_id)
        self._observe(endpoint, "ok", started, sent_at, date)
        return result

    def observe(self, observer: Callable[[CallObserved], object]) -> None:
        """Have `observer` told about every call once it ended (metrics, clock skew).

        Called on the calling thread; an observer that raises is logged and ignored.
        """
        self._observers = (*self._observers, observer)

    def _observe(
        self, endpoint: str, outcome: str, started: float, sent_at: datetime, date: list[str]
    ) -> None:
        if not self._observers:
            return
        seen = CallObserved(
            endpoint=endpoint,
            outcome=outcome,
            seconds=time.perf_counter() - started,
            sent_at=sent_at,
            answered_at=self._clock(),
            date_header=date[0] if date else None,
        )
        for observer in self._observers:
            try:
                observer(seen)
            except Exception:  # an observer's bug must not fail a provider call
                log.exception("provider_call_observer_failed", endpoint=endpoint)

    def _build_request(
        self, endpoint: str, order: Mapping[str, Any] | None, section: str = "order"
    ) -> httpx.Request:
        """Build the documented body. Kept apart so no frame of `_send` holds the credentials."""
        request: dict[str, Any] = {"authentication": {"key": self._key, "hash": self._hash}}
        if order is not None:
            request[section] = dict(order)
        url = self._urls.get(endpoint)
        if url is None:
            # Parsed once per endpoint (a tenth of httpx's work per call was parsing it again);
            # lazily, so a bad base URL still fails the call, not the constructor.
            url = self._urls[endpoint] = httpx.URL(f"{self._base_url}{endpoint_path(endpoint)}")
        return self._http.build_request("POST", url, json={"request": request})

    def _send(
        self, endpoint: str, request: httpx.Request, deadline: _Deadline, date: list[str]
    ) -> tuple[int, bytes]:
        """Send one request and read its answer by `deadline`; return its HTTP status and body.

        The one place where httpx exceptions become ProviderErrors.
        """
        # No phase may start with more time than the call has left; the sockets cut each read
        # and write to it as well (`_DeadlineStream`).
        request.extensions["timeout"] = httpx.Timeout(
            min(self._deadline_seconds, max(deadline.remaining(), 0.0))
        ).as_dict()
        token = _current_deadline.set(deadline)
        try:
            response = self._http.send(request, stream=True)
            if "Date" in response.headers:
                date.append(response.headers["Date"])
            try:
                return response.status_code, self._read_answer(endpoint, response, deadline)
            finally:
                response.close()
        except httpx.HTTPError as exc:
            raise self._translate(endpoint, exc, deadline) from exc
        finally:
            _current_deadline.reset(token)

    def _read_answer(self, endpoint: str, response: httpx.Response, deadline: _Deadline) -> bytes:
        """The body, read chunk by chunk: never past `MAX_ANSWER_BYTES`, never past `deadline`."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
            raise _too_large(endpoint, response.status_code)
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            if deadline.remaining() <= 0:
                raise self._past_deadline(endpoint)
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise _too_large(endpoint, response.status_code)
            chunks.append(chunk)
        if deadline.remaining() <= 0:
            raise self._past_deadline(endpoint)
        return b"".join(chunks)

    def _past_deadline(self, endpoint: str) -> ProviderTransientError:
        return ProviderTransientError(
            f"iletiMerkezi {endpoint}: no complete answer within the call deadline of "
            f"{self._deadline_seconds:g} s; the request may have reached the provider",
            endpoint=endpoint,
            maybe_delivered=True,
        )

    def _translate(self, endpoint: str, exc: httpx.HTTPError, deadline: _Deadline) -> ProviderError:
        """Map an httpx exception to ours (see `ProviderTransientError` for `maybe_delivered`)."""
        name = type(exc).__name__
        detail = " ".join(self._redact(str(exc)).split())[:_DETAIL_MAX_CHARS] or "no detail"
        if isinstance(exc, httpx.UnsupportedProtocol):
            # A configuration mistake, not a passing fault: retrying cannot help.
            return ProviderError(
                f"iletiMerkezi {endpoint}: {name} ({detail}); base URL {self._base_url!r} "
                "must start with https:// or http://",
                endpoint=endpoint,
            )
        never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        if deadline.remaining() <= 0 and not never_sent:
            return self._past_deadline(endpoint)
        if never_sent:
            return ProviderTransientError(
                f"iletiMerkezi {endpoint}: {name} ({detail}); the request never reached the "
                "provider, it is safe to retry",
                endpoint=endpoint,
                maybe_delivered=False,
            )
        return ProviderTransientError(
            f"iletiMerkezi {endpoint}: {name} ({detail}); the request may have reached the "
            "provider",
            endpoint=endpoint,
            maybe_delivered=True,
        )

    def _read_envelope(
        self, endpoint: str, http_status: int, raw: bytes
    ) -> tuple[int, str, Mapping[str, Any]]:
        """Return `(status.code, status.message, response)` from any answer, whatever its HTTP
        status; raise ProviderTransientError when the body is not the documented JSON."""
        try:
            # Decimal keeps a balance amount exactly as the provider wrote it.
            body = json.loads(raw, parse_float=Decimal)
        except (ValueError, RecursionError):
            # ValueError: JSONDecodeError and UnicodeDecodeError alike; RecursionError: a body
            # nested deeper than the parser's stack (a few kilobytes of "[" are enough).
            # `from None`: the decoder's error carries the whole body, which may echo a secret.
            raise _undocumented(endpoint, http_status, "is not JSON") from None
        inner = body.get("response") if isinstance(body, dict) else None
        status = inner.get("status") if isinstance(inner, dict) else None
        code = as_int(status.get("code")) if isinstance(status, dict) else None
        if inner is None or status is None or code is None:
            raise _undocumented(endpoint, http_status, "has no numeric status code")
        message = status.get("message")
        return code, self._redact(message) if isinstance(message, str) else "", inner

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text

    @staticmethod
    def _log(
        endpoint: str,
        started: float,
        *,
        code: int | None,
        outcome: str,
        order_id: str | None,
        error: str | None = None,
    ) -> None:
        fields: dict[str, Any] = {
            "endpoint": endpoint,
            "code": code,
            "outcome": outcome,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        if order_id is not None:
            fields["order_id"] = order_id
        if error is not None:
            fields["error"] = error
        if outcome == "ok":
            log.info("provider_call", **fields)
        else:
            log.warning("provider_call", **fields)


# -- pure readings of an answer -------------------------------------------------------------


def _send_result(code: int, message: str, body: Mapping[str, Any]) -> SendResult:
    if code != 200:
        raise _unexpected(SEND_SMS, code, message)
    order = body.get("order")
    order_id = as_order_id(order.get("id")) if isinstance(order, dict) else None
    if order_id is None:
        raise _undocumented(SEND_SMS, 200, "has no order id; the order may exist")
    return SendResult(order_id=order_id)


def _report(order_id: str, code: int, message: str, body: Mapping[str, Any]) -> Report:
    if code == 456:
        return Report(order_id=order_id, status=ReportStatus.PENDING, code=456)
    if code == 455:
        return Report(order_id=order_id, status=ReportStatus.NOT_FOUND, code=455)
    if code != 200:
        raise _unexpected(GET_REPORT, code, message, order_id)
    order = body.get("order")
    if not isinstance(order, dict):
        raise _undocumented(GET_REPORT, 200, "has no order")
    order_status = as_int(order.get("status"))
    if order_status is None:
        raise _undocumented(GET_REPORT, 200, "has no numeric order status")
    if order_status not in _ORDER_STATUSES:
        meaning = CODE_MEANINGS.get(order_status, "undocumented code")
        raise ProviderStatusError(
            order_status,
            message,
            endpoint=GET_REPORT,
            order_id=order_id,
            summary=(
                f"iletiMerkezi {GET_REPORT} for order {order_id} answered 200 with order status "
                f"{order_status}: {meaning}"
            ),
        )
    return Report(
        order_id=order_id,
        status=_ORDER_STATUSES[order_status],
        code=order_status,
        total=as_int(order.get("total")),
        delivered=as_int(order.get("delivered")),
        undelivered=as_int(order.get("undelivered")),
        waiting=as_int(order.get("waiting")),
    )


def _reports_page(
    page: int, code: int, message: str, body: Mapping[str, Any], zone: ZoneInfo
) -> ReportsPage:
    if code != 200:
        raise _unexpected(GET_REPORTS, code, message)
    count = as_int(body.get("count"))
    orders = body.get("orders", [])
    if orders is None:
        orders = []
    if not isinstance(orders, list):
        raise _undocumented(GET_REPORTS, 200, "has an 'orders' that is not a list")
    listed: list[ListedOrder] = []
    skipped = 0
    for item in orders:
        order_id = as_order_id(item.get("id")) if isinstance(item, dict) else None
        if order_id is None or not isinstance(item, dict):
            skipped += 1
            continue
        sender = item.get("sender")
        listed.append(
            ListedOrder(
                order_id=order_id,
                status=as_int(item.get("status")),
                total=as_int(item.get("total")),
                delivered=as_int(item.get("delivered")),
                undelivered=as_int(item.get("undelivered")),
                waiting=as_int(item.get("waiting")),
                submit_at=parse_timestamp(item.get("submitAt"), zone),
                send_at=parse_timestamp(item.get("sendAt"), zone),
                sender=sender if isinstance(sender, str) else None,
            )
        )
    if count is None:
        # No usable count: what this page shows, and one more page if it is full.
        count = (page - 1) * REPORTS_PAGE_SIZE + len(orders) + (len(orders) >= REPORTS_PAGE_SIZE)
    return ReportsPage(page=page, count=count, orders=tuple(listed), skipped=skipped)


def _cancel_answer(order_id: str, code: int, message: str) -> CancelAnswer:
    if code == 200:
        return CancelAnswer.ACCEPTED
    if code == 455:
        return CancelAnswer.NOT_FOUND
    raise _unexpected(CANCEL_ORDER, code, message, order_id)


def _balance(code: int, message: str, body: Mapping[str, Any]) -> Balance:
    if code != 200:
        raise _unexpected(GET_BALANCE, code, message)
    balance = body.get("balance")
    if not isinstance(balance, dict):
        return Balance(amount=None, sms=None)
    amount = balance.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, str | int | Decimal):
        amount = None
    return Balance(amount=None if amount is None else str(amount), sms=as_int(balance.get("sms")))


def _unexpected(
    endpoint: str, code: int, message: str, order_id: str | None = None
) -> ProviderError:
    """The error for a status code the call does not take as an answer."""
    if code == 401:
        return ProviderAuthError(endpoint=endpoint)
    if code == 503:
        return ProviderTransientError(
            f"iletiMerkezi {endpoint} answered 503: service temporarily unavailable; retry later",
            endpoint=endpoint,
            code=503,
            maybe_delivered=False,
        )
    return ProviderStatusError(code, message, endpoint=endpoint, order_id=order_id)


def _too_large(endpoint: str, http_status: int) -> ProviderTransientError:
    return ProviderTransientError(
        f"iletiMerkezi {endpoint} answered HTTP {http_status} with a body over "
        f"{MAX_ANSWER_BYTES} bytes, not read further; the request may have reached the provider",
        endpoint=endpoint,
        maybe_delivered=True,
    )


def _undocumented(endpoint: str, http_status: int, what: str) -> ProviderTransientError:
    return ProviderTransientError(
        f"iletiMerkezi {endpoint} answered HTTP {http_status} with a body that {what}",
        endpoint=endpoint,
        maybe_delivered=True,
    )


def _outcome(exc: ProviderError) -> str:
    if isinstance(exc, ProviderAuthError):
        return "auth"
    if isinstance(exc, ProviderTransientError):
        return "transient"
    if isinstance(exc, ProviderStatusError):
        return "status_error"
    return "error"


def _require_order_id(order_id: str) -> str:
    normalised = str(order_id).strip()
    if not normalised:
        raise ValueError("order_id must not be empty")
    return normalised
