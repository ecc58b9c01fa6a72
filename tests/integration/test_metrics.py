"""Metrics and health in-process: a real daemon, a real sandbox, the server over real HTTP.

The monotonic clock of the health check and the order-count cache is a test's own, so "passes
stopped for a minute" and "15 s later" need no waiting.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ledger import Ledger, OrderState, utcnow
from scheduler.daemon import Daemon
from scheduler.metrics import ORDER_COUNT_SECONDS, DaemonMetrics, MetricsServer, health
from scheduler.provider.client import IletiMerkeziClient
from scheduler.provider.sandbox import Sandbox

POLL = 1.0
LIMIT = 3 * POLL + 10  # heartbeats.liveness_limit


class Tick:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


@pytest.fixture
def tick() -> Tick:
    return Tick()


@pytest.fixture
def served(
    tmp_path: Path,
    make_sandbox: Callable[..., Sandbox],
    make_client: Callable[..., IletiMerkeziClient],
    tick: Tick,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Daemon, MetricsServer, Sandbox]]:
    sandbox = make_sandbox()
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", synchronous="NORMAL")
    daemon = Daemon(ledger, make_client(sandbox))
    # The daemon stamps its passes with time.monotonic: the test's clock stands in for it.
    monkeypatch.setattr("scheduler.daemon.time.monotonic", tick)
    server = MetricsServer(DaemonMetrics(daemon, monotonic=tick), "127.0.0.1:0", POLL,
                           monotonic=tick).start()  # fmt: skip
    yield daemon, server, sandbox
    server.stop()
    ledger.close()


def get(server: MetricsServer, path: str) -> httpx.Response:
    host, port = server.address
    return httpx.get(f"http://{host}:{port}{path}", timeout=10)


def scrape(server: MetricsServer) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of /metrics by name, then by its sorted labels."""
    response = get(server, "/metrics")
    assert response.status_code == 200
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_metrics_count_orders_transitions_calls_and_passes(
    served: tuple[Daemon, MetricsServer, Sandbox],
) -> None:
    daemon, server, sandbox = served
    ledger = daemon.ledger
    send_at = ledger.now() + timedelta(hours=1)
    for order_id in ("9001", "9002", "9003"):
        sandbox.add_order(order_id, send_at)
        ledger.register(order_id, send_at)
    ledger.request_cancel("9001")
    daemon.run_pass(wait=True)

    found = scrape(server)

    orders = {dict(k)["state"]: v for k, v in found["smsledger_orders"].items()}
    assert set(orders) == {s.value for s in OrderState}  # every state, 0 included
    assert orders["scheduled"] == 2
    assert orders["cancelled"] == 1
    assert orders["needs_attention"] == 0
    transitions = {dict(k)["to_state"]: v for k, v in found["smsledger_transitions_total"].items()}
    assert transitions["cancelled"] == 1
    assert transitions["cancelling"] == 1
    assert transitions["too_late"] == 0
    calls = {
        (dict(k)["endpoint"], dict(k)["outcome"]): v
        for k, v in found["smsledger_provider_calls_total"].items()
    }
    assert sum(calls.values()) >= 1
    assert all(outcome == "ok" for _, outcome in calls)
    call_counts = found["smsledger_provider_call_seconds_count"]
    assert sum(call_counts.values()) == sum(calls.values())
    assert found["smsledger_pass_seconds_count"][()] == 1
    assert found["smsledger_last_pass_timestamp_seconds"][()] == pytest.approx(
        daemon.last_pass_at.timestamp() if daemon.last_pass_at else 0
    )
    assert found["smsledger_cancels_in_flight"][()] == 0
    assert found["smsledger_oldest_cancel_request_age_seconds"][()] == 0
    assert found["smsledger_alerts_pending"][()] == 0
    assert "smsledger_clock_skew_seconds" in found  # the sandbox's answers carry a Date


