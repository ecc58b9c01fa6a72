"""Exceptions raised by the iletiMerkezi client.

    ProviderError                    the root: a provider call did not give a usable answer
    ├── ProviderAuthError            401: bad key/hash, the panel's API toggle off, IP not allowed
    ├── ProviderTransientError       503, timeouts, connection errors, unreadable or undocumented
    │                                bodies: safe to retry for reads; `maybe_delivered` tells
    │                                whether a write may have reached the provider
    └── ProviderStatusError          any other status code the call did not expect, with the
                                     provider's Turkish `message` and an English `meaning`

    SendTimeError (ValueError)       a send time that is naive, not on a whole minute or not in
                                     the future; raised before any request is made

The root is also raised on its own for a mistake no retry can fix (a base URL whose scheme httpx
cannot speak). Every message is one English line naming the endpoint and the code; none of them
ever contains the API key or hash.
"""

from __future__ import annotations

__all__ = [
    "CODE_MEANINGS",
    "ProviderAuthError",
    "ProviderError",
    "ProviderStatusError",
    "ProviderTransientError",
    "SendTimeError",
]

#: Every status code the provider documents, with its meaning in English.
CODE_MEANINGS: dict[int, str] = {
    110: "message sending",
    111: "message delivered",
    112: "message not delivered",
    113: "order sending",
    114: "order completed",
    115: "order not sent (cancelled or failed)",
    200: "success",
    400: "request could not be parsed",
    401: "authentication failed (key/hash, API access toggle off, or IP not allowed)",
    402: "insufficient balance",
    404: "no such API method (wrong URL)",
    422: "values could not be validated",
    450: "sender not approved",
    451: "duplicate order within 10 minutes",
    452: "bad recipients",
    453: "order too large (over 7 SMS parts)",
    454: "empty message text",
    455: "order not found",
    456: "order's send date not reached yet",
    457: "bad sendDateTime format",
    458: "bad date range",
    459: "empty sender",
    460: "sender over 11 characters or with Turkish characters",
    468: "IYS flag missing",
    469: "IYS list missing",
    470: "IYS code missing",
    503: "service temporarily unavailable",
}

_UNDOCUMENTED = "undocumented code"


def _meaning_of(code: int) -> str:
    """Return the English meaning of a provider code, or "undocumented code"."""
    return CODE_MEANINGS.get(code, _UNDOCUMENTED)


class ProviderError(Exception):
    """The iletiMerkezi provider call failed."""

    def __init__(
        self, message: str | None = None, *, endpoint: str | None = None, code: int | None = None
    ) -> None:
        self.endpoint = endpoint
        self.code = code
        super().__init__(message or (self.__doc__ or "").strip())


class ProviderAuthError(ProviderError):
    """The provider refused the credentials (401)."""

    def __init__(self, message: str | None = None, *, endpoint: str | None = None) -> None:
        super().__init__(
            message
            or (
                f"iletiMerkezi {endpoint} answered 401: {_meaning_of(401)}; check the API key "
                "and hash, the panel's 'allow API access' toggle and the IP whitelist"
            ),
            endpoint=endpoint,
            code=401,
        )


class ProviderTransientError(ProviderError):
    """The provider could not be reached or did not answer usably; a retry may succeed.

    `maybe_delivered` is False only when the request certainly never reached the provider: the
    connection was never made (ConnectError, ConnectTimeout, PoolTimeout) or the provider answered
    503, refusing the request. A 503 is treated as "not delivered" because the provider said it
    was out of service rather than losing the request half way. Everything else (a read timeout,
    a dropped connection, an unreadable answer) leaves the request possibly acted upon: a send
    must then be reconciled with get-report, never blindly repeated.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        endpoint: str | None = None,
        code: int | None = None,
        maybe_delivered: bool = True,
    ) -> None:
        self.maybe_delivered = maybe_delivered
        super().__init__(
            message or "The provider could not be reached or did not answer usably.",
            endpoint=endpoint,
            code=code,
        )


class ProviderStatusError(ProviderError):
    """The provider answered with a status code the call did not expect."""

    def __init__(
        self,
        code: int,
        message: str = "",
        *,
        endpoint: str | None = None,
        order_id: str | None = None,
        summary: str | None = None,
    ) -> None:
        #: the provider's own (Turkish) text, with any echoed credential removed by the client
        self.message = message
        #: what the code means, in English
        self.meaning = _meaning_of(code)
        subject = f"iletiMerkezi {endpoint}" + (f" for order {order_id}" if order_id else "")
        super().__init__(
            summary or f"{subject} answered {code}: {self.meaning}", endpoint=endpoint, code=code
        )


class SendTimeError(ValueError):
    """The send time must be aware, on a whole minute and in the future."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
