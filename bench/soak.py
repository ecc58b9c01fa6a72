"""The soak of issue 10: two daemons and a library caller on one ledger, a hostile provider.

``python -m bench.soak --minutes 10 [--postgres-url URL] [--orders 500] [--seed N]``

- a sandbox in its own process (`bench._soak_sandbox`: the sandbox plus a count of cancel calls
  that arrive after an accepted cancel), its queue lead between the two margins, so that a cancel
  sent close to the send time meets an order already sending (``too_late``);
- a ledger: a SQLite file in a temporary folder, or a fresh schema of ``--postgres-url``;
- two ``smsledger run`` daemons, each with its own log; one is killed with SIGKILL half way and
  started again (``--no-kill`` to skip);
- the library caller, in this process: over the run it creates the orders at the sandbox,
  registers them (`Ledger.register`) with send times spread over the run, and asks for cancels
  (`Ledger.request_cancel`) at distances from the send time in every margin zone (open, warn,
  refuse, past) -- some never, some twice;
- the sandbox's faults, changed every 30 s (less in short runs) by a schedule drawn from the
  seed, every kind the sandbox knows at once, all rates together at most 0.3 (kinds it does not
  list in ``GET /_sandbox/faults`` are left out, and the summary says so); none while settling.

Margins scale with the run: at 10 minutes refuse_before is 20 s, warn_before 60 s and the queue
lead 30 s; at 2.5 minutes or less a quarter of that. After the last send time the soak waits for
every order to be final (up to a settle period), stops the daemons with SIGTERM and checks: every
order final, no ``cancelling`` left, at most one accepted cancel per order and no cancel call after
it, the ledger's outcome agrees with the provider's truth (``needs_attention`` is listed, not
counted), the caller's cancels were accepted or refused as their margin says, nothing in any log
says "crashed" or "Traceback", and the daemons stopped cleanly.

The ledger, configs and logs go to a temporary folder, removed after a run that passed and kept
(the path is printed) after one that did not; ``--workdir`` keeps them anywhere.

Exit status: 0 every check passed, 1 a check failed (or the soak could not run), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import math
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from bench._common import (
    REPO,
    SandboxProcess,
    daemon_argv,
    daemon_env,
    say,
    write_config,
)
from ledger import FINAL_STATES, CancelRefused, Ledger, OrderState

#: Order ids of the soak (nine digits, as the provider's).
FIRST_SOAK_ID = 600_000_000
#: Fault kinds the soak sets when the sandbox lists them. The rates share one budget.
RATE_FIELDS = ("error_rate", "drop_rate", "garbage_rate", "drip_rate", "nested_rate", "huge_rate")
#: Highest share of provider calls that go wrong (all rate kinds together): hostile, not dead.
RATE_BUDGET = 0.3
#: Fault kinds added by issue 10, set only when the sandbox lists them.
NEW_FIELDS = (
    "report_lag",
    "drip_rate",
    "drip_interval",
    "nested_rate",
    "huge_rate",
    "clock_offset",
)
#: Every field of ``GET /_sandbox/faults`` the soak knows (it leaves the endpoint scope and the
#: one-shot counters alone).
KNOWN_FIELDS = frozenset(
    {*RATE_FIELDS, *NEW_FIELDS, "latency", "endpoints", "fail_next", "drop_next", "garbage_next"}
)
#: Words that must not appear in any log of the run.
CRASH_WORDS = ("crashed", "Traceback")
#: A cancel asked this close to the refuse edge may fall on either side (the ledger reads its own
#: clock a moment after the caller measured).
EDGE_TOLERANCE = 0.5


@dataclass(frozen=True)
class Timing:
    """The run's clock: how long it lasts and the margins scaled to it (seconds)."""

    run: float
    refuse: float
    warn: float
    queue_lead: float
    send_duration: float
    fault_period: float
    settle: float
    api_timeout: float = 2.0
    poll: float = 0.5

    @classmethod
    def for_minutes(cls, minutes: float) -> Timing:
        run = minutes * 60
        scale = min(max(run / 600, 0.25), 1.0)
        return cls(
            run=run,
            refuse=20 * scale,
            warn=60 * scale,
            queue_lead=30 * scale,
            send_duration=30 * scale,
            fault_period=min(30.0, max(5.0, run / 8)),
            settle=max(30.0, 60 * scale),
        )


