"""Exceptions raised by the ledger.

LedgerError                      the root: anything the ledger refuses or cannot do
├── ConfigError                  the config file or an environment override is wrong
├── LedgerUnavailable            the database cannot be opened or reached
│   └── NoLedger                 a command that only reads found no ledger where the config says
├── SchemaError                  the database holds tables this smsledger cannot use as a ledger
│   └── SchemaTooNew             the ledger was migrated by a newer smsledger
├── InvalidInput (ValueError)    a bad argument: naive datetime, empty or long id, ...
│   ├── NaiveDatetimeError
│   └── NotResolvable            resolve of an order that is not needs_attention
├── RegistrationConflict         same order id registered again with another send time
├── OrderNotFound                the order id is not in the ledger
├── CancelNotPossible            the order reached a final state other than cancelled
│   └── CancelRefused            the cancel came too close to (or after) dispatch
└── IllegalTransition            a state change the transition table does not allow
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ledger.models import Order

__all__ = [
    "CancelNotPossible",
    "CancelRefused",
    "ConfigError",
    "IllegalTransition",
    "InvalidInput",
    "LedgerError",
    "LedgerUnavailable",
    "NaiveDatetimeError",
    "NoLedger",
    "NotResolvable",
    "OrderNotFound",
    "RegistrationConflict",
    "SchemaError",
    "SchemaTooNew",
]


class LedgerError(Exception):
    """The ledger refused the request or could not carry it out."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(LedgerError):
    """The configuration is invalid."""


class LedgerUnavailable(LedgerError):
    """The ledger database cannot be opened or reached."""


class NoLedger(LedgerUnavailable):
    """There is no ledger at the configured place, and this use of it must not create one."""


class SchemaError(LedgerError):
    """The database's tables are not a ledger schema this smsledger can use."""


class SchemaTooNew(SchemaError):
    """The ledger was migrated by a newer smsledger than this one."""

    def __init__(self, url: str, found: str, known: str) -> None:
        self.url = url
        self.found = found
        self.known = known
        super().__init__(
            f"ledger {url} has schema revision {found}, newer than this smsledger knows "
            f"(its newest is {known}); upgrade smsledger, or use the ledger from the newer one"
        )


class InvalidInput(LedgerError, ValueError):
    """An argument is not acceptable."""


class NaiveDatetimeError(InvalidInput):
    """A naive datetime was given where an aware one is required."""


class NotResolvable(InvalidInput):
    """Only a `needs_attention` order is settled by hand; `order` is the order as it stands."""

    def __init__(self, order: Order) -> None:
        self.order = order
        super().__init__(
            f"order {order.order_id} is {order.state.value}, not needs_attention: only an order "
            "that needs attention can be resolved by hand"
        )


class RegistrationConflict(LedgerError):
    """The order id is already registered with a different send time."""

    def __init__(self, order_id: str, existing: datetime, requested: datetime) -> None:
        self.order_id = order_id
        self.existing = existing
        self.requested = requested
        super().__init__(
            f"order {order_id} is already registered for {existing.isoformat()}; "
            f"refusing to register it again for {requested.isoformat()}"
        )


class OrderNotFound(LedgerError):
    """The order is not in the ledger."""

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        super().__init__(f"order {order_id} is not in the ledger")


class CancelNotPossible(LedgerError):
    """The order can no longer be cancelled: it ended in a final state other than cancelled.

    `order` is the order as it stands (``too_late``, ``not_found``, ``needs_attention``, or, for
    `CancelRefused`, ``cancel_refused`` and ``dispatched``); its `reason` says why.
    """

    def __init__(self, order: Order, message: str | None = None) -> None:
        self.order = order
        if message is None:
            why = f" ({order.reason})" if order.reason else ""
            message = f"order {order.order_id} cannot be cancelled: it is {order.state}{why}"
        super().__init__(message)


class CancelRefused(CancelNotPossible):
    """The cancel was refused because dispatch is too close or already past."""

    def __init__(self, order: Order, seconds_left: float) -> None:
        self.seconds_left = seconds_left
        super().__init__(order, f"cancel of order {order.order_id} refused: {order.reason}")


class IllegalTransition(LedgerError):
    """The transition table does not allow this state change."""
