"""The daemon: a pass over the ledger every `poll_seconds`, triggered by APScheduler.

APScheduler only triggers; `Daemon.run_pass` does the work and can be called directly (tests call
it with a frozen clock). The ledger is the source of truth: no job per order in APScheduler's store.

A pass, in order:
0. check that the SQLite ledger file is still the one opened (a deleted or replaced file ends the
   daemon with status 1 instead of writing into a file nobody reads);
1. sweep: orders still pending at their send time end final (`needs_attention` when a cancel
   may have been sent, `cancel_refused` when none can have been), so nothing stays pending forever;
2. recover `cancelling` orders whose claimant is gone (lease expired, or a dead process of this
   host): they are verified first, never resent blindly;
3. refuse `cancel_requested` orders whose dispatch is now inside `refuse_before`;
4. warn once per order about pending cancels inside `warn_before` (`cancel_at_risk`);
5. dispatch: `scheduled` orders whose send time has passed become `dispatched`;
6. cancel: claim `cancel_requested` orders and run the cancel-and-verify sequence on worker
   threads, up to `max_concurrent_cancels` at once. A worker that finishes claims the next order
   itself, so throughput does not wait for the next pass.
7. probe (`scheduler.probing`): with no cancel waiting, read a few `scheduled` orders near
   dispatch on a thread of its own, to learn the provider's queue lead;
8. the provider's truth (`scheduler.followup`, with `[reconcile]`): the dispatch follow-up, the
   needs_attention re-check and, one daemon per period, reconcile, on a thread of their own, so
   they never hold a pass or a cancel. None of them sends a cancel.

Claims are timed by the lease clock (`Store.lease_now`: the database's on PostgreSQL), so daemons
on hosts whose clocks disagree never take each other's live claims; business time (margins, send
times, history) is the daemon's `clock`.
"""

from __future__ import annotations

import importlib.metadata
import os
import random
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from ledger import Config, ConfigError, Ledger, LedgerError, Order, OrderState, heartbeats, utcnow
from ledger._log import get_logger
from ledger.config import AlertsConfig, ReconcileConfig, SchedulerConfig
from ledger.logsetup import configure_logging, reopen_log_files
from ledger.margins import MARGIN_CLOSED, SEND_TIME_PASSED_UNSENT, Margins
from ledger.outbox import RATE_LIMIT, AlertPolicy, raise_alert
from scheduler.alerting import AlertSender
from scheduler.cancelling import CancelSequence
from scheduler.claims import (
    forget_live_owner,
    lease_for,
    make_owner,
    note_live_owner,
    owner_is_gone,
)
from scheduler.followup import ProviderTruth
from scheduler.probing import DEFAULT_MAX_PROBES_PER_ORDER, LeadRecorder, Prober
from scheduler.provider.client import CallObserved, IletiMerkeziClient
from scheduler.skew import SkewEstimator

__all__ = [
    "Daemon",
    "PassReport",
    "ServeSignals",
    "lease_for",
    "make_owner",
    "owner_is_gone",
    "run_daemon",
]

log = get_logger("smsledger.daemon")

#: Orders moved per transaction by the refuse and dispatch steps.
BATCH = 1000
#: Cancel requests a worker claims in one transaction when none is ready.
CLAIM_BATCH = 8
#: How long an order left for later (e.g. credentials rejected) waits before another try.
RETRY_LATER = timedelta(seconds=5)
#: How long `stop` lets in-flight sequences finish before leaving them to recovery.
SHUTDOWN_GRACE_SECONDS = 5.0
#: How often `serve` checks its stop signal and the scheduler's next run.
SERVE_TICK_SECONDS = 0.2
#: A next pass due this much beyond one interval away means the wall clock stepped back.
CLOCK_STEP_TOLERANCE = timedelta(seconds=1)
_PASS_JOB = "smsledger-pass"  # noqa: S105 (a job id, not a password)
#: An idle daemon logs `daemon_idle` this often, so a hung one is told from an idle one.
IDLE_LOG_SECONDS = 300.0


def _version() -> str:
    try:
        return importlib.metadata.version("smsledger")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of `path`, None when it does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


