"""The cancel-and-verify sequence for one claimed order: get-report, cancel-order, get-report.

The order is recorded `cancelling` *before* cancel-order is sent, and every cancel-order is
followed by a verifying get-report, whatever it answered. Reports lag behind cancels (the
provider is eventually consistent), so after a cancel that may have reached the provider a 456
only means "read again": another cancel is sent only when the order still reads 456 once the
settle period has passed since that cancel was sent. So at most one cancel reaches the provider
per order unless the provider itself showed, long enough, that the first one did not take.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from ledger._log import get_logger
from ledger.api import Ledger
from ledger.leads import Source
from ledger.margins import Margins, Window
from ledger.models import Order
from ledger.states import OrderState
from scheduler.decisions import (
    Decision,
    Next,
    after_precheck,
    after_verify,
    backoff_delay,
    margin_closed,
    settle_pause,
    too_many_cancels,
    unresolved,
)
from scheduler.probing import LeadRecorder
from scheduler.provider.client import IletiMerkeziClient, Report
from scheduler.provider.errors import ProviderAuthError, ProviderError, ProviderTransientError

__all__ = ["CancelSequence"]

log = get_logger("smsledger.daemon")

#: The longest wait between two reads of a failing provider.
BACKOFF_CAP_SECONDS = 30.0
#: Cancels that may have reached the provider (not those refused with a 503) before a person
#: must look, even while the provider says pending.
MAX_CANCEL_ATTEMPTS = 5
#: Seconds a cancel that may have reached the provider gets before a 456 counts against it.
SETTLE_SECONDS = 20.0


class _Abandon(Exception):
    """Leave the order where it is for a later pass (stopping, claim lost, credentials rejected)."""


class CancelSequence:
    """Drives claimed orders to a final state; one instance serves every worker thread."""

    def __init__(
        self,
        ledger: Ledger,
        client: IletiMerkeziClient,
        *,
        owner: str,
        lease: timedelta,
        stopping: threading.Event,
        clock: Callable[[], datetime],
        sleep: Callable[[float], object] | None = None,
        rng: random.Random | None = None,
        max_cancel_attempts: int = MAX_CANCEL_ATTEMPTS,
        settle_seconds: float = SETTLE_SECONDS,
        lease_clock: Callable[[], datetime] | None = None,
        widen: Callable[[], timedelta] | None = None,
        notify: Callable[[str, str], object] | None = None,
        recorder: LeadRecorder | None = None,
    ) -> None:
        """`widen` gives what both margins grow by now (the clock skew's size); `notify` is told
        ("credentials_rejected", detail) when the provider rejects our credentials; `recorder`
        keeps the get-report answers that bound the provider's queue lead."""
        self._ledger = ledger
        self._widen = widen or (lambda: timedelta(0))
        self._notify = notify
        self._recorder = recorder
        self._store = ledger.store
        self._client = client
        self._owner = owner
        self._lease = lease
        self._stopping = stopping
        self._clock = clock
        # Backoff waits end early when the daemon stops, so shutdown never waits out a backoff.
        self._sleep = sleep or stopping.wait
        self._rng = rng or random.Random()
        self._max_attempts = max_cancel_attempts
        if not math.isfinite(settle_seconds) or settle_seconds < 0:
            raise ValueError(f"settle_seconds must be a finite number >= 0, got {settle_seconds!r}")
        self._settle_period = timedelta(seconds=settle_seconds)
        # Claims are timed by the lease clock (the database's on PostgreSQL), never by `clock`.
        self._lease_clock = lease_clock or ledger.store.lease_now

    @property
    def _margins(self) -> Margins:
        """The ledger's margins, widened by the provider's clock skew as it stands now."""
        return self._ledger.margins.widened(self._widen())

    def run(self, order: Order) -> Order | None:
        """Work one order we hold the claim on; return it as it ends (None if left for later).

        A `cancel_requested` order starts with the pre-check; a `cancelling` one (recovered from a
        process that is gone) starts with verification: a cancel is never resent blindly.
        """
        job = _Job(order)
        if job.cancel_sent:
            # Recovered: the cancel (if any) left right after `cancelling` was recorded.
            job.settle_from(order.updated_at, self._settle_period)
        with structlog.contextvars.bound_contextvars(order_id=order.order_id):
            try:
                return self._run(job)
            except _Abandon as why:
                self._store.release(order.order_id, self._owner)
                log.info("cancel_left_for_later", reason=str(why), state=job.state.value)
                return None

    def _run(self, job: _Job) -> Order | None:
        if job.state is OrderState.CANCEL_REQUESTED:
            decision = self._check(job, verify=False)
        else:
            log.warning("cancel_recovering", previous_attempts=job.attempts)
            decision = self._check(job, verify=True)
        while decision.next is not Next.FINISH:
            if decision.next is Next.READ_AGAIN:
                decision = self._settle(job)
                continue
            if self._window(job) in (Window.REFUSE, Window.PAST):
                decision = margin_closed(job.cancel_sent)
                break
            if job.delivered >= self._max_attempts:
                decision = too_many_cancels(job.delivered, job.attempts)
                break
            if job.refused_in_row:
                # The last cancel was refused (503): pause before the next, as for a read.
                delay = backoff_delay(job.refused_in_row - 1, cap=self._pause_cap(), rng=self._rng)
                if not self._margins.retry_fits(self._clock(), delay, job.order.send_at):
                    decision = margin_closed(job.cancel_sent)
                    break
                self._check_stopping()
                log.info("cancel_retry", refused=job.refused_in_row, delay_seconds=round(delay, 3))
                self._sleep(delay)
            self._check_stopping()
            job.note_resend(self._clock())
            if not self._record_cancelling(job):
                return job.order
            self._send_cancel(job)
            decision = self._check(job, verify=True)
        assert decision.state is not None
        result = self._store.transition(
            job.order.order_id,
            job.state,
            decision.state,
            now=self._clock(),
            reason=decision.reason,
            details={
                "attempts": job.attempts,
                "maybe_delivered": job.delivered,
                "provider_code": job.last_code,
            },
            values={
                "last_provider_code": job.last_code,
                "check_attempts": job.order.check_attempts + job.checks,
            },
            expect_owner=self._owner,
        )
        if not result.applied:
            log.info("cancel_claim_lost", state=result.order.state.value if result.order else None)
        return result.order

    def _check(self, job: _Job, *, verify: bool) -> Decision:
        """Read the order at the provider (with retries) and decide what its answer means."""
        report = self._read(job)
        if isinstance(report, Decision):
            return report
        job.last_code = report.code
        if not verify:
            return after_precheck(report)
        now = self._clock()
        where = self._margins.window(job.order.send_at, now)
        settling = job.settle_until is not None and now < job.settle_until
        return after_verify(report, where, cancel_sent=job.cancel_sent, settling=settling)

    def _settle(self, job: _Job) -> Decision:
        """Wait a growing pause (within the settle period, outside the refuse margin), read again.

        The order read 456 after a cancel that may have reached the provider, and that cancel is
        younger than the settle period: the report may simply lag behind it.
        """
        assert job.settle_until is not None
        now = self._clock()
        left = (job.settle_until - now).total_seconds()
        delay = settle_pause(job.settle_reads, left, cap=self._pause_cap(), rng=self._rng)
        if not self._margins.retry_fits(now, delay, job.order.send_at):
            return margin_closed(job.cancel_sent)
        self._check_stopping()
        job.settle_reads += 1
        log.info(
            "cancel_settling",
            reads=job.settle_reads,
            delay_seconds=round(delay, 3),
            settle_left_seconds=round(left, 3),
        )
        self._sleep(delay)
        # As after a backoff: a wait plus a worst-case call must never outlast the claim.
        self._renew_lease(job, force=True)
        return self._check(job, verify=True)

    def _pause_cap(self) -> float:
        # Never wait so long that our claim could lapse while we sleep.
        return min(BACKOFF_CAP_SECONDS, self._lease.total_seconds() / 4)

    def _window(self, job: _Job) -> Window:
        return self._margins.window(job.order.send_at, self._clock())

    def _record_cancelling(self, job: _Job) -> bool:
        """Record `cancelling` (with the attempt) before the call; False if the claim is lost.

        A fenced write: it applies only while our claim is live by the lease clock, and renews it
        in the same statement, so a worker that lost or let lapse its claim never sends.
        """
        now = self._clock()
        lease_now = self._lease_clock()
        attempt = job.attempts + 1
        result = self._store.transition(
            job.order.order_id,
            job.state,
            OrderState.CANCELLING,
            now=now,
            reason=job.resend_reason or f"sending cancel-order (attempt {attempt})",
            details={"attempt": attempt, **job.resend_details},
            increment=("cancel_attempts",),
            values={"claim_expires_at": lease_now + self._lease},
            expect_owner=self._owner,
            unexpired_at=lease_now,
        )
        if not result.applied:
            state = result.order.state.value if result.order else None
            log.info("cancel_claim_lost", state=state)
            job.order = result.order or job.order
            return False
        job.attempts = attempt
        job.state = OrderState.CANCELLING
        job.lease_until = lease_now + self._lease
        return True

    def _check_stopping(self) -> None:
        if self._stopping.is_set():
            raise _Abandon("daemon stopping")

    def _send_cancel(self, job: _Job) -> None:
        """Send cancel-order once; its answer is only a hint, verification decides."""
        sent_at = self._clock()
        with structlog.contextvars.bound_contextvars(attempt=job.attempts):
            try:
                answer = self._client.cancel_order(job.order.order_id)
            except ProviderError as exc:
                # A 503 or a refused connection proves this cancel never reached the provider.
                delivered = not isinstance(exc, ProviderTransientError) or exc.maybe_delivered
                log.warning(
                    "cancel_unanswered",
                    error=type(exc).__name__,
                    code=exc.code,
                    detail=str(exc),
                    maybe_delivered=delivered,
                )
            else:
                delivered = True
                log.info("cancel_sent", answer=answer.value)
        if delivered:
            job.delivered += 1
            job.settle_from(sent_at, self._settle_period)
        else:
            job.refused_in_row += 1

    def _read(self, job: _Job) -> Report | Decision:
        """get-report with backoff on transient errors, never past the refuse margin."""
        failures = 0
        while True:
            # After a failed read and a backoff, renew unconditionally: a worst-case call (four
            # timeouts) plus a wait of a quarter lease must never outlast the claim.
            self._renew_lease(job, force=failures > 0)
            job.checks += 1
            started, began = self._clock(), time.perf_counter()
            try:
                with structlog.contextvars.bound_contextvars(
                    attempt=job.attempts, check=job.checks
                ):
                    report = self._client.get_report(job.order.order_id)
                if self._recorder is not None:
                    self._recorder.observe(
                        job.order,
                        report,
                        started=started,
                        clock=self._clock,
                        duration_ms=(time.perf_counter() - began) * 1000,
                        source=Source.PRECHECK if job.attempts == 0 else Source.VERIFY,
                        cancel_may_have_arrived=job.cancel_sent,
                    )
                return report
            except ProviderAuthError as exc:
                log.error("provider_credentials_rejected", detail=str(exc))
                if self._notify is not None:
                    self._notify("credentials_rejected", str(exc))
                raise _Abandon("credentials rejected") from exc
            except ProviderError as exc:
                delay = backoff_delay(failures, cap=self._pause_cap(), rng=self._rng)
                failures += 1
                why = f"{type(exc).__name__}: {exc}"
                if not self._margins.retry_fits(self._clock(), delay, job.order.send_at):
                    return unresolved(job.cancel_sent, why)
                self._check_stopping()
                log.info("provider_retry", failures=failures, delay_seconds=round(delay, 3))
                self._sleep(delay)

    def _renew_lease(self, job: _Job, *, force: bool = False) -> None:
        """Keep our claim alive across long retry sequences; lose it, and we stop working.

        Renewed once a quarter of the lease is gone: the three quarters left cover one call (at
        most half a lease, see `lease_for`) and one backoff wait (at most a quarter). A claim that
        expired by the lease clock is lost even if nobody took it yet: from its expiry another
        daemon may be taking it, so we never renew it, and leave the order to recovery.
        """
        now = self._lease_clock()
        fresh = job.lease_until is not None and job.lease_until - now > self._lease * 3 / 4
        if fresh and not force:
            return
        renewed = self._store.renew(
            job.order.order_id,
            job.state,
            owner=self._owner,
            expires_at=now + self._lease,
            now=now,
        )
        if renewed is None:
            raise _Abandon("claim lost")
        job.lease_until = renewed.claim_expires_at


@dataclass
class _Job:
    """The per-order state of one run of the sequence (the sequence object is shared)."""

    order: Order
    state: OrderState = field(init=False)
    #: Cancel attempts recorded, including those refused with a 503.
    attempts: int = field(init=False)
    #: Cancels that may have reached the provider; a recovered order counts all its attempts.
    delivered: int = field(init=False)
    #: Cancels refused (503, connection refused) since the last one that may have arrived.
    refused_in_row: int = 0
    #: When the last cancel that may have reached the provider was sent, and when its settle
    #: period ends (a 456 before then means "read again").
    sent_at: datetime | None = None
    settle_until: datetime | None = None
    settle_reads: int = 0
    #: What the next `cancelling` record says about why it is sent (see `note_resend`).
    resend_reason: str | None = None
    resend_details: dict[str, object] = field(default_factory=dict)
    lease_until: datetime | None = field(init=False)
    checks: int = 0
    last_code: int | None = None

    def __post_init__(self) -> None:
        self.state = self.order.state
        self.attempts = self.order.cancel_attempts
        self.delivered = self.attempts if self.state is OrderState.CANCELLING else 0
        self.lease_until = self.order.claim_expires_at

    @property
    def cancel_sent(self) -> bool:
        """Whether a cancel may have reached the provider (a recovered one may have, before the
        crash); False when none was sent or each was refused with a 503 or a refused connection."""
        return self.delivered > 0

    def settle_from(self, sent_at: datetime, settle: timedelta) -> None:
        """Start the settle period of a cancel that may have reached the provider at `sent_at`."""
        self.refused_in_row = 0
        self.sent_at = sent_at
        self.settle_until = sent_at + settle
        self.settle_reads = 0

    def note_resend(self, now: datetime) -> None:
        """Say, for the next `cancelling` record, why another cancel is sent (none if first)."""
        attempt = self.attempts + 1
        if self.attempts == 0:
            self.resend_reason, self.resend_details = None, {}
        elif self.refused_in_row:
            self.resend_reason = (
                f"re-sending cancel-order (attempt {attempt}): the last one was refused"
                " and never reached the provider"
            )
            self.resend_details = {"resend": True, "after": "refused"}
        else:
            pending = round((now - self.sent_at).total_seconds(), 1) if self.sent_at else None
            since = f" {pending:g} s" if pending is not None else ""
            self.resend_reason = (
                f"re-sending cancel-order (attempt {attempt}): still pending (456){since} after"
                " a cancel that may have reached the provider"
            )
            self.resend_details = {"resend": True, "after": "pending", "pending_seconds": pending}
