"""A real webhook receiver for the alert tests: an HTTP server on a free port in the test.

It records every POST (body, headers), and answers as told: ``ok`` (204), ``down`` (503), or
``hang`` (holds the request until `release` or teardown). Imported as ``receiver``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Received", "Receiver"]


@dataclass(frozen=True)
class Received:
    body: bytes
    headers: dict[str, str]

    @property
    def payload(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body)
        return loaded

    def signed_by(self, secret: str) -> bool:
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("x-smsledger-signature", ""), expected)


class Receiver:
    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.received: list[Received] = []  # answered 2xx only
        self.attempts = 0
        self.hanging = 0
        self._released = threading.Event()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with owner._lock:
                    owner.attempts += 1
                    mode = owner.mode
                if mode == "hang":
                    with owner._lock:
                        owner.hanging += 1
                    owner._released.wait(60)
                    return
                if mode == "down":
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with owner._lock:
                    owner.received.append(
                        Received(body, {k.lower(): v for k, v in self.headers.items()})
                    )
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/T0-s3cr3t-path"

    def ids(self) -> Counter[str]:
        with self._lock:
            return Counter(r.payload["alert_id"] for r in self.received)

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
