"""The command line of ``smsledger``: every command, its options and its help, as one table.

Parsing only: what a command does is `scheduler.cli.commands` (looked up by the command's name),
and errors of the parser are one line and exit 2 like every other usage error
(`scheduler.cli.exits`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from importlib import metadata
from typing import Any, NoReturn

from ledger import OrderState
from ledger.config import parse_listen
from scheduler.cli.exits import EXIT_CODES_TEXT, EXIT_USAGE
from scheduler.cli.logs import LEVELS
from scheduler.cli.output import ERROR_PREFIX

__all__ = [
    "EPILOG",
    "Parser",
    "build_parser",
    "days",
    "listen_address",
    "positive_int",
    "seconds",
]

EPILOG = f"""\
WHEN is ISO 8601: 2026-12-01T10:00+03:00 and 2026-12-01T07:00Z are taken as written;
2026-12-01T10:00 is read in the config's timezone (a local time that zone skips or repeats is
refused). logs --since also takes 30s, 10m, 2h, 1d (that long ago).

config: --config PATH, else $SMSLEDGER_CONFIG, else the first of ./smsledger.toml,
~/.config/smsledger/smsledger.toml, /etc/smsledger/smsledger.toml; else the defaults.
$ILETIMERKEZI_API_KEY / $ILETIMERKEZI_API_HASH override the file's credentials.

{EXIT_CODES_TEXT}"""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{ERROR_PREFIX}{message} (see '{self.prog} --help')\n")


def positive_int(text: str) -> int:
    """An option's whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def listen_address(text: str) -> str:
    """An option's HOST:PORT to listen on (`ledger.config.parse_listen`)."""
    try:
        parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def seconds(text: str) -> float:
    """An option's number of seconds: finite and >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds >= 0")
    return value


def _count(text: str) -> int:
    """An option's whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def days(text: str) -> float:
    """An option's number of days: finite and > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of days > 0")
    return value


@dataclass(frozen=True)
class _Arg:
    """One `add_argument` call, kept as data so that commands can share it."""

    flags: tuple[str, ...]
    options: dict[str, Any]


def _arg(*flags: str, **options: Any) -> _Arg:
    return _Arg(flags, options)


def _required(flag: str, metavar: str, help_text: str, **options: Any) -> _Arg:
    return _Arg((flag,), {"required": True, "metavar": metavar, "help": help_text, **options})


@dataclass(frozen=True)
class _Command:
    name: str
    help: str
    details: str = ""
    args: tuple[_Arg, ...] = ()


#: What each command's --help ends with: an example or two (the long notes are the top --help's).
_EXAMPLES: dict[str, str] = {
    "register": "smsledger register 312891245 --send-at 2026-12-01T10:00 --label spring\n"
    "  smsledger register --from spring.csv",
    "send": "smsledger send --sender ACME --to 905551112233 --text 'Hello' --at 2026-12-01T10:00",
    "cancel": "smsledger cancel 312891245 312891246 --wait 60\n"
    "  smsledger cancel --label spring --dry-run",
    "status": "smsledger status 312891245 --json",
    "list": "smsledger list --label spring --from 2026-12-01T09:00 --until 2026-12-01T12:00",
    "summary": "smsledger summary --label spring --json",
    "history": "smsledger history 312891245",
    "logs": "smsledger logs --level warning --since 1h\n"
    "  smsledger logs --order 312891245 --include-rotated",
    "run": "smsledger --config /etc/smsledger/smsledger.toml run",
    "check": "smsledger check",
    "migrate": "smsledger --config /etc/smsledger/smsledger.toml migrate",
    "alerts": "smsledger alerts --pending\n  smsledger alerts test",
    "reconcile": "smsledger reconcile --days 3 --dry-run",
    "margins": "smsledger margins --days 7 --json",
    "resolve": "smsledger resolve 312891245 --as cancelled --note 'panel shows it cancelled'",
    "backup": "smsledger backup /var/backups/smsledger-$(date +%F).db",
}
_SEE_TOP = "WHEN formats, where the config is found and exit codes: smsledger --help"


def _epilog(name: str) -> str:
    """A command's help ends with its example (a test holds every command to having one)."""
    example = _EXAMPLES.get(name)
    return f"example:\n  {example}\n\n{_SEE_TOP}" if example else _SEE_TOP


