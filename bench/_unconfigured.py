"""`register_many` in a process that never configured logging, as a library user's program is.

``python -m bench._unconfigured LEDGER_FILE COUNT NOW_ISO`` registers `bench._common.orders(COUNT,
now=NOW)` into a ledger at LEDGER_FILE (created first, outside the timing) and prints the seconds
`register_many` took. Whatever the library logs goes where an unconfigured program's output goes
(here a pipe the benchmark reads and drops).
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

from bench._common import orders, sqlite_url
from ledger import Ledger


def main(argv: list[str]) -> int:
    path, count, now = argv
    rows = orders(int(count), now=datetime.fromisoformat(now))
    ledger = Ledger(sqlite_url(Path(path)))
    try:
        started = time.perf_counter()
        ledger.register_many(rows)
        seconds = time.perf_counter() - started
    finally:
        ledger.close()
    print(f"seconds={seconds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
