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
import os
import shlex
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import structlog

from ledger import (
    FINAL_STATES,
    CancelOutcome,
    CancelResult,
    CancelSummary,
    Config,
    InvalidInput,
    Ledger,
    LedgerError,
    Order,
    OrderNotFound,
    OrderState,
    RegistrationConflict,
    heartbeats,
    outbox,
    utcnow,
)
from ledger._log import get_logger
from ledger._urls import display_url
from ledger.api import check_label, check_order_id
from ledger.cancels import ON_TRACK, refusal
from ledger.config import ENV_CONFIG, config_search_path, webhook_host
from ledger.margins import Window
from scheduler.cli.context import POLL_SECONDS, Context, load_context, open_ledger
from scheduler.cli.exits import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandFailed,
    UsageError,
    exit_code_for,
)
from scheduler.cli.imports import check_lines
from scheduler.cli.logs_command import run_logs
from scheduler.cli.origin import foreign_packages
from scheduler.cli.output import (
    cancel_json,
    escape,
    event_json,
    history_table,
    label_summary_json,
    margins_lines,
    order_json,
    order_table,
    say,
    say_error,
    status_lines,
    summary_table,
    table,
    to_json,
)
from scheduler.cli.parser import Parser
from scheduler.cli.progress import Progress
from scheduler.cli.times import (
    WhenError,
    format_countdown,
    format_local,
    format_utc,
    parse_when,
)
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

#: How many orders an error about many orders names before it counts the rest.
_MAX_LISTED = 20


# -- setup -------------------------------------------------------------------------------------


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
    if args.source is not None:
        if args.order_id is not None or args.send_at is not None:
            raise UsageError("--from FILE takes neither ORDER_ID nor --send-at")
        return _register_from(args, ctx)
    if args.skip_invalid:
        raise UsageError("--skip-invalid goes with --from FILE")
    if args.order_id is None:
        raise UsageError("give ORDER_ID --send-at WHEN, or --from FILE")
    if args.send_at is None:
        raise UsageError("the following arguments are required: --send-at (or give --from FILE)")
    send_at = _when(args.send_at, "--send-at", ctx)
    with open_ledger(ctx) as ledger:
        order = ledger.register(args.order_id, send_at, args.label)
        say(order_table([order], ctx.config.zone, ledger.now()))
    return EXIT_OK


#: Orders one transaction of ``register --from`` writes; each a step of the progress bar.
_IMPORT_CHUNK = 5000
#: Imports of more lines than this show a progress bar (on a terminal).
_PROGRESS_FROM = 2000


