"""Daemon liveness in the ledger: one heartbeat row per daemon, written at the end of each pass.

`cancel` and `check` read them to say when no daemon has finished a pass lately (a cancel asked
then waits for a daemon that may never come). Times are the lease clock's (`Store.lease_now`:
the database's on PostgreSQL), so daemons and commands on different hosts compare one clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ledger.models import DaemonRow

if TYPE_CHECKING:
    from ledger.store import Store

__all__ = ["NO_DAEMON", "DaemonSeen", "beat", "daemons", "liveness_limit", "running"]

daemons_t: sa.Table = DaemonRow.__table__  # type: ignore[attr-defined]

#: What `cancel` and `check` say when no daemon finished a pass within `liveness_limit`.
NO_DAEMON = "no daemon is running: this cancel will not be sent"


def liveness_limit(poll_seconds: float) -> timedelta:
    """How long after its last pass a daemon still counts as running: 3 polls plus 10 s."""
    return timedelta(seconds=3 * poll_seconds + 10)


@dataclass(frozen=True)
class DaemonSeen:
    """One daemon's heartbeat row."""

    owner: str
    host: str
    pid: int
    version: str
    started_at: datetime
    last_pass_at: datetime | None


def beat(
    store: Store,
    *,
    owner: str,
    host: str,
    pid: int,
    version: str,
    started_at: datetime,
    last_pass_at: datetime | None,
) -> None:
    """Write (insert or update) this daemon's heartbeat row."""
    values = {"host": host, "pid": pid, "version": version, "last_pass_at": last_pass_at}
    with store.write() as conn:
        updated = conn.execute(
            daemons_t.update().where(daemons_t.c.owner == owner).values(**values)
        ).rowcount
        if not updated:
            conn.execute(daemons_t.insert().values(owner=owner, started_at=started_at, **values))


def daemons(store: Store) -> list[DaemonSeen]:
    """Every daemon seen, the most recent pass first."""
    stmt = sa.select(daemons_t).order_by(
        daemons_t.c.last_pass_at.desc().nulls_last(), daemons_t.c.owner
    )
    with store.read() as conn:
        return [
            DaemonSeen(**{f: r[f] for f in DaemonSeen.__dataclass_fields__})
            for r in conn.execute(stmt).mappings()
        ]


def running(seen: list[DaemonSeen], now: datetime, poll_seconds: float) -> list[DaemonSeen]:
    """The daemons whose last pass ended within `liveness_limit` of `now` (the lease clock)."""
    limit = liveness_limit(poll_seconds)
    return [d for d in seen if d.last_pass_at is not None and now - d.last_pass_at <= limit]
