"""The one command of the benchmarks: ``python -m bench [--size tiny|small|full] [--only NAME]``.

Every figure is a ratio against a baseline measured in the same run on the same machine. The run
prints the machine, each benchmark's details as it goes, then the results as a Markdown table
ready for BENCHMARKS.md. Exit status: 0 when every benchmark ran (goals met or not), 1 when one
failed to run, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import (
    alternative,
    bulk_cancel,
    cancels,
    latency,
    logs,
    metrics,
    pass_cost,
    postgres,
    registration,
)
from bench._common import SIZES, Context, fsync_ms, load, machine, say
from ledger.config import LogConfig
from ledger.logsetup import configure_logging

#: name -> (section title, function), in the order they run.
BENCHMARKS: dict[str, tuple[str, Callable[[Context], None]]] = {
    "bulk": ("1. Bulk registration", registration.bulk),
    "one-by-one": ("2. One-by-one registration", registration.one_by_one),
    "apscheduler": ("3. The obvious alternative: one APScheduler job per order", alternative.run),
    "pass": ("4. A pass does not grow with the ledger", pass_cost.run),
    "cancels": ("5. Cancel throughput", cancels.run),
    "latency": ("6. Request to first provider call", latency.run),
    "metrics": ("7. Metrics cost nothing in a pass; a scrape stays cheap", metrics.run),
    "logs": ("8. smsledger logs streams", logs.run),
    "bulk-cancel": ("9. Stopping a campaign: cancel by label", bulk_cancel.run),
    "postgres": ("PostgreSQL", postgres.run),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="smsledger's benchmarks; each figure is a ratio against a baseline of the run.",
    )
    parser.add_argument(
        "--size",
        choices=list(SIZES),
        default="small",
        help="small for iterating, full for BENCHMARKS.md, tiny only proves the scripts run",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--postgres-url",
        default=None,
        help="also measure the ledger on this PostgreSQL database (its tables are replaced), "
        "e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where ledger files go (default: a temporary folder, removed afterwards); "
        "its file system is part of what is measured",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = SIZES[args.size]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="smsledger-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # Log as a deployed ledger does: JSON lines to a file (structlog's default prints to stdout).
    configure_logging(LogConfig(path=str(workdir / "bench.log.jsonl"), level="info"))
    ctx = Context(size=size, workdir=workdir, postgres_url=args.postgres_url)
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    say(f"# smsledger benchmarks, size {size.name}\n\ncommand: `{command.strip()}`\n")
    for what, value in machine(workdir):
        say(f"- {what}: {value}")
    failed: list[str] = []
    started = time.perf_counter()
    try:
        for name, (title, bench) in BENCHMARKS.items():
            if args.only and name not in args.only:
                continue
            say(f"\n## {title} [{name}]")
            t0 = time.perf_counter()
            try:
                bench(ctx)
            except Exception:
                traceback.print_exc()
                failed.append(name)
                say(f"  FAILED: {name}")
            say(f"  ({time.perf_counter() - t0:.1f} s; load average {load()})")
        ending = f"fsync (4 KiB, median) at the end: {fsync_ms(workdir):.2f} ms; load {load()}"
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    say(f"\n## Results (size {size.name}, {time.perf_counter() - started:.0f} s)\n")
    say(f"{ending}\n")
    say("| benchmark | figure | value | baseline | ratio | goal | met |")
    say("|---|---|---|---|---|---|---|")
    for fig in ctx.figures:
        say(fig.row())
    if failed:
        say(f"\nbenchmarks that failed to run: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
