"""`smsledger run --metrics HOST:PORT` as a real process: /metrics parsed with
prometheus_client's parser, /healthz and /readyz, and /readyz failing once the provider rejects
our credentials."""

from __future__ import annotations

import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import SMSLEDGER, clean_env, needs_smsledger, wait_for
from prometheus_client.parser import text_string_to_metric_families

from ledger import Ledger, OrderState
from scheduler.provider.sandbox import Sandbox

pytestmark = needs_smsledger

CONFIG = """\
[ledger]
url = "sqlite:///ledger.db"
synchronous = "NORMAL"
[api]
base_url = "{base_url}"
key = "k-metrics"
hash = "{hash}"
timeout_seconds = 1
[scheduler]
poll_seconds = 0.2
[log]
path = "log.jsonl"
{metrics}"""


@pytest.fixture
def sandbox_options() -> dict[str, Any]:
    return {"key": "k-metrics", "hash": "h-metrics"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def setup(tmp_path: Path, sandbox: Sandbox, *, hash: str = "h-metrics", metrics: str = "") -> None:
    (tmp_path / "smsledger.toml").write_text(
        CONFIG.format(base_url=sandbox.url, hash=hash, metrics=metrics)
    )


def start(
    tmp_path: Path, started: list[subprocess.Popen[bytes]], *args: str
) -> subprocess.Popen[bytes]:
    assert SMSLEDGER is not None
    proc = subprocess.Popen(
        [SMSLEDGER, "run", *args],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # the daemon logs to log.jsonl
    )
    started.append(proc)
    return proc


def answer(port: int, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    except httpx.TransportError:
        return None


def samples(text: str) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    found: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return found


def test_run_with_metrics_serves_metrics_health_and_readiness(
    tmp_path: Path, make_sandbox: Any, started: list[subprocess.Popen[bytes]]
) -> None:
    sandbox = make_sandbox()
    setup(tmp_path, sandbox)
    send_at = datetime.now(UTC) + timedelta(hours=1)
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", synchronous="NORMAL") as ledger:
        for order_id in ("6001", "6002"):
            sandbox.add_order(order_id, send_at)
            ledger.register(order_id, send_at)
        ledger.request_cancel("6001")
    port = free_port()
    start(tmp_path, started, "--metrics", f"127.0.0.1:{port}")

    def cancelled_counted() -> bool:
        got = answer(port, "/metrics")
        if got is None:
            return False
        counted = samples(got.text).get("smsledger_transitions_total", {})
        return counted.get(frozenset({("to_state", "cancelled")}), 0) >= 1

    wait_for(cancelled_counted, timeout=60, what="the cancel counted in /metrics")
    metrics = answer(port, "/metrics")
    healthz = answer(port, "/healthz")
    readyz = answer(port, "/readyz")

    assert metrics is not None
    assert metrics.headers["content-type"].startswith("text/plain")
    found = samples(metrics.text)
    orders = {dict(k)["state"]: v for k, v in found["smsledger_orders"].items()}
    assert set(orders) == {s.value for s in OrderState}
    for name in (
        "smsledger_provider_calls_total",
        "smsledger_provider_call_seconds_bucket",
        "smsledger_pass_seconds_count",
        "smsledger_last_pass_timestamp_seconds",
        "smsledger_cancels_in_flight",
        "smsledger_oldest_cancel_request_age_seconds",
        "smsledger_alerts_pending",
        "smsledger_clock_skew_seconds",
    ):
        assert name in found, name
    endpoints = {dict(k)["endpoint"] for k in found["smsledger_provider_calls_total"]}
    assert endpoints  # the cancel's calls, labelled by endpoint
    assert healthz is not None
    assert healthz.status_code == 200
    assert healthz.json()["status"] == "ok"
    assert readyz is not None
    assert readyz.status_code == 200


def test_readyz_fails_once_the_provider_rejects_our_credentials(
    tmp_path: Path, make_sandbox: Any, started: list[subprocess.Popen[bytes]]
) -> None:
    sandbox = make_sandbox()
    port = free_port()
    # From the config this time: [metrics] listen.
    setup(tmp_path, sandbox, hash="wrong-hash", metrics=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    send_at = datetime.now(UTC) + timedelta(hours=1)
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", synchronous="NORMAL") as ledger:
        sandbox.add_order("6101", send_at)
        ledger.register("6101", send_at)
    start(tmp_path, started)

    def ready_code() -> int | None:
        got = answer(port, "/readyz")
        return None if got is None else got.status_code

    wait_for(lambda: ready_code() == 200, timeout=60, what="/readyz 200 before any call")
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", synchronous="NORMAL") as ledger:
        ledger.request_cancel("6101")  # the daemon's cancel meets the rejected credentials
    wait_for(lambda: ready_code() == 503, timeout=60, what="/readyz 503")
    readyz = answer(port, "/readyz")
    healthz = answer(port, "/healthz")
    metrics = answer(port, "/metrics")

    assert readyz is not None
    assert "rejected our credentials" in readyz.json()["reason"]
    assert healthz is not None
    assert healthz.status_code == 200  # alive: passes go on; only not ready
    assert metrics is not None
    assert samples(metrics.text)["smsledger_credentials_rejected"][frozenset()] == 1
    assert "wrong-hash" not in readyz.text + metrics.text


def test_run_metrics_refuses_a_bad_address_and_a_taken_port(
    tmp_path: Path, make_sandbox: Any
) -> None:
    assert SMSLEDGER is not None
    setup(tmp_path, make_sandbox())
    bad = subprocess.run(
        [SMSLEDGER, "run", "--metrics", "nowhere"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [SMSLEDGER, "run", "--metrics", f"127.0.0.1:{port}"],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert bad.returncode == 2
    assert "HOST:PORT" in bad.stderr
    assert busy.returncode == 2, busy.stderr
    assert f"metrics.listen 127.0.0.1:{port}: cannot listen" in busy.stderr
    assert "Traceback" not in bad.stderr + busy.stderr
