"""The iletiMerkezi JSON API client: the one module of smsledger that speaks HTTP.

Four calls (send-sms, get-report, cancel-order, get-balance) share one pooled `httpx.Client`, so
one client may be used from many threads at once. The client never retries: the daemon owns the
retry policy, and a cancel in particular must never be repeated blindly.

How an answer is read:

- The body decides, not the HTTP status: the provider mirrors `status.code` into the HTTP status
  (a 455 arrives as HTTP 455 with a JSON body), so every answer's body is parsed.
- `status.code` may be an int or a numeric string, an order id an int or a string; both are
  normalised. A body that is not the documented JSON is a `ProviderTransientError`.
- httpx exceptions become `ProviderError`s in exactly one place, `_send`.

The API key and hash live only in the client's private attributes and the request body. They are
never logged, never part of an exception message and never in `repr(client)`; a provider message
that echoes them is redacted before it is kept anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Self, TypeVar
from zoneinfo import ZoneInfo

import httpx
import structlog

from ledger._clock import utcnow
from scheduler.errors import (
    CODE_MEANINGS,
    ProviderAuthError,
    ProviderError,
    ProviderStatusError,
    ProviderTransientError,
    SendTimeError,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUT_SECONDS",
    "PROVIDER_ZONE",
    "Balance",
    "CancelAnswer",
    "IletiMerkeziClient",
    "Report",
    "ReportStatus",
    "SendResult",
    "format_send_datetime",
]

#: The provider's production base URL; the client still takes it explicitly (sandbox, resellers).
DEFAULT_BASE_URL = "https://api.iletimerkezi.com"
#: Connect, read, write and pool timeout of every call, in seconds.
DEFAULT_TIMEOUT_SECONDS = 10.0
#: Most connections the shared pool opens at once.
DEFAULT_MAX_CONNECTIONS = 64
#: The zone `sendDateTime` is read in (inferred: Turkey time, UTC+3 all year since 2016).
PROVIDER_ZONE = ZoneInfo("Europe/Istanbul")

SEND_SMS = "send-sms"
GET_REPORT = "get-report"
CANCEL_ORDER = "cancel-order"
GET_BALANCE = "get-balance"

_LOGGER_NAME = "smsledger.provider"
_REDACTED = "[REDACTED]"
_SEND_DATETIME_FORMAT = "%d/%m/%Y %H:%M"  # the provider's "dd/MM/yyyy HH:mm"; never seconds
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


def format_send_datetime(send_at: datetime, zone: ZoneInfo, now: datetime) -> str:
    """Return `send_at` as the provider's `sendDateTime` ("dd/MM/yyyy HH:mm" in `zone`).

    Raises SendTimeError when `send_at` is naive, not on a whole minute (the provider reportedly
    sends a time with seconds immediately, so a time that would need rounding is refused rather
    than moved), or not after `now`.
    """
    if send_at.tzinfo is None or send_at.utcoffset() is None:
        raise SendTimeError(
            f"send time {send_at.isoformat()} is naive; pass an aware datetime (for example in UTC)"
        )
    local = send_at.astimezone(zone)
    if local.second or local.microsecond:
        raise SendTimeError(
            f"send time {send_at.isoformat()} is not on a whole minute; the provider takes "
            "minute precision, so pass a time with zero seconds and microseconds"
        )
    if send_at <= now:
        raise SendTimeError(
            f"send time {send_at.isoformat()} is not in the future (now is {now.isoformat()}); "
            "an order must be scheduled ahead to be cancellable"
        )
    return local.strftime(_SEND_DATETIME_FORMAT)


class IletiMerkeziClient:
    """A thread-safe client of the iletiMerkezi JSON API, without retries."""

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
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._key = key
        self._hash = hash
        # Longest first, so a secret that contains the other is replaced whole.
        self._secrets = tuple(sorted({s for s in (key, hash) if s}, key=len, reverse=True))
        self._zone = zone
        self._clock = clock
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections),
            transport=transport,
            headers={"Accept": "application/json"},
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._base_url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- the four calls ----------------------------------------------------------------------

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

    # -- plumbing ----------------------------------------------------------------------------

    def _call(
        self,
        endpoint: str,
        order: Mapping[str, Any] | None,
        interpret: Callable[[int, str, Mapping[str, Any]], _T],
        *,
        order_id: str | None = None,
    ) -> _T:
        """Make one call, read its answer with `interpret` and log the outcome."""
        started = time.perf_counter()
        code: int | None = None
        try:
            response = self._send(endpoint, self._build_request(endpoint, order))
            code, message, body = self._read_envelope(endpoint, response)
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
            raise
        if isinstance(result, SendResult):
            order_id = result.order_id
        self._log(endpoint, started, code=code, outcome="ok", order_id=order_id)
        return result

    def _build_request(self, endpoint: str, order: Mapping[str, Any] | None) -> httpx.Request:
        """Build the documented body. Kept apart so no frame of `_send` holds the credentials."""
        request: dict[str, Any] = {"authentication": {"key": self._key, "hash": self._hash}}
        if order is not None:
            request["order"] = dict(order)
        return self._http.build_request(
            "POST", f"{self._base_url}/v1/{endpoint}/json", json={"request": request}
        )

    def _send(self, endpoint: str, request: httpx.Request) -> httpx.Response:
        """Send one request: the one place where httpx exceptions become ProviderErrors."""
        try:
            return self._http.send(request)
        except httpx.HTTPError as exc:
            raise self._translate(endpoint, exc) from exc

    def _translate(self, endpoint: str, exc: httpx.HTTPError) -> ProviderError:
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
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
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
        self, endpoint: str, response: httpx.Response
    ) -> tuple[int, str, Mapping[str, Any]]:
        """Return `(status.code, status.message, response)` from any answer, whatever its HTTP
        status; raise ProviderTransientError when the body is not the documented JSON."""
        try:
            # Decimal keeps a balance amount exactly as the provider wrote it.
            body = response.json(parse_float=Decimal)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
            # `from None`: the decoder's error carries the whole body, which may echo a secret.
            raise _undocumented(endpoint, response.status_code, "is not JSON") from None
        inner = body.get("response") if isinstance(body, dict) else None
        status = inner.get("status") if isinstance(inner, dict) else None
        code = _as_int(status.get("code")) if isinstance(status, dict) else None
        if inner is None or status is None or code is None:
            raise _undocumented(endpoint, response.status_code, "has no numeric status code")
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
        # Looked up per call so a structlog configured later (or captured in a test) applies.
        logger = structlog.get_logger(_LOGGER_NAME)
        if outcome == "ok":
            logger.info("provider_call", **fields)
        else:
            logger.warning("provider_call", **fields)


# -- pure readings of an answer -------------------------------------------------------------


def _send_result(code: int, message: str, body: Mapping[str, Any]) -> SendResult:
    if code != 200:
        raise _unexpected(SEND_SMS, code, message)
    order = body.get("order")
    order_id = _as_order_id(order.get("id")) if isinstance(order, dict) else None
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
    order_status = _as_int(order.get("status"))
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
        total=_as_int(order.get("total")),
        delivered=_as_int(order.get("delivered")),
        undelivered=_as_int(order.get("undelivered")),
        waiting=_as_int(order.get("waiting")),
    )


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
    return Balance(amount=None if amount is None else str(amount), sms=_as_int(balance.get("sms")))


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


def _as_int(value: object) -> int | None:
    """Read an int that may come as a number or a numeric string; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value)
    return None


def _as_order_id(value: object) -> str | None:
    """Read an order id that may come as an int or a string; None when missing or empty."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _require_order_id(order_id: str) -> str:
    normalised = str(order_id).strip()
    if not normalised:
        raise ValueError("order_id must not be empty")
    return normalised
