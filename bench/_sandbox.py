"""The sandbox, plus what the benchmarks need from it and it does not record.

`TimedSandbox` notes when the first get-report naming each order arrived (POSIX time, the clock the
benchmark process reads too) and takes orders in bulk. Two extra control endpoints::

    POST /_bench/orders          [{"order_id": ..., "send_at": ISO-8601}, ...]
    GET  /_bench/first_reports   {order_id: POSIX seconds of its first get-report}

``python -m bench._sandbox [--latency SECONDS]`` serves one until SIGTERM, printing its URL first.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import Any

from scheduler.provider.sandbox import Faults, Sandbox
from scheduler.provider.sandbox.cli import serve_until_signal
from scheduler.provider.sandbox.replies import Reply, json_reply


class TimedSandbox(Sandbox):
    """A `Sandbox` that also records the arrival time of each order's first get-report."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._first_report: dict[str, float] = {}

    def _note_call(self, endpoint: str, request: dict[str, Any]) -> None:
        # Called with the sandbox lock held, after any injected latency: the call has arrived.
        super()._note_call(endpoint, request)
        if endpoint != "get-report":
            return
        order = self._find(request)
        if order is not None and order.order_id not in self._first_report:
            self._first_report[order.order_id] = time.time()

    def _handle(self, method: str, path: str, raw: bytes) -> Reply:
        if (method, path) == ("POST", "/_bench/orders"):
            for item in json.loads(raw):
                self.add_order(item["order_id"], datetime.fromisoformat(item["send_at"]))
            return json_reply(200, {"ok": True})
        if (method, path) == ("GET", "/_bench/first_reports"):
            with self._lock:
                return json_reply(200, dict(self._first_report))
        return super()._handle(method, path, raw)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._sandbox")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args()
    return serve_until_signal(TimedSandbox(faults=Faults(latency=args.latency)))


if __name__ == "__main__":
    raise SystemExit(main())
