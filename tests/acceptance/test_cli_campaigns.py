"""Campaigns through the real `smsledger` command: `cancel --label`, `cancel --json`, dry runs.

Orders a test only needs to exist are registered through the `Ledger` library (fast); the command
is run for what the test is about.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import CONFIG, needs_smsledger, run_command

from ledger import Ledger, OrderState

pytestmark = needs_smsledger


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder with a smsledger.toml (Istanbul time, ledger and log beside it)."""
    (tmp_path / "smsledger.toml").write_text(CONFIG.format(zone="Europe/Istanbul"))
    return tmp_path


@pytest.fixture
def book(work: Path) -> Iterator[Ledger]:
    """The work folder's ledger, opened in the test process as another program would."""
    with Ledger(f"sqlite:///{work / 'ledger.db'}") as ledger:
        yield ledger


def test_cancel_json_reports_each_id_and_exits_with_the_worst_outcome(
    work: Path, book: Ledger
) -> None:
    now = book.now()
    book.register("far", now + timedelta(hours=2))
    book.register("near", now + timedelta(minutes=10))
    book.register("late", now + timedelta(minutes=4))
    book.register("done", now + timedelta(hours=2))
    book.request_cancel("done")

    mixed = run_command(work, "cancel", "far", "near", "late", "done", "ghost", "--json")
    refused = run_command(work, "cancel", "far", "late", "--json")
    fine = run_command(work, "cancel", "far", "done", "--json")

    assert mixed.code == 2, "an unknown id is an input error and outranks a refusal"
    body = mixed.json()
    counts = ("requested", "warned", "refused", "already", "final", "unknown")
    assert {k: body[k] for k in counts} == {
        "requested": 1, "warned": 1, "refused": 1, "already": 1, "final": 0, "unknown": 1,
    }  # fmt: skip
    assert body["orders"] == [
        {"order_id": "far", "state": "cancel_requested", "outcome": "requested"},
        {"order_id": "near", "state": "cancel_requested", "outcome": "warned"},
        {"order_id": "late", "state": "cancel_refused", "outcome": "refused"},
        {"order_id": "done", "state": "cancel_requested", "outcome": "already"},
        {"order_id": "ghost", "state": None, "outcome": "unknown"},
    ]
    assert body["earliest_refused_send_at"] is not None
    assert mixed.err == "", "with --json, stdout is the whole answer"
    assert (refused.code, refused.json()["final"], refused.json()["already"]) == (1, 1, 1)
    assert (fine.code, fine.json()["already"]) == (0, 2)


def test_cancel_by_label_cancels_the_campaign_and_counts_each_outcome(
    work: Path, book: Ledger
) -> None:
    now = book.now()
    book.register_many(
        [(f"s-{n}", now + timedelta(hours=2), "spring") for n in range(1200)]
        + [(f"w-{n}", now + timedelta(minutes=10), "spring") for n in range(30)]
        + [(f"r-{n}", now + timedelta(minutes=4), "spring") for n in range(20)]
        + [(f"a-{n}", now + timedelta(hours=2), "autumn") for n in range(10)]
    )

    dry = run_command(work, "cancel", "--label", "spring", "--dry-run")
    assert dry.code == 1, "refusals would happen"
    assert dry.out.startswith("dry run, nothing written: 1250 order(s) with label spring")
    assert {o.state for o in book.orders()} == {OrderState.SCHEDULED}, "a dry run writes nothing"

    done = run_command(work, "cancel", "--label", "spring", "--json")
    body = done.json()
    assert done.code == 1
    assert (body["requested"], body["warned"], body["refused"], body["dry_run"]) == (
        1200, 30, 20, False,
    )  # fmt: skip
    assert len(body["orders"]) == 1250
    states = {o.order_id: o.state for o in book.orders()}
    assert all(states[f"s-{n}"] is OrderState.CANCEL_REQUESTED for n in range(1200))
    assert all(states[f"r-{n}"] is OrderState.CANCEL_REFUSED for n in range(20))
    assert all(states[f"a-{n}"] is OrderState.SCHEDULED for n in range(10))

    again = run_command(work, "cancel", "--label", "spring")
    assert again.code == 1, "the refused orders of the campaign will still go out"
    assert "already    1230" in again.out
    assert "final      20" in again.out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["cancel"], "give ORDER_ID... or --label LABEL"),
        (["cancel", "a", "--label", "spring"], "give ORDER_ID... or --label LABEL"),
        (["cancel", "--label", "bad\u202elabel"], "--label: label contains the control"),
        (["cancel", "--lab", "spring"], "unrecognized arguments"),
    ],
)
def test_cancel_needs_ids_or_a_label(
    work: Path, book: Ledger, args: list[str], needle: str
) -> None:
    book.register("a", book.now() + timedelta(hours=2), label="spring")
    result = run_command(work, *args)
    assert result.code == 2
    assert result.err.startswith("smsledger: error: ") and needle in result.err
    assert book.get("a").state is OrderState.SCHEDULED
