"""The cancel-and-verify sequence for one claimed order: get-report, cancel-order, get-report.

The order is recorded `cancelling` *before* cancel-order is sent, and every cancel-order is
followed by a verifying get-report, whatever it answered. A further cancel is sent only after a
verification proved the order still pending (456), so at most one cancel reaches the provider
per order unless the provider itself showed the first one did not take.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from ledger.api import Ledger
from ledger.margins import Window, window
from ledger.models import Order
from ledger.states import OrderState
from scheduler.client import IletiMerkeziClient, Report
from scheduler.decisions import (
    Decision,
    Next,
    after_precheck,
    after_verify,
    backoff_delay,
    margin_closed,
    retry_fits,
    unresolved,
)
from scheduler.errors import ProviderAuthError, ProviderError, ProviderTransientError

__all__ = ["CancelSequence"]

log = structlog.get_logger("smsledger.daemon")

#: The longest wait between two reads of a failing provider.
BACKOFF_CAP_SECONDS = 30.0
#: Cancels sent to one order before a person must look, even while the provider says pending.
MAX_CANCEL_ATTEMPTS = 5


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
        settle_seconds: float = 20.0,
        lease_clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._ledger = ledger
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
        self._settle_seconds = settle_seconds
        # Claims are timed by the lease clock (the database's on PostgreSQL), never by `clock`.
        self._lease_clock = lease_clock or ledger.store.lease_now

    def run(self, order: Order) -> Order | None:
        """Work one order we hold the claim on; return it as it ends (None if left for later).

        A `cancel_requested` order starts with the pre-check; a `cancelling` one (recovered from a
        process that is gone) starts with verification: a cancel is never resent blindly.
        """
        job = _Job(order)
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
        while decision.next is Next.SEND_CANCEL:
            if self._window(job) in (Window.REFUSE, Window.PAST):
                decision = margin_closed(job.cancel_sent)
                break
            if job.attempts >= self._max_attempts:
                decision = Decision.finish(
                    OrderState.NEEDS_ATTENTION,
                    f"{job.attempts} cancels sent and the provider still reports the order pending",
                )
                break
            self._check_stopping()
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
            details={"attempts": job.attempts, "provider_code": job.last_code},
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
        return after_verify(report, self._window(job), cancel_sent=job.cancel_sent)

    def _window(self, job: _Job) -> Window:
        return window(
            job.order.send_at, self._clock(), self._ledger.warn_before, self._ledger.refuse_before
        )

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
            reason=f"sending cancel-order (attempt {attempt})",
            details={"attempt": attempt},
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
        with structlog.contextvars.bound_contextvars(attempt=job.attempts):
            try:
                answer = self._client.cancel_order(job.order.order_id)
            except ProviderError as exc:
                # A 503 or a refused connection proves this cancel never reached the provider.
                delivered = not isinstance(exc, ProviderTransientError) or exc.maybe_delivered
                job.cancel_sent = job.cancel_sent or delivered
                log.warning(
                    "cancel_unanswered",
                    error=type(exc).__name__,
                    code=exc.code,
                    detail=str(exc),
                    maybe_delivered=delivered,
                )
                return
            job.cancel_sent = True
            log.info("cancel_sent", answer=answer.value)

    def _read(self, job: _Job) -> Report | Decision:
        """get-report with backoff on transient errors, never past the refuse margin."""
        failures = 0
        while True:
            # After a failed read and a backoff, renew unconditionally: a worst-case call (four
            # timeouts) plus a wait of a quarter lease must never outlast the claim.
            self._renew_lease(job, force=failures > 0)
            job.checks += 1
            try:
                with structlog.contextvars.bound_contextvars(
                    attempt=job.attempts, check=job.checks
                ):
                    return self._client.get_report(job.order.order_id)
            except ProviderAuthError as exc:
                log.error("provider_credentials_rejected", detail=str(exc))
                raise _Abandon("credentials rejected") from exc
            except ProviderError as exc:
                # Never wait so long that our claim could lapse while we sleep.
                cap = min(BACKOFF_CAP_SECONDS, self._lease.total_seconds() / 4)
                delay = backoff_delay(failures, cap=cap, rng=self._rng)
                failures += 1
                why = f"{type(exc).__name__}: {exc}"
                fits = retry_fits(
                    self._clock(), delay, job.order.send_at, self._ledger.refuse_before
                )
                if not fits:
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
    attempts: int = field(init=False)
    cancel_sent: bool = field(init=False)
    lease_until: datetime | None = field(init=False)
    checks: int = 0
    last_code: int | None = None

    def __post_init__(self) -> None:
        self.state = self.order.state
        self.attempts = self.order.cancel_attempts
        # A recovered `cancelling` order may have had its cancel sent before the crash.
        self.cancel_sent = self.state is OrderState.CANCELLING
        self.lease_until = self.order.claim_expires_at
