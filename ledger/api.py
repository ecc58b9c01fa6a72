"""`Ledger`: the library calls other programs use to register orders and ask for cancels."""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine

from ledger._clock import ensure_aware, utcnow
from ledger._log import get_logger
from ledger.campaigns import LabelSummary
from ledger.cancels import (
    REQUESTED_REASON,
    CancelDecider,
    CancelDecision,
    Cancellable,
    CancelOutcome,
    CancelResult,
    CancelSummary,
    decide_cancel,
    refusal,
)
from ledger.config import Config, find_config_path, load_config
from ledger.errors import (
    InvalidInput,
    NoLedger,
    NotResolvable,
    OrderNotFound,
    RegistrationConflict,
)
from ledger.inputs import LABEL_MAX, check_future, check_label, check_order_id, is_control
from ledger.logsetup import configure_logging
from ledger.margins import DEFAULT_REFUSE_BEFORE, DEFAULT_WARN_BEFORE, Margins
from ledger.models import Event, Order
from ledger.outbox import AlertPolicy
from ledger.schema import current_revision, upgrade
from ledger.states import FINAL_STATES, RESOLVABLE, OrderState
from ledger.store import (
    Brief,
    BulkChange,
    BulkMismatch,
    Change,
    ConcurrentRegistration,
    Store,
    display_url,
    seconds_left_detail,
)

__all__ = [
    "CANCEL_BATCH",
    "LABEL_MAX",
    "NOTE_MAX",
    "Ledger",
    "Registered",
    "check_future",
    "check_label",
    "check_order_id",
    "is_control",
    "os_user",
]

log = get_logger("smsledger.ledger")

#: The ledger a `Ledger()` given neither a URL nor an engine opens.
DEFAULT_URL = "sqlite:///smsledger.db"
#: The longest note (and name) `Ledger.resolve` keeps.
NOTE_MAX = 1000
#: A registration that lost a race to another process (PostgreSQL only) decides again this often.
_REGISTER_TRIES = 3
#: Orders one transaction of `Ledger.request_cancel_many` decides and writes: a campaign of
#: 100,000 holds the write lock 20 times for about 40 ms each (bench/bulk_cancel.py) instead of
#: once for a second; a daemon's claim waits at most that long. 2,000 a batch cost 15% more.
CANCEL_BATCH = 5000
#: The reason recorded for a new order.
_REGISTERED = "registered"
_T = TypeVar("_T")


class Registered(int):
    """How many orders `Ledger.register_many` registered anew (an int, as it always was), with
    `already`: how many items were already registered with the same time, or repeated."""

    already: int

    def __new__(cls, new: int, *, already: int = 0) -> Registered:
        value = super().__new__(cls, new)
        value.already = already
        return value

    def __repr__(self) -> str:
        return f"Registered({int(self)}, already={self.already})"


