"""Learning the provider's queue lead: observations, probes and the verdict, against the truth.

One `FakeClock` drives the ledger, the daemons and a sandbox whose orders each draw a queue lead
of 150 s +- 30 s; the probes travel over real HTTP, the ledger is a real SQLite file, and the
verdict is read by the real `smsledger margins` command.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import CONFIG, SMSLEDGER, FakeClock, HookedClient, clean_env, run_pass_within
from structlog.testing import capture_logs

from ledger import Ledger, OrderState, utcnow
from ledger.leads import (
    Observation,
    Source,
    assess,
    brackets,
    claim_probe,
    observations_of,
    observations_since,
)
from scheduler.daemon import Daemon
from scheduler.probing import LeadRecorder
from scheduler.provider.client import IletiMerkeziClient
from scheduler.provider.sandbox import Sandbox

KEY = "lead-key-4c1d9e"
HASH = "lead-hash-7f20ab"
LEAD, JITTER = 150.0, 30.0
ORDERS = 40
PASS_SECONDS = 5.0
PASS_TIMEOUT = 15.0
MAX_PROBES = 12
PER_DAY = 24
_IDS = itertools.count(1)


@pytest.fixture
def clock() -> FakeClock:
    # One reading of the real clock, so that `smsledger margins` (real time) sees these days.
    return FakeClock(utcnow().replace(microsecond=0))


@pytest.fixture
def sandbox_options(clock: FakeClock) -> dict[str, Any]:
    return {
        "key": KEY,
        "hash": HASH,
        "clock": clock,
        "seed": 5,
        "queue_lead": LEAD,
        "queue_lead_jitter": JITTER,
    }


@pytest.fixture
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox()


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Iterator[Ledger]:
    opened = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", synchronous="NORMAL", clock=clock)
    yield opened
    opened.close()


@pytest.fixture
def daemon_options(clock: FakeClock) -> dict[str, Any]:
    """`make_daemon` (tests/integration/conftest.py) on the shared fake clock."""
    return {
        "clock": clock,
        "sleep": clock.advance,
        "lease_clock": clock,
        "lease": timedelta(seconds=35),
        "probe_orders_per_day": PER_DAY,
        "max_probes_per_order": MAX_PROBES,
    }


def add_orders(
    ledger: Ledger, sandbox: Sandbox, clock: FakeClock, sends_in: list[float]
) -> list[str]:
    ids = []
    for seconds in sends_in:
        oid = f"71{next(_IDS):06d}"
        send_at = clock.now() + timedelta(seconds=seconds)
        ledger.register(oid, send_at)
        sandbox.add_order(oid, send_at)
        ids.append(oid)
    return ids


def probes_of(observations: list[Observation]) -> dict[str, list[Observation]]:
    found: dict[str, list[Observation]] = {}
    for obs in observations:
        if obs.probe_step is not None:
            found.setdefault(obs.order_id, []).append(obs)
    return found


def margins(tmp_path: Path, refuse_before: float) -> subprocess.CompletedProcess[str]:
    """`smsledger margins --json` on the test's ledger with this refuse margin."""
    assert SMSLEDGER is not None
    config = tmp_path / "smsledger.toml"
    config.write_text(
        CONFIG.format(zone="UTC") + f"[windows]\nrefuse_before_seconds = {refuse_before}\n",
        encoding="utf-8",
    )
    return subprocess.run(
        [SMSLEDGER, "--config", str(config), "margins", "--json"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def hour_of_probing(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, dict[str, dict[str, Any]], list[Observation], list[str]]]:
    """40 orders due over the next hour, passes every 5 fake seconds until all have gone out.

    Yields the ledger's folder, the sandbox's truth about each order, every observation kept and
    the order ids. Module-scoped: the hour is walked once for the tests that read it.
    """
    tmp_path = tmp_path_factory.mktemp("hour")
    clock = FakeClock(utcnow().replace(microsecond=0))
    with (
        Sandbox(
            key=KEY, hash=HASH, clock=clock, seed=5, queue_lead=LEAD, queue_lead_jitter=JITTER
        ) as sandbox,
        Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", synchronous="NORMAL", clock=clock) as ledger,
        IletiMerkeziClient(sandbox.url, key=KEY, hash=HASH, timeout=5.0) as client,
    ):
        sends_in = [90.0 + n * 85 for n in range(ORDERS)]
        ids = add_orders(ledger, sandbox, clock, sends_in)
        daemon = Daemon(
            ledger,
            client,
            clock=clock,
            sleep=clock.advance,
            lease_clock=clock,
            rng=random.Random(0),
            probe_orders_per_day=PER_DAY,
            max_probes_per_order=MAX_PROBES,
        )
        try:
            end = clock.now() + timedelta(seconds=sends_in[-1] + 60)
            while clock.now() < end:
                run_pass_within(daemon, PASS_TIMEOUT)
                clock.advance(PASS_SECONDS)
        finally:
            daemon.stop(grace=5.0)
        truth = sandbox.truth()["orders"]
        observations = observations_since(ledger.store, clock.now() - timedelta(days=1))
        states = {oid: ledger.get(oid).state for oid in ids}
        histories = {oid: [e.to_state for e in ledger.history(oid)] for oid in ids}
    assert set(states.values()) == {OrderState.DISPATCHED}
    assert all(h == [OrderState.SCHEDULED, OrderState.DISPATCHED] for h in histories.values())
    yield tmp_path, truth, observations, ids


def test_probed_brackets_hold_the_true_lead_and_close_within_30_seconds(
    hour_of_probing: tuple[Path, dict[str, dict[str, Any]], list[Observation], list[str]],
) -> None:
    _, truth, observations, _ = hour_of_probing
    found = brackets(observations)
    assert len(probes_of(observations)) == PER_DAY  # the day's budget, and no more
    for oid, bracket in found.items():
        lead = truth[oid]["queue_lead_seconds"]
        assert bracket.lower is None or bracket.lower <= lead, (oid, bracket, lead)
        assert bracket.upper is None or lead < bracket.upper, (oid, bracket, lead)
    closed = [b for b in found.values() if b.closed]
    assert len(closed) >= PER_DAY - 2
    # Once the first orders have shown where the lead lies, brackets end at most 30 s wide.
    narrow = [b for b in closed if b.width is not None and b.width <= 30]
    assert len(narrow) >= len(closed) - 2


def test_the_longest_lower_bound_is_within_30_seconds_below_the_longest_probed_lead(
    hour_of_probing: tuple[Path, dict[str, dict[str, Any]], list[Observation], list[str]],
) -> None:
    _, truth, observations, ids = hour_of_probing
    probed = probes_of(observations)
    longest_probed = max(truth[oid]["queue_lead_seconds"] for oid in probed)
    longest_of_all = max(truth[oid]["queue_lead_seconds"] for oid in ids)
    report = assess(
        brackets(observations),
        [o.duration_ms for o in observations if o.duration_ms is not None],
        refuse_before_seconds=300,
        warn_before_seconds=900,
        poll_seconds=1,
    )
    lower = report.longest_lead_lower_bound_seconds
    assert lower is not None
    assert longest_probed - 30 <= lower <= longest_probed
    assert report.suggested_refuse_before_seconds is not None
    assert report.suggested_refuse_before_seconds >= longest_of_all


def test_no_order_gets_more_probe_calls_than_allowed_and_none_is_touched(
    hour_of_probing: tuple[Path, dict[str, dict[str, Any]], list[Observation], list[str]],
) -> None:
    _, truth, observations, ids = hour_of_probing
    probed = probes_of(observations)
    for oid in ids:
        calls = truth[oid]["report_calls"]
        assert calls == len(probed.get(oid, [])) <= MAX_PROBES
        assert (truth[oid]["cancel_calls"], truth[oid]["state"]) == (0, "completed")
        steps = [o.probe_step for o in probed.get(oid, [])]
        assert steps == list(range(len(steps)))


@pytest.mark.skipif(SMSLEDGER is None, reason="the smsledger script is not installed")
@pytest.mark.parametrize(
    ("refuse_before", "verdict", "status"),
    [(120, "refuse_before_too_small", 1), (300, "ok", 0)],
)
def test_margins_judges_refuse_before_by_the_leads_seen_and_exits_1_when_too_small(
    hour_of_probing: tuple[Path, dict[str, dict[str, Any]], list[Observation], list[str]],
    refuse_before: float,
    verdict: str,
    status: int,
) -> None:
    folder, _, _, _ = hour_of_probing
    done = margins(folder, refuse_before)
    assert done.returncode == status, done.stderr
    report = json.loads(done.stdout)
    assert report["verdict"] == verdict
    assert report["refuse_before_seconds"] == refuse_before
    assert report["closed_brackets"] >= 5
    assert set(report) == {
        "orders_observed",
        "closed_brackets",
        "longest_lead_lower_bound_seconds",
        "lead_seconds",
        "refuse_before_seconds",
        "warn_before_seconds",
        "suggested_refuse_before_seconds",
        "suggested_warn_before_seconds",
        "verdict",
    }


@pytest.mark.skipif(SMSLEDGER is None, reason="the smsledger script is not installed")
def test_margins_shows_people_the_figures_and_a_histogram(
    hour_of_probing: tuple[Path, dict[str, dict[str, Any]], list[Observation], list[str]],
) -> None:
    folder, _, _, _ = hour_of_probing
    config = folder / "human.toml"
    config.write_text(CONFIG.format(zone="UTC"), encoding="utf-8")
    assert SMSLEDGER is not None
    done = subprocess.run(
        [SMSLEDGER, "--config", str(config), "margins"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "verdict: ok" in done.stdout
    assert "longest lead seen" in done.stdout
    assert "#" in done.stdout


def test_with_probing_off_nothing_is_probed_but_pre_checks_are_kept(
    ledger: Ledger, sandbox: Sandbox, clock: FakeClock, make_daemon: Callable[..., Daemon]
) -> None:
    scheduled = add_orders(ledger, sandbox, clock, [400.0, 500.0])
    cancelled = add_orders(ledger, sandbox, clock, [3000.0])
    ledger.request_cancel(cancelled[0])
    daemon = make_daemon(probe_orders_per_day=0)

    for _ in range(120):
        run_pass_within(daemon, PASS_TIMEOUT)
        clock.advance(PASS_SECONDS)

    truth = sandbox.truth()["orders"]
    assert [truth[oid]["report_calls"] for oid in scheduled] == [0, 0]
    rows = observations_of(ledger.store, [*scheduled, *cancelled])
    assert [(o.order_id, o.status, o.source) for o in rows] == [
        (cancelled[0], 456, Source.PRECHECK.value)
    ]
    assert rows[0].seconds_left == pytest.approx(3000.0)
    assert ledger.get(cancelled[0]).state is OrderState.CANCELLED


def test_a_too_late_outcome_is_kept_as_a_lower_bound_and_warned_about(
    tmp_path: Path, sandbox: Sandbox, clock: FakeClock, make_daemon: Callable[..., Daemon]
) -> None:
    """A pre-check that finds the order queued 100 s before dispatch proves a lead of at least
    100 s: kept, and, above a refuse margin of 60 s, `refuse_margin_too_small`."""
    with Ledger(
        f"sqlite:///{tmp_path / 'narrow.db'}",
        warn_before=timedelta(seconds=120),
        refuse_before=timedelta(seconds=60),
        clock=clock,
    ) as narrow:
        (oid,) = add_orders(narrow, sandbox, clock, [400.0])
        narrow.request_cancel(oid)
        clock.advance(300)  # 100 s left: queued (every lead is 120 s or more), margin open
        daemon = make_daemon(ledger=narrow, probe_orders_per_day=0)
        with capture_logs() as logs:
            run_pass_within(daemon, PASS_TIMEOUT)
        daemon.stop()

        assert narrow.get(oid).state is OrderState.TOO_LATE
        rows = observations_of(narrow.store, [oid])
    assert [(o.status, o.source, o.seconds_left) for o in rows] == [
        (113, Source.PRECHECK.value, 100.0)
    ]
    assert rows[0].lower_bound is not None and rows[0].lower_bound <= truth_lead(sandbox, oid)
    warned = [e for e in logs if e["event"] == "refuse_margin_too_small"]
    assert [(e["order_id"], e["lead_at_least_seconds"]) for e in warned] == [(oid, 100.0)]


def truth_lead(sandbox: Sandbox, order_id: str) -> float:
    lead: float = sandbox.truth()["orders"][order_id]["queue_lead_seconds"]
    return lead


def test_a_probe_never_takes_a_worker_from_a_waiting_cancel_nor_changes_the_order(
    ledger: Ledger,
    sandbox: Sandbox,
    clock: FakeClock,
    client: IletiMerkeziClient,
    make_daemon: Callable[..., Daemon],
) -> None:
    first, second = add_orders(ledger, sandbox, clock, [3000.0, 3100.0])
    (probed,) = add_orders(ledger, sandbox, clock, [600.0])
    ledger.request_cancel(first)
    ledger.request_cancel(second)
    hooked = HookedClient(client)
    hold = threading.Event()
    hooked.holds[first] = hold
    daemon = make_daemon(client=hooked, max_concurrent_cancels=1)

    try:
        daemon.run_pass()  # the one worker takes `first` and hangs in its cancel-order
        assert daemon.prober.wait_idle(PASS_TIMEOUT)
        # `second` waits for the worker: the prober made no call.
        assert sandbox.truth()["orders"][probed]["report_calls"] == 0
        assert observations_of(ledger.store, [probed]) == []
    finally:
        hold.set()
    assert daemon.wait_idle(PASS_TIMEOUT)
    assert {ledger.get(first).state, ledger.get(second).state} == {OrderState.CANCELLED}

    run_pass_within(daemon, PASS_TIMEOUT)  # no cancel waits now: the probe is made

    rows = observations_of(ledger.store, [probed])
    assert [(o.probe_step, o.status) for o in rows] == [(0, 456)]
    truth = sandbox.truth()["orders"][probed]
    assert (truth["report_calls"], truth["cancel_calls"], truth["state"]) == (1, 0, "pending")
    assert ledger.get(probed).state is OrderState.SCHEDULED
    assert [e.to_state for e in ledger.history(probed)] == [OrderState.SCHEDULED]


def test_daemons_sharing_a_ledger_probe_an_order_at_most_once_per_step(
    ledger: Ledger, sandbox: Sandbox, clock: FakeClock, make_daemon: Callable[..., Daemon]
) -> None:
    ids = add_orders(ledger, sandbox, clock, [300.0 + 20 * n for n in range(8)])
    daemons = [make_daemon(), make_daemon()]

    for _ in range(80):
        for daemon in daemons:  # both passes at the same moment, concurrently
            daemon.run_pass()
        for daemon in daemons:
            assert daemon.wait_idle(PASS_TIMEOUT)
        clock.advance(PASS_SECONDS)

    truth = sandbox.truth()["orders"]
    probed = probes_of(observations_of(ledger.store, ids))
    assert probed
    for oid in ids:
        steps = [o.probe_step for o in probed.get(oid, [])]
        assert steps == list(range(len(steps)))
        assert truth[oid]["report_calls"] == len(steps) <= MAX_PROBES


def test_a_probe_step_is_claimed_once(ledger: Ledger, clock: FakeClock) -> None:
    ledger.register("1", clock.now() + timedelta(minutes=10))
    now = clock.now()

    assert claim_probe(ledger.store, "1", 0, at=now, seconds_left=600) is not None
    assert claim_probe(ledger.store, "1", 0, at=now, seconds_left=600) is None
    assert claim_probe(ledger.store, "1", 1, at=now, seconds_left=590) is not None


def test_refuse_margin_too_small_is_logged_once_and_again_only_when_the_lead_grows(
    ledger: Ledger,
) -> None:
    recorder = LeadRecorder(ledger)  # refuse_before: the default 300 s

    with capture_logs() as logs:
        for seconds in (200.0, 320.0, 310.0, 320.0, 350.0):
            recorder.note_queued("1", seconds)

    warned = [e for e in logs if e["event"] == "refuse_margin_too_small"]
    assert [e["lead_at_least_seconds"] for e in warned] == [320.0, 350.0]
    assert all(e["log_level"] == "warning" for e in warned)
