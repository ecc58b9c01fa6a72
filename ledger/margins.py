"""The cancel margins before dispatch: their rule, where an order stands, and the refusal texts.

`Margins(warn_before, refuse_before)` is checked once, here, whether it comes from `Ledger(...)` or
from the config file (`margins_problem` words the same rule with the config's key names). Inside
`warn_before` a cancel is accepted with a warning; inside `refuse_before` it is refused without
calling the provider. Pure: no clock, no database; callers pass `now` in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from ledger.errors import InvalidInput

__all__ = [
    "DEFAULT_REFUSE_BEFORE",
    "DEFAULT_WARN_BEFORE",
    "MARGIN_CLOSED",
    "SEND_TIME_PASSED_UNSENT",
    "Margins",
    "Window",
    "margins_problem",
    "retry_fits",
    "window",
]

DEFAULT_WARN_BEFORE = timedelta(minutes=15)
DEFAULT_REFUSE_BEFORE = timedelta(minutes=5)

#: Why a cancel request ended `cancel_refused` when the refuse margin closed before it was sent.
MARGIN_CLOSED = "margin closed before the cancel could be sent"
#: Why a cancel request ended `cancel_refused` when the send time came before it was sent.
SEND_TIME_PASSED_UNSENT = "send time passed before a cancel could be sent"


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
    return _classify(send_at, now, now + refuse_before, now + warn_before)


def _classify(
    send_at: datetime, now: datetime, refuse_edge: datetime, warn_edge: datetime
) -> Window:
    # `send_at - now <= margin` is `send_at <= now + margin` exactly (whole microseconds).
    if send_at <= now:
        return Window.PAST
    if send_at <= refuse_edge:
        return Window.REFUSE
    if send_at <= warn_edge:
        return Window.WARN
    return Window.OPEN


def retry_fits(now: datetime, delay: float, send_at: datetime, refuse_before: timedelta) -> bool:
    """True when waiting `delay` seconds still leaves the retry outside the refuse margin."""
    return now + timedelta(seconds=delay) < send_at - refuse_before


def margins_problem(
    warn_before_seconds: float,
    refuse_before_seconds: float,
    *,
    names: tuple[str, str] = ("warn_before", "refuse_before"),
    unit: str = " s",
    where: str = "",
) -> str | None:
    """What is wrong with these margins (None when nothing): the one rule, worded for the caller.

    `names` are the two settings as the caller's user knows them (the config's keys, or the
    `Ledger` arguments); `where` says where they came from (a config file).
    """
    warn_name, refuse_name = names
    if refuse_before_seconds < 0:
        return f"{refuse_name}{where} must not be negative"
    if refuse_before_seconds >= warn_before_seconds:
        return (
            f"{refuse_name} ({refuse_before_seconds:g}{unit}){where} must be smaller than "
            f"{warn_name} ({warn_before_seconds:g}{unit})"
        )
    return None


@dataclass(frozen=True)
class Margins:
    """The local margins before dispatch, valid by construction (`InvalidInput` otherwise)."""

    warn_before: timedelta = DEFAULT_WARN_BEFORE
    refuse_before: timedelta = DEFAULT_REFUSE_BEFORE

    def __post_init__(self) -> None:
        problem = margins_problem(
            self.warn_before.total_seconds(), self.refuse_before.total_seconds()
        )
        if problem is not None:
            raise InvalidInput(problem)

    def widened(self, by: timedelta) -> Margins:
        """Both margins grown by `by` (the provider's clock skew: time we cannot trust)."""
        if not by:
            return self
        return Margins(self.warn_before + by, self.refuse_before + by)

    def window(self, send_at: datetime, now: datetime) -> Window:
        """Where `send_at` stands seen from `now` (see `window`)."""
        return window(send_at, now, self.warn_before, self.refuse_before)

    def windows(self, now: datetime) -> Callable[[datetime], Window]:
        """`window` for many send times seen from one `now`, its edges computed once: a
        campaign's cancel classifies 100,000 orders."""
        refuse_edge = now + self.refuse_before
        warn_edge = now + self.warn_before
        return lambda send_at: _classify(send_at, now, refuse_edge, warn_edge)

    def retry_fits(self, now: datetime, delay: float, send_at: datetime) -> bool:
        """True when waiting `delay` seconds still leaves the retry outside the refuse margin."""
        return retry_fits(now, delay, send_at, self.refuse_before)

    def refusal(self, send_at: datetime, now: datetime) -> str:
        """Why a cancel asked for at `now` is refused (the order is past or inside the margin)."""
        left = (send_at - now).total_seconds()
        if left <= 0:
            return f"send time passed {abs(left):.0f} s ago"
        return (
            f"inside the refuse margin: {left:.0f} s before dispatch "
            f"(refuse_before is {self.refuse_before.total_seconds():g} s)"
        )
