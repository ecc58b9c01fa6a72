"""The versioned schema on both engines: new ledgers, ledgers made before versioning, ledgers from
a newer smsledger, failed and concurrent migrations, and the scripts shipped in the package."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from postgres import ENGINES, fresh_schema, ledger_url_for, require_postgres
from structlog.testing import capture_logs

from ledger import Ledger, LedgerError, OrderState, SchemaError, SchemaTooNew
from ledger.models import METADATA
from ledger.schema import BASELINE, HEAD, VERSION_TABLE, alembic_config, head_revision, migrate
from ledger.store import Store

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2030, 6, 1, 9, 0, tzinfo=UTC)
NAIVE_T0 = T0.replace(tzinfo=None)


@pytest.fixture(params=ENGINES)
def engine_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ledger_url(engine_name: str, tmp_path: Path) -> Iterator[str]:
    with ledger_url_for(engine_name, tmp_path) as url:
        yield url


@pytest.fixture
def store(ledger_url: str) -> Iterator[Store]:
    """A store on the test's database that creates nothing by itself."""
    opened = Store(ledger_url)
    yield opened
    opened.dispose()


# -- the schema smsledger created before it was versioned ----------------------------------------

V0 = sa.MetaData()
sa.Table(
    "orders",
    V0,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("send_at", sa.DateTime(), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("label", sa.Text()),
    sa.Column("reason", sa.Text()),
    sa.Column("cancel_requested_at", sa.DateTime()),
    sa.Column("cancel_attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("check_attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("last_provider_code", sa.Integer()),
    sa.Column("warned_at", sa.DateTime()),
    sa.Column("claim_owner", sa.String(128)),
    sa.Column("claim_expires_at", sa.DateTime()),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
    sa.Index("ix_orders_state_send_at", "state", "send_at"),
)
sa.Table(
    "order_events",
    V0,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column(
        "order_id", sa.String(64), sa.ForeignKey("orders.order_id"), nullable=False, index=True
    ),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.Column("from_state", sa.String(32)),
    sa.Column("to_state", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text()),
    sa.Column("details", sa.JSON()),
)


def make_v0_ledger(store: Store) -> None:
    """Create the pre-versioning schema (as `create_all` made it) with two orders in it."""
    orders, events = V0.tables["orders"], V0.tables["order_events"]
    send_at = NAIVE_T0 + timedelta(hours=1)
    with store.write() as conn:
        V0.create_all(conn)
        for row in [
            {
                "order_id": "old-1",
                "send_at": send_at,
                "state": "cancelled",
                "reason": "cancel verified: provider reports 115",
                "cancel_requested_at": NAIVE_T0,
                "cancel_attempts": 1,
                "check_attempts": 2,
                "last_provider_code": 115,
                "created_at": NAIVE_T0,
                "updated_at": NAIVE_T0,
            },
            {
                "order_id": "old-2",
                "send_at": send_at,
                "state": "scheduled",
                "label": "kampanya",
                "reason": "registered",
                "created_at": NAIVE_T0,
                "updated_at": NAIVE_T0,
            },
        ]:
            conn.execute(orders.insert().values(**row))
        for row in [
            {"order_id": "old-1", "at": NAIVE_T0, "to_state": "scheduled"},
            {
                "order_id": "old-1",
                "at": NAIVE_T0,
                "from_state": "scheduled",
                "to_state": "cancel_requested",
                "details": {"seconds_left": 3600.0},
            },
            {"order_id": "old-2", "at": NAIVE_T0, "to_state": "scheduled"},
        ]:
            conn.execute(events.insert().values(**row))


def snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table in the database, to prove that nothing was written."""
    with store.read() as conn:
        names = sorted(sa.inspect(conn).get_table_names())
        return {
            name: sorted(
                (tuple(r) for r in conn.execute(sa.text(f'SELECT * FROM "{name}"'))), key=repr
            )
            for name in names
        }


def versions(store: Store) -> list[str]:
    with store.read() as conn:
        return list(conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())


def event_id_type(store: Store, table: str = "smsledger_order_events") -> str:
    with store.read() as conn:
        columns = sa.inspect(conn).get_columns(table)
    return str(next(c["type"] for c in columns if c["name"] == "id"))


# -- new ledgers -------------------------------------------------------------------------------


def test_the_newest_revision_the_code_names_is_the_newest_script() -> None:
    assert head_revision() == HEAD


def test_a_new_ledger_is_created_at_the_newest_revision(ledger_url: str, store: Store) -> None:
    with capture_logs() as logs:
        Ledger(ledger_url).close()

    assert versions(store) == [HEAD]
    assert migrate(ledger_url) == (HEAD, HEAD)
    assert [e for e in logs if e["event"] == "ledger_schema_migrated"] == [
        {
            "event": "ledger_schema_migrated",
            "log_level": "info",
            "ledger": sa.make_url(ledger_url).render_as_string(hide_password=True),
            "from_revision": None,
            "to_revision": HEAD,
        }
    ]


def test_migrate_creates_a_ledger_where_there_was_none(ledger_url: str, store: Store) -> None:
    assert migrate(ledger_url) == (None, HEAD)
    assert versions(store) == [HEAD]


def test_the_migrated_schema_is_the_schema_the_models_describe(
    ledger_url: str, store: Store
) -> None:
    """Revisions and models agree, so a later autogenerated revision starts from the truth."""
    migrate(ledger_url)

    with store.read() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "compare_type": True}
        )
        differences = compare_metadata(context, METADATA)

    assert differences == []


def test_event_ids_are_64_bit_on_both_engines(ledger_url: str, store: Store) -> None:
    """SQLite's INTEGER PRIMARY KEY is the 64-bit rowid; PostgreSQL's SERIAL was 32 bits."""
    migrate(ledger_url)

    assert event_id_type(store) == {"sqlite": "INTEGER", "postgresql": "BIGINT"}[store.dialect]


# -- ledgers made before versioning ------------------------------------------------------------


def test_a_ledger_made_before_versioning_is_stamped_and_upgraded_in_place_with_its_data(
    ledger_url: str, store: Store
) -> None:
    make_v0_ledger(store)

    with capture_logs() as logs, Ledger(ledger_url, clock=lambda: T0) as ledger:
        old = ledger.get("old-1")
        history = ledger.history("old-1")
        listed = [o.order_id for o in ledger.orders()]
        ledger.register("new-1", T0 + timedelta(hours=2))
        ledger.request_cancel("old-2")
        new_history = ledger.history("new-1") + ledger.history("old-2")

    assert versions(store) == [HEAD]
    assert [(e["event"], e.get("from_revision")) for e in logs if "revision" in str(e)] == [
        ("ledger_schema_stamped", None),
        ("ledger_schema_migrated", BASELINE),
    ]
    assert (old.state, old.send_at, old.cancel_attempts, old.last_provider_code) == (
        OrderState.CANCELLED,
        T0 + timedelta(hours=1),
        1,
        115,
    )
    assert [(e.to_state, e.details) for e in history] == [
        (OrderState.SCHEDULED, {}),
        (OrderState.CANCEL_REQUESTED, {"seconds_left": 3600.0}),
    ]
    assert listed == ["old-1", "old-2"]
    assert [e.to_state for e in new_history] == [
        OrderState.SCHEDULED,
        OrderState.SCHEDULED,
        OrderState.CANCEL_REQUESTED,
    ]
    with store.read() as conn:
        ids = list(
            conn.execute(sa.text("SELECT id FROM smsledger_order_events ORDER BY id")).scalars()
        )
    assert ids == [1, 2, 3, 4, 5]  # the sequence carried on from the old rows
    if store.dialect == "postgresql":
        assert event_id_type(store) == "BIGINT"


def test_migrate_says_a_ledger_made_before_versioning_was_at_the_baseline(
    ledger_url: str, store: Store
) -> None:
    make_v0_ledger(store)

    assert migrate(ledger_url) == (BASELINE, HEAD)
    assert migrate(ledger_url) == (HEAD, HEAD)


# -- ledgers smsledger must not touch ------------------------------------------------------------


def test_a_ledger_from_a_newer_smsledger_is_refused_naming_both_revisions_and_left_unchanged(
    ledger_url: str, store: Store
) -> None:
    with Ledger(ledger_url) as ledger:
        ledger.register("kept", datetime.now(UTC) + timedelta(hours=1))
    with store.write() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '0042'"))
    before = snapshot(store)

    with pytest.raises(SchemaTooNew) as refused:
        Ledger(ledger_url)
    with pytest.raises(SchemaTooNew):
        migrate(ledger_url)

    message = str(refused.value)
    assert "schema revision 0042" in message
    assert f"its newest is {HEAD}" in message
    assert "upgrade smsledger" in message
    assert (refused.value.found, refused.value.known) == ("0042", HEAD)
    assert isinstance(refused.value, LedgerError)
    assert snapshot(store) == before


def test_an_applications_own_orders_table_is_not_taken_for_a_ledger_and_is_left_alone(
    ledger_url: str, store: Store
) -> None:
    """The ledger's tables have names of their own: a new ledger goes beside the app's."""
    with store.write() as conn:
        conn.execute(sa.text("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)"))
        conn.execute(sa.text("INSERT INTO orders VALUES (1, 250)"))
    before = snapshot(store)["orders"]

    with Ledger(ledger_url) as ledger:
        ledger.register("o1", datetime.now(UTC) + timedelta(hours=1))

    assert versions(store) == [HEAD]
    assert snapshot(store)["orders"] == before
    assert [r[0] for r in snapshot(store)["smsledger_orders"]] == ["o1"]


def test_a_ledger_made_before_versioning_without_its_history_table_is_refused_untouched(
    ledger_url: str, store: Store
) -> None:
    make_v0_ledger(store)
    with store.write() as conn:
        conn.execute(sa.text("DROP TABLE order_events"))
    before = snapshot(store)

    with pytest.raises(SchemaError, match="table 'orders' without its 'order_events'"):
        Ledger(ledger_url)

    assert snapshot(store) == before


def test_smsledger_tables_without_a_schema_revision_are_refused_untouched(
    ledger_url: str, store: Store
) -> None:
    """Tables made some other way (an app's ``create_all`` of the ledger's metadata) are not
    guessed at: their revision is unknown."""
    with store.write() as conn:
        METADATA.create_all(conn)
    before = snapshot(store)

    with pytest.raises(SchemaError, match="table 'smsledger_orders' but no schema revision"):
        Ledger(ledger_url)

    assert snapshot(store) == before


@pytest.mark.postgres
def test_a_migration_that_fails_leaves_the_ledger_as_it_was_and_says_why_in_one_line() -> None:
    """Revision 0002 changes nothing on SQLite; on PostgreSQL a view can make it fail."""
    with fresh_schema(require_postgres()) as url:
        store = Store(url)
        try:
            make_v0_ledger(store)
            with store.write() as conn:  # PostgreSQL cannot retype a column a view uses
                conn.execute(sa.text("CREATE VIEW event_ids AS SELECT id FROM order_events"))
            before = snapshot(store)

            with pytest.raises(SchemaError) as failed:
                Ledger(url)

            after = snapshot(store)
            with store.read() as conn:
                stamped = sa.inspect(conn).has_table(VERSION_TABLE)
        finally:
            store.dispose()

    assert re.search(
        rf"migrating ledger .* from 0001 to {HEAD} failed: .*event_ids", str(failed.value)
    )
    assert "\n" not in str(failed.value)
    assert str(failed.value).endswith("nothing was changed")
    assert after == before
    assert not stamped


def test_revision_0002_goes_down_and_up_again(ledger_url: str, store: Store) -> None:
    migrate(ledger_url)

    with store.schema_lock() as conn:
        command.downgrade(alembic_config(connection=conn), BASELINE)
    down = (versions(store), event_id_type(store, "order_events"))
    migrate(ledger_url)

    assert down[0] == [BASELINE]
    assert down[1] == "INTEGER"
    assert versions(store) == [HEAD]


def test_revision_0006_adds_the_lead_observations_and_goes_down_and_up_again(
    ledger_url: str, store: Store
) -> None:
    """A ledger at 0003 gains the observations table; going down drops it."""
    make_v0_ledger(store)
    upgrade_to(store, "0003")
    migrate(ledger_url)
    with store.read() as conn:
        assert sa.inspect(conn).has_table("smsledger_lead_observations")

    with store.schema_lock() as conn:
        command.downgrade(alembic_config(connection=conn), "0003")
    with store.read() as conn:
        down = sa.inspect(conn).has_table("smsledger_lead_observations")
    migrate(ledger_url)

    assert not down
    assert versions(store) == [HEAD]


def upgrade_to(store: Store, revision: str) -> None:
    """Bring a ledger made before versioning to `revision` and no further (as an old smsledger)."""
    with store.schema_lock() as conn:
        config = alembic_config(connection=conn)
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            command.stamp(config, BASELINE)
        command.upgrade(config, revision)


def schema_names(store: Store) -> list[tuple[str, str]]:
    """Every named thing in the ledger's database or schema: tables, indexes, sequences and (on
    PostgreSQL) constraints, as (kind, name)."""
    with store.read() as conn:
        if store.dialect == "sqlite":
            rows = conn.execute(sa.text("SELECT type, name FROM sqlite_master"))
        else:
            rows = conn.execute(
                sa.text(
                    "SELECT c.relkind::text, c.relname::text FROM pg_class c "
                    "WHERE c.relnamespace = current_schema()::regnamespace "
                    "UNION ALL SELECT 'constraint', conname::text FROM pg_constraint "
                    "WHERE connamespace = current_schema()::regnamespace"
                )
            )
        return sorted((str(kind), str(name)) for kind, name in rows)


def test_a_ledger_at_revision_0002_gets_the_prefixed_names_keeping_its_rows_and_history(
    ledger_url: str, store: Store
) -> None:
    make_v0_ledger(store)
    upgrade_to(store, "0002")
    old = snapshot(store)

    assert migrate(ledger_url) == ("0002", HEAD)

    new = snapshot(store)
    assert {"orders", "order_events"} & set(new) == set()
    # Revision 0004 adds the delivery counters at the end of each row, null.
    assert [row[: len(row) - 5] for row in new["smsledger_orders"]] == old["orders"]
    assert all(row[-5:] == (None,) * 5 for row in new["smsledger_orders"])
    assert new["smsledger_order_events"] == old["order_events"]
    with Ledger(ledger_url, clock=lambda: T0) as ledger:
        assert [e.to_state for e in ledger.history("old-1")] == [
            OrderState.SCHEDULED,
            OrderState.CANCEL_REQUESTED,
        ]
        ledger.register("new-1", T0 + timedelta(hours=2))
    with store.read() as conn:
        ids = conn.execute(sa.text("SELECT id FROM smsledger_order_events ORDER BY id")).scalars()
        assert list(ids) == [1, 2, 3, 4]  # the id sequence carried on under its new name


def test_an_upgraded_ledger_has_the_schema_of_a_new_one_down_to_every_name(
    engine_name: str, ledger_url: str, store: Store, tmp_path: Path
) -> None:
    """New ledgers are created from the models; old ones reach the same schema through the
    revisions: same tables, columns, indexes, constraint and sequence names."""
    make_v0_ledger(store)
    migrate(ledger_url)
    (tmp_path / "new").mkdir()
    with ledger_url_for(engine_name, tmp_path / "new") as new_url:
        new_store = Store(new_url)
        try:
            migrate(new_url)
            new_names = schema_names(new_store)
        finally:
            new_store.dispose()

    with store.read() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "compare_type": True}
        )
        differences = compare_metadata(context, METADATA)
    assert differences == []
    assert schema_names(store) == new_names
    prefixes = ("smsledger_", "ix_smsledger_", "sqlite_autoindex_smsledger_")
    assert all(name.startswith(prefixes) for _, name in new_names), new_names


def test_revision_0003_goes_down_to_the_old_names_with_the_rows_and_up_again(
    ledger_url: str, store: Store
) -> None:
    make_v0_ledger(store)
    upgrade_to(store, "0002")
    at_0002 = (schema_names(store), snapshot(store))
    migrate(ledger_url)

    with store.schema_lock() as conn:
        command.downgrade(alembic_config(connection=conn), "0002")
    down = (schema_names(store), snapshot(store))
    migrate(ledger_url)

    assert down == at_0002
    assert versions(store) == [HEAD]
    with Ledger(ledger_url) as ledger:
        assert [o.order_id for o in ledger.orders()] == ["old-1", "old-2"]


def test_revision_0004_adds_null_delivery_counters_and_goes_down_again(
    ledger_url: str, store: Store
) -> None:
    """An existing ledger gains the delivery columns, all null, its rows untouched."""
    make_v0_ledger(store)
    upgrade_to(store, "0003")
    at_0003 = (schema_names(store), snapshot(store))
    migrate(ledger_url)
    with Ledger(ledger_url) as ledger:
        assert [(o.order_id, o.delivery) for o in ledger.orders()] == [
            ("old-1", None),
            ("old-2", None),
        ]

    with store.schema_lock() as conn:
        command.downgrade(alembic_config(connection=conn), "0003")
    assert (schema_names(store), snapshot(store)) == at_0003
    migrate(ledger_url)
    assert versions(store) == [HEAD]


def test_revision_0005_adds_the_alerts_and_daemons_tables_and_goes_down_without_them(
    ledger_url: str, store: Store
) -> None:
    migrate(ledger_url)
    with store.read() as conn:
        tables = set(sa.inspect(conn).get_table_names())
    assert {"smsledger_alerts", "smsledger_daemons"} <= tables

    with store.schema_lock() as conn:
        command.downgrade(alembic_config(connection=conn), "0004")
    with store.read() as conn:
        tables = set(sa.inspect(conn).get_table_names())
    migrate(ledger_url)

    assert not {"smsledger_alerts", "smsledger_daemons"} & tables
    assert versions(store) == [HEAD]


def test_revision_0007_adds_the_label_index_and_goes_down_and_up_again(
    ledger_url: str, store: Store
) -> None:
    make_v0_ledger(store)
    upgrade_to(store, "0006")
    before = (schema_names(store), snapshot(store))
    migrate(ledger_url)
    at_head = schema_names(store)

    with store.schema_lock() as conn:
        command.downgrade(alembic_config(connection=conn), "0006")
    down = (schema_names(store), snapshot(store))
    migrate(ledger_url)

    index = "ix_smsledger_orders_label_order_id"
    assert index not in {name for _, name in before[0]}
    assert index in {name for _, name in at_head}
    assert down == before
    assert versions(store) == [HEAD]


def test_revision_0008_adds_the_jobs_table_and_goes_down_without_it(
    ledger_url: str, store: Store
) -> None:
    migrate(ledger_url)
    with store.read() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("smsledger_jobs")}
    assert columns == {"name", "last_run_at", "claim_owner", "claim_expires_at"}

    with store.schema_lock() as conn:
        command.downgrade(alembic_config(connection=conn), "0007")
    with store.read() as conn:
        tables = set(sa.inspect(conn).get_table_names())
    migrate(ledger_url)

    assert "smsledger_jobs" not in tables
    assert versions(store) == [HEAD]


# -- several processes at once -----------------------------------------------------------------

_OPEN_ON_GO = """
import logging, sys
from ledger import Ledger
# The library is quiet by default; an application's logging receives its events.
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
print("ready", flush=True)
sys.stdin.readline()
Ledger(sys.argv[1]).close()
"""


@pytest.mark.slow
@pytest.mark.parametrize("before", ["empty", "unversioned"])
def test_processes_starting_at_once_migrate_the_ledger_once(
    ledger_url: str, store: Store, before: str
) -> None:
    if before == "unversioned":
        make_v0_ledger(store)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_ON_GO, ledger_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    for child in children:  # every child has imported smsledger and waits
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"

    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    outputs = [child.communicate(timeout=60)[0] for child in children]

    assert [child.returncode for child in children] == [0, 0, 0], outputs
    assert sum(out.count("ledger_schema_migrated") for out in outputs) == 1, outputs
    assert versions(store) == [HEAD]
    if before == "unversioned":
        with Ledger(ledger_url) as ledger:
            assert [o.order_id for o in ledger.orders()] == ["old-1", "old-2"]


# -- packaging ---------------------------------------------------------------------------------


def test_every_migration_script_is_shipped_in_the_package() -> None:
    """Each file under ledger/migrations is in a listed package (.py) or its package data."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]
    packages = set(setuptools["packages"])
    data: dict[str, list[str]] = setuptools.get("package-data", {})
    folder = REPO / "ledger" / "migrations"
    scripts = [p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts]

    def shipped(path: Path) -> bool:
        package = ".".join(path.parent.relative_to(REPO).parts)
        if path.suffix == ".py" and package in packages:
            return True
        return package in packages and any(
            PurePosixPath(path.name).match(p) for p in data.get(package, [])
        )

    assert scripts
    assert [s.relative_to(REPO).as_posix() for s in scripts if not shipped(s)] == []
