"""Metrics and health of one daemon, served over HTTP: `/metrics`, `/healthz`, `/readyz`.

Each daemon has its own `CollectorRegistry`: smsledger used as a library must not add its series
to an application's global registry (nor collide with a second daemon in the same process).

What a pass or a call does is counted as it happens (transitions, provider calls, pass times).
What the ledger holds is read at scrape time, off the pass: the orders per state by one grouped
count over the state index, at most every `ORDER_COUNT_SECONDS`, so a scrape of a 1,000,000-order
ledger costs one index scan per 15 s and a pass costs nothing more than it did.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from ledger import LedgerError, OrderState, heartbeats, outbox, stats
from ledger._log import get_logger
from ledger.config import parse_listen
from scheduler.daemon import Daemon
from scheduler.provider.client import CallObserved

__all__ = [
    "ORDER_COUNT_SECONDS",
    "DaemonMetrics",
    "Health",
    "MetricsServer",
    "health",
    "readiness",
]

log = get_logger("smsledger.metrics")

#: The orders-per-state gauge is recounted at most this often (a scan of the state index).
ORDER_COUNT_SECONDS = 15.0
#: Provider calls take from milliseconds to the call deadline (seconds).
CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: A pass is milliseconds when idle, longer when it moves big batches.
PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


@dataclass(frozen=True)
class Health:
    """An HTTP answer of a health endpoint: 200 or 503, and a JSON body saying why."""

    ok: bool
    body: dict[str, Any]

    @property
    def status(self) -> int:
        return 200 if self.ok else 503


def health(
    daemon: Daemon, poll_seconds: float, *, since: float, monotonic: Callable[[], float]
) -> Health:
    """Alive while the last pass ended within `heartbeats.liveness_limit` (3 polls + 10 s).

    Before the first pass the daemon's start (`since`, on the same monotonic clock) stands in.
    """
    limit = heartbeats.liveness_limit(poll_seconds).total_seconds()
    last = daemon.last_pass_monotonic
    age = monotonic() - (last if last is not None else since)
    if daemon.ledger_lost.is_set():
        return Health(
            False, {"status": "fail", "reason": "the ledger file was removed or replaced"}
        )
    if age <= limit:
        reason = "last pass ended in time" if last is not None else "starting: no pass yet"
        return Health(True, {"status": "ok", "reason": reason, "seconds_since_pass": round(age, 3),
                             "limit_seconds": limit})  # fmt: skip
    what = "the last pass ended" if last is not None else "the daemon started with no pass since"
    return Health(
        False,
        {
            "status": "fail",
            "reason": f"{what} {age:.0f} s ago, more than the {limit:g} s allowed",
            "seconds_since_pass": round(age, 3),
            "limit_seconds": limit,
        },
    )


def readiness(daemon: Daemon) -> Health:
    """Ready while the ledger answers and the provider has not rejected our credentials."""
    try:
        daemon.ledger.store.lease_now()
        stats.oldest_cancel_request(daemon.ledger.store)  # a real read of the orders table
    except LedgerError as exc:
        return Health(False, {"status": "fail", "reason": f"the ledger does not answer: {exc}"})
    rejected = daemon.credentials_rejected_at
    if rejected is not None:
        return Health(
            False,
            {
                "status": "fail",
                "reason": "the provider rejected our credentials",
                "since": rejected.isoformat(),
            },
        )
    return Health(True, {"status": "ok", "reason": "the ledger answers; credentials not rejected"})


class DaemonMetrics:
    """The daemon's series in a registry of their own (`registry`)."""

    def __init__(
        self,
        daemon: Daemon,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        order_count_seconds: float = ORDER_COUNT_SECONDS,
    ) -> None:
        self.daemon = daemon
        self.registry = CollectorRegistry()
        self.transitions = Counter(
            "smsledger_transitions",
            "State changes this daemon made, by the state entered.",
            ["to_state"],
            registry=self.registry,
        )
        for state in OrderState:
            self.transitions.labels(to_state=state.value)
        self.provider_calls = Counter(
            "smsledger_provider_calls",
            "Provider calls this daemon made, by endpoint and outcome.",
            ["endpoint", "outcome"],
            registry=self.registry,
        )
        self.provider_call_seconds = Histogram(
            "smsledger_provider_call_seconds",
            "How long provider calls took, by endpoint.",
            ["endpoint"],
            buckets=CALL_BUCKETS,
            registry=self.registry,
        )
        self.pass_seconds = Histogram(
            "smsledger_pass_seconds",
            "How long the daemon's passes took.",
            buckets=PASS_BUCKETS,
            registry=self.registry,
        )
        self._ledger = _LedgerCollector(daemon, monotonic, order_count_seconds)
        self.registry.register(self._ledger)
        daemon.ledger.store.transition_observers.append(self._on_transition)
        daemon.pass_observers.append(self.pass_seconds.observe)
        observe = getattr(daemon.client, "observe", None)
        if observe is not None:
            observe(self._on_call)

    def _on_transition(self, to_state: OrderState, count: int) -> None:
        self.transitions.labels(to_state=to_state.value).inc(count)

    def _on_call(self, call: CallObserved) -> None:
        self.provider_calls.labels(endpoint=call.endpoint, outcome=call.outcome).inc()
        self.provider_call_seconds.labels(endpoint=call.endpoint).observe(call.seconds)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class _LedgerCollector:
    """Series read at scrape time from the ledger and the daemon."""

    def __init__(
        self, daemon: Daemon, monotonic: Callable[[], float], order_count_seconds: float
    ) -> None:
        self._daemon = daemon
        self._monotonic = monotonic
        self._every = order_count_seconds
        self._lock = threading.Lock()
        self._counts: dict[OrderState, int] | None = None
        self._counted_at: float | None = None

    def _order_counts(self) -> dict[OrderState, int] | None:
        with self._lock:  # concurrent scrapes share one count
            now = self._monotonic()
            if self._counted_at is None or now - self._counted_at >= self._every:
                try:
                    self._counts = stats.count_by_state(self._daemon.ledger.store)
                except LedgerError as exc:
                    log.warning("metrics_ledger_unavailable", error=str(exc))
                self._counted_at = now  # a failing ledger is not asked again at every scrape
            return self._counts

    def collect(self) -> Iterable[Metric]:
        daemon = self._daemon
        store = daemon.ledger.store
        counts = self._order_counts()
        if counts is not None:
            orders = GaugeMetricFamily(
                "smsledger_orders",
                f"Orders in the ledger by state (recounted at most every {self._every:g} s).",
                labels=["state"],
            )
            for state, count in counts.items():
                orders.add_metric([state.value], count)
            yield orders
        yield GaugeMetricFamily(
            "smsledger_cancels_in_flight",
            "Cancel sequences this daemon is running or has claimed.",
            value=daemon.cancels_in_flight,
        )
        try:
            oldest = stats.oldest_cancel_request(store)
            pending = outbox.count_pending(store)
            now = store.lease_now()
        except LedgerError as exc:
            log.warning("metrics_ledger_unavailable", error=str(exc))
        else:
            age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
            yield GaugeMetricFamily(
                "smsledger_oldest_cancel_request_age_seconds",
                "Age of the oldest cancel asked and not settled yet (0: none).",
                value=age,
            )
            yield GaugeMetricFamily(
                "smsledger_alerts_pending", "Alerts not delivered yet.", value=pending
            )
        if daemon.last_pass_at is not None:
            yield GaugeMetricFamily(
                "smsledger_last_pass_timestamp_seconds",
                "When the daemon's last pass ended (Unix time).",
                value=daemon.last_pass_at.timestamp(),
            )
        skew = daemon.skew.skew_seconds
        if skew is not None:
            yield GaugeMetricFamily(
                "smsledger_clock_skew_seconds",
                "The provider's clock minus this host's, from its Date headers (absent: unknown).",
                value=skew,
            )
        yield GaugeMetricFamily(
            "smsledger_credentials_rejected",
            "1 while the provider rejects our credentials, else 0.",
            value=1 if daemon.credentials_rejected_at is not None else 0,
        )


