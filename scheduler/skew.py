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
from datetime import UTC, timedelta
from email.utils import parsedate_to_datetime

from scheduler.provider.client import CallObserved

__all__ = ["SAMPLES", "SkewEstimator"]

#: Answers the median is taken over.
SAMPLES = 9


class SkewEstimator:
    """Thread-safe: every worker's calls feed it, the pass reads it."""

    def __init__(self, samples: int = SAMPLES) -> None:
        self._samples: deque[float] = deque(maxlen=samples)
        self._lock = threading.Lock()

    def observe(self, call: CallObserved) -> None:
        """Take one answer's `Date` header into the estimate (answers without one are skipped)."""
        if call.date_header is None:
            return
        try:
            provider = parsedate_to_datetime(call.date_header)
        except (TypeError, ValueError, IndexError):
            return
        if provider.tzinfo is None:
            provider = provider.replace(tzinfo=UTC)
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
        """What both margins grow by: the skew's size while it is known."""
        skew = self.skew_seconds
        return timedelta(seconds=abs(skew)) if skew is not None else timedelta(0)
