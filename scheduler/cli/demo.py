"""`smsledger demo`: the whole product on one machine, with nothing configured.

It starts the sandbox provider on a free port, a real `smsledger run` daemon process against a
fresh SQLite ledger in a temporary folder, schedules orders with `smsledger send`, cancels them with
`smsledger cancel` at different distances from dispatch, shows progress, then the final table, one
order's history, and where the ledger and the log lie. It stops everything it started.

`send`, `cancel`, `list` and `history` run in this process through `scheduler.cli.main` (the same
code as the command, without paying Python's start-up seven times); the daemon is its own process.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ledger import FINAL_STATES, Ledger, OrderState
from ledger.config import LogConfig
from ledger.logsetup import configure_logging
from scheduler.cli import main as cli_main
from scheduler.provider.sandbox import Sandbox

__all__ = ["main"]

#: The sandbox moves orders to its carrier queue this long before dispatch: longer than the
#: refuse margin, as the real provider may, so one order shows what `too_late` looks like.
QUEUE_LEAD_SECONDS = 480
DEADLINE_SECONDS = 45


@dataclass(frozen=True)
class Planned:
    name: str
    minutes: int
    cancel: bool
    expected: OrderState
    story: str


PLAN = [
    Planned("A", 30, True, OrderState.CANCELLED, "cancelled far from dispatch"),
    Planned("B", 35, True, OrderState.CANCELLED, "cancelled far from dispatch"),
    Planned("C", 40, True, OrderState.CANCELLED, "cancelled far from dispatch"),
    Planned("D", 12, True, OrderState.CANCELLED, "inside warn_before (15 min): warned, cancelled"),
    Planned("E", 3, True, OrderState.CANCEL_REFUSED, "inside refuse_before (5 min): refused"),
    Planned("F", 7, True, OrderState.TOO_LATE, "already in the provider's carrier queue"),
    Planned("G", 45, False, OrderState.SCHEDULED, "left alone: still scheduled"),
]


def _command() -> list[str]:
    return [sys.executable, "-m", "scheduler"]


def _show(args: list[str]) -> None:
    """The command as one can paste it into a shell (quoted by `shlex.join`)."""
    print(f"\n$ {shlex.join(['smsledger', *args])}", flush=True)


def _smsledger(config: Path, *args: str) -> tuple[int, str]:
    """Run one `smsledger` command in this process (the real command code), echoing its output."""
    _show(["--config", str(config), *args])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(["--config", str(config), *args])
    sys.stdout.write(out.getvalue())
    sys.stdout.flush()
    if code not in (0, 1):
        raise RuntimeError(f"smsledger {args[0]} exited {code}")
    return code, out.getvalue()


def _write_config(folder: Path, base_url: str) -> Path:
    config = folder / "smsledger.toml"
    config.write_text(
        f"""# written by `smsledger demo`