@dataclass
class OrderPlan:
    """What the caller does with one order, in seconds from the start of the run."""

    order_id: str
    create_at: float
    send_at: float
    cancel_at: float | None  # None: never cancelled (it must end dispatched)
    twice: bool = False  # ask for the cancel twice in a row (ours is idempotent)
    registered: bool = False
    error: str | None = None  # the caller's own failure (registration, unexpected exception)
    #: (seconds left when asked, "accepted" | "refused" | "error: ...") per request.
    requests: list[tuple[float, str]] = field(default_factory=list)


def plan_orders(rng: random.Random, n: int, timing: Timing) -> list[OrderPlan]:
    """`n` orders created over the first 3/4 of the run, send times up to its end.

    One in five is soon (sent within warn_before of its creation); the others later. Cancels:
    15 % never, the others at a distance drawn from one zone: open, warn before the queue lead
    (cancellable), warn inside the queue lead (too late at the provider), refuse, past.
    """
    plans = []
    for i in range(n):
        create = rng.uniform(0.5, timing.run * 0.75)
        room = timing.run - create
        if rng.random() < 0.2 or room <= timing.warn + 2:
            send = create + rng.uniform(2.0, min(timing.warn, room))
        else:
            send = rng.uniform(create + timing.warn, timing.run)
        cancel: float | None = None
        draw = rng.random()
        if draw >= 0.15:
            zones = [
                (0.35, max(timing.warn + 1, (send - create) * rng.random())),
                (0.15, rng.uniform(timing.queue_lead + 1, timing.warn - 0.5)),
                (0.15, rng.uniform(timing.refuse + 1, timing.queue_lead - 0.5)),
                (0.15, rng.uniform(0.5, timing.refuse - 0.5)),
                (0.05, -rng.uniform(0.5, timing.refuse / 2)),
            ]
            pick, acc = rng.random() * sum(w for w, _ in zones), 0.0
            distance = zones[-1][1]
            for weight, value in zones:
                acc += weight
                if pick < acc:
                    distance = value
                    break
            cancel = max(send - distance, create + 0.2)  # not before it exists
        plans.append(
            OrderPlan(
                order_id=str(FIRST_SOAK_ID + i),
                create_at=round(create, 3),
                send_at=round(send),  # whole seconds, as the provider's send times are
                cancel_at=None if cancel is None else round(cancel, 3),
                twice=cancel is not None and rng.random() < 0.1,
            )
        )
    for plan in plans:  # rounding may have put a send time at its creation: keep 1 s between
        plan.send_at = max(plan.send_at, math.ceil(plan.create_at + 1))
    return plans


def fault_mix(rng: random.Random, available: set[str], timing: Timing) -> dict[str, Any]:
    """One window's faults: every available kind at once, rates within `RATE_BUDGET`."""
    rates = [name for name in RATE_FIELDS if name in available]
    weights = [rng.random() for _ in rates]
    budget = rng.uniform(0.05, RATE_BUDGET)
    total = sum(weights) or 1.0
    mix: dict[str, Any] = {
        name: round(budget * w / total, 3) for name, w in zip(rates, weights, strict=True)
    }
    mix["latency"] = round(rng.uniform(0.0, min(0.4, timing.api_timeout / 5)), 3)
    if "drip_interval" in available:
        mix["drip_interval"] = round(rng.uniform(0.2, 0.8), 2)
    if "report_lag" in available:
        mix["report_lag"] = round(rng.uniform(0.0, 3.0), 2)
    if "clock_offset" in available:
        mix["clock_offset"] = round(rng.uniform(-2.0, 2.0), 2)
    return mix


