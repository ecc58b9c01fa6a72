"""What each ``smsledger`` command does, once its arguments are parsed (`scheduler.cli.parser`).

The commands are thin on purpose: ledger work goes through `ledger.Ledger`, provider calls through
`scheduler.provider.client.IletiMerkeziClient`, the daemon is `scheduler.daemon`. What is here is
reading the config, turning option values into calls, and printing the answers
(`scheduler.cli.output`); errors are raised and turned into one line and an exit code by
`scheduler.cli.main` with `scheduler.cli.exits`.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import structlog

from ledger import (
    FINAL_STATES,
    CancelNotPossible,
    Config,
    ConfigError,
    InvalidInput,
    Ledger,
    LedgerError,
    Order,
    OrderNotFound,
    OrderState,
    configure_logging,
    heartbeats,
    load_config,
    outbox,
    utcnow,
)
from ledger._log import get_logger
from ledger._urls import display_url
from ledger.api import check_label
from ledger.config import find_config_path, webhook_host
from ledger.margins import Window
from scheduler.cli.exits import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandFailed,
    UsageError,
    exit_code_for,
)
from scheduler.cli.logs import LEVELS, LineFormatter, LogFilter, LogTail, parse_record
from scheduler.cli.origin import foreign_packages
from scheduler.cli.output import (
    escape,
    escape_json,
    event_json,
    history_table,
    margins_lines,
    order_json,
    order_table,
    say,
    say_error,
    status_lines,
    table,
    to_json,
)
from scheduler.cli.parser import Parser
from scheduler.cli.times import WhenError, format_countdown, format_utc, parse_since, parse_when
from scheduler.provider.client import IletiMerkeziClient
from scheduler.provider.errors import (
    ProviderAuthError,
    ProviderError,
    ProviderTransientError,
    SendTimeError,
)
from scheduler.provider.wire import PROVIDER_ZONE, format_send_datetime
from scheduler.skew import SkewEstimator

__all__ = ["HANDLERS", "Context", "Handler", "load_context", "run_demo", "run_sandbox"]

log = get_logger("smsledger.cli")

#: How often `cancel --wait` and `logs --follow` look again, in seconds.
POLL_SECONDS = 0.2

#: States in which a cancel is accepted or done: `cancel` without --wait exits 0 on them.
_CANCEL_ON_TRACK = frozenset(
    {OrderState.CANCEL_REQUESTED, OrderState.CANCELLING, OrderState.CANCELLED}
)


# -- setup -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What every command after parsing needs: the config and where it came from."""

    config: Config

    @property
    def config_hint(self) -> str:
        """``--config PATH `` to repeat in a suggested command, or "" for the defaults."""
        if self.config.source is None:
            return ""
        return f"--config {shlex.quote(str(Path(self.config.source).resolve()))} "


def load_context(args: argparse.Namespace) -> Context:
    """Read the config and set up logging, as every command but sandbox and demo does."""
    config = load_config(find_config_path(args.config))
    try:
        configure_logging(config.log, secrets=(config.api.key, config.api.hash))
    except OSError as exc:
        raise ConfigError(
            f"log.path {config.log.path!r} cannot be opened: {exc.strerror or exc}"
        ) from None
    return Context(config)


def _open_ledger(ctx: Context, *, must_exist: bool = False) -> Ledger:
    """The config's ledger; `must_exist` for commands that only read or change existing orders,
    which must say that there is no ledger rather than create an empty one and answer from it."""
    return Ledger.from_config(ctx.config, setup_logging=False, must_exist=must_exist)


def _when(text: str, option: str, ctx: Context) -> datetime:
    try:
        return parse_when(text, ctx.config.zone)
    except WhenError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _client(config: Config) -> IletiMerkeziClient:
    config.require_credentials()
    return IletiMerkeziClient.from_config(config.api)


# -- commands ----------------------------------------------------------------------------------


def _cmd_register(args: argparse.Namespace, ctx: Context) -> int:
    send_at = _when(args.send_at, "--send-at", ctx)
    with _open_ledger(ctx) as ledger:
        order = ledger.register(args.order_id, send_at, args.label)
        say(order_table([order], ctx.config.zone, ledger.now()))
    return EXIT_OK


