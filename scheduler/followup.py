"""The provider's truth read back by the daemon: the dispatch follow-up, the `needs_attention`
re-check and the periodic reconcile. Nothing here ever sends a cancel.

- **Dispatch follow-up**: a `dispatched` order is read with get-report once
  `[reconcile] follow_up_seconds` after its send time, and again (every `follow_up_seconds`)
  while the provider says 113, up to 24 h after its send time. 114 and 113 record the delivery
  counters; 115 -> `cancelled` (outside smsledger); 455 -> `not_found`.
- **needs_attention re-check**: every `[reconcile] recheck_seconds` until 24 h after its send
  time: 115, or 455 after a cancel of ours -> `cancelled` ("verified later"); 113/114 ->
  `too_late`; 456 (and 455 with no cancel sent) stay for a person.
- **Reconcile**: every `[reconcile] every_seconds` (0: never), by one daemon per period (a turn
  taken on the job's row, `ledger.jobs.take_turn`), over the last `[reconcile] days`.

The daemon runs these on a thread of their own after its pass has started the cancel work, one
run at a time and at most every `LOOK_EVERY`, so a slow provider or a long reconcile never holds
a pass, a cancel worker or a cancel claim. Each step reads at most `READS_PER_RUN` orders a run,
each under a claim (so two daemons do not read the same order), and a provider error ends the
run's reads until the next run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol

import structlog

from ledger import Ledger, LedgerError, Order, OrderState, jobs
from ledger._log import get_logger
from ledger.config import ReconcileConfig
from ledger.models import DELIVERY_COLUMNS
from scheduler.decisions import Reading, after_follow_up, after_recheck
from scheduler.provider.client import Report, ReportsPage
from scheduler.provider.errors import ProviderAuthError, ProviderError
from scheduler.reconciling import ReconcileIncomplete, Reconciler, last_days

__all__ = [
    "LOOK_EVERY",
    "READS_PER_RUN",
    "READ_WINDOW",
    "RECONCILE_JOB",
    "ProviderTruth",
    "TruthReport",
]

log = get_logger("smsledger.daemon")

#: The name of the reconcile job's row in ``smsledger_jobs``.
RECONCILE_JOB = "reconcile"
#: Orders are read until this long after their send time, not later.
READ_WINDOW = timedelta(hours=24)
#: Orders each step (follow-up, re-check) reads in one run at most.
READS_PER_RUN = 20
#: A run starts at most this often (by the daemon's clock): its queries cover a day of orders.
LOOK_EVERY = timedelta(seconds=30)
#: Codes after which a dispatched order is read again (the provider's word is not final yet).
_FOLLOW_AGAIN = (113, 456)


class ReadsClient(Protocol):
    """The read-only calls made here (an `IletiMerkeziClient`): no cancel can be sent."""

    def get_report(self, order_id: str) -> Report: ...
    def get_reports(self, start: date, end: date, page: int = 1) -> ReportsPage: ...


class _Stopped(Exception):
    """The daemon is stopping or the run's deadline passed: leave the rest for a later run."""


@dataclass
class TruthReport:
    """What one run did (counts of orders, and whether this daemon reconciled)."""

    followed_up: int = 0
    rechecked: int = 0
    moved: int = 0
    reconciled: bool = False
    error: str | None = None

    def counts(self) -> dict[str, object]:
        return {
            "followed_up": self.followed_up,
            "rechecked": self.rechecked,
            "moved": self.moved,
            "reconciled": self.reconciled,
        }


