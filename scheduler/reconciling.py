"""Reconcile: the provider's truth (get-reports, confirmed by get-report) flowing back into the
ledger, each fact with a history row that says where it came from. Never sends a cancel.

For each order the provider lists (by creation day, every page of every 10-day slice):

- unknown to the ledger, send time ahead, get-report confirms 456: registered ``scheduled`` with
  the provider's send time, the import label and reason "imported from provider";
- known, ``scheduled``, send time ahead, listed 115 and get-report confirms 115: ``cancelled``
  (cancelled outside smsledger). A not-yet-due order's listing status is undocumented (it may say
  113 while the order is still cancellable), so it alone never changes anything;
- known, ``scheduled`` or ``dispatched``, past its send time: the listing's outcome. 114 ->
  ``dispatched`` with the delivery counters; 115 -> ``cancelled`` (outside); 113 -> the counters
  recorded, looked at again on a later run;
- known and registered in the range but not listed: warning ``reconcile_missing``; absence alone
  changes nothing;
- a send time that differs by a minute or more: warning ``send_time_mismatch`` with both; the
  ledger keeps its own.

Each order's change is its own transaction (the guarded transition), so an error half way keeps
what was done. A second run right after the first writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol

from ledger import Ledger, Order, OrderState
from ledger._log import get_logger
from ledger.models import DELIVERY_COLUMNS
from scheduler.provider.client import ListedOrder, Report, ReportsPage, ReportStatus
from scheduler.provider.errors import ProviderError
from scheduler.provider.wire import PROVIDER_ZONE, REPORTS_MAX_DAYS

__all__ = [
    "DEFAULT_IMPORT_LABEL",
    "IMPORT_REASON",
    "ReconcileIncomplete",
    "ReconcileReport",
    "Reconciler",
    "cancelled_outside_reason",
    "day_slices",
    "last_days",
    "reconcile",
]

log = get_logger("smsledger.reconcile")

DEFAULT_IMPORT_LABEL = "imported"
IMPORT_REASON = "imported from provider"
#: Send times this close are the same time (the provider shows whole minutes; a registered time
#: may carry seconds).
SEND_TIME_TOLERANCE = timedelta(seconds=60)
#: Listing statuses a past order's outcome is read from.
SENDING, COMPLETED, NOT_SENT = 113, 114, 115


def cancelled_outside_reason(code: int) -> str:
    """The history reason of an order the provider reports cancelled without our cancel."""
    return f"cancelled outside smsledger (provider reports {code})"


class ReportsClient(Protocol):
    """The two read-only calls reconcile makes (an `IletiMerkeziClient`)."""

    def get_reports(self, start: date, end: date, page: int = 1) -> ReportsPage: ...
    def get_report(self, order_id: str) -> Report: ...


@dataclass
class ReconcileReport:
    """What one reconcile did (or, with `dry_run`, would do)."""

    imported: int = 0
    cancelled_outside: int = 0
    delivery_updated: int = 0
    missing: int = 0
    unchanged: int = 0
    pages: int = 0
    orders_seen: int = 0
    dry_run: bool = False
    #: (order id, what happened) for each change, in order.
    changes: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, int]:
        """The figures, as `smsledger reconcile --json` prints them (exactly these keys)."""
        return {
            "imported": self.imported,
            "cancelled_outside": self.cancelled_outside,
            "delivery_updated": self.delivery_updated,
            "missing": self.missing,
            "unchanged": self.unchanged,
            "pages": self.pages,
            "orders_seen": self.orders_seen,
        }


class ReconcileIncomplete(ProviderError):
    """A provider call failed during reconcile; `report` is what was done (and kept) so far."""

    def __init__(self, cause: ProviderError, report: ReconcileReport) -> None:
        self.report = report
        super().__init__(
            f"reconcile stopped after {report.orders_seen} orders: {cause}; what was done so far "
            "is kept, run it again to finish",
            endpoint=cause.endpoint,
            code=cause.code,
        )


def day_slices(since: date, until: date) -> Iterator[tuple[date, date]]:
    """[since, until] cut into ranges get-reports takes: `REPORTS_MAX_DAYS` days each at most
    (both ends included, so each is within the provider's limit however it counts)."""
    start = since
    while start <= until:
        end = min(start + timedelta(days=REPORTS_MAX_DAYS - 1), until)
        yield start, end
        start = end + timedelta(days=1)


def last_days(days: int, now: datetime) -> tuple[date, date]:
    """The `days` creation days up to today in the provider's zone, as (since, until)."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    until = now.astimezone(PROVIDER_ZONE).date()
    return until - timedelta(days=days - 1), until


def reconcile(
    ledger: Ledger,
    client: ReportsClient,
    *,
    since: date,
    until: date,
    dry_run: bool = False,
    import_label: str = DEFAULT_IMPORT_LABEL,
) -> ReconcileReport:
    """Read every order the provider created from `since` to `until` (days in its zone) and bring
    the ledger in line (see the module's docstring). Raises `ReconcileIncomplete` when a provider
    call fails, with what was done so far kept; ValueError when `until` is before `since`."""
    return Reconciler(ledger, client, import_label=import_label).run(
        since=since, until=until, dry_run=dry_run
    )


class Reconciler:
    """One ledger and one client; `run` reconciles a range of creation days."""

    def __init__(
        self, ledger: Ledger, client: ReportsClient, *, import_label: str = DEFAULT_IMPORT_LABEL
    ) -> None:
        self.ledger = ledger
        self.client = client
        self.import_label = import_label

    def run(self, *, since: date, until: date, dry_run: bool = False) -> ReconcileReport:
        if isinstance(since, datetime) or isinstance(until, datetime):
            raise TypeError("since and until are dates (days in the provider's zone)")
        if until < since:
            raise ValueError(f"until {until.isoformat()} is before since {since.isoformat()}")
        report = ReconcileReport(dry_run=dry_run)
        listed_ids: set[str] = set()
        try:
            for start, end in day_slices(since, until):
                page = 1
                while True:
                    answer = self.client.get_reports(start, end, page)
                    report.pages += 1
                    for listed in answer.orders:
                        if listed.order_id in listed_ids:
                            continue  # a page boundary moved while we read: seen already
                        listed_ids.add(listed.order_id)
                        report.orders_seen += 1
                        self._one(listed, report)
                    if page >= answer.pages or not answer.orders:
                        break
                    page += 1
        except ProviderError as exc:
            log.error("reconcile_incomplete", error=str(exc), **report.to_json())
            raise ReconcileIncomplete(exc, report) from exc
        self._missing(since, until, listed_ids, report)
        log.info("reconcile_done", dry_run=dry_run, **report.to_json())
        return report

    # -- one listed order ------------------------------------------------------------------------

    def _one(self, listed: ListedOrder, report: ReconcileReport) -> None:
        now = self.ledger.now()
        order = self.ledger.store.get(listed.order_id)
        if order is None:
            self._maybe_import(listed, now, report)
            return
        if listed.send_at is not None and abs(listed.send_at - order.send_at) >= (
            SEND_TIME_TOLERANCE
        ):
            log.warning(
                "send_time_mismatch",
                order_id=order.order_id,
                ledger_send_at=order.send_at.isoformat(),
                provider_send_at=listed.send_at.isoformat(),
            )
        # Due only when both sides say so: a listing status is trusted only for a past order.
        due = order.send_at <= now and (listed.send_at is None or listed.send_at <= now)
        if order.state is OrderState.SCHEDULED and not due:
            self._future(order, listed, now, report)
        elif order.state in (OrderState.SCHEDULED, OrderState.DISPATCHED) and due:
            self._past(order, listed, now, report)
        else:
            report.unchanged += 1

    def _maybe_import(self, listed: ListedOrder, now: datetime, report: ReconcileReport) -> None:
        if listed.send_at is None or listed.send_at <= now:
            report.unchanged += 1  # nothing left to cancel: not smsledger's to record
            return
        confirmed = self.client.get_report(listed.order_id)
        if confirmed.status is not ReportStatus.PENDING:
            report.unchanged += 1
            return
        if not report.dry_run:
            self.ledger.register(
                listed.order_id, listed.send_at, self.import_label, reason=IMPORT_REASON
            )
        report.imported += 1
        report.changes.append((listed.order_id, "imported"))

    def _future(
        self, order: Order, listed: ListedOrder, now: datetime, report: ReconcileReport
    ) -> None:
        """A scheduled order not yet due: only get-report's 115 moves it."""
        if listed.status != NOT_SENT:
            report.unchanged += 1
            return
        confirmed = self.client.get_report(order.order_id)
        if confirmed.code != NOT_SENT:
            report.unchanged += 1
            return
        self._cancelled_outside(order, now, report, _counters(confirmed), source="get-report")

    def _past(
        self, order: Order, listed: ListedOrder, now: datetime, report: ReconcileReport
    ) -> None:
        counters = _counters(listed)
        if listed.status == NOT_SENT:
            self._cancelled_outside(order, now, report, counters, source="get-reports")
        elif listed.status == COMPLETED and order.state is OrderState.SCHEDULED:
            if not report.dry_run:
                result = self.ledger.store.transition(
                    order.order_id,
                    OrderState.SCHEDULED,
                    OrderState.DISPATCHED,
                    now=now,
                    reason="provider reports 114: sent",
                    details={"source": "reconcile", "provider_code": COMPLETED, **counters},
                    values=_delivery_values(counters, COMPLETED, now),
                )
                if not result.applied:
                    report.unchanged += 1
                    return
            report.delivery_updated += 1
            report.changes.append((order.order_id, "dispatched"))
        elif listed.status in (SENDING, COMPLETED):
            assert listed.status is not None
            if _same_delivery(order, counters, listed.status):
                report.unchanged += 1
                return
            if not report.dry_run:
                recorded = self.ledger.store.record_delivery(
                    order.order_id,
                    order.state,
                    values=_delivery_values(counters, listed.status, now),
                    now=now,
                )
                if recorded is None:
                    report.unchanged += 1
                    return
            log.info(
                "delivery_recorded",
                order_id=order.order_id,
                provider_code=listed.status,
                source="reconcile",
                **counters,
            )
            report.delivery_updated += 1
            report.changes.append((order.order_id, "delivery"))
        else:
            report.unchanged += 1

    def _cancelled_outside(
        self,
        order: Order,
        now: datetime,
        report: ReconcileReport,
        counters: Mapping[str, int | None],
        *,
        source: str,
    ) -> None:
        if not report.dry_run:
            result = self.ledger.store.transition(
                order.order_id,
                order.state,
                OrderState.CANCELLED,
                now=now,
                reason=cancelled_outside_reason(NOT_SENT),
                details={"source": f"reconcile ({source})", "provider_code": NOT_SENT},
                values=_delivery_values(counters, NOT_SENT, now),
            )
            if not result.applied:
                report.unchanged += 1
                return
        report.cancelled_outside += 1
        report.changes.append((order.order_id, "cancelled_outside"))

    # -- orders not listed -----------------------------------------------------------------------

    def _missing(
        self, since: date, until: date, listed_ids: set[str], report: ReconcileReport
    ) -> None:
        """Warn about orders the ledger registered in the range that the provider did not list."""
        start = _day_start(since)
        end = _day_start(until + timedelta(days=1))
        for order in self.ledger.store.registered_between(start, end):
            if order.order_id in listed_ids:
                continue
            report.missing += 1
            log.warning(
                "reconcile_missing",
                order_id=order.order_id,
                state=order.state.value,
                send_at=order.send_at.isoformat(),
                hint="the provider does not list it: a wrong id, or another account",
            )


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=PROVIDER_ZONE).astimezone(UTC)


def _counters(source: ListedOrder | Report) -> dict[str, int | None]:
    return {name: getattr(source, name) for name in DELIVERY_COLUMNS}


def _delivery_values(
    counters: Mapping[str, int | None], code: int, now: datetime
) -> dict[str, Any]:
    return {**counters, "last_provider_code": code, "delivery_checked_at": now}


def _same_delivery(order: Order, counters: Mapping[str, int | None], code: int) -> bool:
    return order.last_provider_code == code and all(
        getattr(order, name) == value for name, value in counters.items()
    )
