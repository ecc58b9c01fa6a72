"""What the sandbox answers: a `Reply` for the server to write, and the provider's bodies.

The provider's envelope (`provider_reply`: status code and its Turkish message), plain JSON
(`json_reply`, the control endpoints), and the spoilt answers the faults send instead of the
real one (see `Faults`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

__all__ = [
    "DROP",
    "GARBAGE",
    "HUGE",
    "HUGE_CHUNK",
    "HUGE_MAX_BYTES",
    "NESTED",
    "NESTED_DEPTH",
    "Reply",
    "json_reply",
    "provider_reply",
    "reason",
]

#: How deep a "nested" fault's JSON answer is nested: far beyond any parser's recursion limit.
NESTED_DEPTH: Final = 50_000
#: Where a "huge" fault's endless answer stops if the client never hangs up (1 GiB).
HUGE_MAX_BYTES: Final = 1024**3
#: A chunk of a "huge" answer after its start: the documented body's message, never ending.
HUGE_CHUNK: Final = b"A" * 65536

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
# The start of a "huge" answer: a documented body whose message never ends.
_HUGE_START = b'{"response":{"status":{"code":200,"message":"'
_GARBAGE_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


@dataclass(frozen=True)
class Reply:
    """One answer for the server to write (or not: `drop`)."""

    code: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    drop: bool = False  # close the connection without writing anything
    close: bool = False  # answer, then close the connection
    drip: float | None = None  # seconds between bytes: write the answer one byte at a time
    endless: bool = False  # a chunked body that never ends (`body` is where it starts)


DROP: Final = Reply(0, drop=True)
GARBAGE: Final = Reply(200, _GARBAGE_PAGE, "text/html; charset=utf-8")
NESTED: Final = Reply(200, _NESTED_BODY)
HUGE: Final = Reply(200, _HUGE_START, endless=True, close=True)


def json_reply(code: int, data: object, *, close: bool = False) -> Reply:
    """`data` as compact UTF-8 JSON with HTTP status `code`."""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return Reply(code, body, close=close)


def provider_reply(code: int, extra: Mapping[str, Any] | None = None) -> Reply:
    """The provider's envelope: `status` (code, Turkish message) and `extra` beside it."""
    status = {"code": code, "message": _MESSAGES[code] if code in _MESSAGES else reason(code)}
    return json_reply(code, {"response": {"status": status, **(extra or {})}})


def reason(code: int) -> str:
    """The HTTP reason phrase the provider gives `code` (its own for its own codes)."""
    if code in _REASONS:
        return _REASONS[code]
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"
