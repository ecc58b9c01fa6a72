"""The ledger inside an application that has SQLModel tables of its own.

The ledger's tables live on a metadata of their own under ``smsledger_`` names: importing the
library adds nothing to ``SQLModel.metadata``, an application may name its own model ``orders``,
and its ``SQLModel.metadata.create_all()`` creates only its own tables, in its own database or in
the ledger's. Each case runs in a fresh interpreter, since a table defined on the process-wide
metadata cannot be taken back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from postgres import ENGINES, ledger_url_for

from ledger.models import METADATA

_IMPORT_ONLY = """
import json
from sqlmodel import SQLModel
import ledger, ledger.schema, ledger.store
print("RESULT " + json.dumps(sorted(SQLModel.metadata.tables)))
"""

_APP = """
import json, sys
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Field, Session, SQLModel, select

from ledger import Ledger


class AppOrder(SQLModel, table=True):
    __tablename__ = "orders"
    id: int | None = Field(default=None, primary_key=True)
    total: int


ledger_url, app_url = sys.argv[1], sys.argv[2]
with Ledger(ledger_url) as ledger:
    ledger.register("o1", datetime.now(UTC) + timedelta(hours=1))
    app = sa.create_engine(app_url)
    SQLModel.metadata.create_all(app)
    with Session(app) as session:
        session.add(AppOrder(total=250))
        session.commit()
        totals = [o.total for o in session.exec(select(AppOrder))]
    state = ledger.request_cancel("o1").state
    tables = sorted(sa.inspect(app).get_table_names())
    app.dispose()
with Ledger(ledger_url) as again:  # the ledger opens again beside the app's table
    orders = [o.order_id for o in again.orders()]
print("RESULT " + json.dumps({
    "metadata": sorted(SQLModel.metadata.tables),
    "app_tables": tables,
    "totals": totals,
    "state": state,
    "orders": orders,
}))
"""


def run(code: str, *args: str) -> Any:
    """Run `code` in a fresh interpreter; the JSON it printed after ``RESULT``."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.fixture(params=ENGINES)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with ledger_url_for(request.param, tmp_path) as url:
        yield url


def test_importing_the_library_adds_nothing_to_sqlmodels_global_metadata() -> None:
    assert run(_IMPORT_ONLY) == []
    assert [t for t in METADATA.tables if not t.startswith("smsledger_")] == []


def test_an_app_model_named_orders_and_its_create_all_leave_the_ledger_out_of_the_apps_database(
    tmp_path: Path,
) -> None:
    result = run(_APP, f"sqlite:///{tmp_path / 'ledger.db'}", f"sqlite:///{tmp_path / 'app.db'}")

    assert result == {
        "metadata": ["orders"],
        "app_tables": ["orders"],
        "totals": [250],
        "state": "cancel_requested",
        "orders": ["o1"],
    }


def test_an_app_sharing_the_ledgers_database_creates_only_its_own_orders_table_beside_it(
    ledger_url: str,
) -> None:
    result = run(_APP, ledger_url, ledger_url)

    assert result == {
        "metadata": ["orders"],
        # The app's table beside the ledger's own (every one prefixed) and nothing else.
        "app_tables": sorted(["orders", "smsledger_alembic_version", *METADATA.tables]),
        "totals": [250],
        "state": "cancel_requested",
        "orders": ["o1"],
    }
