"""A consistent copy of a SQLite ledger while daemons write to it (`smsledger backup PATH`).

Copying the `.db` file alone is unsafe in WAL mode: committed transactions may still be in the
`-wal` file, and a copy taken mid-checkpoint is torn. SQLite's online backup API copies the
database as one read transaction sees it (a snapshot; in WAL mode writers go on meanwhile).
The copy is written beside `dest`, switched out of WAL (so it is one self-contained file),
checked, synced, and only then renamed to `dest`: a failed backup leaves no half-written file.

PostgreSQL ledgers are backed up with `pg_dump` (`PG_DUMP_HINT`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa

from ledger._urls import display_url
from ledger.errors import InvalidInput, LedgerUnavailable, NoLedger
from ledger.models import ORDERS_TABLE
from ledger.schema import VERSION_TABLE

__all__ = ["PG_DUMP_HINT", "BackupDone", "backup"]

PG_DUMP_HINT = "pg_dump --format=custom --file=smsledger-$(date +%F).dump DATABASE"
#: How long the copy waits for a writer's lock before giving up (milliseconds).
BUSY_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class BackupDone:
    """What a backup wrote."""

    source: Path
    dest: Path
    orders: int
    revision: str | None
    size_bytes: int


def backup(url: str, dest: str | os.PathLike[str]) -> BackupDone:
    """Copy the SQLite ledger at `url` to `dest` (a new file), consistent while others write.

    Raises `InvalidInput` for a PostgreSQL or in-memory ledger or an existing `dest`, `NoLedger`
    when there is no ledger file, `LedgerUnavailable` when the copy fails.
    """
    source = _source_file(url)
    target = Path(dest).absolute()
    if target.exists():
        raise InvalidInput(f"{target} already exists: a backup never overwrites a file")
    if not target.parent.is_dir():
        raise InvalidInput(f"{target.parent} is not a folder")
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        _copy(source, partial)
        orders, revision = _check(partial)
        _fsync(partial)
        partial.replace(target)
        _fsync(target.parent)
    except sqlite3.Error as exc:
        raise LedgerUnavailable(f"backup of {source} failed: {exc}") from None
    except OSError as exc:
        raise LedgerUnavailable(f"backup to {target} failed: {exc.strerror or exc}") from None
    finally:
        for leftover in (partial, *_sidecars(partial)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return BackupDone(source, target, orders, revision, target.stat().st_size)


def _source_file(url: str) -> Path:
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise InvalidInput(f"ledger URL {display_url(url)} is not a database URL") from None
    if parsed.get_backend_name() == "postgresql":
        raise InvalidInput(
            "backup copies SQLite ledgers; back up a PostgreSQL ledger with pg_dump, e.g. "
            + PG_DUMP_HINT.replace("DATABASE", "'postgresql://USER@HOST/DB'")
        )
    database = parsed.database or ""
    if (
        parsed.get_backend_name() != "sqlite"
        or database in ("", ":memory:")
        or (database.startswith("file:"))
    ):
        raise InvalidInput(f"ledger {display_url(url)} is not a SQLite file: nothing to back up")
    path = Path(database).absolute()
    if not path.is_file() or path.stat().st_size == 0:
        raise NoLedger(f"no ledger exists at {path}; check ledger.url")
    return path


def _copy(source: Path, partial: Path) -> None:
    """One backup step over the whole database: a single read snapshot of the source."""
    src = sqlite3.connect(
        f"file:{quote(str(source))}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_MS / 1000
    )
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)  # pages=-1: all in one step, so no writer can interleave
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            dst.commit()
        finally:
            dst.close()
    finally:
        src.close()


def _check(path: Path) -> tuple[int, str | None]:
    """The copy reads as a ledger: its integrity, its orders and its schema revision."""
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
    try:
        (verdict,) = conn.execute("PRAGMA quick_check").fetchone()
        if verdict != "ok":
            raise sqlite3.DatabaseError(f"the copy failed its integrity check: {verdict}")
        (orders,) = conn.execute(f"SELECT count(*) FROM {ORDERS_TABLE}").fetchone()  # noqa: S608
        try:
            row = conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchone()  # noqa: S608
        except sqlite3.OperationalError:
            row = None
        return int(orders), (str(row[0]) if row else None)
    finally:
        conn.close()


def _sidecars(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in ("-journal", "-wal", "-shm")]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
