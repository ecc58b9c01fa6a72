"""The ``smsledger`` command: parse the arguments, call the ledger or the provider, print.

The command is thin on purpose: ledger work goes through `ledger.Ledger`, provider calls through
`scheduler.client.IletiMerkeziClient`, the daemon is `scheduler.daemon`. What is here is argument
parsing, reading times (`scheduler._timeparse`) and formatting (`scheduler._cliformat`,
`scheduler._clilogs`).

Exit codes:

====  ==========================================================================================
code  meaning
====  ==========================================================================================
0     done
1     the request was refused or ended badly: a cancel refused, too late, not found at the
      provider, needing attention, dispatched, or not final when ``cancel --wait`` ran out; a
      provider error; the ledger unreachable, damaged, or (for status, list, history, check and
      cancel, which never create one) not there; a sent order the ledger could not record
2     usage, input or config error: a bad flag, time or state, an unknown order id, a config
      file that is missing, unreadable or wrong, missing API credentials
130   interrupted (Ctrl-C)
====  ==========================================================================================

Every error is one line on stderr, ``smsledger: error: ...``, naming the bad value; ``--debug``
adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import structlog

from ledger import (
    FINAL_STATES,
    CancelNotPossible,
    Config,
    ConfigError,
    InvalidInput,
    Ledger,
    LedgerError,
    LedgerUnavailable,
    Order,
    OrderNotFound,
    OrderState,
    RegistrationConflict,
    configure_logging,
    load_config,
    utcnow,
)
from ledger.api import check_label
from ledger.config import find_config_path
from ledger.margins import Window, window
from ledger.store import display_url
from scheduler._cliformat import (
    escape,
    escape_json,
    event_json,
    history_table,
    order_json,
    order_table,
    status_lines,
    to_json,
)
from scheduler._clilogs import LEVELS, LineFormatter, LogFilter, LogTail, parse_record
from scheduler._timeparse import WhenError, format_countdown, format_utc, parse_since, parse_when
from scheduler.provider.client import IletiMerkeziClient
from scheduler.provider.errors import (
    ProviderAuthError,
    ProviderError,
    ProviderTransientError,
    SendTimeError,
)
from scheduler.provider.wire import PROVIDER_ZONE, format_send_datetime

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "exit_code_for",
    "main",
]

log = structlog.get_logger("smsledger.cli")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: How often `cancel --wait` and `logs --follow` look again, in seconds.
POLL_SECONDS = 0.2

_EPILOG = """\
WHEN is ISO 8601: 2026-12-01T10:00+03:00 and 2026-12-01T07:00Z are taken as written;
2026-12-01T10:00 is read in the config's timezone (a local time that zone skips or repeats is
refused). logs --since also takes 30s, 10m, 2h, 1d (that long ago).

config: --config PATH, else $SMSLEDGER_CONFIG, else ./smsledger.toml, else the defaults.
$ILETIMERKEZI_API_KEY / $ILETIMERKEZI_API_HASH override the file's credentials.

exit codes:
  0    done
  1    refused or ended badly (cancel refused, too late, not found, needs attention,
       dispatched, not final after --wait; provider error; ledger unreachable
       or damaged; no ledger yet for status, list, history, check, cancel)
  2    usage, input or config error (bad flag, time or state; unknown order id;
       config missing or wrong; missing credentials)
  130  interrupted
"""

#: States in which a cancel is accepted or done: `cancel` without --wait exits 0 on them.
_CANCEL_ON_TRACK = frozenset(
    {OrderState.CANCEL_REQUESTED, OrderState.CANCELLING, OrderState.CANCELLED}
)


class UsageError(Exception):
    """A command-line value the command cannot use (exit 2)."""


class CommandFailed(Exception):
    """The command could not do what was asked, for a reason it explains (exit 1)."""


#: The one table from exception to exit code; the first matching class wins.
_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (UsageError, EXIT_USAGE),
    (ConfigError, EXIT_USAGE),
    (InvalidInput, EXIT_USAGE),
    (OrderNotFound, EXIT_USAGE),
    (RegistrationConflict, EXIT_USAGE),
    (SendTimeError, EXIT_USAGE),
    (CancelNotPossible, EXIT_FAILED),
    (LedgerUnavailable, EXIT_FAILED),
    (LedgerError, EXIT_FAILED),
    (ProviderError, EXIT_FAILED),
    (CommandFailed, EXIT_FAILED),
)


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code for an error the command expects, or None for a bug."""
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return None


def _error(message: str) -> None:
    """One line on stderr; the message may quote the provider or the ledger, so it is escaped."""
    print(f"smsledger: error: {escape(message)}", file=sys.stderr, flush=True)


def _out(lines: Sequence[str] | str) -> None:
    text = lines if isinstance(lines, str) else "\n".join(lines)
    print(text, flush=True)