def _cmd_send(args: argparse.Namespace, ctx: Context) -> int:
    config = ctx.config
    send_at = _when(args.at, "--at", ctx)
    numbers = [n.strip() for chunk in args.to for n in chunk.split(",") if n.strip()]
    if not numbers:
        raise UsageError(f"--to {','.join(args.to)!r} names no phone number")
    if not args.text.strip():
        raise UsageError("--text is empty")
    iys = args.iys == "1"
    if not iys and args.iys_list is not None:
        raise UsageError("--iys-list applies only to commercial messages (--iys 1)")
    try:  # the ledger would refuse it too, but only after the provider created the order
        check_label(args.label)
    except InvalidInput as exc:
        raise UsageError(f"--label: {exc}") from None
    config.require_credentials()
    try:  # the client would refuse it too, but only after the ledger is opened
        format_send_datetime(send_at, PROVIDER_ZONE, utcnow())
    except SendTimeError as exc:
        raise UsageError(f"--at {args.at}: {exc}") from None
    with _open_ledger(ctx) as ledger, _client(config) as client:
        try:
            result = client.send_sms(
                sender=args.sender,
                numbers=numbers,
                text=args.text,
                send_at=send_at,
                iys=iys,
                iys_list=args.iys_list or "BIREYSEL",
            )
        except ProviderTransientError as exc:
            if not exc.maybe_delivered:
                raise
            log.error("send_outcome_unknown", send_at=format_utc(send_at), error=str(exc))
            raise CommandFailed(
                f"{exc}; the order may exist at the provider although no id came back: "
                "check the provider's panel before sending again"
            ) from exc
        order_id = result.order_id
        # The id goes out before the ledger write, so a failed write can never lose it.
        print(escape(order_id), flush=True)
        log.info(
            "send_accepted",
            order_id=order_id,
            send_at=format_utc(send_at),
            recipients=len(numbers),
            label=args.label,
        )
        try:
            order = ledger.register(order_id, send_at, args.label)
        except Exception as exc:  # whatever it was, the sent order must not go unrecorded
            command = (
                f"smsledger {ctx.config_hint}register {order_id} --send-at {format_utc(send_at)}"
                + (f" --label {shlex.quote(args.label)}" if args.label else "")
            )
            log.error(
                "send_not_recorded", order_id=order_id, send_at=format_utc(send_at), error=str(exc)
            )
            say_error(
                f"order {order_id} was accepted by the provider but is NOT in the ledger "
                f"({exc}); record it by hand with: {command}"
            )
            return EXIT_FAILED
        now = ledger.now()
    print(
        f"registered order {escape(order.order_id)}: sends {format_countdown(order.send_at, now)}",
        file=sys.stderr,
    )
    return EXIT_OK


def _cmd_cancel(args: argparse.Namespace, ctx: Context) -> int:
    zone = ctx.config.zone
    code = EXIT_OK
    with _open_ledger(ctx, must_exist=True) as ledger:
        asked: list[Order] = []
        for order_id in args.order_ids:
            try:
                order = ledger.request_cancel(order_id)
            except (CancelNotPossible, OrderNotFound, InvalidInput) as exc:
                say_error(str(exc))
                code = max(code, exit_code_for(exc) or EXIT_FAILED)
                if isinstance(exc, CancelNotPossible):
                    asked.append(exc.order)
                continue
            asked.append(order)
            now = ledger.now()
            under_way = order.state in (OrderState.CANCEL_REQUESTED, OrderState.CANCELLING)
            where = ledger.margins.window(order.send_at, now)
            if under_way and where is Window.WARN:
                print(
                    f"warning: order {escape(order.order_id)} dispatches "
                    f"{format_countdown(order.send_at, now)}; the cancel may come too late",
                    file=sys.stderr,
                )
        if asked:
            say(order_table(asked, zone, ledger.now()))
        if any(o.state in _UNDER_WAY for o in asked) and not _daemon_running(ledger, ctx):
            print(f"warning: {heartbeats.NO_DAEMON}", file=sys.stderr)
        if args.wait is None:
            if any(order.state not in _CANCEL_ON_TRACK for order in asked):
                code = max(code, EXIT_FAILED)
            return code
        final = _wait_final(ledger, asked, args.wait)
        if final:
            say(["", *order_table(final, zone, ledger.now())])
    for order in final:
        if order.state not in FINAL_STATES:
            say_error(
                f"order {order.order_id} is still {order.state.value} after {args.wait:g} s; "
                "is the daemon (smsledger run) running?"
            )
    if any(order.state is not OrderState.CANCELLED for order in final):
        code = max(code, EXIT_FAILED)
    return code


