"""smsledger's durable record: scheduled orders, their states and an append-only history.

Importing this package configures nothing (no database, and no logging but the `NullHandler`
on the ``smsledger`` logger that libraries add): see `Ledger`, `ledger._log` and
`configure_logging`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ledger._clock import utcnow
    from ledger.api import Ledger
    from ledger.campaigns import LabelSummary
    from ledger.cancels import CancelOutcome, CancelResult, CancelSummary
    from ledger.config import Config, load_config
    from ledger.errors import (
        CancelNotPossible,
        CancelRefused,
        ConfigError,
        IllegalTransition,
        InvalidInput,
        LedgerError,
        LedgerUnavailable,
        NaiveDatetimeError,
        NoLedger,
        NotResolvable,
        OrderNotFound,
        RegistrationConflict,
        SchemaError,
        SchemaTooNew,
    )
    from ledger.logsetup import configure_logging
    from ledger.models import Delivery, Event, Order
    from ledger.states import FINAL_STATES, TRANSITIONS, OrderState
    from ledger.store import TransitionResult

#: Marks this package as smsledger's own (PyPI has an unrelated `ledger`): see
#: `scheduler.cli.origin`.
__smsledger__ = True

#: Where each public name lives. They are loaded on first use (PEP 562), so a program or a
#: command that needs only the config or the errors (``smsledger logs``, ``--version``) does
#: not pay for importing SQLAlchemy and SQLModel.
_HOMES = {
    "FINAL_STATES": "ledger.states",
    "TRANSITIONS": "ledger.states",
    "CancelNotPossible": "ledger.errors",
    "CancelOutcome": "ledger.cancels",
    "CancelRefused": "ledger.errors",
    "CancelResult": "ledger.cancels",
    "CancelSummary": "ledger.cancels",
    "Config": "ledger.config",
    "ConfigError": "ledger.errors",
    "Delivery": "ledger.models",
    "Event": "ledger.models",
    "IllegalTransition": "ledger.errors",
    "InvalidInput": "ledger.errors",
    "LabelSummary": "ledger.campaigns",
    "Ledger": "ledger.api",
    "LedgerError": "ledger.errors",
    "LedgerUnavailable": "ledger.errors",
    "NaiveDatetimeError": "ledger.errors",
    "NoLedger": "ledger.errors",
    "NotResolvable": "ledger.errors",
    "Order": "ledger.models",
    "OrderNotFound": "ledger.errors",
    "OrderState": "ledger.states",
    "RegistrationConflict": "ledger.errors",
    "SchemaError": "ledger.errors",
    "SchemaTooNew": "ledger.errors",
    "TransitionResult": "ledger.store",
    "configure_logging": "ledger.logsetup",
    "load_config": "ledger.config",
    "utcnow": "ledger._clock",
}

__all__ = [
    "FINAL_STATES",
    "TRANSITIONS",
    "CancelNotPossible",
    "CancelOutcome",
    "CancelRefused",
    "CancelResult",
    "CancelSummary",
    "Config",
    "ConfigError",
    "Delivery",
    "Event",
    "IllegalTransition",
    "InvalidInput",
    "LabelSummary",
    "Ledger",
    "LedgerError",
    "LedgerUnavailable",
    "NaiveDatetimeError",
    "NoLedger",
    "NotResolvable",
    "Order",
    "OrderNotFound",
    "OrderState",
    "RegistrationConflict",
    "SchemaError",
    "SchemaTooNew",
    "TransitionResult",
    "configure_logging",
    "load_config",
    "utcnow",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ledger' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next lookup is an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