# -- the processes ------------------------------------------------------------------------------


class SoakSandbox(SandboxProcess):
    """`bench._soak_sandbox` in a process of its own, and its control endpoints."""

    def __init__(self, timing: Timing, seed: int) -> None:
        super().__init__()
        self.timing = timing
        self.seed = seed

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench._soak_sandbox",
            "--queue-lead",
            str(self.timing.queue_lead),
            "--send-duration",
            str(self.timing.send_duration),
            "--seed",
            str(self.seed),
        ]

    def _get(self, path: str) -> Any:
        assert self._http is not None
        response = self._http.get(path)
        response.raise_for_status()
        return response.json()

    def fault_fields(self) -> set[str]:
        return set(self._get("/_sandbox/faults"))

    def set_faults(self, faults: dict[str, Any]) -> str | None:
        """Replace the faults; the sandbox's refusal as text, or None when it took them."""
        assert self._http is not None
        response = self._http.post("/_sandbox/faults", json=faults)
        if response.status_code == 200:
            return None
        return str(response.json().get("error", response.text))

    def add_order(self, order_id: str, send_at: datetime) -> None:
        assert self._http is not None
        body = {"order_id": order_id, "send_at": send_at.isoformat()}
        self._http.post("/_sandbox/orders", json=body).raise_for_status()

    def late_cancels(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/_soak/late_cancels")
        return result


class Daemons:
    """The `smsledger run` daemons of the soak, each run with its own log and stderr file."""

    def __init__(self, folder: Path, ledger_url: str, sandbox_url: str, timing: Timing) -> None:
        self.folder = folder
        self.ledger_url = ledger_url
        self.sandbox_url = sandbox_url
        self.timing = timing
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stderr: dict[str, TextIO] = {}
        self.exits: dict[str, int] = {}  # run name -> exit status after SIGTERM (or -9)
        self.killed: set[str] = set()

    def config(self, name: str) -> Path:
        """A config for one process of the soak: the shared ledger, its own log."""
        return write_soak_config(
            self.folder / f"{name}.toml",
            ledger_url=self.ledger_url,
            sandbox_url=self.sandbox_url,
            log_path=self.folder / f"{name}.log.jsonl",
            timing=self.timing,
        )

    def start(self, name: str) -> None:
        err = (self.folder / f"{name}.stderr").open("w", encoding="utf-8")
        self.stderr[name] = err
        self.procs[name] = subprocess.Popen(
            daemon_argv(self.config(name), once=False),
            cwd=REPO,
            env=daemon_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()
        self.exits[name] = proc.returncode
        self.killed.add(name)
        self.stderr.pop(name).close()

    def stop_all(self, grace: float = 30.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name, proc in self.procs.items():
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.exits[name] = -999  # did not stop on SIGTERM
                continue
            self.exits[name] = proc.returncode
        self.procs.clear()
        for err in self.stderr.values():
            err.close()
        self.stderr.clear()

    def dead(self) -> list[str]:
        """Daemons that exited on their own."""
        return [name for name, proc in self.procs.items() if proc.poll() is not None]


def write_soak_config(
    path: Path, *, ledger_url: str, sandbox_url: str, log_path: Path, timing: Timing
) -> Path:
    """Sandbox credentials, the scaled margins, a short timeout and a quick poll."""
    return write_config(
        path,
        ledger_url=ledger_url,
        log_path=log_path,
        base_url=sandbox_url,
        poll_seconds=timing.poll,
        max_concurrent_cancels=8,
        timeout_seconds=timing.api_timeout,
        margins=(timing.warn, timing.refuse),
    )


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything the soak saw, for the checks and the summary."""

    timing: Timing
    plans: list[OrderPlan]
    fault_windows: list[tuple[float, dict[str, Any], str | None]] = field(default_factory=list)
    missing_kinds: list[str] = field(default_factory=list)
    unused_kinds: list[str] = field(default_factory=list)  # the sandbox has them, the soak not
    killed: list[str] = field(default_factory=list)
    caller_lag: float = 0.0  # the caller's worst delay behind its schedule (s)
    settle_seconds: float = 0.0
    dead_daemons: list[str] = field(default_factory=list)


def caller_loop(
    run: Run,
    ledger: Ledger,
    sandbox: SoakSandbox,
    daemons: Daemons,
    rng: random.Random,
    *,
    kill: bool,
) -> None:
    """The library caller: every order, cancel, fault change and the kill, at its time."""
    timing = run.timing
    available = sandbox.fault_fields()
    run.missing_kinds = [name for name in NEW_FIELDS if name not in available]
    run.unused_kinds = sorted(available - KNOWN_FIELDS)
    start_wall = datetime.now(UTC)
    start = time.monotonic()
    events: list[tuple[float, int, str, Any]] = []
    seq = 0

    def add(at: float, kind: str, item: Any) -> None:
        nonlocal seq
        heapq.heappush(events, (at, seq, kind, item))
        seq += 1

    for plan in run.plans:
        add(plan.create_at, "create", plan)
        if plan.cancel_at is not None:
            add(plan.cancel_at, "cancel", plan)
    at = 0.0
    while at < timing.run:
        add(at, "faults", fault_mix(rng, available, timing))
        at += timing.fault_period
    if kill:
        add(timing.run / 2, "kill", "b")
        add(timing.run / 2 + 2.0, "restart", "b")

    def send_time(plan: OrderPlan) -> datetime:
        return start_wall + timedelta(seconds=plan.send_at)

    first_faults = True
    while events:
        when, _, kind, item = heapq.heappop(events)
        delay = when - (time.monotonic() - start)
        if delay > 0:
            time.sleep(delay)
        else:
            run.caller_lag = max(run.caller_lag, -delay)
        if kind == "create":
            create(ledger, sandbox, item, send_time(item))
        elif kind == "cancel":
            cancel(ledger, item, send_time(item))
        elif kind == "faults":
            mix = dict(item)
            if first_faults:
                mix["seed"] = rng.randrange(2**31)
                first_faults = False
            run.fault_windows.append((when, item, apply_faults(sandbox, mix)))
        elif kind == "kill":
            daemons.kill(item)
            run.killed.append(f"daemon {item} killed with SIGKILL at {when:.0f} s")
        elif kind == "restart":
            daemons.start(f"{item}2")
            run.killed.append(f"daemon {item} started again as {item}2 at {when:.0f} s")
        run.dead_daemons.extend(d for d in daemons.dead() if d not in run.dead_daemons)
    sandbox.set_faults({})  # the settle period meets a well-behaved provider


def apply_faults(sandbox: SoakSandbox, mix: dict[str, Any]) -> str | None:
    """Set a window's faults; if the sandbox refuses a negative clock offset, try its size."""
    refused = sandbox.set_faults(mix)
    if refused is not None and mix.get("clock_offset", 0) < 0:
        mix = {**mix, "clock_offset": -mix["clock_offset"]}
        refused = sandbox.set_faults(mix)
    if refused is not None:
        old = {k: v for k, v in mix.items() if k not in NEW_FIELDS}
        again = sandbox.set_faults(old)
        return f"refused ({refused}); old kinds only" + ("" if again is None else f": {again}")
    return None


def create(ledger: Ledger, sandbox: SoakSandbox, plan: OrderPlan, send_at: datetime) -> None:
    try:
        sandbox.add_order(plan.order_id, send_at)
        ledger.register(plan.order_id, send_at, label="soak")
        plan.registered = True
    except Exception as exc:
        plan.error = f"registration: {type(exc).__name__}: {exc}"


def cancel(ledger: Ledger, plan: OrderPlan, send_at: datetime) -> None:
    if not plan.registered:
        return
    for _ in range(2 if plan.twice else 1):
        left = (send_at - datetime.now(UTC)).total_seconds()
        try:
            ledger.request_cancel(plan.order_id)
            plan.requests.append((left, "accepted"))
        except CancelRefused:
            plan.requests.append((left, "refused"))
        except Exception as exc:
            plan.requests.append((left, f"error: {type(exc).__name__}: {exc}"))


def settle(run: Run, ledger: Ledger) -> None:
    """Wait past the last send time until every order is final (or the settle period ends)."""
    started = time.monotonic()
    deadline = started + run.timing.settle
    last_send = max((p.send_at for p in run.plans), default=0.0)
    # The loop ends at the last event; the last send time may lie a little later.
    time.sleep(max(0.0, last_send - run.timing.run) + run.timing.poll * 2)
    while time.monotonic() < deadline:
        open_states = [s for s in OrderState if s not in FINAL_STATES]
        if not ledger.orders(open_states, limit=1):
            break
        time.sleep(0.5)
    time.sleep(2 * run.timing.poll)  # calls in flight land before the daemons stop
    run.settle_seconds = time.monotonic() - started


# -- the checks ---------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def check_run(
    run: Run,
    ledger: Ledger,
    truth: dict[str, Any],
    late: dict[str, Any],
    folder: Path,
    daemons: Daemons,
) -> tuple[list[Check], list[str]]:
    """The soak's verdicts, and the lines of figures printed beside them."""
    checks: list[Check] = []
    lines: list[str] = []
    plans = {p.order_id: p for p in run.plans}
    orders = {o.order_id: o for o in ledger.orders() if o.order_id in plans}
    sand = truth["orders"]

    failed_callers = [p for p in run.plans if p.error]
    checks.append(
        Check(
            "every order created and registered",
            not failed_callers,
            f"{len(orders)} of {len(plans)} registered"
            + "".join(f"\n      {p.order_id}: {p.error}" for p in failed_callers[:5]),
        )
    )
    states = Counter(o.state.value for o in orders.values())
    lines.append("final states: " + ", ".join(f"{s} {n}" for s, n in sorted(states.items())))
    not_final = [o for o in orders.values() if o.state not in FINAL_STATES]
    checks.append(
        Check(
            "every order final",
            not not_final,
            f"{len(not_final)} not final"
            + "".join(f"\n      {o.order_id}: {o.state.value}" for o in not_final[:5]),
        )
    )
    cancelling = states.get(OrderState.CANCELLING.value, 0)
    checks.append(Check("no `cancelling` left", cancelling == 0, f"{cancelling} left"))

    accepted = {oid: sand[oid]["cancels_accepted"] for oid in orders if oid in sand}
    over = {oid: n for oid, n in accepted.items() if n > 1}
    checks.append(
        Check(
            "at most one accepted cancel per order (sandbox truth)",
            not over,
            f"{sum(accepted.values())} accepted, {len(over)} orders with more than one",
        )
    )
    late_orders = {oid: n for oid, n in late["late"].items() if oid in orders}
    cancel_calls_total = sum(sand[oid]["cancel_calls"] for oid in sand)
    checks.append(
        Check(
            "no cancel call after an accepted cancel",
            not late_orders and late["noted"] == cancel_calls_total,
            f"{sum(late_orders.values())} late calls on {len(late_orders)} orders"
            + (
                ""
                if late["noted"] == cancel_calls_total
                else f"; the sandbox hook saw {late['noted']} of {cancel_calls_total} cancel calls"
            )
            + "".join(f"\n      {oid}: {n}" for oid, n in list(late_orders.items())[:5]),
        )
    )
    calls = Counter(sand[oid]["cancel_calls"] for oid in orders if oid in sand)
    lines.append(
        "cancel-order calls per order: "
        + ", ".join(f"{k} calls: {n} orders" for k, n in sorted(calls.items()))
    )

    disagree, attention = disagreements(orders, sand, plans)
    checks.append(
        Check(
            "ledger outcomes agree with the provider and the caller",
            not disagree,
            f"{len(disagree)} disagree" + "".join(f"\n      {d}" for d in disagree[:8]),
        )
    )
    lines.append(
        f"needs_attention: {len(attention)}"
        + "".join(f"\n      {a}" for a in attention[:8])
        + (f"\n      ... and {len(attention) - 8} more" if len(attention) > 8 else "")
    )

    wrong, zones = margin_verdicts(run)
    lines.append(
        "cancel requests by zone (outcome): "
        + ", ".join(f"{z} {n}" for z, n in sorted(zones.items()))
    )
    checks.append(
        Check(
            "each cancel request accepted or refused as its margin says",
            not wrong,
            f"{len(wrong)} wrong" + "".join(f"\n      {w}" for w in wrong[:5]),
        )
    )

    crash_lines = scan_logs(folder)
    checks.append(
        Check(
            'no log line says "crashed" or "Traceback"',
            not crash_lines,
            f"{len(crash_lines)} lines" + "".join(f"\n      {c[:160]}" for c in crash_lines[:5]),
        )
    )
    exits = daemons.exits
    bad_exits = {n: rc for n, rc in exits.items() if rc != 0 and n not in daemons.killed}
    checks.append(
        Check(
            "daemons ran to the end and stopped cleanly on SIGTERM",
            not bad_exits and not run.dead_daemons,
            ", ".join(f"{n}: exit {rc}" for n, rc in sorted(exits.items()))
            + (f"; died during the run: {', '.join(run.dead_daemons)}" if run.dead_daemons else ""),
        )
    )

    totals = truth["totals"]
    lines.append(
        "provider calls: "
        + ", ".join(f"{e} {t['requests']}" for e, t in totals.items() if t["requests"])
    )
    injected: Counter[str] = Counter()
    for t in totals.values():
        for key, value in t.items():
            if key not in ("requests", "codes") and isinstance(value, int):
                injected[key] += value
    lines.append("faults injected: " + ", ".join(f"{k} {n}" for k, n in sorted(injected.items())))
    codes: Counter[str] = Counter()
    for endpoint, t in totals.items():
        for code, n in t["codes"].items():
            codes[f"{endpoint} {code}"] += n
    lines.append("answers: " + ", ".join(f"{k}: {n}" for k, n in sorted(codes.items())))
    resends = resend_counts(ledger, orders)
    lines.append(
        "`cancelling` rows per order (first send, re-sends and takeovers): "
        + ", ".join(f"{k}: {n}" for k, n in sorted(resends.items()))
    )
    return checks, lines


def disagreements(
    orders: dict[str, Any], sand: dict[str, Any], plans: dict[str, OrderPlan]
) -> tuple[list[str], list[str]]:
    """Orders whose ledger outcome is false by the provider's truth or the caller's requests."""
    wrong: list[str] = []
    attention: list[str] = []
    for oid, order in sorted(orders.items()):
        truth = sand.get(oid)
        state = order.state
        plan = plans[oid]
        asked = any(outcome == "accepted" for _, outcome in plan.requests)
        if truth is None:
            wrong.append(f"{oid}: unknown to the sandbox")
            continue
        took = truth["cancels_accepted"] > 0
        where = (
            f"{oid}: ledger {state.value} ({order.reason}), provider {truth['state']}, "
            f"{truth['cancel_calls']} cancel calls"
        )
        if state is OrderState.NEEDS_ATTENTION:
            attention.append(where)
        elif state is OrderState.CANCELLED and not took:
            wrong.append(where + " -- cancelled without a cancel that took")
        elif state is not OrderState.CANCELLED and took and state in FINAL_STATES:
            wrong.append(where + " -- the provider cancelled it")
        elif state is OrderState.DISPATCHED and (asked or truth["cancel_calls"]):
            wrong.append(where + " -- dispatched although a cancel was asked")
        elif state is OrderState.NOT_FOUND:
            wrong.append(where + " -- the provider knows the order")
        elif plan.cancel_at is None and state is not OrderState.DISPATCHED:
            wrong.append(where + " -- never cancelled, yet not dispatched")
    return wrong, attention


def zone_of(left: float, timing: Timing) -> str:
    if left <= 0:
        return "past"
    if left <= timing.refuse:
        return "refuse"
    if left <= timing.queue_lead:
        return "warn, queued"
    if left <= timing.warn:
        return "warn"
    return "open"


def margin_verdicts(run: Run) -> tuple[list[str], Counter[str]]:
    """Requests refused outside the refuse margin or accepted inside it; requests per zone."""
    wrong: list[str] = []
    zones: Counter[str] = Counter()
    for plan in run.plans:
        for n, (left, outcome) in enumerate(plan.requests):
            zones[f"{zone_of(left, run.timing)}/{outcome.split(':')[0]}"] += 1
            if outcome.startswith("error"):
                wrong.append(f"{plan.order_id}: {outcome}")
            elif n > 0:
                continue  # a repeat: refused when the daemon closed the first one, accepted else
            elif outcome == "accepted" and left <= run.timing.refuse:
                wrong.append(f"{plan.order_id}: accepted {left:.2f} s before dispatch")
            elif outcome == "refused" and left > run.timing.refuse + EDGE_TOLERANCE:
                wrong.append(f"{plan.order_id}: refused {left:.2f} s before dispatch")
    return wrong, zones


def resend_counts(ledger: Ledger, orders: dict[str, Any]) -> Counter[int]:
    """How many history rows into `cancelling` each order has, as a distribution."""
    counts: Counter[int] = Counter()
    for oid in orders:
        rows = [e for e in ledger.history(oid) if e.to_state is OrderState.CANCELLING]
        counts[len(rows)] += 1
    return counts


def scan_logs(folder: Path) -> list[str]:
    """Lines of any log or stderr file of the run that contain a crash word."""
    found = []
    for path in sorted(folder.glob("*.log.jsonl")) + sorted(folder.glob("*.stderr")):
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if any(word in line for word in CRASH_WORDS):
                    found.append(f"{path.name}: {line.strip()}")
    return found


def error_events(folder: Path) -> Counter[str]:
    """Warning and error events of every log of the run, by name."""
    events: Counter[str] = Counter()
    for path in folder.glob("*.log.jsonl"):
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("level") in ("warning", "error", "critical"):
                        events[f"{event.get('level')} {event.get('event')}"] += 1
    return events


# -- the command --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Two daemons and a library caller on one ledger against a hostile sandbox.",
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run")
    parser.add_argument("--orders", type=int, default=500, help="orders created over the run")
    parser.add_argument("--seed", type=int, default=None, help="seed of the plan and the faults")
    parser.add_argument(
        "--postgres-url",
        default=None,
        help="run on a fresh schema of this PostgreSQL database instead of a SQLite file, "
        "e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test",
    )
    parser.add_argument("--no-kill", action="store_true", help="do not kill -9 a daemon mid-run")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the ledger, configs and logs here (default: a temporary folder, removed "
        "afterwards unless a check failed)",
    )
    args = parser.parse_args(argv)
    if not (math.isfinite(args.minutes) and args.minutes > 0):
        parser.error(f"--minutes must be a positive number, got {args.minutes}")
    if args.orders < 1:
        parser.error(f"--orders must be at least 1, got {args.orders}")
    return args


@contextlib.contextmanager
def ledger_url(args: argparse.Namespace, folder: Path) -> Iterator[tuple[str, str]]:
    """The ledger's URL and a description: a SQLite file, or a fresh PostgreSQL schema."""
    if args.postgres_url is None:
        yield f"sqlite:///{folder / 'soak.db'}", "SQLite"
        return
    from bench.postgres import _in_schema, _schemas  # noqa: PLC0415 - psycopg is optional

    with _schemas(args.postgres_url, "soak") as (schema,):
        yield _in_schema(args.postgres_url, schema), f"PostgreSQL (schema {schema})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    rng = random.Random(seed)
    timing = Timing.for_minutes(args.minutes)
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="smsledger-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    ok = False
    try:
        ok = soak(args, seed, rng, timing, folder)
    except Exception as exc:  # a script's one line: the soak could not run at all
        say(f"the soak could not run: {type(exc).__name__}: {exc}")
    finally:
        if args.workdir is None and ok:
            shutil.rmtree(folder, ignore_errors=True)
        elif not ok:
            say(f"logs, configs and ledger kept in {folder}")
    return 0 if ok else 1


def soak(
    args: argparse.Namespace, seed: int, rng: random.Random, timing: Timing, folder: Path
) -> bool:
    plans = plan_orders(rng, args.orders, timing)
    run = Run(timing=timing, plans=plans)
    with ledger_url(args, folder) as (url, where), SoakSandbox(timing, seed) as sandbox:
        daemons = Daemons(folder, url, sandbox.url, timing)
        caller_config = daemons.config("caller")
        # The caller logs to its own file, as the daemons do; creates the schema before they start.
        ledger = Ledger.from_config(caller_config, setup_logging=True)
        say(
            f"soak: {args.orders} orders, {args.minutes:g} min, {where}, seed {seed}; margins "
            f"refuse {timing.refuse:g} s, warn {timing.warn:g} s, queue lead "
            f"{timing.queue_lead:g} s, api timeout {timing.api_timeout:g} s"
        )
        started = time.monotonic()
        try:
            daemons.start("a")
            daemons.start("b")
            caller_loop(run, ledger, sandbox, daemons, rng, kill=not args.no_kill)
            settle(run, ledger)
        finally:
            daemons.stop_all()
        elapsed = time.monotonic() - started
        truth = sandbox.truth()
        late = sandbox.late_cancels()
        try:
            checks, lines = check_run(run, ledger, truth, late, folder, daemons)
        finally:
            ledger.close()
    print_summary(run, checks, lines, folder, elapsed)
    return all(c.ok for c in checks)


def print_summary(
    run: Run, checks: list[Check], lines: list[str], folder: Path, elapsed: float
) -> None:
    timing = run.timing
    kinds: Counter[str] = Counter()
    for _, mix, _refused in run.fault_windows:
        kinds.update(k for k, v in mix.items() if v)
    refused = [f"{at:.0f} s: {r}" for at, _, r in run.fault_windows if r]
    say(
        f"ran {elapsed:.0f} s ({timing.run:g} s of work, {run.settle_seconds:.0f} s settling); "
        f"caller at most {run.caller_lag:.2f} s behind its schedule"
    )
    say(
        f"fault windows: {len(run.fault_windows)} of {timing.fault_period:g} s; kinds active "
        + ", ".join(f"{k} ({n})" for k, n in sorted(kinds.items()))
    )
    if run.missing_kinds:
        missing = ", ".join(run.missing_kinds)
        say(f"fault kinds this sandbox does not have (not injected): {missing}")
    if run.unused_kinds:
        unused = ", ".join(run.unused_kinds)
        say(f"fault kinds this sandbox has that the soak does not set: {unused}")
    for line in refused:
        say(f"  faults {line}")
    for line in run.killed:
        say(line)
    for line in lines:
        say(line)
    events = error_events(folder)
    if events:
        top = ", ".join(f"{k} {n}" for k, n in events.most_common(8))
        say(f"warnings and errors logged: {top}")
    say("")
    for check in checks:
        say(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    passed = sum(c.ok for c in checks)
    say(f"\n{passed} of {len(checks)} checks passed")


if __name__ == "__main__":
    raise SystemExit(main())