@dataclass
class PassReport:
    """What one pass did (counts of orders)."""

    swept: int = 0
    recovered: int = 0
    refused: int = 0
    warned: int = 0
    dispatched: int = 0
    started: int = 0
    finished: list[Order] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """The figures a log line about the pass carries."""
        return {
            "swept": self.swept,
            "recovered": self.recovered,
            "refused": self.refused,
            "warned": self.warned,
            "dispatched": self.dispatched,
            "started": self.started,
            "finished": len(self.finished),
        }


class ServeSignals:
    """What `Daemon.serve`'s signal handlers leave for its loop: the handlers only set flags.

    A Python signal handler runs on the main thread between any two bytecodes, possibly while
    that thread holds the log writer's lock, which is not reentrant: a handler that logged could
    deadlock the daemon, which would then ignore SIGTERM. So `serve` logs the stop and reopens
    the log (SIGHUP) on its next tick instead.
    """

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.hangup = threading.Event()
        #: The first stop signal received, for the ``daemon_stopping`` line.
        self.received: int | None = None

    def on_stop(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        self.stop.set()

    def on_hangup(self, _signum: int, _frame: FrameType | None) -> None:
        self.hangup.set()


class Daemon:
    """Passes over one ledger with one provider client; safe beside other daemons."""

    def __init__(
        self,
        ledger: Ledger,
        client: IletiMerkeziClient,
        *,
        max_concurrent_cancels: int = 16,
        lease: timedelta | None = None,
        owner: str | None = None,
        clock: Callable[[], datetime] | None = None,
        lease_clock: Callable[[], datetime] | None = None,
        sleep: Callable[[float], object] | None = None,
        rng: random.Random | None = None,
        cancel_settle_seconds: float = 20.0,
        alerts: AlertsConfig | None = None,
        max_clock_skew_seconds: float = SchedulerConfig.max_clock_skew_seconds,
        alert_transport: Any = None,
        probe_orders_per_day: int = 0,
        max_probes_per_order: int = DEFAULT_MAX_PROBES_PER_ORDER,
        reconcile: ReconcileConfig | None = None,
    ) -> None:
        """`lease` defaults to `lease_for` the client's call deadline; `clock` (business time)
        to the ledger's; `lease_clock` (claims) to the database's (`Store.lease_now`).

        `alerts` (with a `webhook_url`) records alerts in the ledger and sends them on a thread
        of their own while `serve` runs; `max_clock_skew_seconds` is where `clock_skew` starts.
        Probing is off unless `probe_orders_per_day` is set (`smsledger run` sets it from
        `[observe]`); the answers of the cancel sequence are kept either way.
        `reconcile` turns on the provider's truth read back after each pass (`scheduler.followup`:
        dispatch follow-up, needs_attention re-check, periodic reconcile); None leaves it off.
        """
        if lease is None:
            lease = lease_for(client.call_deadline)
        self.ledger = ledger
        self.client = client
        self.owner = owner or make_owner()
        note_live_owner(self.owner)
        #: Orders left for later (credentials rejected, stopping) wait this long before a retry.
        self._cooldown: dict[str, datetime] = {}
        self._store = ledger.store
        self._clock = clock or ledger.now
        self._lease_clock = lease_clock or self._store.lease_now
        self._max = max_concurrent_cancels
        self._lease = lease
        self._stopping = threading.Event()
        self._lock = threading.Condition()
        self._inflight: set[str] = set()
        self._ready: deque[Order] = deque()
        self._workers = 0
        #: Finished orders, kept only while a waited pass collects them (`_collecting` > 0).
        self._finished: list[Order] = []
        self._collecting = 0
        self._ledger_file = self._store.database_file
        self._ledger_identity = _file_identity(self._ledger_file) if self._ledger_file else None
        #: Set once the ledger file was found removed or replaced: the daemon must end.
        self.ledger_lost = threading.Event()
        self.version = _version()
        self.started_at = utcnow()
        #: The provider's clock against ours, fed by every provider answer's Date header.
        self.skew = SkewEstimator()
        self.max_clock_skew_seconds = max_clock_skew_seconds
        observe = getattr(client, "observe", None)
        if observe is not None:
            observe(self._on_call)
        #: When the provider last rejected our credentials (None: not since the last good answer).
        self.credentials_rejected_at: datetime | None = None
        #: `time.monotonic()` and the lease clock at the end of the last pass (None before one).
        self.last_pass_monotonic: float | None = None
        self.last_pass_at: datetime | None = None
        self._last_skew_log: float | None = None
        #: Called with each finished pass's duration in seconds (metrics).
        self.pass_observers: list[Callable[[float], object]] = []
        self._last_idle_log = time.monotonic()
        self._sender: AlertSender | None = None
        if alerts is not None and alerts.enabled:
            if self._store.alerts is None:
                self._store.alerts = AlertPolicy(frozenset(alerts.events))
            self._sender = AlertSender(
                self._store,
                alerts,
                owner=self.owner,
                lease_clock=self._lease_clock,
                transport=alert_transport,
            )
        recorder = LeadRecorder(ledger)
        self.prober = Prober(
            ledger,
            client,
            recorder,
            orders_per_day=probe_orders_per_day,
            max_per_order=max_probes_per_order,
            clock=self._clock,
            stopping=self._stopping,
        )
        self.truth = (
            None
            if reconcile is None
            else ProviderTruth(
                ledger,
                client,
                reconcile,
                owner=self.owner,
                lease=lease,
                clock=self._clock,
                lease_clock=self._lease_clock,
                stopping=self._stopping,
            )
        )
        self.sequence = CancelSequence(
            ledger,
            client,
            widen=self.skew.widening,
            notify=self._alert,
            owner=self.owner,
            lease=lease,
            stopping=self._stopping,
            clock=self._clock,
            lease_clock=self._lease_clock,
            sleep=sleep,
            rng=rng,
            settle_seconds=cancel_settle_seconds,
            recorder=recorder,
        )

    # -- one pass ------------------------------------------------------------------------------

    def run_pass(self, *, wait: bool = False) -> PassReport:
        """Do one pass; with `wait`, also wait until every cancel it started has ended."""
        if not wait:
            return self._pass()
        with self._lock:
            self._collecting += 1
        try:
            report = self._pass()
            self.wait_idle()
            if self.truth is not None:
                self.truth.join()
            report.finished = self._take_finished()
        finally:
            with self._lock:
                self._collecting -= 1
        return report

    def run_once(self, deadline_seconds: float) -> PassReport:
        """One pass for `run --once`, over within `deadline_seconds` whatever the provider does.

        Cancels still running near the deadline are stopped (`stop`): an order in a backoff wait
        is released where it stands (`cancel_requested`, or `cancelling` which the next run
        verifies first); a call still in flight ends the process with it, and the next run on
        this host recovers its claim at once (owner gone).
        """
        deadline = time.monotonic() + deadline_seconds
        stop_at = deadline - min(SHUTDOWN_GRACE_SECONDS, deadline_seconds / 4)
        with self._lock:
            self._collecting += 1
        try:
            report = self._pass()
            idle = self.wait_idle(max(0.0, stop_at - time.monotonic()))
            if self.truth is not None:
                idle = self.truth.join(max(0.0, stop_at - time.monotonic())) and idle
            if not idle:
                drained = self.stop(grace=max(0.0, deadline - time.monotonic()))
                log.warning(
                    "pass_once_deadline",
                    deadline_seconds=deadline_seconds,
                    in_flight_left=not drained,
                )
            report.finished = self._take_finished()
            if self._sender is not None:
                self._sender.send_due()
        finally:
            with self._lock:
                self._collecting -= 1
        return report

    def _take_finished(self) -> list[Order]:
        with self._lock:
            finished, self._finished = self._finished, []
        return finished

    @property
    def cancels_in_flight(self) -> int:
        """Cancel sequences this daemon runs or has claimed and queued now."""
        with self._lock:
            return len(self._inflight)

    def _pass(self) -> PassReport:
        started = time.perf_counter()
        report = PassReport()
        if not self._ledger_file_intact():
            return report
        now = self._clock()
        report.swept = self._sweep(now)
        report.recovered = self._recover()
        report.refused = self._batch(
            OrderState.CANCEL_REQUESTED,
            OrderState.CANCEL_REFUSED,
            due_by=now + self._margins().refuse_before,
            now=now,
            reason=MARGIN_CLOSED,
        )
        report.warned = self._warn(now)
        report.dispatched = self._batch(
            OrderState.SCHEDULED,
            OrderState.DISPATCHED,
            due_by=now,
            now=now,
            reason="send time passed with no cancel requested",
        )
        report.started = self._start_workers(now)
        self.prober.start(now, self._cancels_waiting)
        if self.truth is not None:  # after the cancel work started, on a thread of its own
            self.truth.kick()
        counts = report.counts()
        if any(counts[k] for k in ("swept", "recovered", "refused", "warned", "dispatched")):
            log.info("pass_done", **counts)
            self._last_idle_log = time.monotonic()
        elif time.monotonic() - self._last_idle_log >= IDLE_LOG_SECONDS:
            log.info("daemon_idle", owner=self.owner, in_flight=len(self._inflight))
            self._last_idle_log = time.monotonic()
        self._check_skew(now)
        self._heartbeat()
        if self._sender is not None:
            self._sender.wake()
        for observer in self.pass_observers:
            observer(time.perf_counter() - started)
        return report

    # -- operations: heartbeat, clock skew, alerts ------------------------------------------

    def _heartbeat(self) -> None:
        """Record the end of a pass in the ledger (`cancel` and `check` read it) and here."""
        at = self._lease_clock()
        heartbeats.beat(
            self._store,
            owner=self.owner,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=self.version,
            started_at=self.started_at,
            last_pass_at=at,
        )
        self.last_pass_at = at
        self.last_pass_monotonic = time.monotonic()

    def _on_call(self, call: CallObserved) -> None:
        """Every provider call's end: the skew estimate, and credentials known good again."""
        self.skew.observe(call, answered_at=self._clock())  # the clock margins are taken on
        if call.outcome == "ok":
            self.credentials_rejected_at = None

    def _check_skew(self, now: datetime) -> None:
        """Log and alert (each at most once per `RATE_LIMIT`) a skew above the limit."""
        skew = self.skew.skew_seconds
        if skew is None or abs(skew) <= self.max_clock_skew_seconds:
            return
        tick = time.monotonic()
        if self._last_skew_log is None or tick - self._last_skew_log >= RATE_LIMIT.seconds:
            self._last_skew_log = tick
            log.warning(
                "clock_skew",
                skew_seconds=round(skew, 3),
                max_clock_skew_seconds=self.max_clock_skew_seconds,
                margins_widened_by_seconds=round(abs(skew), 3),
            )
        ahead = "ahead of" if skew > 0 else "behind"
        self._alert(
            "clock_skew",
            f"the provider's clock is {abs(skew):.0f} s {ahead} this host's "
            f"(limit {self.max_clock_skew_seconds:g} s); margins are widened by it",
            now=now,
        )

    def _alert(
        self, event: str, reason: str, *, order: Order | None = None, now: datetime | None = None
    ) -> None:
        """Record an alert that is not a state change (rate-limited in the ledger)."""
        if event == "credentials_rejected":
            self.credentials_rejected_at = self._clock()
        try:
            raise_alert(
                self._store, self._store.alerts, event, now=now or self._clock(), reason=reason,
                order=order,
            )  # fmt: skip
        except LedgerError as exc:
            log.error("alert_not_recorded", alert_event=event, error=str(exc))

    def _margins(self) -> Margins:
        """The ledger's margins, widened by the provider's clock skew as it stands now."""
        return self.ledger.margins.widened(self.skew.widening())

    def _ledger_file_intact(self) -> bool:
        """False (logged once, `ledger_lost` set) when the SQLite file was removed or replaced."""
        if self._ledger_file is None:
            return True
        if self.ledger_lost.is_set():
            return False
        identity = _file_identity(self._ledger_file)
        if identity == self._ledger_identity:
            return True
        event = "ledger_file_missing" if identity is None else "ledger_file_replaced"
        log.error(event, path=str(self._ledger_file))
        self.ledger_lost.set()
        self._stopping.set()  # nothing more is written into a file nobody reads
        return False

    def _sweep(self, now: datetime) -> int:
        """End every order still pending at its send time: nothing may stay pending forever.

        Whatever left it there (credentials rejected during verification, a crashed sequence),
        at its send time a cancel can no longer help: `cancelling` means one may have reached the
        provider unverified, so a person must look; `cancel_requested` means none can have.
        """
        return self._batch(
            OrderState.CANCELLING,
            OrderState.NEEDS_ATTENTION,
            due_by=now,
            now=now,
            reason="send time passed with the cancel unverified: one may have reached the provider",
        ) + self._batch(
            OrderState.CANCEL_REQUESTED,
            OrderState.CANCEL_REFUSED,
            due_by=now,
            now=now,
            reason=SEND_TIME_PASSED_UNSENT,
        )

    def _batch(
        self,
        from_state: OrderState,
        to_state: OrderState,
        *,
        due_by: datetime,
        now: datetime,
        reason: str,
    ) -> int:
        total = 0
        while True:
            moved = self._store.transition_due(
                from_state, to_state, due_by=due_by, now=now, reason=reason, limit=BATCH
            )
            total += len(moved)
            if len(moved) < BATCH:
                return total

    def _warn(self, now: datetime) -> int:
        warned = 0
        pending = (OrderState.CANCEL_REQUESTED, OrderState.CANCELLING)
        warn_by = now + self._margins().warn_before
        for order in self._store.unwarned(pending, warn_by):
            if self._store.mark_warned(order.order_id, now):
                warned += 1
                log.warning(
                    "cancel_at_risk",
                    order_id=order.order_id,
                    state=order.state.value,
                    seconds_left=round(order.seconds_left(now), 3),
                    attempts=order.cancel_attempts,
                )
                self._alert(
                    "cancel_at_risk",
                    f"{order.seconds_left(now):.0f} s before dispatch, still {order.state.value}",
                    order=order,
                    now=now,
                )
        return warned

    def _recover(self) -> int:
        """Take over work whose claimant is gone; `cancelling` orders are verified first.

        A claim is stale once its lease expired, or at once when its owner was a process of this
        host that no longer runs. A dead process's pre-check claims are simply released.
        """
        now = self._lease_clock()
        for order in self._store.live_claims(OrderState.CANCEL_REQUESTED, now):
            owner = order.claim_owner
            if owner is not None and owner_is_gone(owner, self.owner):
                self._store.release(order.order_id, owner)
                log.warning(
                    "stale_claim_recovered",
                    order_id=order.order_id,
                    previous_owner=owner,
                    reason="owner gone",
                )
        candidates = self._store.claimable(OrderState.CANCELLING, now, limit=BATCH)
        candidates += [
            o
            for o in self._store.live_claims(OrderState.CANCELLING, now)
            if o.claim_owner is not None and owner_is_gone(o.claim_owner, self.owner)
        ]
        recovered = 0
        for order in candidates:
            with self._lock:
                if order.order_id in self._inflight or order.order_id in self._cooldown:
                    continue
            owner = order.claim_owner
            gone = owner is not None and owner_is_gone(owner, self.owner)
            claimed = self._store.claim(
                order.order_id,
                OrderState.CANCELLING,
                owner=self.owner,
                expires_at=now + self._lease,
                now=now,
                steal_from=owner if gone else None,
            )
            if claimed is None:
                continue
            log.warning(
                "stale_claim_recovered",
                order_id=order.order_id,
                previous_owner=owner,
                reason="owner gone" if gone else "lease expired",
            )
            with self._lock:
                self._inflight.add(claimed.order_id)
                self._ready.append(claimed)
            recovered += 1
        return recovered

    # -- workers -------------------------------------------------------------------------------

    def _start_workers(self, now: datetime) -> int:
        """Start worker threads for the work waiting now, within `max_concurrent_cancels`."""
        with self._lock:
            if self._stopping.is_set():
                return 0
            free = self._max - self._workers
            exclude = self._busy(now)
            waiting = len(self._ready)
        if free > waiting:
            waiting += len(
                self._store.claimable(
                    OrderState.CANCEL_REQUESTED,
                    self._lease_clock(),
                    limit=free - waiting,
                    exclude=exclude,
                )
            )
        count = min(free, waiting)
        if count <= 0:
            return 0
        with self._lock:
            self._workers += count
        for _ in range(count):
            threading.Thread(target=self._drain, name="smsledger-cancel", daemon=True).start()
        return count

    def _next_order(self) -> Order | None:
        """The next order to work: a recovered one, else a freshly claimed cancel request.

        Claims up to CLAIM_BATCH at once, outside the daemon's lock: the claim is a durable write,
        and other workers must not queue behind it just to hand back an order they finished.
        """
        with self._lock:
            if self._stopping.is_set():
                return None
            if self._ready:
                return self._ready.popleft()
            exclude = self._busy(self._clock())
        now = self._lease_clock()
        claimed = self._store.claim_next(
            OrderState.CANCEL_REQUESTED,
            owner=self.owner,
            expires_at=now + self._lease,
            now=now,
            limit=CLAIM_BATCH,
            exclude=exclude,
        )
        with self._lock:
            self._inflight.update(o.order_id for o in claimed)
            self._ready.extend(claimed)
            return self._ready.popleft() if self._ready else None

    def _busy(self, now: datetime) -> list[str]:
        """Ids not to claim now: in flight here, or left for later a moment ago. Hold the lock."""
        self._cooldown = {oid: t for oid, t in self._cooldown.items() if t > now}
        return [*self._inflight, *self._cooldown]

    def _drain(self) -> None:
        try:
            while (order := self._next_order()) is not None:
                try:
                    final = self.sequence.run(order)
                except LedgerError as exc:
                    log.error("cancel_sequence_failed", order_id=order.order_id, error=str(exc))
                    final = None
                except Exception:  # a bug must not kill the worker silently
                    log.exception("cancel_sequence_crashed", order_id=order.order_id)
                    final = None
                with self._lock:
                    self._inflight.discard(order.order_id)
                    if final is None:
                        self._cooldown[order.order_id] = self._clock() + RETRY_LATER
                    elif self._collecting:  # only a waited pass asks; a service must not hoard
                        self._finished.append(final)
        finally:
            with self._lock:
                self._workers -= 1
                self._lock.notify_all()

    def _cancels_waiting(self) -> bool:
        """Whether a cancel request waits for a worker (then the prober makes no call)."""
        with self._lock:
            if self._ready:
                return True
            exclude = self._busy(self._clock())
        waiting = self._store.claimable(
            OrderState.CANCEL_REQUESTED, self._lease_clock(), limit=1, exclude=exclude
        )
        return bool(waiting)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no worker (nor the prober) runs; False if `timeout` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if not self._lock.wait_for(lambda: self._workers == 0, timeout):
                return False
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self.prober.wait_idle(left)

    def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> bool:
        """Stop taking work and give in-flight sequences `grace` seconds to end.

        Sequences still running then are abandoned where they stand: their orders keep our claim
        until its lease expires (or our process is seen gone), and recovery verifies them.
        """
        self._stopping.set()
        with self._lock:
            unstarted = list(self._ready)
            self._ready.clear()
            self._inflight.difference_update(o.order_id for o in unstarted)
        for order in unstarted:  # claimed in a batch but never worked: free them now
            self._store.release(order.order_id, self.owner)
        ends = time.monotonic() + grace
        drained = self.wait_idle(grace)
        if self.truth is not None:  # it stops at its next provider call
            self.truth.join(max(0.0, ends - time.monotonic()))
        if drained:
            # Nothing of ours is in flight: other daemons of this process may take our claims.
            forget_live_owner(self.owner)
        return drained

    # -- the long-running loop -----------------------------------------------------------------

    def serve(self, poll_seconds: float, *, stop: threading.Event | None = None) -> int:
        """Run passes every `poll_seconds` until SIGTERM or SIGINT (or `stop` is set).

        SIGHUP reopens the log file (after logrotate moved it).

        Returns the exit status: 0, or 1 when the ledger file was removed or replaced. Signal
        handlers are installed only on the main thread (tests serve on another one).
        """
        signals = ServeSignals(stop or threading.Event())
        stop = signals.stop
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {
                sig: signal.signal(sig, signals.on_stop) for sig in (signal.SIGTERM, signal.SIGINT)
            }
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signals.on_hangup)
        scheduler = BackgroundScheduler(timezone=UTC)
        scheduler.add_job(
            self._safe_pass,
            "interval",
            seconds=poll_seconds,
            next_run_time=datetime.now(UTC),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            id=_PASS_JOB,
        )
        scheduler.start()
        if self._sender is not None:
            self._sender.start()
        try:
            while not stop.wait(SERVE_TICK_SECONDS) and not self.ledger_lost.is_set():
                if signals.hangup.is_set():
                    signals.hangup.clear()
                    log.info("log_reopened", paths=reopen_log_files())
                self._keep_schedule(scheduler, poll_seconds)
        finally:
            if signals.received is not None:
                log.info("daemon_stopping", signal=signal.Signals(signals.received).name)
            scheduler.shutdown(wait=True)
            drained = self.stop()
            if self._sender is not None:
                self._sender.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            log.info("daemon_stopped", owner=self.owner, in_flight_left=not drained)
        return 1 if self.ledger_lost.is_set() else 0

    @staticmethod
    def _keep_schedule(scheduler: Any, poll_seconds: float) -> None:
        """Keep the next pass within `poll_seconds` of now, whatever the wall clock does.

        APScheduler 3 times its interval trigger by the wall clock (`datetime.now`): after a step
        back the next run is as far ahead as the step. A next run more than one interval ahead can
        only mean that, so it is brought back to now, read from the same clock APScheduler reads.
        A step forward costs nothing: one coalesced pass runs early.
        """
        job = scheduler.get_job(_PASS_JOB)
        if job is None or job.next_run_time is None:
            return
        now = datetime.now(UTC)
        ahead = job.next_run_time - now
        if ahead > timedelta(seconds=poll_seconds) + CLOCK_STEP_TOLERANCE:
            log.warning(
                "wall_clock_stepped_back",
                seconds=round((ahead - timedelta(seconds=poll_seconds)).total_seconds(), 3),
            )
            job.modify(next_run_time=now)

    def _safe_pass(self) -> None:
        try:
            self.run_pass()
        except LedgerError as exc:
            log.error("pass_failed", error=str(exc))
        except Exception:
            log.exception("pass_crashed")