def _wait_final(ledger: Ledger, orders: list[Order], seconds: float) -> list[Order]:
    """Re-read `orders` every POLL_SECONDS until all are final or `seconds` have passed."""
    deadline = time.monotonic() + seconds
    current = orders
    while True:
        current = [ledger.get(order.order_id) for order in current]
        left = deadline - time.monotonic()
        if all(order.state in FINAL_STATES for order in current) or left <= 0:
            return current
        time.sleep(min(POLL_SECONDS, left))


def _cmd_status(args: argparse.Namespace, ctx: Context) -> int:
    with _open_ledger(ctx, must_exist=True) as ledger:
        order = ledger.get(args.order_id)
        now = ledger.now()
    say(to_json(order_json(order)) if args.json else status_lines(order, ctx.config.zone, now))
    return EXIT_OK


def _cmd_list(args: argparse.Namespace, ctx: Context) -> int:
    state: OrderState | None = None
    if args.state is not None:
        try:
            state = OrderState(args.state.strip().lower())
        except ValueError:
            known = ", ".join(s.value for s in OrderState)
            raise UsageError(
                f"--state: unknown state {args.state!r}; states are: {known}"
            ) from None
    with _open_ledger(ctx, must_exist=True) as ledger:
        orders = ledger.orders(state)
        now = ledger.now()
    if args.json:
        say(to_json([order_json(order) for order in orders]))
    elif orders:
        say(order_table(orders, ctx.config.zone, now))
    else:
        say("no orders" + (f" in state {state.value}" if state else ""))
    return EXIT_OK


def _cmd_history(args: argparse.Namespace, ctx: Context) -> int:
    with _open_ledger(ctx, must_exist=True) as ledger:
        events = ledger.history(args.order_id)
    if args.json:
        say(to_json([event_json(event) for event in events]))
    else:
        say(history_table(events, ctx.config.zone))
    return EXIT_OK


def _cmd_logs(args: argparse.Namespace, ctx: Context) -> int:
    config = ctx.config
    if config.log.path == "-":
        raise UsageError(
            "log.path is '-' (the log goes to stderr), so there is no log file to read"
        )
    level = None
    if args.level is not None:
        level = args.level.lower()
        if level not in LEVELS:
            raise UsageError(
                f"--level: unknown level {args.level!r}; levels are: {', '.join(LEVELS)}"
            )
    since = None
    if args.since is not None:
        try:
            since = parse_since(args.since, config.zone, utcnow())
        except WhenError as exc:
            raise UsageError(f"--since: {exc}") from None
    reader = _LogPrinter(
        LogFilter(order=args.order, event=args.event, level=level, since=since),
        LineFormatter(config.zone),
        raw=args.json,
    )
    path = Path(config.log.path).expanduser()
    tail = LogTail(path)
    try:
        if not args.follow and not path.exists():
            print(f"smsledger: no log file at {path} yet: nothing has been logged", file=sys.stderr)
            return EXIT_OK
        reader.show(tail.poll(), batch=True)
        if not args.follow:
            if not reader.shown and not args.json:
                print(f"smsledger: no matching log events in {path}", file=sys.stderr)
            return EXIT_OK
        while True:
            time.sleep(POLL_SECONDS)
            reader.show(tail.poll(), batch=False)
    finally:
        tail.close()
        if reader.skipped:
            print(
                f"smsledger: skipped {reader.skipped} line(s) of {path} that are not JSON",
                file=sys.stderr,
            )


