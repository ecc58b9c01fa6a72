"""smsledger's durable record: scheduled orders, their states and an append-only history.

Importing this package configures nothing (no database, and no logging but the `NullHandler`
on the ``smsledger`` logger that libraries add): see `Ledger`, `ledger._log` and
`configure_logging`.
"""

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
