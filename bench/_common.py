"""What every benchmark shares: sizes, figures, order rows, config files, the daemon command, the
sandbox process, log timestamps and the description of the machine."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import apscheduler
import httpx
import sqlalchemy
import sqlalchemy as sa
import sqlmodel

from ledger import Ledger
from scheduler.daemon import Daemon
from scheduler.provider.client import IletiMerkeziClient

REPO = Path(__file__).absolute().parents[1]
SANDBOX_KEY = "sandbox-key"
SANDBOX_HASH = "sandbox-hash"
#: Nothing listens there: a pass with no cancel to send never calls the provider.
NO_PROVIDER = "http://127.0.0.1:9"
#: Provider order ids look like the real ones (nine digits); each benchmark takes its own range.
FIRST_ID = 400_000_000


@dataclass(frozen=True)
class Size:
    """How many orders each benchmark uses; `tiny` only proves the scripts still run."""

    name: str
    bulk: int  # 1. register_many
    one_by_one: int  # 2. register, one transaction each
    aps_bulk: int  # 3. APScheduler jobs added before start (its only batching path)
    aps_one: int  # 3. APScheduler jobs added one by one to a running scheduler
    pass_small: int  # 4. the small ledger of the pass benchmark
    pass_big: int  # 4. the big ledger
    pass_final: int  # 4. orders in final states beside the scheduled ones
    pass_repeats: int  # 4. `run --once` runs per ledger (the median is reported)
    cancels: dict[int, int]  # 5. max_concurrent_cancels -> orders
    latency_samples: int  # 6. cancel requests timed to their first provider call
    log_mb: int = 100  # 8. the size of the log `smsledger logs` reads


SIZES: dict[str, Size] = {
    "tiny": Size("tiny", 500, 10, 10, 10, 500, 2_000, 10, 1, {1: 4, 8: 16, 32: 32}, 4, log_mb=2),
    "small": Size(
        "small", 10_000, 300, 200, 300, 10_000, 100_000, 100, 3, {1: 20, 8: 200, 32: 400}, 40, 20
    ),
    "full": Size(
        "full",
        100_000,
        2_000,
        1_000,
        2_000,
        10_000,
        1_000_000,
        300,
        5,
        {1: 100, 8: 1_000, 32: 3_000},
        150,
    ),
}


@dataclass
class Figure:
    """One line of the results table."""

    section: str
    name: str
    value: str
    baseline: str
    ratio: float | None
    goal: str
    met: bool | None  # None: no goal, reported for context

    def row(self) -> str:
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}"
        met = {True: "yes", False: "**NO**", None: ""}[self.met]
        cells = (self.section, self.name, self.value, self.baseline, ratio, self.goal, met)
        return "| " + " | ".join(cells) + " |"


@dataclass
class Context:
    """One run of the benchmarks: where files go and what has been measured so far."""

    size: Size
    workdir: Path
    postgres_url: str | None = None
    figures: list[Figure] = field(default_factory=list)
    #: Timings one benchmark leaves for another, keyed by (benchmark, orders).
    measured: dict[tuple[str, int], float] = field(default_factory=dict)

    def figure(self, *args: Any, **kwargs: Any) -> Figure:
        fig = Figure(*args, **kwargs)
        self.figures.append(fig)
        print(f"  -> {fig.name}: {fig.value} vs {fig.baseline}", end="")
        if fig.ratio is not None:
            print(f" = {fig.ratio:.2f}", end="")
        if fig.goal:
            print(f" (goal {fig.goal}: {'met' if fig.met else 'MISSED'})", end="")
        print(flush=True)
        return fig

    def dir(self, name: str) -> Path:
        """A fresh folder for one benchmark."""
        path = self.workdir / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path


def say(text: str) -> None:
    print(text, flush=True)


def orders(
    n: int, *, first: int = FIRST_ID, now: datetime | None = None
) -> list[tuple[str, datetime]]:
    """`n` orders, ids counting up from `first`, send times spread over the days after `now`.

    Whole seconds (every 60th a whole minute, as the provider's send times are): a datetime with
    zero microseconds is where a hand-made conversion most easily differs from the ledger's.
    """
    start = (now or datetime.now(UTC)).replace(second=0, microsecond=0) + timedelta(days=1)
    return [(str(first + i), start + timedelta(seconds=7 * i)) for i in range(n)]


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f} orders/s"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# -- config files and the daemon command ------------------------------------------------------


def write_config(
    path: Path,
    *,
    ledger_url: str,
    log_path: Path,
    base_url: str = "http://127.0.0.1:9",
    poll_seconds: float = 1.0,
    max_concurrent_cancels: int = 16,
    level: str = "info",
    timeout_seconds: float = 10,
    margins: tuple[float, float] | None = None,
    once_deadline_seconds: float = 600.0,
) -> Path:
    """A config file for a daemon of the benchmarks: sandbox credentials, and the default margins
    unless `margins` gives (warn_before_seconds, refuse_before_seconds).

    The periodic reconcile is off: at a daemon's start it reads back every order the sandbox
    knows (the bare client's too, one get-report each), which in a benchmark falls inside the
    measured span and adds calls to the daemon's orders; a long-running daemon does it once per
    15 minutes, not at the moment a campaign is stopped.
    """
    windows = ""
    if margins is not None:
        windows = (
            f"\n[windows]\nwarn_before_seconds = {margins[0]}\n"
            f"refuse_before_seconds = {margins[1]}\n"
        )
    path.write_text(
        f"""\
[ledger]
url = {json.dumps(ledger_url)}
synchronous = "FULL"
{windows}
[api]
base_url = {json.dumps(base_url)}
key = {json.dumps(SANDBOX_KEY)}
hash = {json.dumps(SANDBOX_HASH)}
timeout_seconds = {timeout_seconds}

[reconcile]
every_seconds = 0

[scheduler]
poll_seconds = {poll_seconds}
max_concurrent_cancels = {max_concurrent_cancels}
once_deadline_seconds = {once_deadline_seconds}

[log]
path = {json.dumps(str(log_path))}
level = {json.dumps(level)}
""",
        encoding="utf-8",
    )
    return path


_FALLBACK = (
    "import sys; from ledger import load_config; from scheduler.daemon import run_daemon; "
    "sys.exit(run_daemon(load_config(sys.argv[1]), once={once}))"
)
_cli_checked: bool | None = None


def cli_has_run_once() -> bool:
    """Whether ``python -m scheduler run --once`` exists yet (it is being wired up)."""
    global _cli_checked  # noqa: PLW0603 - one probe per run of the benchmarks
    if _cli_checked is None:
        probe = subprocess.run(
            [sys.executable, "-m", "scheduler", "run", "--help"],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
            timeout=60,
        )
        _cli_checked = probe.returncode == 0 and "--once" in probe.stdout
    return _cli_checked


def daemon_argv(config: Path, *, once: bool) -> list[str]:
    """The `smsledger run [--once]` command line, or its documented stand-in before the CLI."""
    if cli_has_run_once():
        return [
            sys.executable,
            "-m",
            "scheduler",
            "--config",
            str(config),
            "run",
            *(["--once"] if once else []),
        ]
    return [sys.executable, "-c", _FALLBACK.format(once=once), str(config)]


def daemon_env() -> dict[str, str]:
    """The environment of a daemon subprocess: ours without SMSLEDGER_*/ILETIMERKEZI_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMSLEDGER_", "ILETIMERKEZI_"))}
    env["PYTHONPATH"] = str(REPO)
    return env


@dataclass(frozen=True)
class ChildRun:
    """One finished subprocess: wall time, exit status and its own peak RSS."""

    seconds: float
    returncode: int
    max_rss_kib: int
    stderr: str
    #: User plus system CPU of the child, start-up included.
    cpu_seconds: float = 0.0


#: Runs argv[2:] and writes "peak-RSS-KiB seconds CPU-seconds" of that child to argv[1]. A
#: launcher of its own because Linux counts the memory of the process that forked towards the
#: child's ru_maxrss (the benchmark process holds a million orders); this small parent keeps that
#: floor low.
_LAUNCHER = (
    "import pathlib, resource, subprocess, sys, time; t = time.perf_counter(); "
    "rc = subprocess.call(sys.argv[2:]); t = time.perf_counter() - t; "
    "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "pathlib.Path(sys.argv[1]).write_text(f'{u.ru_maxrss} {t} {u.ru_utime + u.ru_stime}'); "
    "sys.exit(rc)"
)


def run_child(argv: Sequence[str], *, timeout: float = 600.0) -> ChildRun:
    """Run a subprocess to its end; measure its wall time and peak RSS from a small launcher."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "usage"
        proc = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(out), *argv],
            cwd=REPO,
            env=daemon_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
        rss, seconds, cpu = out.read_text().split()
    return ChildRun(float(seconds), proc.returncode, int(rss), proc.stderr, float(cpu))


def log_events(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def log_time(event: dict[str, Any]) -> float:
    """The event's ISO-8601 timestamp as POSIX seconds."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def once_pass_seconds(log_path: Path) -> float:
    """The pass of a `run --once`, from its log: ``daemon_started`` to ``pass_once_done``.

    ``daemon_started`` is written after the config is read, the ledger opened (schema checked)
    and the client built; ``pass_once_done`` right after `run_pass(wait=True)` returns. What lies
    between is the pass and nothing else.
    """
    events = log_events(log_path)
    started = [e for e in events if e.get("event") == "daemon_started"]
    done = [e for e in events if e.get("event") == "pass_once_done"]
    if len(started) != 1 or len(done) != 1:
        raise RuntimeError(f"{log_path}: expected one daemon_started and one pass_once_done")
    return log_time(done[0]) - log_time(started[0])


def provider_span_seconds(log_path: Path) -> float:
    """A `run --once` from its first provider call to the end of its pass, from its log.

    The issue's "first provider call until the last order is final": the first call starts at
    its ``provider_call`` line's timestamp minus its ``duration_ms``; ``pass_once_done`` is
    written once the last worker has finished. Without provider call lines (a quieter log), the
    pass from ``daemon_started``.
    """
    events = log_events(log_path)
    calls = [
        log_time(e) - float(e.get("duration_ms", 0.0)) / 1000
        for e in events
        if e.get("event") == "provider_call"
    ]
    if not calls:
        return once_pass_seconds(log_path)
    done = [log_time(e) for e in events if e.get("event") == "pass_once_done"]
    if len(done) != 1:
        raise RuntimeError(f"{log_path}: expected one pass_once_done")
    return done[0] - min(calls)


# -- the sandbox in its own process -----------------------------------------------------------


class SandboxProcess:
    """`bench._sandbox` (the sandbox plus first-report timestamps) in a subprocess of its own.

    Its own process, so the provider stand-in does not share the daemon's interpreter lock: the
    real provider is another machine.
    """

    def __init__(self, *, latency: float = 0.0) -> None:
        self.latency = latency
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None
        self._http: httpx.Client | None = None

    def argv(self) -> list[str]:
        """The command that serves the sandbox and prints its URL first (subclasses change it)."""
        return [sys.executable, "-m", "bench._sandbox", "--latency", str(self.latency)]

    def __enter__(self) -> Self:
        self._proc = subprocess.Popen(
            self.argv(), cwd=REPO, env=daemon_env(), stdout=subprocess.PIPE, text=True
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        match = re.search(r"(http://\S+)", line)
        if match is None:
            self._proc.kill()
            raise RuntimeError(f"the sandbox did not start: {line!r}")
        self.url = match.group(1)
        self._http = httpx.Client(base_url=self.url, timeout=60.0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._http is not None:
            self._http.close()
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()

    def add_orders(self, rows: Sequence[tuple[str, datetime]]) -> None:
        assert self._http is not None
        body = [{"order_id": oid, "send_at": when.isoformat()} for oid, when in rows]
        self._http.post("/_bench/orders", json=body).raise_for_status()

    def truth(self) -> dict[str, Any]:
        assert self._http is not None
        response = self._http.get("/_sandbox/truth")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def first_reports(self) -> dict[str, float]:
        """POSIX time at which the first get-report naming each order reached the sandbox."""
        assert self._http is not None
        response = self._http.get("/_bench/first_reports")
        response.raise_for_status()
        data: dict[str, float] = response.json()
        return data


# -- the machine ------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_gib() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0.0


def _filesystem(path: Path) -> str:
    """Device, file system type and rotational flag of the mount holding `path`."""
    best = ("?", "?", "")
    target = str(path.resolve())
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype, *_ = line.split()
            if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) > len(
                best[2]
            ):
                best = (device, fstype, mount)
    device, fstype, mount = best
    kind = ""
    name = Path(device).name
    rotational = Path(f"/sys/block/{name}/queue/rotational")
    with contextlib.suppress(OSError):
        kind = ", rotational" if rotational.read_text().strip() == "1" else ", non-rotational"
    return f"{device} ({fstype}, mounted on {mount}{kind})"


def fsync_ms(folder: Path, rounds: int = 100) -> float:
    """Median time of one 4 KiB write + fsync in `folder`: what a durable commit costs at least."""
    probe = folder / "fsync-probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for i in range(rounds):
            os.pwrite(fd, b"x" * 4096, i * 4096)
            started = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        probe.unlink()
    return statistics.median(times) * 1000


def load() -> str:
    """The load average: the machine may be shared, and the figures move with it."""
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def machine(workdir: Path) -> list[tuple[str, str]]:
    """The machine the figures come from, as (what, value) pairs."""
    return [
        ("CPU", f"{_cpu_model()}, {os.cpu_count()} cores"),
        ("RAM", f"{_mem_gib():.1f} GiB"),
        ("Disk", _filesystem(workdir)),
        ("fsync (4 KiB, median)", f"{fsync_ms(workdir):.2f} ms"),
        ("OS", platform.platform()),
        ("Load average (1, 5, 15 min) at start", load()),
        ("Python", platform.python_version()),
        ("SQLite", sqlite3.sqlite_version),
        ("SQLAlchemy", sqlalchemy.__version__),
        ("SQLModel", sqlmodel.__version__),
        ("APScheduler", apscheduler.__version__),
    ]


@dataclass(frozen=True)
class Executed:
    """One statement a pass ran: its SQL, its parameters and how long the driver took."""

    statement: str
    parameters: Any
    seconds: float

    def header(self) -> str:
        """The statement on one line, its time in front, its parameters below."""
        values = self.parameters
        if isinstance(values, dict):
            values = list(values.values())
        sql = " ".join(self.statement.split())
        params = ", ".join(repr(v) for v in values)
        return f"[{self.seconds * 1000:.2f} ms] {sql}\n    params: ({params})"


def capture_pass(ledger: Ledger) -> list[Executed]:
    """Run one in-process pass of a `Daemon` over `ledger`; every statement it sent, timed.

    No provider is reachable, and none is needed: the ledgers of the pass benchmarks have no due
    work.
    """
    executed: list[Executed] = []
    engine = ledger.store.engine

    def before(conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        conn.info["bench_started"] = time.perf_counter()

    def after(conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "smsledger_orders" in statement:  # not BEGIN, COMMIT, PRAGMA or schema checks
            seconds = time.perf_counter() - conn.info.pop("bench_started")
            executed.append(Executed(statement, parameters, seconds))

    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "after_cursor_execute", after)
    client = IletiMerkeziClient(NO_PROVIDER, SANDBOX_KEY, SANDBOX_HASH, timeout=2.0)
    try:
        Daemon(ledger, client).run_pass(wait=True)
    finally:
        client.close()
        sa.event.remove(engine, "before_cursor_execute", before)
        sa.event.remove(engine, "after_cursor_execute", after)
    return executed


@contextlib.contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` is the elapsed wall time in seconds."""
    out: list[float] = []
    started = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - started)


def interleaved(
    rows: Sequence[tuple[str, datetime]],
    baseline: Callable[[Sequence[tuple[str, datetime]]], object],
    ours: Callable[[Sequence[tuple[str, datetime]]], object],
) -> tuple[float, float]:
    """Seconds of `baseline` and of `ours` over `rows`, in two halves taken in turn, so a slow
    stretch of the disk does not fall on one side only."""
    half = len(rows) // 2
    totals = [0.0, 0.0]
    for part in (rows[:half], rows[half:]):
        for side, run in enumerate((baseline, ours)):
            with stopwatch() as t:
                run(part)
            totals[side] += t[0]
    return totals[0], totals[1]
