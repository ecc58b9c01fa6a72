"""Time and the loop: the daemon, the cancel sequence, reconcile, the provider and the command.

`scheduler.reconcile(ledger, client, *, since, until, dry_run=False)` is the library call that
reads the provider's truth back into a ledger (`scheduler.reconciling`); it is loaded on first
use, so importing `scheduler.provider` alone never loads the ledger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scheduler.reconciling import ReconcileReport, reconcile

__all__ = ["ReconcileReport", "reconcile"]

#: Marks this package as smsledger's own (PyPI has an unrelated `scheduler`): see
#: `scheduler.cli.origin`.
__smsledger__ = True


def __getattr__(name: str) -> Any:
    if name in __all__:
        from scheduler import reconciling  # noqa: PLC0415 -- loads the ledger only when asked

        return getattr(reconciling, name)
    raise AttributeError(f"module 'scheduler' has no attribute {name!r}")
