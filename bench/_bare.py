"""The bare-client baseline of the cancel benchmark: what plain httpx does, nothing else.

One `httpx.Client` with the daemon's connection limits (`connection_limits`), shared by
`--concurrency` threads; each order gets the daemon's three calls (get-report, cancel-order,
get-report) with the same request bodies, each answer read and its JSON parsed. No ledger, no
logging, no retries. Its own process, started afresh like the daemon, so neither carries the
benchmark process's heap.

``python -m bench._bare URL FIRST_ID COUNT CONCURRENCY MAX_CONNECTIONS`` prints one JSON line:
``{"seconds": first call to last answer, "cpu_seconds": the process's CPU during that time,
"ok": orders whose three answers were 456, 200, 115}``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import httpx

from bench._common import SANDBOX_HASH, SANDBOX_KEY
from scheduler.provider.client import connection_limits
from scheduler.provider.wire import CANCEL_ORDER, GET_REPORT, endpoint_path


def main(argv: list[str]) -> int:
    url, first, count, concurrency, max_connections = argv
    ids = iter(str(int(first) + i) for i in range(int(count)))
    take = threading.Lock()
    ok = [0]
    auth = {"key": SANDBOX_KEY, "hash": SANDBOX_HASH}
    report_url = url.rstrip("/") + endpoint_path(GET_REPORT)
    cancel_url = url.rstrip("/") + endpoint_path(CANCEL_ORDER)

    with httpx.Client(
        timeout=10.0,
        limits=connection_limits(int(max_connections)),
        headers={"Accept": "application/json"},
    ) as http:

        def code(endpoint_url: str, order_id: str) -> Any:
            body = {"request": {"authentication": auth, "order": {"id": order_id}}}
            answer = json.loads(http.post(endpoint_url, json=body).content)
            inner = answer["response"]
            if inner["status"]["code"] == 200 and "order" in inner:
                return int(inner["order"]["status"])
            return int(inner["status"]["code"])

        def work() -> None:
            while True:
                with take:
                    order_id = next(ids, None)
                if order_id is None:
                    return
                codes = (
                    code(report_url, order_id),
                    code(cancel_url, order_id),
                    code(report_url, order_id),
                )
                if codes == (456, 200, 115):
                    with take:
                        ok[0] += 1

        threads = [threading.Thread(target=work) for _ in range(int(concurrency))]
        cpu = time.process_time()
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "ok": ok[0]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
