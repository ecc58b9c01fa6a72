"""`Margins`: one rule for the margins whoever gives them, and the methods the daemon decides by."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger import ConfigError, InvalidInput, Ledger
from ledger.config import load_config
from ledger.margins import Margins, Window, margins_problem, retry_fits, window

SEND_AT = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
WARN = timedelta(minutes=15)
REFUSE = timedelta(minutes=5)


@pytest.mark.parametrize(
    ("warn", "refuse"),
    [(WARN, -timedelta(seconds=1)), (WARN, WARN), (REFUSE, WARN)],
    ids=["negative", "equal", "larger"],
)
def test_margins_the_config_and_the_ledger_refuse_the_same_pairs(
    tmp_path: Path, warn: timedelta, refuse: timedelta
) -> None:
    """The one rule: `Margins`, `Ledger(...)` and the config file all refuse these pairs."""
    assert margins_problem(warn.total_seconds(), refuse.total_seconds()) is not None
    with pytest.raises(InvalidInput, match="refuse_before"):
        Margins(warn, refuse)
    with pytest.raises(InvalidInput, match="refuse_before"):
        Ledger("sqlite://", warn_before=warn, refuse_before=refuse)
    config = f"[windows]\nwarn_before_seconds = {warn.total_seconds()}\n"
    config += f"refuse_before_seconds = {refuse.total_seconds()}\n"
    path = tmp_path / "smsledger.toml"
    path.write_text(config)
    with pytest.raises(ConfigError, match=r"windows\.refuse_before_seconds"):
        load_config(path)


def test_the_ledger_and_the_config_expose_their_margins() -> None:
    assert load_config(None).windows.margins == Margins()
    with Ledger("sqlite://", warn_before=WARN, refuse_before=REFUSE) as ledger:
        assert ledger.margins == Margins(WARN, REFUSE)
        assert (ledger.warn_before, ledger.refuse_before) == (WARN, REFUSE)


@pytest.mark.parametrize("left", [WARN + timedelta(1), WARN, REFUSE, timedelta(0)], ids=str)
def test_methods_agree_with_the_module_functions(left: timedelta) -> None:
    margins = Margins(WARN, REFUSE)
    now = SEND_AT - left
    assert margins.window(SEND_AT, now) is window(SEND_AT, now, WARN, REFUSE)
    assert margins.retry_fits(now, 1.0, SEND_AT) is retry_fits(now, 1.0, SEND_AT, REFUSE)


@pytest.mark.parametrize(
    ("left", "reason"),
    [
        (
            timedelta(minutes=5),
            "inside the refuse margin: 300 s before dispatch (refuse_before is 300 s)",
        ),
        (
            timedelta(seconds=1),
            "inside the refuse margin: 1 s before dispatch (refuse_before is 300 s)",
        ),
        (timedelta(0), "send time passed 0 s ago"),
        (-timedelta(minutes=1), "send time passed 60 s ago"),
    ],
    ids=str,
)
def test_refusal_says_why_and_by_how_much(left: timedelta, reason: str) -> None:
    margins = Margins(WARN, REFUSE)
    assert margins.window(SEND_AT, SEND_AT - left) in (Window.REFUSE, Window.PAST)
    assert margins.refusal(SEND_AT, SEND_AT - left) == reason


def test_widened_grows_both_margins_and_keeps_the_rule() -> None:
    """The clock skew widens both margins alike, so refuse_before stays below warn_before."""
    skew = timedelta(minutes=10)
    margins = Margins(WARN, REFUSE)
    assert margins.widened(timedelta(0)) is margins
    assert margins.widened(skew) == Margins(WARN + skew, REFUSE + skew)
    assert margins.widened(skew).window(SEND_AT, SEND_AT - timedelta(minutes=12)) is Window.REFUSE


_US = timedelta(microseconds=1)


@pytest.mark.parametrize(
    "left",
    [
        WARN + timedelta(days=1),
        WARN + _US,
        WARN,
        WARN - _US,
        REFUSE + _US,
        REFUSE,
        REFUSE - _US,
        _US,
        timedelta(0),
        -_US,
        -timedelta(days=1),
    ],
    ids=str,
)
def test_windows_for_one_now_classify_as_window_does_at_every_edge(left: timedelta) -> None:
    """A campaign's batch classifies with `Margins.windows` (edges computed once)."""
    margins = Margins(WARN, REFUSE)
    now = SEND_AT - left
    assert margins.windows(now)(SEND_AT) is margins.window(SEND_AT, now)
