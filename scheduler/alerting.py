"""Delivers the alerts outbox (`ledger.outbox`) to the `[alerts] webhook_url`, on its own thread.

The sender never runs inside a pass or a cancel: a receiver that hangs holds only this thread,
and each POST is cut off after `timeout_seconds`. Delivery is at least once: a non-2xx answer or
a network error is retried with backoff until `give_up_after_seconds` after the alert was
written, then the row is marked given up and `alert_given_up` is logged. Alerts are claimed like
orders, so among several daemons each alert is sent by one at a time; the receiver can drop
repeats by the `Idempotency-Key` header (the alert id).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from ledger import LedgerError
from ledger._log import get_logger
from ledger.config import AlertsConfig, webhook_host
from ledger.outbox import Alert, claim_due, mark_delivered, mark_failed
from ledger.store import Store

__all__ = ["AlertSender", "Delivery", "post_alert", "sign"]

log = get_logger("smsledger.alerts")

SIGNATURE_HEADER = "X-Smsledger-Signature"
#: How often the sender looks for due alerts when nothing wakes it.
POLL_SECONDS = 1.0
#: Alerts claimed at once.
CLAIM_BATCH = 20
#: The longest wait between two tries of one alert.
BACKOFF_CAP_SECONDS = 300.0


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Delivery:
    """What one POST got: the receiver's HTTP status, or the error that stood for an answer."""

    status: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def post_alert(
    payload: dict[str, Any],
    config: AlertsConfig,
    *,
    transport: httpx.BaseTransport | None = None,
    http: httpx.Client | None = None,
) -> Delivery:
    """POST one alert body with its headers; never raises for the receiver's failures.

    `http`: a client to reuse (the sender's, keeping its connections); else one is made.
    """
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": str(payload["alert_id"])}
    if config.secret:
        headers[SIGNATURE_HEADER] = sign(config.secret, body)
    try:
        if http is not None:
            response = http.post(config.webhook_url, content=body, headers=headers)
        else:
            with httpx.Client(timeout=config.timeout_seconds, transport=transport) as own:
                response = own.post(config.webhook_url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        # httpx messages may quote the URL, and a chat webhook's URL is a credential.
        detail = str(exc).replace(config.webhook_url, webhook_host(config.webhook_url))
        if config.secret:
            detail = detail.replace(config.secret, "***")
        return Delivery(None, f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)
    if 200 <= response.status_code < 300:
        return Delivery(response.status_code, None)
    return Delivery(response.status_code, f"HTTP {response.status_code}")


class AlertSender:
    """Sends due alerts every `poll_seconds` (or when woken) until stopped."""

    def __init__(
        self,
        store: Store,
        config: AlertsConfig,
        *,
        owner: str,
        lease_clock: Callable[[], datetime] | None = None,
        transport: httpx.BaseTransport | None = None,
        poll_seconds: float = POLL_SECONDS,
        backoff_cap_seconds: float = BACKOFF_CAP_SECONDS,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._owner = owner
        self._clock = lease_clock or store.lease_now
        self._poll = poll_seconds
        self._cap = backoff_cap_seconds
        self._rng = rng or random.Random()
        # A claim outlives one POST (cut off at the timeout) with room to mark it.
        self._lease = timedelta(seconds=config.timeout_seconds + 10)
        self._http = httpx.Client(timeout=config.timeout_seconds, transport=transport)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="smsledger-alerts", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for due alerts now (a pass just wrote some)."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the POST in flight (cut off by its timeout); unsent alerts stay pending."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self._config.timeout_seconds + 5)
        if self._thread is None or not self._thread.is_alive():
            self._http.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.send_due()
            except LedgerError as exc:
                log.error("alert_sender_failed", error=str(exc))
                sent = 0
            except Exception:  # a bug must not end delivery silently
                log.exception("alert_sender_crashed")
                sent = 0
            if sent < CLAIM_BATCH:
                self._wake.wait(self._poll)
                self._wake.clear()

    def send_due(self) -> int:
        """Claim the alerts due now and try each once; return how many were tried."""
        now = self._clock()
        claimed = claim_due(
            self._store, owner=self._owner, now=now, expires_at=now + self._lease,
            limit=CLAIM_BATCH,
        )  # fmt: skip
        for alert in claimed:
            if self._stop.is_set():
                break
            self._deliver(alert)
        return len(claimed)

    def _deliver(self, alert: Alert) -> None:
        result = post_alert(alert.payload(), self._config, http=self._http)
        now = self._clock()
        fields = {"alert_id": alert.alert_id, "alert_event": alert.event}
        if result.ok:
            mark_delivered(self._store, alert.alert_id, owner=self._owner, now=now)
            log.info("alert_delivered", status=result.status, attempts=alert.attempts + 1, **fields)
            return
        error = result.error or "no answer"
        give_up_at = alert.at + timedelta(seconds=self._config.give_up_after_seconds)
        if now >= give_up_at:
            mark_failed(self._store, alert.alert_id, owner=self._owner, error=error, retry_at=None)
            log.error("alert_given_up", attempts=alert.attempts + 1, error=error, **fields)
            return
        delay = min(self._cap, 2.0 ** min(alert.attempts, 20)) * (0.5 + self._rng.random() / 2)
        retry_at = min(now + timedelta(seconds=delay), give_up_at)
        mark_failed(self._store, alert.alert_id, owner=self._owner, error=error, retry_at=retry_at)
        log.warning(
            "alert_delivery_failed",
            attempts=alert.attempts + 1,
            error=error,
            retry_in_seconds=round((retry_at - now).total_seconds(), 3),
            **fields,
        )