@dataclass
class _LogPrinter:
    """Filters and prints log lines, counting the ones that are not JSON objects."""

    filter: LogFilter
    formatter: LineFormatter
    raw: bool
    shown: int = 0
    skipped: int = 0

    def show(self, lines: list[str], *, batch: bool) -> None:
        picked: list[tuple[str, dict[str, object]]] = []
        for line in lines:
            if not line.strip():
                continue
            record = parse_record(line)
            if record is None:
                self.skipped += 1
            elif self.filter.matches(record):
                picked.append((line, record))
        if not picked:
            return
        if batch and not self.raw:
            self.formatter.fit([record for _, record in picked])
        out = [
            escape_json(line) if self.raw else self.formatter.format(record)
            for line, record in picked
        ]
        self.shown += len(out)
        say(out)


def _cmd_check(args: argparse.Namespace, ctx: Context) -> int:
    config = ctx.config
    code = EXIT_OK
    lines: list[tuple[str, str, str]] = [
        (
            "config",
            "ok",
            str(Path(config.source).resolve()) if config.source else "defaults (no file)",
        )
    ]

    def fail(name: str, exc_code: int, message: str) -> None:
        nonlocal code
        code = max(code, exc_code)
        lines.append((name, "FAIL", message))

    try:
        with _open_ledger(ctx, must_exist=True) as ledger:
            ledger.orders(limit=1)
            lines.append(("ledger", "ok", display_url(config.ledger.url)))
        seen = _daemons_seen(ctx)
        if seen is not None:
            running, described = seen
            if running:
                lines.append(("daemons", "ok", described))
            else:
                lines.append(("daemons", "WARN", f"{heartbeats.NO_DAEMON} ({described})"))
    except LedgerError as exc:
        fail("ledger", exit_code_for(exc) or EXIT_FAILED, str(exc))
    problem = config.credentials_problem()
    if problem is not None:
        fail("provider", EXIT_USAGE, problem)
    else:
        skew = SkewEstimator()
        try:
            with _client(config) as client:
                client.observe(skew.observe)
                balance = client.get_balance()
            amount = balance.amount if balance.amount is not None else "?"
            sms = balance.sms if balance.sms is not None else "?"
            lines.append(("provider", "ok", f"{config.api.base_url} balance {amount} / {sms} SMS"))
        except ProviderAuthError as exc:
            fail("provider", EXIT_FAILED, f"credentials rejected: {exc}")
        except ProviderError as exc:
            fail("provider", EXIT_FAILED, str(exc))
        _check_skew(skew.skew_seconds, config.scheduler.max_clock_skew_seconds, lines, fail)
    # A warning: the exit code stays what the other checks said.
    lines.extend(("packages", "WARN", problem) for problem in foreign_packages())
    width = max(len(name) for name, _, _ in lines)
    say(
        [
            f"{name.ljust(width)}  {status.ljust(4)}  {escape(detail)}"
            for name, status, detail in lines
        ]
    )
    for name, status, detail in lines:
        if status == "FAIL":
            say_error(f"{name}: {detail}")
        elif status == "WARN":
            print(f"warning: {name}: {escape(detail)}", file=sys.stderr)
    return code


_UNDER_WAY = (OrderState.CANCEL_REQUESTED, OrderState.CANCELLING)


def _daemon_running(ledger: Ledger, ctx: Context) -> bool:
    """Whether any daemon finished a pass within `heartbeats.liveness_limit` (lease clock)."""
    seen = heartbeats.daemons(ledger.store)
    now = ledger.store.lease_now()
    return bool(heartbeats.running(seen, now, ctx.config.scheduler.poll_seconds))


def _daemons_seen(ctx: Context) -> tuple[bool, str] | None:
    """(any running, a description of the daemons seen and their last pass) for `check`."""
    with _open_ledger(ctx, must_exist=True) as ledger:
        seen = heartbeats.daemons(ledger.store)
        now = ledger.store.lease_now()
    running = heartbeats.running(seen, now, ctx.config.scheduler.poll_seconds)
    if not seen:
        return False, "none seen"
    described = "; ".join(
        f"{d.host} pid {d.pid} ({d.version}) last pass "
        + (f"{(now - d.last_pass_at).total_seconds():.0f} s ago" if d.last_pass_at else "never")
        for d in seen[:5]
    )
    return bool(running), described