def pool_size(max_concurrent_cancels: int) -> int:
    """Connections the daemon's provider client keeps: each worker holds one at a time, plus one
    each for the prober and the follow-up threads, so they never wait on a worker's connection;
    every one stays open between calls (`connection_limits`)."""
    return max(1, max_concurrent_cancels) + 2


def run_daemon(
    config: Config, *, once: bool = False, owner: str | None = None, metrics: str | None = None
) -> int:
    """`smsledger run`: check the setup, then serve (or do one pass with `once`).

    `owner` replaces the claim owner id (`make_owner`), for tests that stand for daemons on
    other hosts. `metrics` (HOST:PORT) replaces `[metrics] listen`: where /metrics, /healthz and
    /readyz are served while the daemon serves (not with `once`).
    """
    config.require_credentials()
    configure_logging(config.log, secrets=(config.api.key, config.api.hash))
    # Create (or migrate) the ledger, then work on it opened without create: a connection that a
    # thread opens after the SQLite file was removed must fail, not make an empty file there.
    Ledger.from_config(config, setup_logging=False).close()
    ledger = Ledger.from_config(config, setup_logging=False, must_exist=True)
    client = IletiMerkeziClient.from_config(
        config.api, max_connections=pool_size(config.scheduler.max_concurrent_cancels)
    )
    daemon = Daemon(
        ledger,
        client,
        max_concurrent_cancels=config.scheduler.max_concurrent_cancels,
        owner=owner,
        clock=utcnow,
        cancel_settle_seconds=config.scheduler.cancel_settle_seconds,
        alerts=config.alerts,
        max_clock_skew_seconds=config.scheduler.max_clock_skew_seconds,
        probe_orders_per_day=config.observe.probe_orders_per_day,
        max_probes_per_order=config.observe.max_probes_per_order,
        reconcile=config.reconcile,
    )
    log.info("daemon_started", owner=daemon.owner, once=once, config=config.redacted())
    server = None
    try:
        if once:
            report = daemon.run_once(config.scheduler.once_deadline_seconds)
            log.info("pass_once_done", **report.counts())
            return 1 if daemon.ledger_lost.is_set() else 0
        listen = metrics if metrics is not None else config.metrics.listen
        if listen:
            server = _metrics_server(daemon, listen, config.scheduler.poll_seconds)
        return daemon.serve(config.scheduler.poll_seconds)
    finally:
        if server is not None:
            server.stop()
        client.close()
        ledger.close()


def _metrics_server(daemon: Daemon, listen: str, poll_seconds: float) -> Any:
    """Start the /metrics, /healthz, /readyz server (prometheus_client loads only here)."""
    from scheduler.metrics import DaemonMetrics, MetricsServer  # noqa: PLC0415

    try:
        return MetricsServer(DaemonMetrics(daemon), listen, poll_seconds).start()
    except OSError as exc:
        raise ConfigError(
            f"metrics.listen {listen}: cannot listen: {exc.strerror or exc}"
        ) from None