class MetricsServer:
    """One small HTTP server thread: /metrics, /healthz, /readyz (anything else is 404)."""

    def __init__(
        self,
        metrics: DaemonMetrics,
        listen: str,
        poll_seconds: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`listen` is HOST:PORT (`ledger.config.parse_listen`); port 0 takes a free one.

        Raises OSError when the address cannot be bound.
        """
        host, port = _parse(listen)
        self.metrics = metrics
        self.poll_seconds = poll_seconds
        self._monotonic = monotonic
        self.started = monotonic()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                """Scrapes are not logged (one line every few seconds would drown the log)."""

        self._httpd = (_Server6 if ":" in host else ThreadingHTTPServer)((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) served, the real port when 0 was asked."""
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> MetricsServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="smsledger-metrics", daemon=True
        )
        self._thread.start()
        host, port = self.address
        log.info("metrics_listening", host=host, port=port)
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                self._send(request, 200, self.metrics.exposition(), CONTENT_TYPE_LATEST)
                return
            if path == "/healthz":
                answer = health(
                    self.metrics.daemon,
                    self.poll_seconds,
                    since=self.started,
                    monotonic=self._monotonic,
                )
            elif path == "/readyz":
                answer = readiness(self.metrics.daemon)
            else:
                answer = Health(False, {"status": "fail", "reason": f"no such path: {path}"})
                self._send_json(request, 404, answer.body)
                return
            self._send_json(request, answer.status, answer.body)
        except Exception:  # a scrape must never take the server thread down
            log.exception("metrics_request_failed", path=path)
            self._send_json(request, 500, {"status": "fail", "reason": "internal error"})

    def _send_json(self, request: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
        self._send(request, code, json.dumps(body).encode(), "application/json")

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, code: int, data: bytes, content_type: str) -> None:
        request.send_response(code)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _parse(listen: str) -> tuple[str, int]:
    """`parse_listen`, and port 0 (a free port) for tests and the Python API."""
    host, sep, port = listen.rpartition(":")
    if sep and port == "0" and host:
        return host.strip("[]"), 0
    return parse_listen(listen)
