"""The provider's queue lead, measured: observations, their queries, brackets and the verdict.

The provider moves an order to the carrier queue some time before its send time and never says
how long before. Every get-report answer about an order with `s` seconds left is a fact about that
lead: 456 ("pending") says it is **less than** `s`, 113 or 114 (sending, sent) that it is **at
least** `s`. Per order the facts reduce to a bracket ``[lower, upper)``; over many orders the
brackets say how early the provider really queues, and whether ``refuse_before`` is long enough.

The reduction and the verdict are pure functions; the few queries of the observations table sit
apart at the end of this module, each in one transaction of the ledger's `Store`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from ledger.models import LeadObservationRow
from ledger.store import Store

__all__ = [
    "MIN_CLOSED_BRACKETS",
    "PENDING_CODE",
    "QUEUED_CODES",
    "Bracket",
    "MarginReport",
    "Observation",
    "Source",
    "Verdict",
    "assess",
    "brackets",
    "claim_probe",
    "complete_probe",
    "histogram",
    "observations_of",
    "observations_since",
    "percentile",
    "probed_orders_since",
    "record",
]

#: get-report's "pending" code: the order is not queued yet, its lead is less than the time left.
PENDING_CODE = 456
#: get-report's order statuses "sending" and "sent": the order was queued, its lead is at least
#: the time left.
QUEUED_CODES = frozenset({113, 114})
#: Closed brackets below which the verdict is "not enough data".
MIN_CLOSED_BRACKETS = 5
#: The suggested refuse margin allows this many worst-case (p99) provider calls ...
CALL_ALLOWANCE = 3
#: ... plus this much slack, in seconds.
SAFETY_SECONDS = 30.0
#: The suggested warn margin is the suggested refuse margin plus this (10 minutes).
WARN_EXTRA_SECONDS = 600.0
#: Width in seconds of one bar of the text histogram.
HISTOGRAM_BIN_SECONDS = 30.0

_table: sa.Table = LeadObservationRow.__table__  # type: ignore[attr-defined]


class Source(StrEnum):
    """Which get-report call an observation comes from."""

    PRECHECK = "precheck"  # the read before a cancel is sent
    VERIFY = "verify"  # a read after a cancel was tried (or of a recovered order)
    PROBE = "probe"  # a read made only to learn the lead (the order stays as it is)


class Verdict(StrEnum):
    """What the observations say about the configured refuse margin."""

    OK = "ok"
    NOT_ENOUGH_DATA = "not_enough_data"
    REFUSE_BEFORE_TOO_SMALL = "refuse_before_too_small"


@dataclass(frozen=True)
class Observation:
    """One row: an answer (or, with `status` None, a probe claimed and not answered)."""

    order_id: str
    at: datetime
    seconds_left: float | None
    status: int | None
    source: str
    probe_step: int | None = None
    duration_ms: float | None = None

    @property
    def lower_bound(self) -> float | None:
        """The least lead this answer proves (113/114), else None."""
        return self.seconds_left if self.status in QUEUED_CODES else None

    @property
    def upper_bound(self) -> float | None:
        """The lead this answer proves the true one is below (456), else None."""
        return self.seconds_left if self.status == PENDING_CODE else None


@dataclass(frozen=True)
class Bracket:
    """What the observations of one order prove: ``lower <= lead < upper`` (None: unknown)."""

    order_id: str
    lower: float | None = None
    upper: float | None = None

    @property
    def closed(self) -> bool:
        """Both bounds known and consistent (a provider that contradicts itself closes nothing)."""
        return self.lower is not None and self.upper is not None and self.lower < self.upper

    @property
    def width(self) -> float | None:
        return self.upper - self.lower if self.closed else None  # type: ignore[operator]

    @property
    def midpoint(self) -> float | None:
        return (self.lower + self.upper) / 2 if self.closed else None  # type: ignore[operator]


def brackets(observations: Iterable[Observation]) -> dict[str, Bracket]:
    """Reduce observations to one bracket per order: the largest lower and the smallest upper
    bound; orders with no answer that bounds their lead are left out."""
    lowers: dict[str, float] = {}
    uppers: dict[str, float] = {}
    for obs in observations:
        if obs.seconds_left is None or obs.seconds_left <= 0:
            continue  # no time left: no fact about the lead
        if (low := obs.lower_bound) is not None:
            lowers[obs.order_id] = max(low, lowers.get(obs.order_id, low))
        elif (high := obs.upper_bound) is not None:
            uppers[obs.order_id] = min(high, uppers.get(obs.order_id, high))
    return {
        oid: Bracket(oid, lowers.get(oid), uppers.get(oid))
        for oid in sorted(lowers.keys() | uppers.keys())
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank `q`-th percentile (0 < q <= 100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class MarginReport:
    """The verdict of `smsledger margins`; `to_json` has exactly the documented keys."""

    orders_observed: int
    closed_brackets: int
    longest_lead_lower_bound_seconds: float | None
    lead_p50: float | None
    lead_p90: float | None
    lead_max: float | None
    refuse_before_seconds: float
    warn_before_seconds: float
    suggested_refuse_before_seconds: float | None
    suggested_warn_before_seconds: float | None
    verdict: Verdict

    def to_json(self) -> dict[str, Any]:
        return {
            "orders_observed": self.orders_observed,
            "closed_brackets": self.closed_brackets,
            "longest_lead_lower_bound_seconds": self.longest_lead_lower_bound_seconds,
            "lead_seconds": {"p50": self.lead_p50, "p90": self.lead_p90, "max": self.lead_max},
            "refuse_before_seconds": self.refuse_before_seconds,
            "warn_before_seconds": self.warn_before_seconds,
            "suggested_refuse_before_seconds": self.suggested_refuse_before_seconds,
            "suggested_warn_before_seconds": self.suggested_warn_before_seconds,
            "verdict": self.verdict.value,
        }


def assess(
    found: Mapping[str, Bracket],
    call_durations_ms: Sequence[float],
    *,
    refuse_before_seconds: float,
    warn_before_seconds: float,
    poll_seconds: float,
) -> MarginReport:
    """Judge the configured margins against the brackets of one period.

    The suggested refuse margin covers the longest lead known to be possible (the longest upper
    bound of a closed bracket, and never less than the longest lower bound), one pass of the daemon
    (`poll_seconds`), three worst-case provider calls (p99 of the calls seen) and 30 s of slack.
    """
    closed = [b for b in found.values() if b.closed]
    lowers = [b.lower for b in found.values() if b.lower is not None]
    longest_lower = max(lowers) if lowers else None
    mids = [b.midpoint for b in closed if b.midpoint is not None]
    uppers = [b.upper for b in closed if b.upper is not None]
    known = [*uppers, *([longest_lower] if longest_lower is not None else [])]
    suggested_refuse: float | None = None
    suggested_warn: float | None = None
    if known:
        p99_call = (percentile(call_durations_ms, 99) or 0.0) / 1000
        suggested_refuse = round(
            max(known) + poll_seconds + CALL_ALLOWANCE * p99_call + SAFETY_SECONDS, 3
        )
        suggested_warn = round(suggested_refuse + WARN_EXTRA_SECONDS, 3)
    if longest_lower is not None and refuse_before_seconds < longest_lower:
        verdict = Verdict.REFUSE_BEFORE_TOO_SMALL
    elif len(closed) < MIN_CLOSED_BRACKETS:
        verdict = Verdict.NOT_ENOUGH_DATA
    else:
        verdict = Verdict.OK
    return MarginReport(
        orders_observed=len(found),
        closed_brackets=len(closed),
        longest_lead_lower_bound_seconds=longest_lower,
        lead_p50=percentile(mids, 50),
        lead_p90=percentile(mids, 90),
        lead_max=max(mids) if mids else None,
        refuse_before_seconds=refuse_before_seconds,
        warn_before_seconds=warn_before_seconds,
        suggested_refuse_before_seconds=suggested_refuse,
        suggested_warn_before_seconds=suggested_warn,
        verdict=verdict,
    )


def histogram(
    found: Iterable[Bracket], bin_seconds: float = HISTOGRAM_BIN_SECONDS
) -> list[tuple[float, float, int]]:
    """Closed brackets counted by the bin of their midpoint: ``(from, to, count)``, ascending,
    empty bins between the first and the last included."""
    counts: dict[int, int] = {}
    for b in found:
        if b.midpoint is not None:
            index = math.floor(b.midpoint / bin_seconds)
            counts[index] = counts.get(index, 0) + 1
    if not counts:
        return []
    return [
        (i * bin_seconds, (i + 1) * bin_seconds, counts.get(i, 0))
        for i in range(min(counts), max(counts) + 1)
    ]


# -- the queries -------------------------------------------------------------------------------


def _observation(row: Any) -> Observation:
    return Observation(
        order_id=row.order_id,
        at=row.at,
        seconds_left=row.seconds_left,
        status=row.status,
        source=row.source,
        probe_step=row.probe_step,
        duration_ms=row.duration_ms,
    )


def record(
    store: Store,
    order_id: str,
    *,
    at: datetime,
    seconds_left: float,
    status: int,
    source: Source,
    duration_ms: float | None = None,
) -> None:
    """Keep one answer."""
    with store.write() as conn:
        conn.execute(
            _table.insert().values(
                order_id=order_id,
                at=at,
                seconds_left=seconds_left,
                status=status,
                source=source.value,
                duration_ms=duration_ms,
            )
        )


def claim_probe(
    store: Store, order_id: str, step: int, *, at: datetime, seconds_left: float
) -> int | None:
    """Claim probe `step` of an order; the new row's id, or None when a daemon already has it.

    The unique (order_id, probe_step) decides, on SQLite and PostgreSQL alike: one insert wins.
    """
    try:
        with store.write() as conn:
            result = conn.execute(
                _table.insert().values(
                    order_id=order_id,
                    at=at,
                    seconds_left=seconds_left,
                    source=Source.PROBE.value,
                    probe_step=step,
                )
            )
    except sa.exc.IntegrityError:
        return None
    key = result.inserted_primary_key
    return int(key[0]) if key else None


def complete_probe(
    store: Store,
    row_id: int,
    *,
    at: datetime,
    seconds_left: float,
    status: int | None,
    duration_ms: float | None,
) -> None:
    """Fill in a claimed probe with its answer (`status` None: the call failed)."""
    with store.write() as conn:
        conn.execute(
            _table.update()
            .where(_table.c.id == row_id)
            .values(at=at, seconds_left=seconds_left, status=status, duration_ms=duration_ms)
        )


def observations_since(store: Store, since: datetime) -> list[Observation]:
    """Every row from `since` on (the period `smsledger margins` judges), oldest first."""
    stmt = sa.select(_table).where(_table.c.at >= since).order_by(_table.c.id)
    with store.read() as conn:
        return [_observation(r) for r in conn.execute(stmt)]


def observations_of(store: Store, order_ids: Sequence[str]) -> list[Observation]:
    """Every row of these orders, oldest first."""
    if not order_ids:
        return []
    stmt = (
        sa.select(_table)
        .where(_table.c.order_id.in_(sa.bindparam("ids", expanding=True)))
        .order_by(_table.c.id)
    )
    found: list[Observation] = []
    with store.read() as conn:
        for start in range(0, len(order_ids), 500):
            chunk = list(order_ids[start : start + 500])
            found += [_observation(r) for r in conn.execute(stmt, {"ids": chunk})]
    return found


def probed_orders_since(store: Store, since: datetime) -> int:
    """Orders whose first probe was claimed at or after `since` (the daily probe budget)."""
    stmt = (
        sa.select(sa.func.count())
        .select_from(_table)
        .where(_table.c.probe_step == 0)
        .where(_table.c.at >= since)
    )
    with store.read() as conn:
        return int(conn.execute(stmt).scalar_one())
