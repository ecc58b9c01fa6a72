"""`Ledger`: the library calls other programs use to register orders and ask for cancels."""

from __future__ import annotations

import getpass
import os
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy.engine import Connection, Engine

from ledger._clock import ensure_aware, utcnow
from ledger._log import get_logger
from ledger.config import Config, find_config_path, load_config
from ledger.errors import (
    CancelNotPossible,
    CancelRefused,
    InvalidInput,
    NoLedger,
    NotResolvable,
    OrderNotFound,
    RegistrationConflict,
)
from ledger.logsetup import configure_logging
from ledger.margins import DEFAULT_REFUSE_BEFORE, DEFAULT_WARN_BEFORE, Margins, Window
from ledger.models import ORDER_ID_MAX, Event, Order
from ledger.outbox import AlertPolicy
from ledger.schema import current_revision, upgrade
from ledger.states import RESOLVABLE, OrderState
from ledger.store import ConcurrentRegistration, Store, TransitionResult, display_url

__all__ = [
    "LABEL_MAX",
    "NOTE_MAX",
    "Ledger",
    "check_label",
    "check_order_id",
    "is_control",
    "os_user",
]

log = get_logger("smsledger.ledger")

LABEL_MAX = 200
#: The ledger a `Ledger()` given neither a URL nor an engine opens.
DEFAULT_URL = "sqlite:///smsledger.db"
#: The longest note (and name) `Ledger.resolve` keeps.
NOTE_MAX = 1000
#: Unicode categories `is_control` refuses in labels and the command escapes when printing.
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
#: A registration that lost a race to another process (PostgreSQL only) decides again this often.
_REGISTER_TRIES = 3
#: The reason recorded for a new order.
_REGISTERED = "registered"
_T = TypeVar("_T")
#: Asking again for a cancel that is already under way (or done) changes nothing.
_ALREADY_CANCELLING = frozenset(
    {OrderState.CANCEL_REQUESTED, OrderState.CANCELLING, OrderState.CANCELLED}
)


def check_order_id(order_id: object) -> str:
    """Return the order id as text, refusing what no provider id can be."""
    if isinstance(order_id, int) and not isinstance(order_id, bool):
        order_id = str(order_id)
    if not isinstance(order_id, str):
        raise InvalidInput(f"order id must be text, got {type(order_id).__name__}")
    text = order_id.strip()
    if not text:
        raise InvalidInput("order id is empty")
    if len(text) > ORDER_ID_MAX:
        raise InvalidInput(
            f"order id {text[:20]}... is {len(text)} characters long; at most {ORDER_ID_MAX}"
        )
    if not text.isprintable() or " " in text:  # isprintable() is False for other spaces
        raise InvalidInput(f"order id {text!r} contains spaces or control characters")
    return text


def is_control(char: str) -> bool:
    """Whether `char` acts on a terminal or a line instead of showing as a glyph.

    Control characters (newline, ESC, DEL, C1), format characters (bidi overrides such as
    U+202E, zero-width ones), line and paragraph separators, and lone surrogates: a label made
    of them could forge a table row or drive the terminal of whoever lists the ledger.
    """
    return unicodedata.category(char) in _CONTROL_CATEGORIES


def check_label(label: str | None, *, what: str = "label", most: int = LABEL_MAX) -> str | None:
    """Return the label, refusing one that is not text, too long, or holds control characters."""
    if label is None:
        return None
    if not isinstance(label, str):
        raise InvalidInput(f"{what} must be text, got {type(label).__name__}")
    if len(label) > most:
        raise InvalidInput(f"{what} is {len(label)} characters long; at most {most}")
    for n, char in enumerate(label):
        if is_control(char):
            raise InvalidInput(
                f"{what} contains the control character U+{ord(char):04X} at position {n + 1}; "
                f"a {what} must be plain text on one line"
            )
    return label


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
    ) -> int:
        """Register many orders in one transaction; return how many were new.

        All or nothing: one bad item (naive time, bad id, an id already registered for another
        time) fails the whole batch and leaves the ledger unchanged.
        """
        default_label = check_label(label)
        batch: dict[str, tuple[str, datetime, str | None]] = {}
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
            if seen is not None and seen[1] != when:
                raise RegistrationConflict(oid, seen[1], when)
            batch[oid] = (oid, when, item_label)
        if not batch:
            return 0

        def decide(conn: Connection, now: datetime) -> tuple[list[str], int]:
            existing = self.store.existing_send_times(conn, list(batch))
            for oid, when in existing.items():
                if batch[oid][1] != when:
                    raise RegistrationConflict(oid, when, batch[oid][1])
            new = [row for oid, row in batch.items() if oid not in existing]
            self._refuse_past([(oid, when) for oid, when, _ in new], now)
            self.store.insert_new(conn, new, now, _REGISTERED)
            return [oid for oid, _when, _label in new], len(existing)

        new_ids, known = self._register_retrying(decide)
        self.store.log_registered(new_ids, _REGISTERED)
        log.info("orders_registered", count=len(new_ids), already_known=known)
        return len(new_ids)

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
    def _refuse_past(items: Sequence[tuple[str, datetime]], now: datetime) -> None:
        for oid, when in items:
            if when <= now:
                raise InvalidInput(
                    f"order {oid}: send time {when.isoformat()} is not in the future; "
                    "there is nothing left to cancel"
                )

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
            left = order.seconds_left(now)
            if order.state in _ALREADY_CANCELLING:
                return order
            if order.state in (OrderState.CANCEL_REFUSED, OrderState.DISPATCHED):
                raise CancelRefused(order, left)
            if order.state is not OrderState.SCHEDULED:
                raise CancelNotPossible(order)  # too_late / not_found / needs_attention
            where = self.margins.window(order.send_at, now)
            if where in (Window.REFUSE, Window.PAST):
                result = self._refuse(order, now)
                if result.applied and result.order is not None:
                    raise CancelRefused(result.order, left)
                continue
            result = self.store.transition(
                oid,
                OrderState.SCHEDULED,
                OrderState.CANCEL_REQUESTED,
                now=now,
                reason="cancel requested",
                details={"seconds_left": round(left, 3)},
                values={"cancel_requested_at": now},
            )
            if not result.applied:
                continue
            if where is Window.WARN:
                log.warning(
                    "cancel_close_to_dispatch",
                    order_id=oid,
                    seconds_left=round(left, 3),
                    warn_before_seconds=self.warn_before.total_seconds(),
                )
            assert result.order is not None
            return result.order
        raise InvalidInput(f"order {oid} kept changing state; try again")  # pragma: no cover

    def _refuse(self, order: Order, now: datetime) -> TransitionResult:
        return self.store.transition(
            order.order_id,
            OrderState.SCHEDULED,
            OrderState.CANCEL_REFUSED,
            now=now,
            reason=self.margins.refusal(order.send_at, now),
            details={"seconds_left": round(order.seconds_left(now), 3)},
            values={"cancel_requested_at": now},
        )

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
    ) -> list[Order]:
        """Orders ordered by send time; filter by state(s) and a send-time range [after, before)."""
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
        return self.store.orders(states=states, send_after=after, send_before=before, limit=limit)
