"""What the ledger accepts from its callers: order ids, labels, send times.

Kept apart from `ledger.api` (which re-exports them) so the command can check and escape input
without importing SQLAlchemy: `scheduler.cli.output` escapes with `is_control` on every line
``smsledger logs`` prints.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime

from ledger.errors import InvalidInput

__all__ = [
    "LABEL_MAX",
    "ORDER_ID_MAX",
    "check_future",
    "check_label",
    "check_order_id",
    "is_control",
]

#: The longest order id: the width of the ledger's column.
ORDER_ID_MAX = 64
#: The longest label.
LABEL_MAX = 200
#: Unicode categories `is_control` refuses in labels and the command escapes when printing.
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def check_order_id(order_id: object) -> str:
    """Return the order id as text, refusing what no provider id can be."""
    if isinstance(order_id, int) and not isinstance(order_id, bool):
        order_id = str(order_id)
    if not isinstance(order_id, str):
        raise InvalidInput(f"order id must be text, got {type(order_id).__name__}")
    text = order_id.strip()
    if not text:
        raise InvalidInput("order id is empty")
    if len(text) > ORDER_ID_MAX:
        raise InvalidInput(
            f"order id {text[:20]}... is {len(text)} characters long; at most {ORDER_ID_MAX}"
        )
    if not text.isprintable() or " " in text:  # isprintable() is False for other spaces
        raise InvalidInput(f"order id {text!r} contains spaces or control characters")
    return text


def is_control(char: str) -> bool:
    """Whether `char` acts on a terminal or a line instead of showing as a glyph.

    Control characters (newline, ESC, DEL, C1), format characters (bidi overrides such as
    U+202E, zero-width ones), line and paragraph separators, and lone surrogates: a label made
    of them could forge a table row or drive the terminal of whoever lists the ledger.
    """
    return unicodedata.category(char) in _CONTROL_CATEGORIES


def check_label(label: str | None, *, what: str = "label", most: int = LABEL_MAX) -> str | None:
    """Return the label, refusing one that is not text, too long, or holds control characters."""
    if label is None:
        return None
    if not isinstance(label, str):
        raise InvalidInput(f"{what} must be text, got {type(label).__name__}")
    if len(label) > most:
        raise InvalidInput(f"{what} is {len(label)} characters long; at most {most}")
    for n, char in enumerate(label):
        if is_control(char):
            raise InvalidInput(
                f"{what} contains the control character U+{ord(char):04X} at position {n + 1}; "
                f"a {what} must be plain text on one line"
            )
    return label


def check_future(order_id: str, send_at: datetime, now: datetime) -> None:
    """Refuse to register an order whose send time has come: there is nothing left to cancel."""
    if send_at <= now:
        raise InvalidInput(
            f"order {order_id}: send time {send_at.isoformat()} is not in the future; "
            "there is nothing left to cancel"
        )