timezone = "Europe/Istanbul"
[ledger]
url = "sqlite:///{folder / "ledger.db"}"
[windows]
warn_before_seconds = 900
refuse_before_seconds = 300
[api]
base_url = "{base_url}"
key = "sandbox-key"
hash = "sandbox-hash"
timeout_seconds = 2
[scheduler]
poll_seconds = 0.25
max_concurrent_cancels = 8
[log]
path = "{folder / "smsledger.log.jsonl"}"
level = "info"
""",
        encoding="utf-8",
    )
    return config


def _at(minutes: int) -> str:
    now = datetime.now(UTC)
    whole = datetime.fromtimestamp(math.ceil(now.timestamp() / 60) * 60, UTC)
    return (whole + timedelta(minutes=minutes)).isoformat(timespec="minutes")


def main() -> int:
    """Run the demo; 0 when every order ended as planned."""
    folder = Path(tempfile.mkdtemp(prefix="smsledger-demo-"))
    print(f"smsledger demo: working in {folder}")
    # Keep the sandbox's own debug lines off the terminal until logging points at the demo's log.
    configure_logging(LogConfig(path=str(folder / "smsledger.log.jsonl")))
    sandbox = Sandbox(queue_lead=QUEUE_LEAD_SECONDS).start()
    print(
        f"sandbox provider listening on {sandbox.url} "
        f"(moves orders to its carrier queue {QUEUE_LEAD_SECONDS // 60} min before dispatch)"
    )
    config = _write_config(folder, sandbox.url)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ILETIMERKEZI_")}
        daemon = subprocess.Popen(  # noqa: S603 - our own command, no shell
            [*_command(), "--config", str(config), "run"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        print(f"daemon started: smsledger run (pid {daemon.pid})")
        ids = _schedule(config)
        _smsledger(config, "cancel", *(ids[p.name] for p in PLAN if p.cancel))
        ledger = Ledger.from_config(config, setup_logging=False)
        try:
            finals = _wait(ledger, [ids[p.name] for p in PLAN if p.cancel], daemon)
        finally:
            ledger.close()
        _smsledger(config, "logs", "--level", "warning")
        _smsledger(config, "list")
        _smsledger(config, "history", ids["D"])
        ok = _verdict(ids, finals)
        print(f"\nledger: {folder / 'ledger.db'}\nlog:    {folder / 'smsledger.log.jsonl'}")
        inspect = ["smsledger", "--config", str(config), "logs", "--event", "order_state_changed"]
        print(f"inspect: {shlex.join(inspect)}")
        return 0 if ok else 1
    finally:
        if daemon is not None:
            _stop(daemon)
        sandbox.stop()


def _schedule(config: Path) -> dict[str, str]:
    ids: dict[str, str] = {}
    for p in PLAN:
        code, stdout = _smsledger(
            config,
            "send",
            "--sender",
            "DEMO",
            "--to",
            "905551234567",
            "--text",
            f"Demo order {p.name}: {p.story}",
            "--at",
            _at(p.minutes),
            "--label",
            f"demo-{p.name}",
        )
        order_id = _order_id(stdout)
        if code != 0 or order_id is None:
            raise RuntimeError(f"send for order {p.name} failed (exit {code})")
        ids[p.name] = order_id
    return ids


def _order_id(stdout: str) -> str | None:
    for token in stdout.replace(":", " ").split():
        if token.isdigit():
            return token
    return None


def _wait(
    ledger: Ledger, order_ids: list[str], daemon: subprocess.Popen[bytes]
) -> dict[str, OrderState]:
    print("\nwaiting for the daemon to cancel and verify...", flush=True)
    deadline = time.monotonic() + DEADLINE_SECONDS
    last = ""
    while True:
        states = {oid: ledger.get(oid).state for oid in order_ids}
        counts: dict[str, int] = {}
        for state in states.values():
            counts[state.value] = counts.get(state.value, 0) + 1
        line = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if line != last:
            print(f"  {time.strftime('%H:%M:%S')}  {line}", flush=True)
            last = line
        if all(s in FINAL_STATES for s in states.values()):
            return states
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited early with {daemon.returncode}")
        if time.monotonic() > deadline:
            print("  gave up waiting", flush=True)
            return states
        time.sleep(0.25)


def _verdict(ids: dict[str, str], finals: dict[str, OrderState]) -> bool:
    print("\nwhat happened:")
    ok = True
    for p in PLAN:
        got = finals.get(ids[p.name], OrderState.SCHEDULED)
        mark = "ok " if got is p.expected else "!! "
        ok = ok and got is p.expected
        print(f"  {mark}{p.name} {ids[p.name]}  {got.value:<15} {p.story}")
    return ok


def _stop(daemon: subprocess.Popen[bytes]) -> None:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    if daemon.stderr is not None:
        err = daemon.stderr.read().decode(errors="replace").strip()
        daemon.stderr.close()
        if daemon.returncode not in (0, -signal.SIGTERM) and err:
            print(f"daemon stderr:\n{err}")
    print(f"daemon stopped (exit {daemon.returncode})")