def test_the_order_gauge_is_recounted_at_most_every_15_seconds(
    served: tuple[Daemon, MetricsServer, Sandbox], tick: Tick
) -> None:
    daemon, server, _ = served
    ledger = daemon.ledger
    ledger.register("9101", ledger.now() + timedelta(hours=1))
    first = scrape(server)["smsledger_orders"][(("state", "scheduled"),)]
    ledger.register("9102", ledger.now() + timedelta(hours=1))
    tick.value += ORDER_COUNT_SECONDS - 1
    cached = scrape(server)["smsledger_orders"][(("state", "scheduled"),)]
    tick.value += 1
    recounted = scrape(server)["smsledger_orders"][(("state", "scheduled"),)]
    assert (first, cached, recounted) == (1, 1, 2)


def test_oldest_cancel_request_age_reads_the_pending_cancels(
    served: tuple[Daemon, MetricsServer, Sandbox], tick: Tick
) -> None:
    daemon, server, _ = served
    url = daemon.ledger.store.url
    # A command whose clock read 100 s ago asked for the cancel; no pass has taken it since.
    with Ledger(url, clock=lambda: utcnow() - timedelta(seconds=100)) as earlier:
        earlier.register("9201", earlier.now() + timedelta(hours=1))
        earlier.request_cancel("9201")
    age = scrape(server)["smsledger_oldest_cancel_request_age_seconds"][()]
    assert 100 <= age < 160
    daemon.run_pass(wait=True)  # the sandbox does not know 9201: it ends, nothing is pending
    assert scrape(server)["smsledger_oldest_cancel_request_age_seconds"][()] == 0


def test_healthz_turns_503_when_passes_stop(
    served: tuple[Daemon, MetricsServer, Sandbox], tick: Tick
) -> None:
    daemon, server, _ = served
    starting = get(server, "/healthz")
    daemon.run_pass()
    fresh = get(server, "/healthz")
    tick.value += LIMIT  # just inside: 3 polls + 10 s
    late_but_ok = get(server, "/healthz")
    tick.value += 1  # passes stopped: nothing ran for longer than allowed
    stale = get(server, "/healthz")
    daemon.run_pass()
    again = get(server, "/healthz")

    assert starting.status_code == 200
    assert "no pass yet" in starting.json()["reason"]
    assert fresh.status_code == 200
    assert late_but_ok.status_code == 200
    assert stale.status_code == 503
    assert stale.headers["content-type"] == "application/json"
    assert stale.json()["status"] == "fail"
    assert "14 s ago" in stale.json()["reason"]
    assert again.status_code == 200


def test_healthz_without_any_pass_fails_after_the_limit(
    tick: Tick, tmp_ledger: Ledger, client: IletiMerkeziClient
) -> None:
    """The health function itself: the start stands in for a pass until the first one."""
    daemon = Daemon(tmp_ledger, client)
    since = tick()
    assert health(daemon, POLL, since=since, monotonic=tick).ok
    tick.value += LIMIT + 0.5
    answer = health(daemon, POLL, since=since, monotonic=tick)
    assert not answer.ok
    assert answer.status == 503
    assert "no pass since" in answer.body["reason"]


def test_readyz_is_200_while_the_ledger_answers_and_404_for_other_paths(
    served: tuple[Daemon, MetricsServer, Sandbox],
) -> None:
    _, server, _ = served
    ready = get(server, "/readyz")
    assert ready.status_code == 200
    assert json.loads(ready.text)["status"] == "ok"
    assert get(server, "/nothing").status_code == 404


def test_each_daemon_has_its_own_registry_and_the_global_one_stays_clean(
    tmp_path: Path,
    make_sandbox: Callable[..., Sandbox],
    make_client: Callable[..., IletiMerkeziClient],
) -> None:
    sandbox = make_sandbox()
    ledgers = [Ledger(f"sqlite:///{tmp_path / f'{n}.db'}") for n in range(2)]
    try:
        made = [DaemonMetrics(Daemon(ledger, make_client(sandbox))) for ledger in ledgers]
        assert made[0].registry is not made[1].registry
        global_names = {
            family.name for family in prometheus_client.REGISTRY.collect()
        }  # the default registry
        assert not any(name.startswith("smsledger") for name in global_names)
        assert b"smsledger_orders" in made[0].exposition()
    finally:
        for ledger in ledgers:
            ledger.close()