def _check_skew(
    skew: float | None,
    limit: float,
    lines: list[tuple[str, str, str]],
    fail: Callable[[str, int, str], None],
) -> None:
    """`check`'s clock line: the provider's clock against ours (exit 1 above the limit)."""
    if skew is None:
        lines.append(("clock", "?", "the provider's answer had no Date header"))
        return
    ahead = "ahead of" if skew >= 0 else "behind"
    text = f"the provider's clock is {abs(skew):.1f} s {ahead} this host's (limit {limit:g} s)"
    if abs(skew) > limit:
        fail("clock", EXIT_FAILED, text)
    else:
        lines.append(("clock", "ok", text))


def _cmd_alerts(args: argparse.Namespace, ctx: Context) -> int:
    if args.action == "test":
        return _alerts_test(ctx)
    with _open_ledger(ctx, must_exist=True) as ledger:
        found = outbox.recent(ledger.store, pending_only=args.pending, limit=args.limit)
    zone = ctx.config.zone
    if args.json:
        say(to_json([_alert_json(a) for a in found]))
    elif found:
        say(
            table(
                ("AT", "EVENT", "ORDER", "DELIVERY", "TRIES", "TEXT"),
                [
                    (
                        a.at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S"),
                        a.event,
                        escape(a.order_id or "-"),
                        a.status,
                        str(a.attempts),
                        escape(a.text),
                    )
                    for a in found
                ],
            )
        )
    else:
        say("no pending alerts" if args.pending else "no alerts")
    return EXIT_OK


def _alert_json(alert: outbox.Alert) -> dict[str, object]:
    return {
        **alert.payload(),
        "delivery": alert.status,
        "attempts": alert.attempts,
        "next_attempt_at": _utc(alert.next_attempt_at),
        "delivered_at": _utc(alert.delivered_at),
        "last_error": alert.last_error,
    }


