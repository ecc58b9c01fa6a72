"""The soak's sandbox: `scheduler.provider.sandbox.Sandbox`, plus one fact its truth does not keep.

The truth counts cancel-order calls per order, but not when they came: a second cancel after an
accepted one (the double cancel issue 10 is about) looks the same as a 503 followed by the cancel
that took. `SoakSandbox` counts, per order, the cancel-order calls that arrive after the order was
cancelled, under one more control endpoint::

    GET /_soak/late_cancels   {"late": {order_id: n}, "noted": cancel-order calls seen in all}

``noted`` lets the soak prove the hook still fires (it must equal the truth's total of
``cancel_calls``): a renamed hook must fail the soak, not pass it silently.

``python -m bench._soak_sandbox [--queue-lead S] [--send-duration S] [--seed N]`` serves one
until SIGTERM, printing its URL first. Faults are set through ``POST /_sandbox/faults``.
"""

from __future__ import annotations

import argparse
from typing import Any

from scheduler.provider.sandbox import Sandbox
from scheduler.provider.sandbox.cli import serve_until_signal
from scheduler.provider.sandbox.replies import Reply, json_reply


class SoakSandbox(Sandbox):
    """A `Sandbox` that counts cancel-order calls arriving after the order's accepted cancel."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._late: dict[str, int] = {}
        self._noted = 0

    def _note_call(self, endpoint: str, request: dict[str, Any]) -> None:
        # Called with the sandbox lock held, before the call's work is done.
        super()._note_call(endpoint, request)
        if endpoint != "cancel-order":
            return
        order = self._find(request)
        if order is None:
            return
        self._noted += 1
        if order.cancelled_at is not None:
            self._late[order.order_id] = self._late.get(order.order_id, 0) + 1

    def _handle(self, method: str, path: str, raw: bytes) -> Reply:
        if (method, path) == ("GET", "/_soak/late_cancels"):
            with self._lock:
                return json_reply(200, {"late": dict(self._late), "noted": self._noted})
        return super()._handle(method, path, raw)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._soak_sandbox")
    parser.add_argument("--queue-lead", type=float, default=30.0, help="seconds (no cancel after)")
    parser.add_argument("--send-duration", type=float, default=30.0, help="seconds")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault generator")
    args = parser.parse_args()
    sandbox = SoakSandbox(
        queue_lead=args.queue_lead, send_duration=args.send_duration, seed=args.seed
    )
    return serve_until_signal(sandbox)


if __name__ == "__main__":
    raise SystemExit(main())