def _version() -> str:
    try:
        return metadata.version("smsledger")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


_IYS_HELP = "1 commercial (default), 0 transactional"
_ORDER_ID = _arg("order_id", metavar="ORDER_ID")
_LABEL = _arg("--label", metavar="TEXT", help="a note shown with the order")
_JSON_OBJECT = _arg("--json", action="store_true", help="print a JSON object")
_JSON_ARRAY = _arg("--json", action="store_true", help="print a JSON array")

#: Every command but `sandbox` and `demo`, in the order `--help` lists them.
_COMMANDS: tuple[_Command, ...] = (
    _Command(
        "register",
        "record an order already scheduled at the provider",
        "One order: ORDER_ID --send-at WHEN. A campaign: --from FILE (- for stdin), CSV with a\n"
        'header (order_id,send_at[,label]) or JSON lines ({"order_id", "send_at", "label"}),\n'
        "told apart by the content. Every line is checked first: any bad line registers\n"
        "nothing and exits 2, listing 'line N: what is wrong'; --skip-invalid registers the\n"
        "good lines and lists the bad (exit 0). Lines already registered with the same time\n"
        "count as already registered, so an import can be run again.",
        args=(
            _arg("order_id", nargs="?", metavar="ORDER_ID"),
            _arg("--send-at", metavar="WHEN", help="its send time"),
            _arg(
                "--label",
                metavar="TEXT",
                help="a note shown with the order (with --from: for lines without one)",
            ),
            _arg(
                "--from",
                dest="source",
                metavar="FILE",
                help="register every order in FILE (- for stdin)",
            ),
            _arg(
                "--skip-invalid",
                action="store_true",
                help="with --from: register the good lines, list the bad ones",
            ),
        ),
    ),
    _Command(
        "send",
        "schedule an SMS at the provider and record it",
        "Prints only the new order id on stdout (id=$(smsledger send ...)), and logs it as\n"
        "send_accepted, before writing it to the ledger; if that write fails, the error says\n"
        "how to register the order by hand (exit 1). The ledger is opened, and the send time\n"
        "checked (whole minute, in the future), before the provider is called.",
        (
            _required("--sender", "NAME", "approved sender name"),
            _required(
                "--to",
                "NUMBER[,NUMBER...]",
                "recipients (comma-separated; may be repeated)",
                action="append",
            ),
            _required("--text", "TEXT", "the message"),
            _required("--at", "WHEN", "send time, on a whole minute, in the future"),
            _arg("--iys", choices=("0", "1"), default="1", help=_IYS_HELP),
            _arg(
                "--iys-list",
                type=str.upper,
                choices=("BIREYSEL", "TACIR"),
                default=None,
                help="IYS recipient list for --iys 1 (default BIREYSEL)",
            ),
            _LABEL,
        ),
    ),
    _Command(
        "cancel",
        "ask for orders to be cancelled (the daemon sends it)",
        "Give order ids, or --label for every order of a campaign. Prints each order's state\n"
        "(with --label, the count of each outcome). Exit 0 when every order is\n"
        "cancel_requested, cancelling or cancelled (with --wait: cancelled); 1 when one was\n"
        "refused, is too late, not found, needs attention, was dispatched or is not final when\n"
        "--wait runs out; 2 when an order id is not in the ledger (the other ids are still\n"
        "handled). --json prints one object: the count of each outcome (requested, warned,\n"
        "refused, already, final, unknown) and orders: [{order_id, state, outcome}].",
        (
            _arg("order_ids", nargs="*", metavar="ORDER_ID"),
            _arg(
                "--label",
                metavar="LABEL",
                help="cancel every order with this label (instead of ids)",
            ),
            _arg(
                "--dry-run",
                action="store_true",
                help="say what would happen now and write nothing",
            ),
            _JSON_OBJECT,
            _arg(
                "--wait",
                type=seconds,
                metavar="SECONDS",
                help="wait up to SECONDS for every order to reach a final state; exit 0 only if "
                "all are cancelled",
            ),
        ),
    ),
    _Command("status", "show one order", args=(_ORDER_ID, _JSON_OBJECT)),
    _Command(
        "list",
        "list orders by send time",
        args=(
            _arg(
                "--state",
                metavar="STATE",
                help=f"only orders in this state ({', '.join(s.value for s in OrderState)})",
            ),
            _arg("--label", metavar="LABEL", help="only orders with this label"),
            _arg(
                "--from", dest="send_from", metavar="WHEN", help="only orders sent at or after WHEN"
            ),
            _arg("--until", metavar="WHEN", help="only orders sent before WHEN"),
            _arg(
                "--limit",
                type=_count,
                metavar="N",
                help="at most N orders (the first by send time)",
            ),
            _JSON_ARRAY,
        ),
    ),
    _Command(
        "summary",
        "count each label's orders by state",
        "One line per label (orders without one last): how many orders are in each state, the\n"
        "next send time still to come, and AT RISK: cancels asked for but not settled yet whose\n"
        "dispatch is inside the warn margin. --json prints an array of\n"
        '{"label", "states": {state: count}, "next_send_at", "at_risk"}.',
        (_arg("--label", metavar="LABEL", help="only this label"), _JSON_ARRAY),
    ),
    _Command(
        "history", "show an order's state changes, oldest first", args=(_ORDER_ID, _JSON_ARRAY)
    ),
    _Command(
        "logs",
        "show the JSON-lines log (all filters must match)",
        "One aligned line per event: local time, level, event, order id, other key=value\n"
        "pairs; --json prints the matching lines unchanged. Lines that are not JSON are\n"
        "skipped and counted on stderr. --follow prints the matching lines so far, then new\n"
        "ones, across truncation and rotation, until Ctrl-C (exit 130). An empty or missing\n"
        "log is not an error (exit 0).",
        (
            _arg("--order", metavar="ID", help="only events of this order"),
            _arg("--event", metavar="NAME", help="only events of this name"),
            _arg(
                "--level", metavar="LEVEL", help=f"this level or more severe ({', '.join(LEVELS)})"
            ),
            _arg(
                "--since",
                metavar="WHEN",
                help="only events at or after WHEN, or 30s, 10m, 2h, 1d ago",
            ),
            _arg(
                "--follow",
                action="store_true",
                help="print the matching events, then new ones as they are written (Ctrl-C stops)",
            ),
            _arg("--json", action="store_true", help="print the matching lines unchanged"),
            _arg(
                "--include-rotated",
                action="store_true",
                help="read the rotated logs first, oldest first (LOG.2.gz, LOG.1, then LOG)",
            ),
        ),
    ),
    _Command(
        "run",
        "run the daemon that sends and verifies cancels",
        args=(
            _arg("--once", action="store_true", help="do one pass and exit"),
            _arg(
                "--metrics",
                type=listen_address,
                metavar="HOST:PORT",
                help="serve /metrics, /healthz and /readyz there (default [metrics] listen)",
            ),
        ),
    ),
    _Command(
        "check",
        "check the config, the ledger and the provider credentials",
        "--offline makes no provider call (credentials are only checked to be set): for a\n"
        "service manager's start check, which a provider outage must not fail.",
        (_arg("--offline", action="store_true", help="do not call the provider"),),
    ),
    _Command(
        "alerts",
        "list recent alerts and how their delivery stands, or send a test alert",
        "'smsledger alerts test' sends one test alert to [alerts] webhook_url now and prints\n"
        "the receiver's answer (exit 1 when it failed).",
        (
            _arg("action", nargs="?", choices=("test",), help="test: send a test alert now"),
            _arg("--pending", action="store_true", help="only alerts not delivered yet"),
            _arg("--limit", type=int, default=50, metavar="N", help="at most N (default 50)"),
            _JSON_ARRAY,
        ),
    ),
    _Command(
        "migrate",
        "upgrade the ledger's schema to this smsledger's revision",
        "Every command upgrades the ledger when it opens it; this does only that, e.g. before\n"
        "starting daemons on several hosts. A ledger written by a newer smsledger is refused\n"
        "(exit 1).",
    ),
    _Command(
        "margins",
        "say how early the provider queues orders, and whether refuse_before is long enough",
        "From the get-report answers the daemon kept (and its probes): the longest lead seen,\n"
        "the leads of closed brackets, suggested margins and a verdict. Exit 1 when the\n"
        "verdict is refuse_before_too_small (a monitor can run it), else 0.",
        (
            _arg(
                "--days",
                type=days,
                default=30.0,
                metavar="N",
                help="judge the observations of the last N days (default 30)",
            ),
            _JSON_OBJECT,
        ),
    ),
    _Command(
        "reconcile",
        "bring the ledger in line with the provider's order list (never cancels)",
        "Reads every order the provider created in the last --days days (get-reports, confirmed\n"
        "by get-report): imports future orders the ledger does not know (label\n"
        "[reconcile] import_label), marks orders cancelled outside smsledger, records delivery\n"
        "counters of past orders, warns about orders the provider does not list\n"
        "(reconcile_missing) and send times that differ (send_time_mismatch). Running it again\n"
        "changes nothing. A provider error ends it with exit 1, keeping what was done.",
        (
            _arg(
                "--days",
                type=positive_int,
                metavar="N",
                help="creation days to read, up to today (default [reconcile] days, 10)",
            ),
            _arg("--dry-run", action="store_true", help="only say what would change"),
            _JSON_OBJECT,
        ),
    ),
    _Command(
        "backup",
        "copy a SQLite ledger consistently, also while daemons run",
        "Uses SQLite's online backup API (copying the .db file alone is unsafe in WAL mode):\n"
        "the copy is one snapshot, checked, then renamed to PATH, which must not exist. For a\n"
        "PostgreSQL ledger use pg_dump (exit 2 says how).",
        (_arg("path", metavar="PATH", help="the new file"),),
    ),
    _Command(
        "resolve",
        "settle a needs_attention order by hand (never calls the provider)",
        "For an order a person has checked (the provider's panel, the recipients). Only a\n"
        "needs_attention order can be resolved; any other is exit 2, naming its state. The\n"
        "history keeps the note and who resolved it.",
        (
            _ORDER_ID,
            _required(
                "--as",
                "STATE",
                "how it ended: cancelled, too_late or not_found",
                dest="to_state",
                choices=("cancelled", "too_late", "not_found"),
            ),
            _required("--note", "TEXT", "what was checked, and where"),
            _arg("--by", metavar="NAME", help="who resolves it (default: the OS user)"),
        ),
    ),
)