def os_user() -> str:
    """Who runs this process, as the OS knows them ("unknown" when it cannot tell)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name, no passwd entry (containers)
        return "unknown"


def _new_order(
    order_id: str, send_at: datetime, label: str | None, now: datetime, reason: str
) -> Order:
    """The order as `Store.insert_new` writes it: scheduled, unclaimed, nothing attempted."""
    return Order(
        order_id=order_id,
        send_at=send_at,
        state=OrderState.SCHEDULED,
        label=label,
        reason=reason,
        cancel_requested_at=None,
        cancel_attempts=0,
        check_attempts=0,
        last_provider_code=None,
        warned_at=None,
        claim_owner=None,
        claim_expires_at=None,
        created_at=now,
        updated_at=now,
    )


class Ledger:
    """The durable record of scheduled orders; safe to use from several processes at once.

    `warn_before` and `refuse_before` are the local margins before dispatch: inside the first a
    cancel is accepted with a warning, inside the second it is refused without calling the
    provider.

    `url` is a SQLAlchemy URL: ``sqlite:///path`` (the embedded default) or
    ``postgresql+psycopg://user@host/db`` for a ledger shared by daemons on several hosts. Opening
    brings the schema to the newest revision (see `ledger.schema`) or raises `SchemaTooNew`;
    ``create=False`` skips that for a ledger known to be current. ``must_exist=True`` (what the
    command's reading commands use) raises `NoLedger` instead of creating a ledger where there
    is none: no SQLite file is made, and an empty database is not given the schema.

    ``engine`` instead of `url`: an application's SQLAlchemy `Engine` (SQLite or PostgreSQL). The
    ledger shares its pool, leaves its connections' settings alone (`synchronous` and
    `busy_timeout` are then the engine's business) and never disposes it: `close` only lets go.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        engine: Engine | None = None,
        warn_before: timedelta = DEFAULT_WARN_BEFORE,
        refuse_before: timedelta = DEFAULT_REFUSE_BEFORE,
        synchronous: str = "FULL",
        busy_timeout: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
        create: bool = True,
        must_exist: bool = False,
    ) -> None:
        self.margins = Margins(warn_before, refuse_before)
        self._clock = clock
        if url is not None and engine is not None:
            raise InvalidInput("give the ledger a URL or an engine, not both")
        self.store = Store(
            DEFAULT_URL if url is None else url,
            synchronous=synchronous,
            busy_timeout=busy_timeout,
            must_exist=must_exist,
            engine=engine,
        )
        try:
            if must_exist:
                self._require_ledger()
            if create:
                upgrade(self.store)
        except BaseException:
            self.store.dispose()
            raise

    def _require_ledger(self) -> None:
        with self.store.read() as conn:
            found = current_revision(conn)
        if found is None:
            raise NoLedger(
                f"no ledger exists at {display_url(self.store.url)} (the database holds no "
                "ledger tables); check ledger.url, or create one with 'smsledger migrate'"
            )

    @classmethod
    def from_config(
        cls,
        path: str | os.PathLike[str] | Config | None = None,
        *,
        setup_logging: bool = False,
        clock: Callable[[], datetime] = utcnow,
        must_exist: bool = False,
    ) -> Ledger:
        """Open the ledger a config file describes.

        Logging is the application's: only ``setup_logging=True`` (what a program that wants the
        command's JSON-lines file asks for) configures it, for the whole process, from ``[log]``.
        """
        config = path if isinstance(path, Config) else load_config(find_config_path(path))
        if setup_logging:
            configure_logging(config.log, secrets=(config.api.key, config.api.hash))
        ledger = cls(
            config.ledger.url,
            warn_before=config.windows.warn_before,
            refuse_before=config.windows.refuse_before,
            synchronous=config.ledger.synchronous,
            busy_timeout=config.ledger.busy_timeout_seconds,
            clock=clock,
            must_exist=must_exist,
        )
        if config.alerts.enabled:
            ledger.store.alerts = AlertPolicy(frozenset(config.alerts.events))
        return ledger

    @property
    def warn_before(self) -> timedelta:
        return self.margins.warn_before

    @property
    def refuse_before(self) -> timedelta:
        return self.margins.refuse_before

    def now(self) -> datetime:
        """The ledger's clock: aware UTC."""
        return self._clock()

    def close(self) -> None:
        self.store.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({display_url(self.store.url)!r})"

    # -- registration --------------------------------------------------------------------------

    def register(
        self,
        order_id: str,
        send_at: datetime,
        label: str | None = None,
        *,
        reason: str = _REGISTERED,
    ) -> Order:
        """Record a scheduled order; registering the same id and time again changes nothing.

        `reason` is the registration's history reason (reconcile's is "imported from provider").
        """
        oid = check_order_id(order_id)
        when = ensure_aware(send_at, "send_at")
        label = check_label(label)

        def decide(conn: Connection, now: datetime) -> tuple[Order, bool]:
            existing = self.store.get(oid, conn)
            if existing is not None:
                if existing.send_at != when:
                    raise RegistrationConflict(oid, existing.send_at, when)
                return existing, False
            self._refuse_past([(oid, when)], now)
            self.store.insert_new(conn, [(oid, when, label)], now, reason)
            return _new_order(oid, when, label, now, reason), True

        order, is_new = self._register_retrying(decide)
        if is_new:
            self.store.log_registered([oid], reason)
        return order

    def register_many(
        self,
        orders: Iterable[tuple[str, datetime] | tuple[str, datetime, str | None]],
        *,
        label: str | None = None,
    ) -> Registered:
        """Register many orders in one transaction; return how many were new.

        The count is an int; its `already` says how many items were registered before with the
        same time, or repeated an earlier item of `orders` (idempotent: they change nothing).
        All or nothing: one bad item (naive time, bad id, an id already registered for another
        time) fails the whole batch and leaves the ledger unchanged.
        """
        default_label = check_label(label)
        batch: dict[str, tuple[str, datetime, str | None]] = {}
        repeated = 0
        for n, item in enumerate(orders):
            if not isinstance(item, tuple) or len(item) not in (2, 3):
                raise InvalidInput(f"item {n} must be (order_id, send_at[, label]), got {item!r}")
            oid = check_order_id(item[0])
            when = ensure_aware(item[1], f"send_at of order {oid}")
            try:
                item_label = check_label(item[2]) if len(item) == 3 else default_label
            except InvalidInput as exc:
                raise InvalidInput(f"order {oid}: {exc}") from None
            seen = batch.get(oid)
            if seen is not None:
                if seen[1] != when:
                    raise RegistrationConflict(oid, seen[1], when)
                repeated += 1
            batch[oid] = (oid, when, item_label)
        if not batch:
            return Registered(0, already=repeated)

        def decide(
            conn: Connection, now: datetime
        ) -> tuple[list[tuple[str, datetime, str | None]], int]:
            existing = self.store.existing_send_times(conn, list(batch))
            for oid, when in existing.items():
                if batch[oid][1] != when:
                    raise RegistrationConflict(oid, when, batch[oid][1])
            new = [row for oid, row in batch.items() if oid not in existing]
            self._refuse_past([(oid, when) for oid, when, _ in new], now)
            self.store.insert_new(conn, new, now, _REGISTERED)
            return new, len(existing)

        new, known = self._register_retrying(decide)
        self._log_registered(new, known)
        return Registered(len(new), already=known + repeated)

    def _register_retrying(self, decide: Callable[[Connection, datetime], _T]) -> _T:
        """Run `decide` in one write transaction at the ledger's `now`; again when it lost a race.

        A registration that lost a race to another process (PostgreSQL only) is rolled back; the
        other process's rows are committed by then, so deciding again sees them.
        """
        for attempt in range(_REGISTER_TRIES):
            now = self.now()
            try:
                with self.store.write() as conn:
                    return decide(conn, now)
            except ConcurrentRegistration:
                if attempt + 1 == _REGISTER_TRIES:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _log_registered(new: Sequence[tuple[str, datetime, str | None]], known: int) -> None:
        """One summary line per bulk call: a line per order cost more than the insert itself.

        Each order's registration stays in its history (and `smsledger logs --order` reads it
        from there).
        """
        fields: dict[str, Any] = {"count": len(new), "already_known": known}
        if new:
            labels = sorted({label or "" for _, _, label in new})
            fields["label"] = labels[0] or None if len(labels) == 1 else None
            if len(labels) > 1:
                fields["labels"] = [label or None for label in labels]
            times = [when for _, when, _ in new]
            fields["first_send_at"] = min(times).astimezone(UTC).isoformat()
            fields["last_send_at"] = max(times).astimezone(UTC).isoformat()
        log.info("orders_registered", **fields)

    @staticmethod
    def _refuse_past(items: Sequence[tuple[str, datetime]], now: datetime) -> None:
        for oid, when in items:
            check_future(oid, when, now)

    # -- cancels -------------------------------------------------------------------------------

    def request_cancel(self, order_id: str) -> Order:
        """Ask for a cancel; the daemon sends it. Margins are applied at the moment of the call.

        Returns the order in ``cancel_requested`` (or unchanged when a cancel is already under way
        or finished: ours is idempotent even though the provider's is not). Raises `CancelRefused`
        inside the refuse margin or past dispatch (and for ``cancel_refused`` and ``dispatched``
        orders), `CancelNotPossible` (its parent) for an order that ended ``too_late``,
        ``not_found`` or ``needs_attention``, `OrderNotFound` for an unknown id. A normal return
        always means the order is cancelled or on its way to being cancelled.
        """
        oid = check_order_id(order_id)
        for _ in range(3):  # a lost race means the state moved: decide again on the new state
            now = self.now()
            order = self.store.get(oid)
            if order is None:
                raise OrderNotFound(oid)
            decision = self._decide(order, now)
            if decision.to_state is None:  # already under way, or final
                error = refusal(order, decision.outcome, decision.seconds_left)
                if error is not None:
                    raise error
                return order
            assert decision.to_state is not None and decision.reason is not None
            result = self.store.transition(
                oid,
                OrderState.SCHEDULED,
                decision.to_state,
                now=now,
                reason=decision.reason,
                details={"seconds_left": seconds_left_detail(order.send_at, now)},
                values={"cancel_requested_at": now},
            )
            if not result.applied:
                continue
            assert result.order is not None
            error = refusal(result.order, decision.outcome, decision.seconds_left)
            if error is not None:
                raise error
            if decision.outcome is CancelOutcome.WARNED:
                self._log_close_to_dispatch(oid, decision.seconds_left)
            return result.order
        raise InvalidInput(f"order {oid} kept changing state; try again")  # pragma: no cover

    def _decide(self, order: Cancellable, now: datetime) -> CancelDecision:
        return decide_cancel(order, now, self.margins)

    def _log_close_to_dispatch(self, order_id: str, seconds_left: float) -> None:
        log.warning(
            "cancel_close_to_dispatch",
            order_id=order_id,
            seconds_left=round(seconds_left, 3),
            warn_before_seconds=self.warn_before.total_seconds(),
        )

    def request_cancel_many(
        self,
        order_ids: Iterable[str] | None = None,
        *,
        label: str | None = None,
        dry_run: bool = False,
    ) -> CancelSummary:
        """Ask for the cancel of many orders: the given ids, or every order with `label`.

        Each order is decided exactly as `request_cancel` decides it (same margins, same states,
        same history rows), in batches of at most `CANCEL_BATCH` orders, each batch one
        transaction; a batch sees its orders locked, so no other process changes them between
        the decision and the write. Unknown ids are counted, not raised. With `dry_run` nothing
        is written: the summary says what would happen now. `InvalidInput` (nothing written)
        for a bad id or label, or for neither or both of `order_ids` and `label`.
        """
        if (order_ids is None) == (label is None):
            raise InvalidInput("give either order ids or a label, not both and not neither")
        results: list[CancelResult] = []
        if order_ids is not None:
            if isinstance(order_ids, str):
                raise InvalidInput("order_ids must be a list of ids, not one string")
            ids = list(dict.fromkeys(check_order_id(oid) for oid in order_ids))
            for start in range(0, len(ids), CANCEL_BATCH):
                chunk = ids[start : start + CANCEL_BATCH]
                found = {r.order_id: r for r in self._cancel_batch(chunk, None, dry_run)}
                results += [
                    found.get(oid) or CancelResult(oid, CancelOutcome.UNKNOWN, None, None)
                    for oid in chunk
                ]
        else:
            wanted = check_label(label)
            assert wanted is not None
            after = ""
            while batch := self._cancel_batch(None, (wanted, after), dry_run):
                results += batch
                after = batch[-1].order_id
        summary = CancelSummary.of(results, dry_run=dry_run)
        log.info(
            "cancel_many_requested" if not dry_run else "cancel_many_dry_run",
            label=label,
            **{outcome.value: count for outcome, count in summary.counts.items()},
        )
        return summary

    def _cancel_batch(
        self, ids: list[str] | None, page: tuple[str, str] | None, dry_run: bool
    ) -> list[CancelResult]:
        """Decide and apply the cancels of one batch (ids, or a label page after an id)."""
        try:
            return self._cancel_batch_once(ids, page, dry_run, bulk=page is not None)
        except BulkMismatch:  # PostgreSQL: an order of the label registered meanwhile
            return self._cancel_batch_once(ids, page, dry_run, bulk=False)

    def _cancel_batch_once(
        self, ids: list[str] | None, page: tuple[str, str] | None, dry_run: bool, *, bulk: bool
    ) -> list[CancelResult]:
        """One try of `_cancel_batch`. With `bulk`, the orders outside the warn margin are
        requested set-based (`BulkChange`): `CancelDecider` would find each of them OPEN and
        request it, the same state, reason and details, so they skip the decision."""
        now = self.now()
        margins = self.margins
        decider = CancelDecider(now, margins)
        far = (
            BulkChange(
                OrderState.SCHEDULED,
                OrderState.CANCEL_REQUESTED,
                REQUESTED_REASON,
                send_after=now + margins.warn_before,  # `Margins.windows`: OPEN after this
            )
            if bulk
            else None
        )
        results: list[CancelResult] = []
        warned: list[tuple[str, float]] = []

        def decide(orders: list[Brief]) -> list[Change]:
            changes = []
            for order in orders:
                if far is not None and far.covers(order):
                    results.append(
                        CancelResult(
                            order.order_id,
                            CancelOutcome.REQUESTED,
                            OrderState.CANCEL_REQUESTED,
                            order.send_at,
                        )
                    )
                    continue
                decision = decider(order)
                state = decision.to_state or order.state
                results.append(CancelResult(order.order_id, decision.outcome, state, order.send_at))
                if decision.outcome is CancelOutcome.WARNED:
                    warned.append((order.order_id, decision.seconds_left))
                if decision.to_state is not None and decision.reason is not None:
                    changes.append(
                        Change(
                            order.order_id,
                            OrderState.SCHEDULED,
                            decision.to_state,
                            decision.reason,
                            {"seconds_left": seconds_left_detail(order.send_at, now)},
                        )
                    )
            return changes

        self.store.transition_batch(
            decide,
            order_ids=ids,
            label_page=page,
            limit=CANCEL_BATCH,
            now=now,
            values={"cancel_requested_at": now},
            dry_run=dry_run,
            bulk=far,
        )
        if not dry_run:
            for order_id, seconds_left in warned:
                self._log_close_to_dispatch(order_id, seconds_left)
        return results

    # -- settling by hand ----------------------------------------------------------------------

    def resolve(
        self, order_id: str, to_state: OrderState | str, *, note: str, by: str | None = None
    ) -> Order:
        """Settle a `needs_attention` order by hand as `cancelled`, `too_late` or `not_found`.

        A person looked (the provider's panel, the recipients) and says how it ended; the history
        row keeps their `note` and name (`by`, default the OS user). Never calls the provider.
        Raises `NotResolvable` (an `InvalidInput`) for an order in any other state,
        `InvalidInput` for another target state or an empty note, `OrderNotFound`.
        """
        oid = check_order_id(order_id)
        try:
            target = OrderState(to_state)
        except ValueError:
            target = None
        if target not in RESOLVABLE:
            choices = ", ".join(sorted(s.value for s in RESOLVABLE))
            raise InvalidInput(f"cannot resolve an order as {to_state!r}; choose {choices}")
        assert target is not None
        text = check_label(note, what="note", most=NOTE_MAX)
        if text is None or not text.strip():
            raise InvalidInput("a note is required: say what was checked and where")
        who = check_label(os_user() if by is None else by, what="name", most=LABEL_MAX)
        if who is None or not who.strip():
            raise InvalidInput("the name of who resolves it must not be empty")
        order = self.get(oid)
        if order.state is not OrderState.NEEDS_ATTENTION:
            raise NotResolvable(order)
        result = self.store.transition(
            oid,
            OrderState.NEEDS_ATTENTION,
            target,
            now=self.now(),
            reason=f"resolved by hand by {who.strip()}: {text.strip()}",
            details={"note": text.strip(), "by": who.strip(), "by_person": True},
            by_person=True,
        )
        if not result.applied:
            assert result.order is not None
            raise NotResolvable(result.order)
        assert result.order is not None
        return result.order

    # -- reads ---------------------------------------------------------------------------------

    def get(self, order_id: str) -> Order:
        """The order as it stands; `OrderNotFound` if the ledger does not know it."""
        oid = check_order_id(order_id)
        order = self.store.get(oid)
        if order is None:
            raise OrderNotFound(oid)
        return order

    def get_many(self, order_ids: Iterable[str]) -> dict[str, Order]:
        """The orders of these ids the ledger knows, by id; unknown ids are left out."""
        ids = list(dict.fromkeys(check_order_id(oid) for oid in order_ids))
        return self.store.orders_by_id(ids)

    def history(self, order_id: str) -> list[Event]:
        """Every state change of the order, oldest first (the registration included)."""
        oid = check_order_id(order_id)
        events = self.store.history(oid)
        if not events and self.store.get(oid) is None:
            raise OrderNotFound(oid)
        return events

    def orders(
        self,
        state: OrderState | str | Sequence[OrderState | str] | None = None,
        *,
        send_after: datetime | None = None,
        send_before: datetime | None = None,
        limit: int | None = None,
        label: str | None = None,
    ) -> list[Order]:
        """Orders ordered by send time; filter by state(s), label and a send-time range
        [after, before)."""
        states: list[OrderState] | None = None
        if state is not None:
            raw = [state] if isinstance(state, str) else list(state)
            try:
                states = [OrderState(s) for s in raw]
            except ValueError:
                known = ", ".join(s.value for s in OrderState)
                raise InvalidInput(f"unknown state in {raw!r}; states are: {known}") from None
        after = ensure_aware(send_after, "send_after") if send_after is not None else None
        before = ensure_aware(send_before, "send_before") if send_before is not None else None
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise InvalidInput(f"limit must be a whole number >= 0, got {limit!r}")
        return self.store.orders(
            states=states,
            send_after=after,
            send_before=before,
            limit=limit,
            label=check_label(label),
        )

    def summary(self, label: str | None = None) -> list[LabelSummary]:
        """Each label's orders by state, next send time and cancels at risk; by label, the
        unlabelled orders (label None) last. With `label`, only that label (if it has orders)."""
        now = self.now()
        rows = self.store.label_counts(
            now=now, edge=now + self.warn_before, label=check_label(label)
        )
        grouped: dict[str | None, list[tuple[OrderState, int, datetime | None, int]]] = {}
        for row_label, state, count, next_at, due in rows:
            grouped.setdefault(row_label, []).append((state, count, next_at, due))
        summaries = []
        for name in sorted(grouped, key=lambda n: (n is None, n or "")):
            states = dict.fromkeys(OrderState, 0)
            upcoming: list[datetime] = []
            at_risk = 0
            for state, count, next_at, due in grouped[name]:
                states[state] = count
                if state not in FINAL_STATES and next_at is not None:
                    upcoming.append(next_at)
                if state in (OrderState.CANCEL_REQUESTED, OrderState.CANCELLING):
                    at_risk += due
            summaries.append(LabelSummary(name, states, min(upcoming, default=None), at_risk))
        return summaries
