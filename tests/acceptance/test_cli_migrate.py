"""`smsledger migrate` as a real process: upgrades, is idempotent, refuses a newer ledger."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from helpers import SMSLEDGER, needs_smsledger

from ledger.schema import VERSION_TABLE, head_revision

pytestmark = needs_smsledger


def migrate(folder: Path) -> subprocess.CompletedProcess[str]:
    (folder / "smsledger.toml").write_text('[ledger]\nurl = "sqlite:///ledger.db"\n')
    assert SMSLEDGER is not None
    return subprocess.run(
        [SMSLEDGER, "--config", str(folder / "smsledger.toml"), "migrate"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": str(Path(sys.executable).parent)},
    )


def test_migrate_creates_then_reports_nothing_to_do(tmp_path: Path) -> None:
    first = migrate(tmp_path)
    second = migrate(tmp_path)

    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert f"to {head_revision()}" in first.stdout
    assert "nothing to do" in second.stdout
    with closing(sqlite3.connect(tmp_path / "ledger.db")) as db:  # `with` alone leaves it open
        assert db.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall() == [
            (head_revision(),)
        ]


def test_migrate_refuses_a_ledger_written_by_a_newer_smsledger(tmp_path: Path) -> None:
    assert migrate(tmp_path).returncode == 0
    db = sqlite3.connect(tmp_path / "ledger.db")
    with db:
        db.execute(f"UPDATE {VERSION_TABLE} SET version_num = '9999'")
    db.close()  # the last connection to close checkpoints the WAL into the file
    before = (tmp_path / "ledger.db").read_bytes()

    done = migrate(tmp_path)

    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert "9999" in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "ledger.db").read_bytes() == before
