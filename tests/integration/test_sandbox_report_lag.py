"""The sandbox's `report_lag` fault: an eventually consistent provider whose get-report keeps
saying 456 for a while after it took a cancel. Real HTTP through the real client."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from helpers import FakeClock

from scheduler.provider.client import CancelAnswer, IletiMerkeziClient, ReportStatus
from scheduler.provider.sandbox import Faults, Sandbox

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
ORDER = "777001"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def sandbox_options(clock: FakeClock) -> dict[str, Any]:
    return {"key": "k", "hash": "h", "clock": clock}


@pytest.fixture
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    running = make_sandbox()
    running.add_order(ORDER, START + timedelta(hours=1))
    return running


def test_after_an_accepted_cancel_the_report_says_pending_for_the_lag_then_not_sent(
    sandbox: Sandbox, client: IletiMerkeziClient, clock: FakeClock
) -> None:
    sandbox.set_faults(Faults(report_lag=3.0))

    assert client.cancel_order(ORDER) is CancelAnswer.ACCEPTED
    assert client.get_report(ORDER).status is ReportStatus.PENDING
    # The order is cancelled all the same: a second cancel is refused, and not carried out.
    clock.advance(2.9)
    assert client.cancel_order(ORDER) is CancelAnswer.NOT_FOUND
    assert client.get_report(ORDER).status is ReportStatus.PENDING
    clock.advance(0.1)
    assert client.get_report(ORDER).status is ReportStatus.NOT_SENT
    truth = sandbox.truth()["orders"][ORDER]
    assert (truth["state"], truth["cancel_calls"], truth["cancels_accepted"]) == (
        "cancelled",
        2,
        1,
    )
    assert sandbox.truth()["totals"]["cancel-order"]["codes"] == {"200": 1, "455": 1}


def test_without_a_lag_the_report_shows_the_cancel_at_once(
    sandbox: Sandbox, client: IletiMerkeziClient
) -> None:
    client.cancel_order(ORDER)
    assert client.get_report(ORDER).status is ReportStatus.NOT_SENT


def test_report_lag_goes_through_the_control_endpoint_and_the_dict_shape(
    sandbox: Sandbox,
) -> None:
    with httpx.Client(base_url=sandbox.url) as http:
        posted = http.post("/_sandbox/faults", json={"report_lag": 2.5})
        assert posted.status_code == 200
        assert posted.json()["report_lag"] == 2.5
        assert http.get("/_sandbox/faults").json()["report_lag"] == 2.5
        for bad in (-1, "soon", True):
            refused = http.post("/_sandbox/faults", json={"report_lag": bad})
            assert refused.status_code == 400
            assert "report_lag" in refused.json()["error"]
    assert Faults.from_dict(Faults(report_lag=4.0).to_dict()).report_lag == 4.0
    assert Faults().to_dict()["report_lag"] == 0.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5])
def test_report_lag_must_be_finite_and_not_negative(bad: float) -> None:
    with pytest.raises(ValueError, match="report_lag"):
        Faults(report_lag=bad)
