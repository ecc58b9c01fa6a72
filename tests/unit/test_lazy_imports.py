"""What loads when: ``smsledger logs``, ``--help`` and ``--version`` start without SQLAlchemy.

SQLAlchemy and SQLModel are most of the command's start-up (0.37 s of ``logs | head -1`` before
they were deferred, 0.14 s after; bench/logs.py). Each case runs in a fresh interpreter, since
this one has long imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import ledger

#: Modules the quick paths must not import.
HEAVY = ("sqlalchemy", "sqlmodel", "alembic", "apscheduler", "ledger.api", "ledger.models")

_PROBE = """\
import contextlib, io, json, sys
from scheduler.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "out": out.getvalue(), "loaded": sorted(sys.modules)}))
"""


def _loaded_by(*args: str) -> tuple[int, str, set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, check=True
    )
    report = json.loads(done.stdout.splitlines()[-1])
    return report["code"], report["out"], set(report["loaded"])


@pytest.fixture
def config(tmp_path: Path) -> Path:
    log = tmp_path / "log.jsonl"
    log.write_text('{"timestamp": "2026-11-28T10:00:00Z", "level": "info", "event": "tick"}\n')
    path = tmp_path / "smsledger.toml"
    path.write_text(f'timezone = "UTC"\n[log]\npath = {json.dumps(str(log))}\n')
    return path


@pytest.mark.parametrize("args", [["logs"], ["logs", "--event", "tick", "--json"]])
def test_logs_reads_the_log_without_loading_the_ledger(config: Path, args: list[str]) -> None:
    code, out, loaded = _loaded_by("--config", str(config), *args)

    assert code == 0
    assert "tick" in out
    assert loaded.isdisjoint(HEAVY), sorted(loaded.intersection(HEAVY))


def test_logs_for_one_order_opens_the_ledger(config: Path) -> None:
    """``--order`` reads the order's registration from the ledger: the deferral is per need."""
    config.write_text(
        config.read_text() + f'[ledger]\nurl = "sqlite:///{config.parent / "ledger.db"}"\n'
    )
    Path(config.parent / "ledger.db").touch()

    _, _, loaded = _loaded_by("--config", str(config), "logs", "--order", "400000001")

    assert "ledger.api" in loaded


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["cancel", "--help"]])
def test_help_and_version_load_no_database_code(args: list[str]) -> None:
    _, out, loaded = _loaded_by(*args)

    assert out.strip()
    assert loaded.isdisjoint(HEAVY), sorted(loaded.intersection(HEAVY))


def test_the_package_loads_each_public_name_on_first_use() -> None:
    code = (
        "import sys, ledger; before = 'ledger.api' in sys.modules; "
        "from ledger import Ledger, OrderState; "
        "print(before, 'ledger.api' in sys.modules, Ledger.__module__, OrderState.__module__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert done.stdout.split() == ["False", "True", "ledger.api", "ledger.states"]


def test_every_public_name_resolves_and_unknown_ones_raise() -> None:
    for name in ledger.__all__:
        assert getattr(ledger, name) is not None
    assert set(ledger.__all__) <= set(dir(ledger))
    with pytest.raises(AttributeError, match="no attribute 'Ledgr'"):
        _ = ledger.Ledgr
