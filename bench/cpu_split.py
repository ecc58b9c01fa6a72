"""Where the daemon's CPU goes per cancelled order: ledger, HTTP, logging and the rest.

Not part of ``python -m bench`` (it needs py-spy and permission to trace a process): a profile
behind figure 5. It prepares what the cancel benchmark prepares (sandbox process with 50 ms
latency, ledger with the cancels requested), runs the real ``run --once`` under
``py-spy record --gil --format raw`` (only samples where a thread holds the interpreter lock: CPU
spent in Python and in C code that keeps the lock) and sorts every sample of the pass's worker
threads by the innermost frame of a known package:

- ledger: ``ledger/``, SQLAlchemy, sqlite3, psycopg;
- HTTP: ``scheduler/provider/``, httpx, httpcore, h11, anyio, ssl, socket;
- logging: structlog, logging;
- rest: anything else (the cancel sequence, the daemon's threads and locks, json, datetime).

Samples outside the workers (start-up, the pass's queries, exit) are reported apart.

``python -m bench.cpu_split [--orders 3000] [--concurrency 32] [--rate 250]``
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
from pathlib import Path

from bench._common import daemon_argv, provider_span_seconds, run_child, say
from bench.cancels import prepared

#: (category, path fragments), tried in this order on each frame from the innermost outwards.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging", ("(structlog/", "(logging/")),
    ("ledger", ("(ledger/", "(sqlalchemy/", "(sqlite3/", "(psycopg")),
    ("HTTP", ("(scheduler/provider/", "(httpx/", "(httpcore/", "(h11/", "(anyio/", "(ssl.py",
              "(socket.py", "(selectors.py")),
)  # fmt: skip
#: A sample belongs to a cancel worker when one of its frames is the worker's loop.
WORKER_FRAME = "_drain ("


def classify(stack: list[str]) -> str:
    """The category of one sample: that of its innermost frame in a known package."""
    for frame in reversed(stack):
        for category, fragments in CATEGORIES:
            if any(fragment in frame for fragment in fragments):
                return category
    return "rest"


def split(raw: Path) -> tuple[collections.Counter[str], int]:
    """Worker samples by category, and the count of samples outside the workers."""
    counts: collections.Counter[str] = collections.Counter()
    outside = 0
    for line in raw.read_text(encoding="utf-8").splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        stack = stack_text.split(";")
        if any(WORKER_FRAME in frame for frame in stack):
            counts[classify(stack)] += int(count_text)
        else:
            outside += int(count_text)
    return counts, outside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_split")
    parser.add_argument("--orders", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--keep", type=Path, default=None, help="copy py-spy's raw profile here")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        say("py-spy is not installed (pip install py-spy)")
        return 2
    folder = Path(tempfile.mkdtemp(prefix="smsledger-cpu-split-"))
    try:
        with prepared(folder, args.concurrency, args.orders, bare_orders=0) as setup:
            raw = folder / "profile.txt"
            spy = [py_spy, "record", "--gil", "--format", "raw", "--rate", str(args.rate)]
            child = run_child(
                [*spy, "--output", str(raw), "--", *daemon_argv(setup.config, once=True)]
            )
            if child.returncode != 0:
                raise RuntimeError(f"py-spy / run --once exited {child.returncode}: {child.stderr}")
            seconds = provider_span_seconds(setup.log)
        counts, outside = split(raw)
        if args.keep is not None:
            shutil.copyfile(raw, args.keep)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    total = sum(counts.values())
    per_sample_ms = 1000 / args.rate
    say(
        f"{args.orders:,} orders at concurrency {args.concurrency}: pass {seconds:.2f} s"
        f" ({args.orders / seconds:.1f} orders/s under py-spy); {total} worker samples"
        f" holding the interpreter lock, {outside} outside the workers, {args.rate}/s"
    )
    say("| part | share of worker CPU | ms per order |")
    say("|---|---|---|")
    for category in ("ledger", "HTTP", "logging", "rest"):
        share = counts[category] / total if total else 0.0
        ms = counts[category] * per_sample_ms / args.orders
        say(f"| {category} | {share:.0%} | {ms:.2f} |")
    say(f"| all | 100% | {total * per_sample_ms / args.orders:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