class ProviderTruth:
    """One daemon's follow-up, re-check and reconcile turns; `kick` starts a run on its thread."""

    def __init__(
        self,
        ledger: Ledger,
        client: ReadsClient,
        config: ReconcileConfig,
        *,
        owner: str,
        lease: timedelta,
        clock: Callable[[], datetime],
        lease_clock: Callable[[], datetime],
        stopping: threading.Event,
    ) -> None:
        self._ledger = ledger
        self._store = ledger.store
        self._client = client
        self._config = config
        self._owner = owner
        self._lease = lease
        self._clock = clock
        self._lease_clock = lease_clock
        self._stopping = stopping
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._next_look: datetime | None = None
        #: The last run's report (None before the first ends).
        self.last: TruthReport | None = None

    # -- the thread ------------------------------------------------------------------------------

    def kick(self) -> bool:
        """Start a run on a thread of its own, unless one runs or the last began < LOOK_EVERY
        ago (by the daemon's clock)."""
        with self._lock:
            if self._stopping.is_set() or (self._thread is not None and self._thread.is_alive()):
                return False
            now = self._clock()
            if self._next_look is not None and now < self._next_look:
                return False
            self._next_look = now + LOOK_EVERY
            self._thread = threading.Thread(
                target=self._safe_run, name="smsledger-provider-truth", daemon=True
            )
            self._thread.start()
        return True

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the running run to end; False if `timeout` ran out first."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _safe_run(self) -> None:
        try:
            self.last = self.run()
        except LedgerError as exc:
            log.error("provider_truth_failed", error=str(exc))
        except Exception:  # a bug must not end the daemon's reads silently
            log.exception("provider_truth_crashed")

    # -- one run ---------------------------------------------------------------------------------

    def run(self) -> TruthReport:
        """Follow up dispatched orders, re-check needs_attention ones, reconcile if our turn."""
        report = TruthReport()
        now = self._clock()
        try:
            self._follow_up(now, report)
            self._recheck(now, report)
        except _Stopped:
            return report
        except ProviderAuthError as exc:
            log.error("provider_credentials_rejected", detail=str(exc))
            report.error = str(exc)
            return report
        except ProviderError as exc:
            # The provider is failing: the next run (LOOK_EVERY later) tries again, reconcile too.
            log.warning("provider_truth_read_failed", error=type(exc).__name__, detail=str(exc))
            report.error = str(exc)
            return report
        self._reconcile(report)
        if report.followed_up or report.rechecked or report.reconciled:
            log.info("provider_truth_done", **report.counts())
        return report

    def _check_going(self) -> None:
        if self._stopping.is_set():
            raise _Stopped("daemon stopping")

    def _follow_up(self, now: datetime, report: TruthReport) -> None:
        after = timedelta(seconds=self._config.follow_up_seconds)
        due = jobs.due_reads(
            self._store,
            OrderState.DISPATCHED,
            sent_after=now - READ_WINDOW,
            sent_by=now - after,
            read_before=now - after,
            reread_codes=_FOLLOW_AGAIN,
            limit=READS_PER_RUN,
        )
        for order in due:
            moved = self._read(order, after_follow_up, source="follow-up")
            if moved is not None:
                report.followed_up += 1
                report.moved += moved

    def _recheck(self, now: datetime, report: TruthReport) -> None:
        due = jobs.due_reads(
            self._store,
            OrderState.NEEDS_ATTENTION,
            sent_after=now - READ_WINDOW,
            sent_by=None,
            read_before=now - timedelta(seconds=self._config.recheck_seconds),
            reread_codes=None,
            limit=READS_PER_RUN,
        )
        for order in due:
            sent = order.cancel_attempts > 0

            def decide(answer: Report, sent: bool = sent) -> Reading:
                return after_recheck(answer, cancel_sent=sent)

            moved = self._read(order, decide, source="re-check")
            if moved is not None:
                report.rechecked += 1
                report.moved += moved

    def _read(
        self, order: Order, decide: Callable[[Report], Reading], *, source: str
    ) -> bool | None:
        """Read one order under a claim and apply what the answer means: True when its state
        moved, False when it stays (the answer recorded), None when it was not read."""
        self._check_going()
        lease_now = self._lease_clock()
        claimed = self._store.claim(
            order.order_id,
            order.state,
            owner=self._owner,
            expires_at=lease_now + self._lease,
            now=lease_now,
        )
        if claimed is None:
            return None  # another daemon reads it, or its state moved on
        try:
            answer = self._client.get_report(order.order_id)
        except BaseException:
            self._store.release(order.order_id, self._owner)
            raise
        reading = decide(answer)
        now = self._clock()
        counters = {name: getattr(answer, name) for name in DELIVERY_COLUMNS}
        values = {
            **{name: value for name, value in counters.items() if value is not None},
            "last_provider_code": answer.code,
            "delivery_checked_at": now,
        }
        with structlog.contextvars.bound_contextvars(order_id=order.order_id):
            if reading.state is None:
                self._store.record_delivery(order.order_id, order.state, values=values, now=now)
                self._store.release(order.order_id, self._owner)
                log.info(
                    "delivery_recorded" if source == "follow-up" else "needs_attention_rechecked",
                    provider_code=answer.code,
                    source=source,
                    read_again=reading.again,
                    **counters,
                )
                return False
            result = self._store.transition(
                order.order_id,
                order.state,
                reading.state,
                now=now,
                reason=reading.reason,
                details={"source": source, "provider_code": answer.code, **counters},
                values=values,
            )
            if not result.applied:
                self._store.release(order.order_id, self._owner)
        return result.applied

    # -- reconcile -------------------------------------------------------------------------------

    def _reconcile(self, report: TruthReport) -> None:
        every = self._config.every_seconds
        if every <= 0 or self._stopping.is_set():
            return
        period = timedelta(seconds=every)
        lease_now = self._lease_clock()
        won = jobs.take_turn(
            self._store,
            RECONCILE_JOB,
            owner=self._owner,
            now=lease_now,
            every=period,
            lease=period,
        )
        if not won:
            return
        report.reconciled = True
        since, until = last_days(self._config.days, self._clock())
        log.info("reconcile_started", owner=self._owner, since=str(since), until=str(until))
        try:
            Reconciler(
                self._ledger,
                _Bounded(self._client, self._check_going),
                import_label=(self._config.import_label),
            ).run(since=since, until=until)
        except ReconcileIncomplete as exc:
            report.error = str(exc)  # logged as reconcile_incomplete; what was done is kept
        finally:
            jobs.end_turn(self._store, RECONCILE_JOB, owner=self._owner)


class _Bounded:
    """The client, for reconcile: each call first checks that the daemon is still going (a
    stopping daemon ends its reconcile at the next call, keeping what was done)."""

    def __init__(self, client: ReadsClient, check: Callable[[], None]) -> None:
        self._client = client
        self._check = check

    def _go(self) -> None:
        try:
            self._check()
        except _Stopped as why:
            raise ProviderError(f"reconcile left for a later run: {why}") from None

    def get_reports(self, start: date, end: date, page: int = 1) -> ReportsPage:
        self._go()
        return self._client.get_reports(start, end, page)

    def get_report(self, order_id: str) -> Report:
        self._go()
        return self._client.get_report(order_id)
