"""A local HTTP stand-in for the iletiMerkezi JSON API.

The sandbox answers the endpoints smsledger uses (send-sms, get-report, cancel-order,
get-balance, get-reports) with the provider's documented bodies and codes, moves every order
through the provider's lifecycle by an injectable clock, and misbehaves on request (latency,
503s, lost answers, unreadable answers) so that tests, benchmarks, ``smsledger demo`` and dry
runs meet the failures the real service produces. It keeps the truth -- what the provider really
did -- so a test can prove, for example, that no order was cancelled twice.

An order's life, by the sandbox's clock::

    state       while                                get-report    cancel-order
    pending     now < send_at - queue_lead           456           200 once, then 455
    sending     now < send_at + send_duration        200 / 113     455
    completed   afterwards                           200 / 114     455
    cancelled   after an accepted cancel             200 / 115     455

``queue_lead`` is one figure, or with ``queue_lead_jitter`` a distribution: each order draws its
own lead uniformly within ``queue_lead +- queue_lead_jitter`` (never below 0), from a generator of
its own seeded by ``seed``; the truth shows every order's ``queue_lead_seconds``.

Faults apply to provider endpoints only. For each request, in this order: a pending
``fail_next`` / ``drop_next`` / ``garbage_next`` / ``drip_next`` / ``nested_next`` /
``huge_next`` count for its endpoint wins; otherwise, when the endpoint is in ``Faults.endpoints``
(None: all of them), one draw of the seeded random generator picks an error (503, work not done),
a drop (work done, connection closed without an answer), garbage (work done, an HTML page with
HTTP 200), a drip (work done, the real answer written one byte every ``drip_interval``, head
included), a nested answer (work done, HTTP 200 with JSON nested `NESTED_DEPTH` deep) or a huge
one (work done, HTTP 200 with a body that never ends). ``latency`` delays every in-scope answer.
``clock_offset`` runs the sandbox's clock ahead of (or behind) the one it was given; every answer's
``Date`` header is read from it.

Control endpoints, for a sandbox running in its own process (no credentials, never faulted)::

    GET  /_sandbox/truth    the truth (see `Sandbox.truth`)
    GET  /_sandbox/faults   the current faults, as `Faults.to_dict`
    POST /_sandbox/faults   replace the faults: `Faults.to_dict` fields, plus an optional "seed"
    POST /_sandbox/orders   {"order_id": "...", "send_at": ISO-8601 with offset}: see `add_order`
    POST /_sandbox/panel/orders  {"send_at", "created_at"[, "recipients", "order_id"]}: an order
                            scheduled from the provider's panel, unknown to any ledger
                            (`add_panel_order`)
    POST /_sandbox/panel/cancel  {"order_id"}: cancel it in the panel (`cancel_in_panel`)
    POST /_sandbox/undelivered   {"order_id", "undelivered": n}: `set_undelivered`
    POST /_sandbox/listing  {"pending_status": 113 | 114 | 115}: what get-reports lists for
                            orders not yet due (default 113, the worst case: still cancellable)

get-reports lists orders by creation day in the sandbox's zone, 30 a page, `end` at most 10 days
after `start` (else 458), like the provider.

``python -m scheduler.provider.sandbox --help`` runs one from the shell; exit codes: 0 stopped by
SIGINT or SIGTERM, 1 could not listen, 2 bad arguments.

The package's modules: `core` (the `Sandbox`: orders, lifecycle, endpoints, truth), `faults`
(`Faults` and the checks of their values), `replies` (the answers, spoilt ones included),
`server` (the HTTP plumbing that writes them) and `cli` (the command line).
"""

from __future__ import annotations

from scheduler.provider.sandbox.cli import add_arguments, run_from_args
from scheduler.provider.sandbox.core import DEFAULT_HASH, DEFAULT_KEY, FIRST_ORDER_ID, Sandbox
from scheduler.provider.sandbox.faults import Faults
from scheduler.provider.sandbox.replies import HUGE_MAX_BYTES, NESTED_DEPTH
from scheduler.provider.wire import ENDPOINTS

__all__ = [
    "DEFAULT_HASH",
    "DEFAULT_KEY",
    "ENDPOINTS",
    "FIRST_ORDER_ID",
    "HUGE_MAX_BYTES",
    "NESTED_DEPTH",
    "Faults",
    "Sandbox",
    "add_arguments",
    "run_from_args",
]