# -- setup -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """What every command after parsing needs: the config and where it came from."""

    config: Config

    @property
    def config_hint(self) -> str:
        """``--config PATH `` to repeat in a suggested command, or "" for the defaults."""
        if self.config.source is None:
            return ""
        return f"--config {shlex.quote(str(Path(self.config.source).resolve()))} "


def _load(args: argparse.Namespace) -> _Context:
    """Read the config and set up logging, as every command but sandbox and demo does."""
    config = load_config(find_config_path(args.config))
    try:
        configure_logging(config.log, secrets=(config.api.key, config.api.hash))
    except OSError as exc:
        raise ConfigError(
            f"log.path {config.log.path!r} cannot be opened: {exc.strerror or exc}"
        ) from None
    return _Context(config)


def _open_ledger(ctx: _Context, *, must_exist: bool = False) -> Ledger:
    """The config's ledger; `must_exist` for commands that only read or change existing orders,
    which must say that there is no ledger rather than create an empty one and answer from it."""
    return Ledger.from_config(ctx.config, setup_logging=False, must_exist=must_exist)


def _when(text: str, option: str, ctx: _Context) -> datetime:
    try:
        return parse_when(text, ctx.config.zone)
    except WhenError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _client(config: Config) -> IletiMerkeziClient:
    config.require_credentials()
    return IletiMerkeziClient.from_config(config.api)


# -- commands ----------------------------------------------------------------------------------


def _cmd_register(args: argparse.Namespace, ctx: _Context) -> int:
    send_at = _when(args.send_at, "--send-at", ctx)
    with _open_ledger(ctx) as ledger:
        order = ledger.register(args.order_id, send_at, args.label)
        _out(order_table([order], ctx.config.zone, ledger.now()))
    return EXIT_OK


def _cmd_send(args: argparse.Namespace, ctx: _Context) -> int:
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
            _error(
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


def _cmd_cancel(args: argparse.Namespace, ctx: _Context) -> int:
    zone = ctx.config.zone
    code = EXIT_OK
    with _open_ledger(ctx, must_exist=True) as ledger:
        asked: list[Order] = []
        for order_id in args.order_ids:
            try:
                order = ledger.request_cancel(order_id)
            except (CancelNotPossible, OrderNotFound, InvalidInput) as exc:
                _error(str(exc))
                code = max(code, exit_code_for(exc) or EXIT_FAILED)
                if isinstance(exc, CancelNotPossible):
                    asked.append(exc.order)
                continue
            asked.append(order)
            now = ledger.now()
            under_way = order.state in (OrderState.CANCEL_REQUESTED, OrderState.CANCELLING)
            where = window(order.send_at, now, ledger.warn_before, ledger.refuse_before)
            if under_way and where is Window.WARN:
                print(
                    f"warning: order {escape(order.order_id)} dispatches "
                    f"{format_countdown(order.send_at, now)}; the cancel may come too late",
                    file=sys.stderr,
                )
        if asked:
            _out(order_table(asked, zone, ledger.now()))
        if args.wait is None:
            if any(order.state not in _CANCEL_ON_TRACK for order in asked):
                code = max(code, EXIT_FAILED)
            return code
        final = _wait_final(ledger, asked, args.wait)
        if final:
            _out(["", *order_table(final, zone, ledger.now())])
    for order in final:
        if order.state not in FINAL_STATES:
            _error(
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


def _cmd_status(args: argparse.Namespace, ctx: _Context) -> int:
    with _open_ledger(ctx, must_exist=True) as ledger:
        order = ledger.get(args.order_id)
        now = ledger.now()
    _out(to_json(order_json(order)) if args.json else status_lines(order, ctx.config.zone, now))
    return EXIT_OK


def _cmd_list(args: argparse.Namespace, ctx: _Context) -> int:
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
        _out(to_json([order_json(order) for order in orders]))
    elif orders:
        _out(order_table(orders, ctx.config.zone, now))
    else:
        _out("no orders" + (f" in state {state.value}" if state else ""))
    return EXIT_OK


def _cmd_history(args: argparse.Namespace, ctx: _Context) -> int:
    with _open_ledger(ctx, must_exist=True) as ledger:
        events = ledger.history(args.order_id)
    if args.json:
        _out(to_json([event_json(event) for event in events]))
    else:
        _out(history_table(events, ctx.config.zone))
    return EXIT_OK


def _cmd_logs(args: argparse.Namespace, ctx: _Context) -> int:
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
        _out(out)


def _cmd_check(args: argparse.Namespace, ctx: _Context) -> int:
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
    except LedgerError as exc:
        fail("ledger", exit_code_for(exc) or EXIT_FAILED, str(exc))
    problem = config.credentials_problem()
    if problem is not None:
        fail("provider", EXIT_USAGE, problem)
    else:
        try:
            with _client(config) as client:
                balance = client.get_balance()
            amount = balance.amount if balance.amount is not None else "?"
            sms = balance.sms if balance.sms is not None else "?"
            lines.append(("provider", "ok", f"{config.api.base_url} balance {amount} / {sms} SMS"))
        except ProviderAuthError as exc:
            fail("provider", EXIT_FAILED, f"credentials rejected: {exc}")
        except ProviderError as exc:
            fail("provider", EXIT_FAILED, str(exc))
    width = max(len(name) for name, _, _ in lines)
    _out(
        [
            f"{name.ljust(width)}  {status.ljust(4)}  {escape(detail)}"
            for name, status, detail in lines
        ]
    )
    for name, status, detail in lines:
        if status == "FAIL":
            _error(f"{name}: {detail}")
    return code


def _cmd_run(args: argparse.Namespace, ctx: _Context) -> int:
    from scheduler.daemon import run_daemon  # noqa: PLC0415 -- the daemon loads only for `run`

    return run_daemon(ctx.config, once=args.once)


def _cmd_migrate(args: argparse.Namespace, ctx: _Context) -> int:
    from ledger.schema import migrate  # noqa: PLC0415 -- Alembic loads only for `migrate`

    found, now = migrate(ctx.config.ledger.url)
    where = display_url(ctx.config.ledger.url)
    if found == now:
        _out(f"ledger {where} is at schema revision {now}: nothing to do")
    else:
        _out(f"ledger {where} migrated from revision {found or '(empty)'} to {now}")
    return EXIT_OK


def _run_demo() -> int:
    from scheduler.demo import main as demo_main  # noqa: PLC0415 -- loads only for `demo`

    return demo_main()


def _run_sandbox(extra: list[str]) -> int:
    """`smsledger sandbox ...`: the sandbox's own options, parsed only when it is asked for."""
    from scheduler.provider import sandbox  # noqa: PLC0415 -- no other command depends on the sandbox

    # Alone it logs lifecycle lines only, as `python -m scheduler.provider.sandbox` does.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    parser = _Parser(
        prog="smsledger sandbox",
        description="Run a local stand-in for the iletiMerkezi API until SIGINT or SIGTERM.",
    )
    sandbox.add_arguments(parser)
    args = parser.parse_args(extra)
    return sandbox.run_from_args(args)


# -- parsing -----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"smsledger: error: {message} (see '{self.prog} --help')\n")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds >= 0")
    return value


def _add_common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--config and --debug, accepted before the command and after it."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None if top else argparse.SUPPRESS,
        help="config file (default: $SMSLEDGER_CONFIG, else ./smsledger.toml)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="show the traceback of an error",
    )


