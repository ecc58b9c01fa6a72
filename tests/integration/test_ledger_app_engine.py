"""`Ledger(engine=...)`: the ledger on an application's own SQLAlchemy engine, SQLite or
PostgreSQL, leaving the application's engine, pool and transactions as they were."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from postgres import ENGINES, ledger_url_for

from ledger import InvalidInput, Ledger, OrderState

S = OrderState


@pytest.fixture(params=ENGINES)
def app_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """The application's engine, with a table of its own, once per database."""
    with ledger_url_for(request.param, tmp_path) as url:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE app_notes (id INTEGER PRIMARY KEY, text TEXT)")
        yield engine
        engine.dispose()


def statements(engine: sa.Engine) -> list[str]:
    """Every statement run on `engine` from now on (the ledger's copy included)."""
    seen: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    return seen


def test_the_ledger_works_on_an_applications_engine_and_leaves_it_usable(
    app_engine: sa.Engine,
) -> None:
    pool = app_engine.pool

    with Ledger(engine=app_engine) as book:
        book.register("o1", send_at=book.now() + timedelta(hours=1))
        assert book.request_cancel("o1").state is S.CANCEL_REQUESTED
        assert [e.to_state for e in book.history("o1")] == [S.SCHEDULED, S.CANCEL_REQUESTED]

    assert app_engine.pool is pool  # not disposed (dispose() replaces the pool)
    with app_engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO app_notes (id, text) VALUES (1, 'still mine')")
        rows = conn.exec_driver_sql("SELECT count(*) FROM smsledger_orders").scalar_one()
    assert rows == 1
    with Ledger(engine=app_engine) as again:  # the schema is there: opened, not recreated
        assert again.get("o1").state is S.CANCEL_REQUESTED


def test_on_sqlite_the_ledgers_writes_begin_immediate_and_the_applications_do_not(
    tmp_path: Path,
) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    seen = statements(engine)
    try:
        with Ledger(engine=engine) as book:
            seen.clear()
            book.register("o1", send_at=book.now() + timedelta(hours=1))
            assert seen[0] == "BEGIN IMMEDIATE"
            seen.clear()
            with engine.begin() as conn:
                conn.exec_driver_sql("SELECT 1")
            assert seen == ["SELECT 1"]
    finally:
        engine.dispose()


def test_the_ledger_on_an_applications_engine_serves_asyncio_through_worker_threads(
    app_engine: sa.Engine,
) -> None:
    async def main(book: Ledger) -> list[OrderState]:
        when = book.now() + timedelta(hours=1)
        await asyncio.gather(*(asyncio.to_thread(book.register, f"o{n}", when) for n in range(8)))
        await asyncio.to_thread(book.request_cancel, "o3")
        orders = await asyncio.to_thread(book.orders)
        return [o.state for o in orders]

    with Ledger(engine=app_engine) as book:
        states = asyncio.run(main(book))

    assert sorted(states) == sorted([S.SCHEDULED] * 7 + [S.CANCEL_REQUESTED])


def test_a_url_and_an_engine_together_are_refused(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    try:
        with pytest.raises(InvalidInput, match="a URL or an engine, not both"):
            Ledger(f"sqlite:///{tmp_path / 'other.db'}", engine=engine)
    finally:
        engine.dispose()
