"""8: ``smsledger logs`` streams: the first line at once and flat memory on a big log.

A JSON-lines log of `Size.log_mb` megabytes (100 at full size) shaped like the daemon's, one rare
warning at its end. Timed as an operator runs them, each in a subprocess (medians of interleaved
runs):

- ``smsledger logs | head -1`` beside the same pipeline with a bare interpreter that parses the
  first line (``python -c 'json.loads(readline())' | head -1``): the command's start-up is what
  is left, and the goal is the issue's "well under a second";
- ``smsledger --version``: the command's start-up floor (parse the arguments, nothing else);
- ``smsledger logs --event rare`` reading the whole log beside a bare interpreter that parses
  every line and prints the match: the price of filtering, formatting and escaping, and the peak
  RSS of both (flat: it does not grow with the log).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from bench._common import Context, median, run_child, say

#: Well under a second for ``logs | head -1`` on the big log.
FIRST_LINE_GOAL_SECONDS = 0.5
#: The whole-log filter may cost this much more than the bare parse loop.
SCAN_GOAL = 0.5
REPEATS = 5

_BARE_FIRST = "import json, sys; print(json.loads(open(sys.argv[1]).readline())['event'])"
_BARE_SCAN = (
    "import json, sys\n"
    "for line in open(sys.argv[1]):\n"
    "    record = json.loads(line)\n"
    "    if record.get('event') == sys.argv[2]:\n"
    "        print(line, end='')\n"
)


def write_log(path: Path, megabytes: int) -> int:
    """A daemon-like log of about `megabytes` MB ending in one ``rare`` warning; its line count."""
    lines = []
    for n in range(1000):
        record = {
            "timestamp": f"2026-11-28T10:{n // 60 % 60:02d}:{n % 60:02d}.{n:06d}Z",
            "level": "info",
            "event": ("order_state_changed", "cancel_attempt", "pass_done")[n % 3],
            "logger": "smsledger.daemon",
            "order_id": str(400_000_000 + n),
            "from_state": "cancel_requested",
            "to_state": "cancelling",
            "reason": "cancel sent to the provider",
            "owner": "bench-host:4242",
        }
        lines.append(json.dumps(record) + "\n")
    block = "".join(lines).encode()
    blocks = max(1, megabytes * 1_000_000 // len(block))
    with path.open("wb") as file:
        for _ in range(blocks):
            file.write(block)
        rare = {"timestamp": "2026-11-28T11:00:00Z", "level": "warning", "event": "rare"}
        file.write((json.dumps(rare) + "\n").encode())
    return blocks * 1000 + 1


def _pipeline(command: str) -> list[str]:
    return ["sh", "-c", f"{command} | head -1 >/dev/null"]


def run(ctx: Context) -> None:
    folder = ctx.dir("logs")
    log = folder / "log.jsonl"
    lines = write_log(log, ctx.size.log_mb)
    config = folder / "smsledger.toml"
    config.write_text(f'timezone = "UTC"\n[log]\npath = {json.dumps(str(log))}\n')
    size_mb = log.stat().st_size / 1e6
    say(f"  log: {size_mb:.0f} MB, {lines:,} lines")
    python = shlex.quote(sys.executable)
    ours = f"{python} -m scheduler --config {shlex.quote(str(config))}"
    commands = {
        "first": _pipeline(f"{ours} logs"),
        "bare first": _pipeline(f"{python} -c {shlex.quote(_BARE_FIRST)} {shlex.quote(str(log))}"),
        "version": [sys.executable, "-m", "scheduler", "--version"],
        "scan": [*shlex.split(ours), "logs", "--event", "rare"],
        "bare scan": [sys.executable, "-c", _BARE_SCAN, str(log), "rare"],
    }
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    rss: dict[str, list[int]] = {name: [] for name in commands}
    for _ in range(REPEATS):
        for name, argv in commands.items():
            child = run_child(argv)
            if child.returncode != 0:
                raise RuntimeError(f"{name} exited {child.returncode}: {child.stderr[-500:]}")
            seconds[name].append(child.seconds)
            rss[name].append(child.max_rss_kib)
    for name in commands:
        say(
            f"  {name}: median {median(seconds[name]) * 1000:.0f} ms, "
            f"peak RSS {max(rss[name]) / 1024:.0f} MiB"
        )
    first, bare_first = median(seconds["first"]), median(seconds["bare first"])
    ctx.figure(
        "8 logs",
        f"logs piped to head -1, {size_mb:.0f} MB log",
        f"{first * 1000:.0f} ms (--version alone {median(seconds['version']) * 1000:.0f} ms)",
        f"{bare_first * 1000:.0f} ms bare python reading one line",
        bare_first / first,
        f"< {FIRST_LINE_GOAL_SECONDS:g} s",
        first < FIRST_LINE_GOAL_SECONDS,
    )
    scan, bare_scan = median(seconds["scan"]), median(seconds["bare scan"])
    ctx.figure(
        "8 logs",
        f"logs --event, whole {size_mb:.0f} MB log",
        f"{scan:.2f} s, peak {max(rss['scan']) / 1024:.0f} MiB",
        f"{bare_scan:.2f} s, peak {max(rss['bare scan']) / 1024:.0f} MiB bare json loop",
        bare_scan / scan,
        f">= {SCAN_GOAL}",
        bare_scan / scan >= SCAN_GOAL,
    )
