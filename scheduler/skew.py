"""The provider's clock against ours, from the `Date` header of its answers.

Every margin is computed on this host's clock while the provider dispatches on its own. Each
answer's `Date` (whole seconds, so read as its middle: + 0.5 s) is compared with the midpoint of
our readings before and after the call; the skew is the median of the last `SAMPLES` of these,
so one slow answer does not move it. Positive: the provider's clock is ahead of ours.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from scheduler.provider.client import CallObserved

__all__ = ["RESOLUTION_SECONDS", "SAMPLES", "SkewEstimator"]

#: Answers the median is taken over.
SAMPLES = 9
#: The `Date` header's resolution: a smaller skew widens nothing.
RESOLUTION_SECONDS = 1.0


class SkewEstimator:
    """Thread-safe: every worker's calls feed it, the pass reads it."""

    def __init__(self, samples: int = SAMPLES) -> None:
        self._samples: deque[float] = deque(maxlen=samples)
        self._lock = threading.Lock()

    def observe(self, call: CallObserved, *, answered_at: datetime | None = None) -> None:
        """Take one answer's `Date` header into the estimate (answers without one are skipped).

        `answered_at`: the reading, taken as the call ended, of the clock the margins are
        computed on (the daemon's), when that is not the client's; the call's midpoint is then
        that reading less half the call's duration.
        """
        if call.date_header is None:
            return
        try:
            provider = parsedate_to_datetime(call.date_header)
        except (TypeError, ValueError, IndexError):
            return
        if provider.tzinfo is None:
            provider = provider.replace(tzinfo=UTC)
        if answered_at is not None:
            midpoint = answered_at - timedelta(seconds=call.seconds / 2)
        else:
            midpoint = call.sent_at + (call.answered_at - call.sent_at) / 2
        sample = (provider - midpoint).total_seconds() + 0.5
        with self._lock:
            self._samples.append(sample)

    @property
    def skew_seconds(self) -> float | None:
        """The median skew in seconds, None until an answer with a `Date` came."""
        with self._lock:
            return statistics.median(self._samples) if self._samples else None

    def widening(self) -> timedelta:
        """What both margins grow by: the skew's size while it is known.

        A skew under `RESOLUTION_SECONDS` is not known: the `Date` header counts whole seconds,
        so an estimate that small is the header's rounding, not the provider's clock.
        """
        skew = self.skew_seconds
        if skew is None or abs(skew) < RESOLUTION_SECONDS:
            return timedelta(0)
        return timedelta(seconds=abs(skew))
