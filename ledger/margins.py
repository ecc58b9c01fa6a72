"""Pure decisions about time: where an order stands relative to its warn and refuse margins."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

__all__ = ["Window", "window"]


class Window(StrEnum):
    """How close an order is to dispatch."""

    OPEN = "open"  # more than warn_before left: cancel freely
    WARN = "warn"  # inside warn_before: cancel, but say it is at risk
    REFUSE = "refuse"  # inside refuse_before: no cancel is sent any more
    PAST = "past"  # the send time has come


def window(
    send_at: datetime, now: datetime, warn_before: timedelta, refuse_before: timedelta
) -> Window:
    """Classify `send_at` seen from `now`.

    Edges belong to the stricter side: exactly `refuse_before` left is already refused, exactly
    `warn_before` left already warns, exactly at `send_at` is past.
    """
    left = send_at - now
    if left <= timedelta(0):
        return Window.PAST
    if left <= refuse_before:
        return Window.REFUSE
    if left <= warn_before:
        return Window.WARN
    return Window.OPEN
