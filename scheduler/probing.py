"""Learning the provider's queue lead: keeping every telling answer, and probing on purpose.

`LeadRecorder` keeps each get-report answer the cancel sequence gets about an order with time
left (`ledger.leads.record`) and logs `refuse_margin_too_small` when one shows the provider queued
an order earlier than `refuse_before`. `Prober` reads a few `scheduled` orders as they approach
dispatch, to close their brackets: get-report only, never a state change, never a cancel. It runs
on one thread of its own after a pass has handed out its cancel work, and makes no call while a
cancel waits for a worker, so it never delays one.

Where the probes go (`probe_targets`, pure): until some order has shown roughly where the lead
lies, a wide ladder from 20 minutes before dispatch down to 10 seconds; then a dense run every
`DENSE_STEP_SECONDS` over the leads seen so far (with `PAD_SECONDS` either side), so a probed
order's bracket ends at most one step plus one pass wide.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ledger import Ledger, LedgerError, Order, OrderState
from ledger._log import get_logger
from ledger.leads import (
    PENDING_CODE,
    QUEUED_CODES,
    Bracket,
    Observation,
    Source,
    brackets,
    claim_probe,
    complete_probe,
    observations_of,
    observations_since,
    probed_orders_since,
    record,
)
from scheduler.provider.client import IletiMerkeziClient, Report
from scheduler.provider.errors import ProviderError

__all__ = [
    "DEFAULT_MAX_PROBES_PER_ORDER",
    "DEFAULT_PROBE_ORDERS_PER_DAY",
    "LeadRecorder",
    "Prober",
    "answer_bound",
    "next_probe_due",
    "probe_prior",
    "probe_targets",
]

log = get_logger("smsledger.daemon")

DEFAULT_PROBE_ORDERS_PER_DAY = 24
DEFAULT_MAX_PROBES_PER_ORDER = 12
#: Seconds left at each probe while nothing is known yet (20 minutes down to 10 seconds).
LADDER_SECONDS = (1200.0, 900.0, 600.0, 420.0, 300.0, 240.0, 200.0, 160.0, 120.0, 80.0, 40.0, 10.0)
#: Spacing of the dense probes: with one pass of lag, a bracket stays within 30 s.
DENSE_STEP_SECONDS = 20.0
#: How far beyond the leads seen the dense probes reach, on either side.
PAD_SECONDS = 40.0
#: No probe with less time left than this: too close to dispatch to tell anything.
FLOOR_SECONDS = 5.0
#: Two probes of one order are at least this far apart.
MIN_GAP_SECONDS = 1.0
#: Earlier observations that place the dense probes.
PRIOR_PERIOD = timedelta(days=30)
#: How long the probe places stay in force before the observations are read again.
PLAN_REFRESH = timedelta(seconds=60)
#: The probe budget's period.
BUDGET_PERIOD = timedelta(days=1)
#: Orders a probe step looks at.
CANDIDATES = 1000


def answer_bound(report: Report, send_at: datetime, started: datetime, ended: datetime) -> float:
    """The seconds left an answer proves a bound at, on the safe side of the call's span.

    456 says "not queued when read", some time between start and end: the lead is less than the
    time left at the start. 113/114 say "queued": the lead is at least the time left at the end.
    """
    edge = started if report.code == PENDING_CODE else ended
    return (send_at - edge).total_seconds()


class LeadRecorder:
    """Keeps answers that bound an order's lead; warns when one outruns `refuse_before`.

    Thread-safe: every cancel worker and the prober share one. `refuse_margin_too_small` is
    logged the first time an answer shows a lead above `refuse_before`, then again only for a
    longer one (per process: a restarted daemon says it once more).
    """

    def __init__(self, ledger: Ledger) -> None:
        self._store = ledger.store
        self._refuse = ledger.refuse_before.total_seconds()
        self._lock = threading.Lock()
        self._longest_reported = self._refuse

    def observe(
        self,
        order: Order,
        report: Report,
        *,
        started: datetime,
        clock: Callable[[], datetime],
        duration_ms: float,
        source: Source,
        cancel_may_have_arrived: bool,
    ) -> None:
        """Keep `report`, read from `started` until now by `clock`, if it bounds the lead.

        A 456 after a cancel that may have reached the provider is not kept: the order may be
        cancelled and then never queues at all. The clock is read only when the answer's end
        matters (113/114).
        """
        if report.code == PENDING_CODE and cancel_may_have_arrived:
            return
        if report.code != PENDING_CODE and report.code not in QUEUED_CODES:
            return
        ended = started if report.code == PENDING_CODE else clock()
        seconds_left = answer_bound(report, order.send_at, started, ended)
        if seconds_left <= 0:
            return
        try:
            record(
                self._store,
                order.order_id,
                at=ended,
                seconds_left=round(seconds_left, 3),
                status=report.code,
                source=source,
                duration_ms=round(duration_ms, 1),
            )
        except LedgerError as exc:  # a lost statistic must never stop a cancel
            log.warning("lead_observation_failed", order_id=order.order_id, error=str(exc))
        if report.code in QUEUED_CODES:
            self.note_queued(order.order_id, seconds_left)

    def note_queued(self, order_id: str, seconds_left: float) -> None:
        """An order was already queued `seconds_left` before its send time."""
        with self._lock:
            if seconds_left <= self._longest_reported:
                return
            self._longest_reported = seconds_left
        log.warning(
            "refuse_margin_too_small",
            order_id=order_id,
            lead_at_least_seconds=round(seconds_left, 3),
            refuse_before_seconds=self._refuse,
        )


# -- where the probes go (pure) ----------------------------------------------------------------


def probe_prior(found: Iterable[Bracket]) -> tuple[float, float] | None:
    """The range of leads seen so far, ``(low, high)``, or None before any bracket has closed.

    `low` is the least lower bound of a closed bracket (or an upper bound below it); `high` the
    greatest upper bound of a closed bracket, or a lower bound above it: a lead longer than every
    closed bracket drags the range up.
    """
    found = list(found)
    closed = [b for b in found if b.closed]
    if not closed:
        return None
    low = min(b.lower for b in closed if b.lower is not None)
    high = max(b.upper for b in closed if b.upper is not None)
    for b in found:
        if b.closed:
            continue
        if b.lower is not None:
            high = max(high, b.lower + DENSE_STEP_SECONDS)
        elif b.upper is not None:
            low = min(low, b.upper)
    return low, high


def probe_targets(prior: tuple[float, float] | None, max_probes: int) -> list[float]:
    """Seconds left at which to probe an order, descending, at most `max_probes` of them."""
    if max_probes <= 0:
        return []
    if prior is None:
        ladder = list(LADDER_SECONDS)
        if max_probes >= len(ladder):
            return ladder
        if max_probes == 1:
            return [ladder[len(ladder) // 2]]
        picks = {round(i * (len(ladder) - 1) / (max_probes - 1)) for i in range(max_probes)}
        return [ladder[i] for i in sorted(picks)]
    low, high = prior
    top = high + PAD_SECONDS
    bottom = max(low - PAD_SECONDS, FLOOR_SECONDS)
    span = max(top - bottom, 0.0)
    step = DENSE_STEP_SECONDS
    if max_probes > 1 and span / step + 1 > max_probes:
        step = span / (max_probes - 1)  # too wide for the budget: spread, brackets widen
    count = min(max_probes, math.floor(span / step + 1e-9) + 1)
    return [round(top - i * step, 3) for i in range(count)]


def next_probe_due(
    targets: Sequence[float], seconds_left: float, last_probed: float | None
) -> bool:
    """Whether an order with `seconds_left` is due for a probe, its last one `last_probed`.

    Due when some target not yet passed by a probe (below `last_probed`) has been reached; a late
    pass that crossed several targets probes once, now.
    """
    if seconds_left < FLOOR_SECONDS:
        return False
    for target in targets:
        if last_probed is not None and target > last_probed - MIN_GAP_SECONDS:
            continue
        return seconds_left <= target
    return False


# -- the prober --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    order: Order
    step: int
    seconds_left: float


class Prober:
    """Probes `scheduled` orders on one background thread; one instance per daemon."""

    def __init__(
        self,
        ledger: Ledger,
        client: IletiMerkeziClient,
        recorder: LeadRecorder,
        *,
        orders_per_day: int,
        max_per_order: int,
        clock: Callable[[], datetime],
        stopping: threading.Event,
    ) -> None:
        self._ledger = ledger
        self._store = ledger.store
        self._client = client
        self._recorder = recorder
        self._per_day = orders_per_day
        self._max = max_per_order
        self._clock = clock
        self._stopping = stopping
        self._idle = threading.Condition()
        self._running = False
        #: Probe calls made by the last step (for tests and the pass report).
        self.last_probes = 0
        #: The probe places and when they were worked out (the prior changes slowly).
        self._plan: tuple[datetime, list[float]] | None = None

    @property
    def enabled(self) -> bool:
        return self._per_day > 0 and self._max > 0

    def start(self, now: datetime, cancels_waiting: Callable[[], bool]) -> bool:
        """Run a probe step on the prober's thread unless one still runs or cancels wait."""
        if not self.enabled or self._stopping.is_set():
            return False
        with self._idle:
            if self._running:
                return False
            self._running = True
        thread = threading.Thread(
            target=self._run, args=(now, cancels_waiting), name="smsledger-probe", daemon=True
        )
        thread.start()
        return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: not self._running, timeout)

    def _run(self, now: datetime, cancels_waiting: Callable[[], bool]) -> None:
        try:
            self.last_probes = self.step(now, cancels_waiting)
        except LedgerError as exc:
            log.error("probe_step_failed", error=str(exc))
        except Exception:  # a bug must not kill the daemon's thread silently
            log.exception("probe_step_crashed")
        finally:
            with self._idle:
                self._running = False
                self._idle.notify_all()

    def step(self, now: datetime, cancels_waiting: Callable[[], bool]) -> int:
        """Probe every order due for it now; return the probe calls made.

        Before each call: nothing is done while a cancel waits for a worker or the daemon stops
        (what is left waits for the next pass); a step is claimed first, so of several daemons on
        one ledger only one probes an order at each step.
        """
        if not self.enabled:
            return 0
        targets = self._targets(now)
        if not targets:
            return 0
        probes = 0
        for candidate in self._due(now, targets):
            if self._stopping.is_set() or cancels_waiting():
                break
            row = claim_probe(
                self._store,
                candidate.order.order_id,
                candidate.step,
                at=now,
                seconds_left=round(candidate.seconds_left, 3),
            )
            if row is None:
                continue  # another daemon probes this order at this step
            self._probe(candidate, row)
            probes += 1
        return probes

    def _targets(self, now: datetime) -> list[float]:
        """The probe places, from the last `PRIOR_PERIOD` of observations, read at most once per
        `PLAN_REFRESH` (a month of observations is not read every pass)."""
        if self._plan is not None and abs(now - self._plan[0]) < PLAN_REFRESH:
            return self._plan[1]
        observed = observations_since(self._store, now - PRIOR_PERIOD)
        targets = probe_targets(probe_prior(brackets(observed).values()), self._max)
        self._plan = (now, targets)
        return targets

    def _due(self, now: datetime, targets: Sequence[float]) -> list[_Candidate]:
        orders = self._store.orders(
            states=[OrderState.SCHEDULED],
            send_after=now,
            send_before=now + timedelta(seconds=targets[0] + MIN_GAP_SECONDS),
            limit=CANDIDATES,
        )
        rows: dict[str, list[Observation]] = {o.order_id: [] for o in orders}
        for obs in observations_of(self._store, list(rows)):
            rows[obs.order_id].append(obs)
        budget: int | None = None
        due: list[_Candidate] = []
        for order in orders:
            seen = rows[order.order_id]
            probed = [o for o in seen if o.probe_step is not None]
            if len(probed) >= self._max:
                continue
            if any(o.lower_bound is not None for o in seen):
                continue  # already queued: nothing more to learn from this order
            seconds_left = order.seconds_left(now)
            last = min((o.seconds_left for o in probed if o.seconds_left is not None), default=None)
            if not next_probe_due(targets, seconds_left, last):
                continue
            if not probed:
                if budget is None:
                    budget = self._per_day - probed_orders_since(self._store, now - BUDGET_PERIOD)
                if budget <= 0:
                    continue
                budget -= 1
            step = max((o.probe_step for o in probed if o.probe_step is not None), default=-1) + 1
            due.append(_Candidate(order, step, seconds_left))
        return due

    def _probe(self, candidate: _Candidate, row: int) -> None:
        order = candidate.order
        started = self._clock()
        began = time.perf_counter()
        try:
            report = self._client.get_report(order.order_id)
        except ProviderError as exc:
            ended = self._clock()
            log.info("lead_probe_failed", order_id=order.order_id, error=type(exc).__name__)
            complete_probe(
                self._store,
                row,
                at=ended,
                seconds_left=round(order.seconds_left(ended), 3),
                status=None,
                duration_ms=round((time.perf_counter() - began) * 1000, 1),
            )
            return
        ended = self._clock()
        seconds_left = answer_bound(report, order.send_at, started, ended)
        complete_probe(
            self._store,
            row,
            at=ended,
            seconds_left=round(seconds_left, 3),
            status=report.code,
            duration_ms=round((time.perf_counter() - began) * 1000, 1),
        )
        log.info(
            "lead_probed",
            order_id=order.order_id,
            step=candidate.step,
            seconds_left=round(seconds_left, 3),
            code=report.code,
        )
        if report.code in QUEUED_CODES and seconds_left > 0:
            self._recorder.note_queued(order.order_id, seconds_left)
