"""PostgreSQL for the tests: a fresh schema per test, and the ``ledger_url`` engines.

Imported as ``postgres`` (pytest puts ``tests/`` on ``sys.path`` for its ``conftest.py``).

PostgreSQL tests run when ``SMSLEDGER_TEST_POSTGRES_URL`` names a server (``.ci/run`` exports it)
and are skipped, with that reason shown, otherwise. The variable is read once, when this module is
imported: the autouse ``clean_environ`` fixture removes every ``SMSLEDGER_*`` variable before a
test runs. Each test gets a schema of its own (``smsledger_test_<random>``, reached through
``search_path`` in the URL) that is dropped afterwards, so tests never see each other's rows and
CI runs sharing a server do not collide.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

__all__ = ["ENGINES", "POSTGRES_URL", "SKIP_REASON", "fresh_schema", "ledger_url_for"]

POSTGRES_URL = os.environ.get("SMSLEDGER_TEST_POSTGRES_URL") or None
SKIP_REASON = "SMSLEDGER_TEST_POSTGRES_URL not set: PostgreSQL tests skipped"
#: Parameters for a fixture over both engines; the PostgreSQL one carries the `postgres` marker.
ENGINES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def require_postgres() -> str:
    """The server's URL, or skip the test with the reason shown in the summary."""
    if POSTGRES_URL is None:
        pytest.skip(SKIP_REASON)
    return POSTGRES_URL


@contextmanager
def fresh_schema(base_url: str, *, options: str = "") -> Iterator[str]:
    """Create an empty schema, yield a ledger URL whose ``search_path`` is only that schema, drop
    it (and everything in it) afterwards. `options` adds server settings (``-ctimezone=...``)."""
    name = f"smsledger_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
        base = sa.make_url(base_url)
        current = base.query.get("options", "")
        current = current if isinstance(current, str) else " ".join(current)
        extra = " ".join(p for p in (current, options) if p)
        settings = f"-csearch_path={name} {extra}".strip()
        url = base.update_query_dict({"options": settings})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        admin.dispose()


@contextmanager
def ledger_url_for(engine: str, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty ledger database on `engine` ("sqlite" or "postgresql")."""
    if engine == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    with fresh_schema(require_postgres()) as url:
        yield url
