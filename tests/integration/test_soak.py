"""The soak of issue 10 (`bench.soak`) still runs, and its verdicts catch what they must.

The real soak is 10 minutes and a script, not a CI step; this runs it for 12 s with 20 orders
(two daemons, a SIGKILL, faults) so that it does not rot, and checks its verdict functions on
outcomes that must fail it. No timing is asserted.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from ledger import OrderState

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def soak(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """`bench.soak`: bench/ is no installed package, so the repository goes on sys.path."""
    monkeypatch.syspath_prepend(str(REPO))
    return importlib.import_module("bench.soak")


@pytest.mark.slow
def test_a_short_soak_on_sqlite_passes_every_check(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSLEDGER_")}
    env["PYTHONPATH"] = str(REPO)
    argv = [sys.executable, "-m", "bench.soak", "--minutes", "0.2", "--orders", "20"]
    done = subprocess.run(
        [*argv, "--seed", "7", "--workdir", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr}"
    assert "9 of 9 checks passed" in done.stdout
    assert "daemon b killed with SIGKILL" in done.stdout
    assert (tmp_path / "a.log.jsonl").exists()
    assert (tmp_path / "b2.log.jsonl").exists()


def _order(state: OrderState) -> SimpleNamespace:
    return SimpleNamespace(state=state, reason="test")


def _truth(state: str, *, calls: int = 0, accepted: int = 0) -> dict[str, object]:
    return {"state": state, "cancel_calls": calls, "cancels_accepted": accepted}


def _plan(soak: ModuleType, oid: str, *, cancelled: bool, outcome: str = "accepted") -> object:
    plan = soak.OrderPlan(oid, 0.0, 60.0, 10.0 if cancelled else None, registered=True)
    if cancelled:
        plan.requests.append((50.0, outcome))
    return plan


def test_false_outcomes_are_disagreements_and_needs_attention_is_only_listed(
    soak: ModuleType,
) -> None:
    orders = {
        "1": _order(OrderState.CANCELLED),  # no cancel took at the provider
        "2": _order(OrderState.TOO_LATE),  # the provider did cancel it
        "3": _order(OrderState.DISPATCHED),  # a cancel was accepted by the ledger
        "4": _order(OrderState.CANCEL_REFUSED),  # never cancelled, yet not dispatched
        "5": _order(OrderState.CANCELLED),  # true
        "6": _order(OrderState.NEEDS_ATTENTION),  # uncertain: listed, allowed
        "7": _order(OrderState.DISPATCHED),  # true
    }
    sand = {
        "1": _truth("sending", calls=2),
        "2": _truth("cancelled", calls=1, accepted=1),
        "3": _truth("completed"),
        "4": _truth("completed"),
        "5": _truth("cancelled", calls=1, accepted=1),
        "6": _truth("cancelled", calls=1, accepted=1),
        "7": _truth("completed"),
    }
    plans = {
        "1": _plan(soak, "1", cancelled=True),
        "2": _plan(soak, "2", cancelled=True),
        "3": _plan(soak, "3", cancelled=True),
        "4": _plan(soak, "4", cancelled=False),
        "5": _plan(soak, "5", cancelled=True),
        "6": _plan(soak, "6", cancelled=True),
        "7": _plan(soak, "7", cancelled=False),
    }
    wrong, attention = soak.disagreements(orders, sand, plans)
    assert [line.split(":")[0] for line in wrong] == ["1", "2", "3", "4"]
    assert [line.split(":")[0] for line in attention] == ["6"]


def test_a_cancel_on_the_wrong_side_of_the_refuse_margin_is_a_failure(soak: ModuleType) -> None:
    timing = soak.Timing.for_minutes(10)  # refuse_before 20 s
    plans = [
        soak.OrderPlan("1", 0, 100, 90, requests=[(10.0, "accepted")]),  # inside refuse, accepted
        soak.OrderPlan("2", 0, 100, 60, requests=[(40.0, "refused")]),  # outside refuse, refused
        soak.OrderPlan("3", 0, 100, 90, requests=[(10.0, "refused")]),  # right
        soak.OrderPlan("4", 0, 100, 60, requests=[(40.0, "accepted"), (39.9, "refused")]),  # right
        soak.OrderPlan("5", 0, 100, 60, requests=[(40.0, "error: LedgerUnavailable: x")]),
    ]
    wrong, zones = soak.margin_verdicts(soak.Run(timing=timing, plans=plans))
    assert [line.split(":")[0] for line in wrong] == ["1", "2", "5"]
    assert zones["refuse/refused"] == 1
    assert zones["open/accepted"] == 0
    assert zones["warn/accepted"] == 1