def _add_common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--config and --debug, accepted before the command and after it."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None if top else argparse.SUPPRESS,
        help="config file (default: $SMSLEDGER_CONFIG, else ./smsledger.toml, "
        "~/.config/smsledger/smsledger.toml, /etc/smsledger/smsledger.toml)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="show the traceback of an error",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command (the sandbox's own options are added when it runs).

    Each command's parser is its namespace's ``command_parser``, for errors found after parsing.
    """
    parser = Parser(
        prog="smsledger",
        allow_abbrev=False,
        description="Keep future-scheduled iletiMerkezi SMS orders safe to cancel.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(parser, top=True)
    parser.add_argument("--version", action="version", version=f"smsledger {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _COMMANDS:
        sub = commands.add_parser(
            command.name,
            help=command.help,
            description=f"{command.help}.\n\n{command.details}"
            if command.details
            else command.help,
            epilog=_epilog(command.name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
        )
        _add_common(sub, top=False)
        for arg in command.args:
            sub.add_argument(*arg.flags, **arg.options)
        sub.set_defaults(command_parser=sub)
    commands.add_parser(
        "sandbox",
        help="run a local stand-in for the iletiMerkezi API (see 'smsledger sandbox --help')",
        add_help=False,  # its --help is the sandbox's own
    )
    demo = commands.add_parser("demo", help="show a cancel end to end against a local sandbox")
    demo.set_defaults(command_parser=demo)
    return parser