Handler = Callable[[argparse.Namespace, _Context], int]


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command (the sandbox's own options are added when it runs)."""
    parser = _Parser(
        prog="smsledger",
        description="Keep future-scheduled iletiMerkezi SMS orders safe to cancel.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, handler: Handler | None, help_text: str, details: str = ""
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=f"{help_text}.\n\n{details}" if details else help_text,
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_common(sub, top=False)
        sub.set_defaults(handler=handler, command_parser=sub)
        return sub

    sub = add("register", _cmd_register, "record an order already scheduled at the provider")
    sub.add_argument("order_id", metavar="ORDER_ID")
    sub.add_argument("--send-at", required=True, metavar="WHEN", help="its send time")
    sub.add_argument("--label", metavar="TEXT", help="a note shown with the order")

    sub = add(
        "send",
        _cmd_send,
        "schedule an SMS at the provider and record it",
        "Prints only the new order id on stdout (id=$(smsledger send ...)), and logs it as\n"
        "send_accepted, before writing it to the ledger; if that write fails, the error says\n"
        "how to register the order by hand (exit 1). The ledger is opened, and the send time\n"
        "checked (whole minute, in the future), before the provider is called.",
    )
    sub.add_argument("--sender", required=True, metavar="NAME", help="approved sender name")
    sub.add_argument(
        "--to",
        required=True,
        action="append",
        metavar="NUMBER[,NUMBER...]",
        help="recipients (comma-separated; may be repeated)",
    )
    sub.add_argument("--text", required=True, metavar="TEXT", help="the message")
    sub.add_argument(
        "--at", required=True, metavar="WHEN", help="send time, on a whole minute, in the future"
    )
    sub.add_argument(
        "--iys", choices=("0", "1"), default="1", help="1 commercial (default), 0 transactional"
    )
    sub.add_argument(
        "--iys-list",
        type=str.upper,
        choices=("BIREYSEL", "TACIR"),
        default=None,
        help="IYS recipient list for --iys 1 (default BIREYSEL)",
    )
    sub.add_argument("--label", metavar="TEXT", help="a note shown with the order")

    sub = add(
        "cancel",
        _cmd_cancel,
        "ask for orders to be cancelled (the daemon sends it)",
        "Prints each order's state. Exit 0 when every order is cancel_requested, cancelling or\n"
        "cancelled (with --wait: cancelled); 1 when one was refused, is too late, not found,\n"
        "needs attention, was dispatched or is not final when --wait runs out; 2 when an\n"
        "order id is not in the ledger (the other ids are still handled).",
    )
    sub.add_argument("order_ids", nargs="+", metavar="ORDER_ID")
    sub.add_argument(
        "--wait",
        type=_seconds,
        metavar="SECONDS",
        help="wait up to SECONDS for every order to reach a final state; exit 0 only if all "
        "are cancelled",
    )

    sub = add("status", _cmd_status, "show one order")
    sub.add_argument("order_id", metavar="ORDER_ID")
    sub.add_argument("--json", action="store_true", help="print a JSON object")

    sub = add("list", _cmd_list, "list orders by send time")
    sub.add_argument(
        "--state",
        metavar="STATE",
        help=f"only orders in this state ({', '.join(s.value for s in OrderState)})",
    )
    sub.add_argument("--json", action="store_true", help="print a JSON array")

    sub = add("history", _cmd_history, "show an order's state changes, oldest first")
    sub.add_argument("order_id", metavar="ORDER_ID")
    sub.add_argument("--json", action="store_true", help="print a JSON array")

    sub = add(
        "logs",
        _cmd_logs,
        "show the JSON-lines log (all filters must match)",
        "One aligned line per event: local time, level, event, order id, other key=value\n"
        "pairs; --json prints the matching lines unchanged. Lines that are not JSON are\n"
        "skipped and counted on stderr. --follow prints the matching lines so far, then new\n"
        "ones, across truncation and rotation, until Ctrl-C (exit 130). An empty or missing\n"
        "log is not an error (exit 0).",
    )
    sub.add_argument("--order", metavar="ID", help="only events of this order")
    sub.add_argument("--event", metavar="NAME", help="only events of this name")
    sub.add_argument(
        "--level", metavar="LEVEL", help=f"this level or more severe ({', '.join(LEVELS)})"
    )
    sub.add_argument(
        "--since", metavar="WHEN", help="only events at or after WHEN, or 30s, 10m, 2h, 1d ago"
    )
    sub.add_argument(
        "--follow",
        action="store_true",
        help="print the matching events, then new ones as they are written (Ctrl-C stops)",
    )
    sub.add_argument("--json", action="store_true", help="print the matching lines unchanged")

    sub = add("run", _cmd_run, "run the daemon that sends and verifies cancels")
    sub.add_argument("--once", action="store_true", help="do one pass and exit")

    add("check", _cmd_check, "check the config, the ledger and the provider credentials")

    add(
        "migrate",
        _cmd_migrate,
        "upgrade the ledger's schema to this smsledger's revision",
        "Every command upgrades the ledger when it opens it; this does only that, e.g. before\n"
        "starting daemons on several hosts. A ledger written by a newer smsledger is refused\n"
        "(exit 1).",
    )

    commands.add_parser(
        "sandbox",
        help="run a local stand-in for the iletiMerkezi API (see 'smsledger sandbox --help')",
        add_help=False,  # its --help is the sandbox's own
    )
    demo = commands.add_parser("demo", help="show a cancel end to end against a local sandbox")
    demo.set_defaults(command_parser=demo)
    return parser


# -- entry point -------------------------------------------------------------------------------


def _dispatch(args: argparse.Namespace, extra: list[str]) -> int:
    if args.command == "sandbox":
        return _run_sandbox(extra)
    if extra:
        args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "demo":
        return _run_demo()
    handler: Handler = args.handler
    return handler(args, _load(args))


def _report(exc: Exception, *, debug: bool) -> int:
    """Print `exc` as one line (after its traceback with --debug); return its exit code."""
    code = exit_code_for(exc)
    if debug:
        traceback.print_exception(exc)
    if code is None:
        hint = "" if debug else " (run again with --debug for the traceback)"
        _error(f"internal error: {type(exc).__name__}: {exc}{hint}")
        return EXIT_FAILED
    _error(str(exc))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit code (the console script exits with it)."""
    parser = build_parser()
    args: argparse.Namespace | None = None
    try:
        args, extra = parser.parse_known_args(argv)
        return _dispatch(args, extra)
    except SystemExit as exc:  # argparse: --help, usage errors
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or EXIT_OK
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`smsledger logs | head`): stop quietly.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        return _report(exc, debug=args is not None and bool(args.debug))


if __name__ == "__main__":
    raise SystemExit(main())