def _register_from(args: argparse.Namespace, ctx: Context) -> int:
    """``register --from FILE``: check every line (and the ledger's times), then register."""
    try:
        default_label = check_label(args.label)
    except InvalidInput as exc:
        raise UsageError(f"--label: {exc}") from None
    name = "stdin" if args.source == "-" else args.source
    try:
        if args.source == "-":
            check = check_lines(sys.stdin, ctx.config.zone, utcnow(), label=default_label)
        else:
            with Path(args.source).open(encoding="utf-8", newline="") as file:
                check = check_lines(file, ctx.config.zone, utcnow(), label=default_label)
    except OSError as exc:
        raise UsageError(f"--from {args.source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"--from {name}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    with open_ledger(ctx) as ledger:
        known = ledger.get_many(row.order_id for row in check.rows)
        rows = []
        for row in check.rows:
            order = known.get(row.order_id)
            if order is not None and order.send_at != row.send_at:
                conflict = RegistrationConflict(row.order_id, order.send_at, row.send_at)
                check.problems.append((row.line, str(conflict)))
            else:
                rows.append(row)
        problems = sorted(check.problems)
        if problems and not args.skip_invalid:
            say_error(
                f"{name}: {len(problems)} bad line(s) of {len(rows) + len(problems)}; nothing "
                "was registered (--skip-invalid registers the good lines)"
            )
            _list_problems(problems)
            return EXIT_USAGE
        progress = Progress(
            f"registering from {name}", len(rows), sys.stdout, enabled=len(rows) > _PROGRESS_FROM
        )
        new = already = 0
        try:
            for start in range(0, len(rows), _IMPORT_CHUNK):
                chunk = rows[start : start + _IMPORT_CHUNK]
                done = ledger.register_many([(r.order_id, r.send_at, r.label) for r in chunk])
                new += done
                already += done.already
                progress.update(start + len(chunk), force=True)
        finally:
            progress.close()
    say(
        f"{name}: {new} new order(s) registered, {already} already registered"
        + (f", {len(problems)} bad line(s) skipped" if problems else "")
    )
    if problems:
        print(f"smsledger: {name}: skipped {len(problems)} bad line(s):", file=sys.stderr)
        _list_problems(problems)
    return EXIT_OK


def _list_problems(problems: list[tuple[int, str]]) -> None:
    """``line N: what is wrong`` on stderr, the first `_MAX_LISTED`, then how many more."""
    for line, problem in problems[:_MAX_LISTED]:
        print(f"  line {line}: {escape(problem)}", file=sys.stderr)
    if len(problems) > _MAX_LISTED:
        print(f"  ... and {len(problems) - _MAX_LISTED} more bad line(s)", file=sys.stderr)


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
    with open_ledger(ctx) as ledger, _client(config) as client:
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
    if bool(args.order_ids) == (args.label is not None):
        raise UsageError("give ORDER_ID... or --label LABEL (one of them, not both)")
    code = EXIT_OK
    ids: list[str] = []
    invalid: list[str] = []
    if args.label is not None:
        try:
            check_label(args.label)
        except InvalidInput as exc:
            raise UsageError(f"--label: {exc}") from None
    for raw in args.order_ids:
        try:
            ids.append(check_order_id(raw))
        except InvalidInput as exc:
            say_error(str(exc))
            invalid.append(raw)
            code = EXIT_USAGE
    with open_ledger(ctx, must_exist=True) as ledger:
        summary = ledger.request_cancel_many(
            ids if args.label is None else None, label=args.label, dry_run=args.dry_run
        )
        results = list(summary.results)
        code = max(code, _cancel_exit_code(summary))
        if args.label is None and not args.json and not args.dry_run:
            _report_cancels_by_id(ledger, results, ctx.config.zone)
        elif not args.json:
            say(_summary_lines(summary, args.label, ctx.config.zone))
        under_way = any(r.state in _UNDER_WAY for r in results)
        if not args.dry_run and under_way and not _daemon_running(ledger, ctx):
            print(f"warning: {heartbeats.NO_DAEMON}", file=sys.stderr)
        if args.wait is not None and not args.dry_run:
            results = _wait_final(ledger, results, args.wait)
            if any(r.state is not OrderState.CANCELLED for r in results):
                code = max(code, EXIT_FAILED)
            if not args.json:
                _report_waited(ledger, results, args, ctx.config.zone)
    if args.json:
        unknown = [CancelResult(oid, CancelOutcome.UNKNOWN, None, None) for oid in invalid]
        say(to_json(cancel_json(CancelSummary.of([*unknown, *results], dry_run=args.dry_run))))
    return code


def _cancel_exit_code(summary: CancelSummary) -> int:
    """2 for ids not in the ledger, else 1 when any order is refused or past cancelling."""
    if summary.unknown:
        return EXIT_USAGE
    if any(r.outcome not in ON_TRACK for r in summary.results):
        return EXIT_FAILED
    return EXIT_OK


def _report_cancels_by_id(ledger: Ledger, results: list[CancelResult], zone: ZoneInfo) -> None:
    """Today's output of ``cancel ID...``: a warning or an error per order, then the table."""
    orders = ledger.get_many(r.order_id for r in results if r.outcome is not CancelOutcome.UNKNOWN)
    now = ledger.now()
    shown: list[Order] = []
    for result in results:
        order = orders.get(result.order_id)
        if order is None:
            say_error(str(OrderNotFound(result.order_id)))
            continue
        shown.append(order)
        error = refusal(order, result.outcome, order.seconds_left(now))
        if error is not None:
            say_error(str(error))
        elif result.outcome is CancelOutcome.WARNED:
            _warn_close(order, now)
        elif order.state is not OrderState.CANCELLED:  # asked again: still say it is close
            where = ledger.margins.window(order.send_at, now)
            if where is Window.WARN:
                _warn_close(order, now)
    if shown:
        say(order_table(shown, zone, now))


def _warn_close(order: Order, now: datetime) -> None:
    print(
        f"warning: order {escape(order.order_id)} dispatches "
        f"{format_countdown(order.send_at, now)}; the cancel may come too late",
        file=sys.stderr,
    )


def _summary_lines(summary: CancelSummary, label: str | None, zone: ZoneInfo) -> list[str]:
    """The count of each outcome, for a cancel by label or a dry run."""
    what = f"label {label}" if label is not None else "the given ids"
    head = f"{len(summary)} order(s) with {what}"
    if summary.dry_run:
        head = f"dry run, nothing written: {head} would come to"
    explained = {
        CancelOutcome.REQUESTED: "now cancel_requested",
        CancelOutcome.WARNED: "now cancel_requested, inside the warn margin: may come too late",
        CancelOutcome.REFUSED: "inside the refuse margin or past their send time: will go out",
        CancelOutcome.ALREADY: "already cancel_requested, cancelling or cancelled",
        CancelOutcome.FINAL: "already in another final state (too late, dispatched, ...)",
        CancelOutcome.UNKNOWN: "not in the ledger",
    }
    rows = [
        (outcome.value, str(count), explained[outcome])
        for outcome, count in summary.counts.items()
        if count or outcome is CancelOutcome.REQUESTED
    ]
    lines = [head, *table(("OUTCOME", "ORDERS", "MEANING"), rows)]
    first = summary.earliest_refused_send_at
    if first is not None:
        lines.append(f"earliest refused send time: {format_local(first, zone)}")
    return lines


def _report_waited(
    ledger: Ledger, results: list[CancelResult], args: argparse.Namespace, zone: ZoneInfo
) -> None:
    """After --wait: the final table (by ids) or the count of each state (by label)."""
    if args.label is None:
        orders = ledger.get_many(r.order_id for r in results)
        final = [orders[r.order_id] for r in results if r.order_id in orders]
        if final:
            say(["", *order_table(final, zone, ledger.now())])
    else:
        counts = Counter(r.state.value for r in results if r.state is not None)
        say(["", *table(("STATE", "ORDERS"), sorted((k, str(v)) for k, v in counts.items()))])
    pending = [r for r in results if r.state is not None and r.state not in FINAL_STATES]
    for result in pending[:_MAX_LISTED]:
        assert result.state is not None
        say_error(
            f"order {result.order_id} is still {result.state.value} after {args.wait:g} s; "
            "is the daemon (smsledger run) running?"
        )
    if len(pending) > _MAX_LISTED:
        say_error(f"and {len(pending) - _MAX_LISTED} more orders are not final yet")


def _wait_final(ledger: Ledger, results: list[CancelResult], seconds: float) -> list[CancelResult]:
    """Re-read the orders every POLL_SECONDS until all are final or `seconds` have passed; on a
    terminal, a live bar of the final ones and the count in each state meanwhile."""
    deadline = time.monotonic() + seconds
    current = results
    known = [r for r in results if r.state is not None]
    progress = Progress("final", len(known), sys.stdout)
    try:
        while True:
            orders = ledger.get_many(r.order_id for r in known)
            current = [
                replace(r, state=orders[r.order_id].state) if r.order_id in orders else r
                for r in current
            ]
            states = Counter(r.state for r in current if r.state is not None)
            final = sum(n for state, n in states.items() if state in FINAL_STATES)
            left = deadline - time.monotonic()
            counts = " ".join(f"{s.value}={n}" for s, n in sorted(states.items()))
            progress.update(final, extra=f"{counts}  {max(left, 0):.0f} s left", force=True)
            if final == len(known) or left <= 0:
                return current
            time.sleep(min(POLL_SECONDS, left))
    finally:
        progress.close()


def _cmd_status(args: argparse.Namespace, ctx: Context) -> int:
    with open_ledger(ctx, must_exist=True) as ledger:
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
    label = _label_option(args.label)
    send_from = _when(args.send_from, "--from", ctx) if args.send_from is not None else None
    until = _when(args.until, "--until", ctx) if args.until is not None else None
    with open_ledger(ctx, must_exist=True) as ledger:
        orders = ledger.orders(
            state, label=label, send_after=send_from, send_before=until, limit=args.limit
        )
        now = ledger.now()
    if args.json:
        say(to_json([order_json(order) for order in orders]))
    elif orders:
        say(order_table(orders, ctx.config.zone, now))
    else:
        filters = [
            f"in state {state.value}" if state else "",
            f"with label {label}" if label else "",
        ]
        say(" ".join(["no orders", *filter(None, filters)]))
    return EXIT_OK


def _label_option(text: str | None) -> str | None:
    try:
        return check_label(text)
    except InvalidInput as exc:
        raise UsageError(f"--label: {exc}") from None


def _cmd_summary(args: argparse.Namespace, ctx: Context) -> int:
    label = _label_option(args.label)
    with open_ledger(ctx, must_exist=True) as ledger:
        summaries = ledger.summary(label)
    if args.json:
        say(to_json([label_summary_json(s) for s in summaries]))
    elif summaries:
        say(summary_table(summaries, ctx.config.zone))
    else:
        say("no orders" + (f" with label {label}" if label else ""))
    return EXIT_OK


def _cmd_history(args: argparse.Namespace, ctx: Context) -> int:
    with open_ledger(ctx, must_exist=True) as ledger:
        events = ledger.history(args.order_id)
    if args.json:
        say(to_json([event_json(event) for event in events]))
    else:
        say(history_table(events, ctx.config.zone))
    return EXIT_OK


def _config_in_use(args: argparse.Namespace, config: Config) -> str:
    """Which config file `check` read, and how it was found (or that there was none)."""
    searched = ", ".join(str(p) for p in config_search_path())
    if config.source is None:
        return f"defaults (no file: none of {searched})"
    if args.config is not None:
        origin = "--config"
    elif os.environ.get(ENV_CONFIG):
        origin = f"${ENV_CONFIG}"
    else:
        origin = "the first found of the search path"
    return f"{Path(config.source).resolve()} (from {origin})"


def _cmd_check(args: argparse.Namespace, ctx: Context) -> int:
    config = ctx.config
    code = EXIT_OK
    lines: list[tuple[str, str, str]] = [("config", "ok", _config_in_use(args, config))]

    def fail(name: str, exc_code: int, message: str) -> None:
        nonlocal code
        code = max(code, exc_code)
        lines.append((name, "FAIL", message))

    try:
        with open_ledger(ctx, must_exist=True) as ledger:
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
        fail("ledger", exit_code_for(exc) or EXIT_FAILED, str(exc))  # it names the ledger
    problem = config.credentials_problem()
    if problem is not None:
        fail("provider", EXIT_USAGE, problem)
    elif args.offline:
        lines.append(("provider", "skip", f"--offline: credentials set, {config.api.base_url} "
                      "not called"))  # fmt: skip
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
    with open_ledger(ctx, must_exist=True) as ledger:
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
    with open_ledger(ctx, must_exist=True) as ledger:
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

    return run_daemon(ctx.config, once=args.once, metrics=args.metrics)


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

    with open_ledger(ctx, must_exist=True) as ledger:
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
        bars = leads.histogram(b for b in found.values() if b.closed)
        say(margins_lines(report, bars, args.days))
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

    with open_ledger(ctx, must_exist=args.dry_run) as ledger, _client(config) as client:
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
    with open_ledger(ctx, must_exist=True) as ledger:
        order = ledger.resolve(args.order_id, args.to_state, note=args.note, by=args.by)
        say(order_table([order], ctx.config.zone, ledger.now()))
    return EXIT_OK


def _cmd_backup(args: argparse.Namespace, ctx: Context) -> int:
    from ledger.backup import backup  # noqa: PLC0415 -- loads only for `backup`

    done = backup(ctx.config.ledger.url, args.path)
    revision = done.revision or "unknown"
    say(
        f"ledger {done.source} backed up to {done.dest}: {done.orders} orders, "
        f"schema revision {revision}, {done.size_bytes} bytes"
    )
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
    "summary": _cmd_summary,
    "history": _cmd_history,
    "logs": run_logs,
    "run": _cmd_run,
    "check": _cmd_check,
    "migrate": _cmd_migrate,
    "alerts": _cmd_alerts,
    "margins": _cmd_margins,
    "reconcile": _cmd_reconcile,
    "resolve": _cmd_resolve,
    "backup": _cmd_backup,
}
