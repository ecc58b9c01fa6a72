"""The sandbox's command line: `smsledger sandbox` and `python -m scheduler.provider.sandbox`."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from scheduler.provider.sandbox.core import (
    DEFAULT_HASH,
    DEFAULT_KEY,
    DEFAULT_QUEUE_LEAD,
    DEFAULT_SEND_DURATION,
    Sandbox,
)
from scheduler.provider.sandbox.faults import Faults, _check_number, _endpoint_set
from scheduler.provider.sandbox.replies import NESTED_DEPTH
from scheduler.provider.wire import ENDPOINTS, PROVIDER_ZONE

__all__ = ["add_arguments", "run_from_args", "serve_until_signal"]


def _number_arg(upper: float) -> Callable[[str], float]:
    """An argparse type: a number in [0, upper], checked as `Faults` checks its fields."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        try:
            _check_number("the value", value, upper=upper)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return parse


_seconds = _number_arg(math.inf)
_share = _number_arg(1.0)


def _offset_arg(text: str) -> float:
    """An argparse type: a finite number of seconds, either sign."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _endpoints_arg(text: str) -> frozenset[str]:
    try:
        return _endpoint_set(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _zone_arg(text: str) -> ZoneInfo:
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown time zone {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sandbox's options to `parser` (used by `smsledger sandbox`)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    parser.add_argument("--key", default=DEFAULT_KEY, help="API key the sandbox accepts")
    parser.add_argument("--hash", default=DEFAULT_HASH, help="API hash the sandbox accepts")
    parser.add_argument(
        "--queue-lead",
        type=_seconds,
        default=DEFAULT_QUEUE_LEAD,
        metavar="SECONDS",
        help="how long before its send time an order enters the carrier queue (no more cancel)",
    )
    parser.add_argument(
        "--queue-lead-jitter",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="each order draws its own lead uniformly within --queue-lead +- this (default 0)",
    )
    parser.add_argument(
        "--send-duration",
        type=_seconds,
        default=DEFAULT_SEND_DURATION,
        metavar="SECONDS",
        help="how long an order spends sending after its send time",
    )
    parser.add_argument(
        "--zone",
        type=_zone_arg,
        default=PROVIDER_ZONE,
        help="time zone sendDateTime is read in (default Europe/Istanbul)",
    )
    faults = parser.add_argument_group("fault injection")
    faults.add_argument(
        "--latency", type=_seconds, default=0.0, metavar="SECONDS", help="delay every answer"
    )
    faults.add_argument(
        "--error-rate",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of requests answered 503, not done",
    )
    faults.add_argument(
        "--drop-rate",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of requests done but whose answer is lost (connection closed)",
    )
    faults.add_argument(
        "--garbage-rate",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of requests done but answered with an unreadable HTML page",
    )
    faults.add_argument(
        "--drip-rate",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of requests done but answered one byte every --drip-interval",
    )
    faults.add_argument(
        "--nested-rate",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help=f"share of requests done but answered with JSON nested {NESTED_DEPTH} deep",
    )
    faults.add_argument(
        "--huge-rate",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of requests done but answered with a body that never ends",
    )
    faults.add_argument(
        "--drip-interval",
        type=_seconds,
        default=0.5,
        metavar="SECONDS",
        help="seconds between the bytes of a dripped answer (default 0.5)",
    )
    faults.add_argument(
        "--clock-offset",
        type=_offset_arg,
        default=0.0,
        metavar="SECONDS",
        help="run the sandbox's clock this far ahead (negative: behind); sets the Date header",
    )
    faults.add_argument(
        "--fault-endpoints",
        type=_endpoints_arg,
        default=None,
        metavar="A,B",
        help=f"limit faults to these endpoints ({', '.join(ENDPOINTS)}; default all)",
    )
    faults.add_argument("--seed", type=int, default=None, help="seed of the fault generator")


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; return 0, or 1 when it cannot listen, 2 for bad faults.

    Must run on the main thread (it installs signal handlers, restored on return).
    """
    try:
        faults = Faults(
            latency=args.latency,
            error_rate=args.error_rate,
            drop_rate=args.drop_rate,
            garbage_rate=args.garbage_rate,
            endpoints=args.fault_endpoints,
            drip_rate=args.drip_rate,
            nested_rate=args.nested_rate,
            huge_rate=args.huge_rate,
            drip_interval=args.drip_interval,
            clock_offset=args.clock_offset,
        )
    except ValueError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    sandbox = Sandbox(
        args.host,
        args.port,
        key=args.key,
        hash=args.hash,
        queue_lead=args.queue_lead,
        queue_lead_jitter=args.queue_lead_jitter,
        send_duration=args.send_duration,
        zone=args.zone,
        faults=faults,
        seed=args.seed,
    )
    return serve_until_signal(sandbox, where=f"{args.host}:{args.port}")


def serve_until_signal(sandbox: Sandbox, *, where: str = "") -> int:
    """Start `sandbox`, print its URL, serve until SIGINT or SIGTERM, stop it; return the exit
    status (1 when it cannot listen). Main thread only: signal handlers are restored on return.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            sandbox.start()
        except OSError as exc:
            print(f"sandbox: cannot listen on {where or 'its address'}: {exc}", file=sys.stderr)
            return 1
        print(f"sandbox listening on {sandbox.url}", flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        sandbox.stop()
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
    return 0