def _utc(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _alerts_test(ctx: Context) -> int:
    from scheduler.alerting import post_alert  # noqa: PLC0415 -- httpx posting loads only here

    alerts = ctx.config.alerts
    if not alerts.enabled:
        raise UsageError("alerts.webhook_url is not set in the config: there is nowhere to send")
    now = utcnow()
    payload = {
        "alert_id": uuid.uuid4().hex,
        "event": "test",
        "order_id": None,
        "state": None,
        "reason": "smsledger alerts test",
        "send_at": None,
        "label": None,
        "at": now.isoformat(),
        "text": "smsledger: this is a test alert; alerts reach this receiver.",
    }
    result = post_alert(payload, alerts)
    where = webhook_host(alerts.webhook_url)
    if result.ok:
        alert_id = payload["alert_id"]
        say(f"test alert {alert_id} sent to {where}: the receiver answered {result.status}")
        return EXIT_OK
    say_error(f"test alert to {where} failed: {result.error}")
    return EXIT_FAILED


def _cmd_run(args: argparse.Namespace, ctx: Context) -> int:
    from scheduler.daemon import run_daemon  # noqa: PLC0415 -- the daemon loads only for `run`

    return run_daemon(ctx.config, once=args.once)


def _cmd_migrate(args: argparse.Namespace, ctx: Context) -> int:
    from ledger.schema import migrate  # noqa: PLC0415 -- Alembic loads only for `migrate`

    found, now = migrate(ctx.config.ledger.url)
    where = display_url(ctx.config.ledger.url)
    if found == now:
        say(f"ledger {where} is at schema revision {now}: nothing to do")
    else:
        say(f"ledger {where} migrated from revision {found or '(empty)'} to {now}")
    return EXIT_OK


def _cmd_margins(args: argparse.Namespace, ctx: Context) -> int:
    """Judge `refuse_before` by the provider's queue lead as observed (exit 1: too small)."""
    from ledger import leads  # noqa: PLC0415 -- only this command reads the observations

    with _open_ledger(ctx, must_exist=True) as ledger:
        since = ledger.now() - timedelta(days=args.days)
        observations = leads.observations_since(ledger.store, since)
    found = leads.brackets(observations)
    report = leads.assess(
        found,
        [o.duration_ms for o in observations if o.duration_ms is not None],
        refuse_before_seconds=ctx.config.windows.refuse_before_seconds,
        warn_before_seconds=ctx.config.windows.warn_before_seconds,
        poll_seconds=ctx.config.scheduler.poll_seconds,
    )
    if args.json:
        say(to_json(report.to_json()))
    else:
        say(margins_lines(report, [b for b in found.values() if b.closed], args.days))
    too_small = report.verdict is leads.Verdict.REFUSE_BEFORE_TOO_SMALL
    return EXIT_FAILED if too_small else EXIT_OK


def _cmd_reconcile(args: argparse.Namespace, ctx: Context) -> int:
    from scheduler.reconciling import (  # noqa: PLC0415 -- loads only for `reconcile`
        ReconcileIncomplete,
        ReconcileReport,
        last_days,
        reconcile,
    )

    config = ctx.config
    days = args.days if args.days is not None else config.reconcile.days
    config.require_credentials()

    def show(report: ReconcileReport) -> None:
        if args.json:
            say(to_json(report.to_json()))
            return
        counts = report.to_json()
        width = max(len(name) for name in counts)
        lines = [f"{name.ljust(width)}  {value}" for name, value in counts.items()]
        if report.changes:
            lines += ["", *table(("ORDER", "CHANGE"), report.changes)]
        if report.dry_run:
            lines.append("(dry run: nothing was written)")
        say(lines)

    with _open_ledger(ctx, must_exist=args.dry_run) as ledger, _client(config) as client:
        since, until = last_days(days, ledger.now())
        try:
            report = reconcile(
                ledger,
                client,
                since=since,
                until=until,
                dry_run=args.dry_run,
                import_label=config.reconcile.import_label,
            )
        except ReconcileIncomplete as exc:
            show(exc.report)
            raise
    show(report)
    return EXIT_OK


def _cmd_resolve(args: argparse.Namespace, ctx: Context) -> int:
    with _open_ledger(ctx, must_exist=True) as ledger:
        order = ledger.resolve(args.order_id, args.to_state, note=args.note, by=args.by)
        say(order_table([order], ctx.config.zone, ledger.now()))
    return EXIT_OK


def run_demo() -> int:
    """`smsledger demo`: takes no config; the demo writes its own."""
    from scheduler.cli.demo import main as demo_main  # noqa: PLC0415 -- loads only for `demo`

    return demo_main()


def run_sandbox(extra: Sequence[str]) -> int:
    """`smsledger sandbox ...`: the sandbox's own options, parsed only when it is asked for."""
    from scheduler.provider import sandbox  # noqa: PLC0415 -- no other command needs the sandbox

    # Alone it logs lifecycle lines only, as `python -m scheduler.provider.sandbox` does.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    parser = Parser(
        prog="smsledger sandbox",
        description="Run a local stand-in for the iletiMerkezi API until SIGINT or SIGTERM.",
    )
    sandbox.add_arguments(parser)
    return sandbox.run_from_args(parser.parse_args(extra))


Handler = Callable[[argparse.Namespace, "Context"], int]

#: The command each parsed command name runs, after `load_context` (sandbox and demo aside).
HANDLERS: dict[str, Handler] = {
    "register": _cmd_register,
    "send": _cmd_send,
    "cancel": _cmd_cancel,
    "status": _cmd_status,
    "list": _cmd_list,
    "history": _cmd_history,
    "logs": _cmd_logs,
    "run": _cmd_run,
    "check": _cmd_check,
    "migrate": _cmd_migrate,
    "alerts": _cmd_alerts,
    "margins": _cmd_margins,
    "reconcile": _cmd_reconcile,
    "resolve": _cmd_resolve,
}
