"""The benchmarks still run: ``python -m bench --size tiny`` in a subprocess, every section printed.

No timing is asserted: the figures of a tiny run on a CI machine mean nothing, and BENCHMARKS.md
records the full run. This only keeps the scripts from rotting as the code they measure changes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Read at import: the autouse clean_environ fixture removes SMSLEDGER_* before the test runs.
POSTGRES_URL = os.environ.get("SMSLEDGER_TEST_POSTGRES_URL") or None

SECTIONS = [
    "bulk",
    "one-by-one",
    "apscheduler",
    "pass",
    "cancels",
    "latency",
    "metrics",
    "logs",
    "bulk-cancel",
    "postgres",
]
ROWS = [
    "| 1 bulk registration |",
    "| 2 one-by-one registration |",
    "| 3 vs APScheduler, bulk |",
    "| 3 vs APScheduler, one by one |",
    "| 4 pass cost |",
    "| 5 cancel throughput |",
    "| 6 request to first call |",
    "| 7 metrics cost |",
    "| 8 logs |",
    "| 9 bulk cancel |",
]


@pytest.mark.slow
def test_every_benchmark_runs_at_tiny_size_and_prints_its_section(tmp_path: Path) -> None:
    """Each benchmark section and each row of the results table appears, and the run exits 0."""
    argv = [sys.executable, "-m", "bench", "--size", "tiny", "--workdir", str(tmp_path)]
    if POSTGRES_URL is not None:
        argv += ["--postgres-url", POSTGRES_URL]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSLEDGER_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    output = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{output[-4000:]}\n{done.stderr[-4000:]}"
    for name in SECTIONS:
        assert f"[{name}]" in output, f"section {name} missing"
    assert "## Results" in output
    for row in ROWS:
        assert row in output, f"results row {row} missing"
    if POSTGRES_URL is not None and "the ledger cannot open" not in output:
        assert "| PostgreSQL bulk registration |" in output
        assert "| PostgreSQL pass cost |" in output
    assert "FAILED" not in output
