"""`smsledger check` says when the `ledger` or `scheduler` it imported is not smsledger's own."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import CONFIG, SMSLEDGER, clean_env, needs_smsledger

import scheduler

pytestmark = needs_smsledger

OURS = Path(scheduler.__file__).resolve().parent


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "smsledger.toml").write_text(CONFIG.format(zone="Europe/Istanbul"))
    return tmp_path


def check(work: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert SMSLEDGER is not None
    env = clean_env(PYTHONPATH=str(pythonpath)) if pythonpath else clean_env()
    return subprocess.run(
        [SMSLEDGER, "check"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def warnings(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("warning: packages: ")]


def test_check_with_smsledgers_own_packages_warns_about_nothing(work: Path) -> None:
    assert warnings(check(work)) == []


def test_check_warns_when_the_scheduler_package_imported_is_a_foreign_one(
    work: Path, tmp_path: Path
) -> None:
    """A foreign `scheduler/__init__.py` comes first (as after PyPI's `scheduler` overwrote
    ours); smsledger's subpackages are still reachable, so the command runs."""
    fake = tmp_path / "site" / "scheduler"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f'"""Not smsledger."""\n__path__.append({str(OURS)!r})\n')

    done = check(work, pythonpath=tmp_path / "site")

    [warning] = warnings(done)
    assert "the 'scheduler' package imported is not smsledger's" in warning
    assert str(fake / "__init__.py") in warning
    assert "virtual environment of its own" in warning


def test_check_warns_when_another_distribution_installs_the_same_top_level_package(
    work: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    info = site / "scheduler-9.9.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: scheduler\nVersion: 9.9\n")
    (info / "top_level.txt").write_text("scheduler\n")
    (info / "RECORD").write_text("scheduler/__init__.py,,\n")

    done = check(work, pythonpath=site)

    assert warnings(done) == [
        "warning: packages: the 'scheduler' package is also installed by scheduler: their files "
        "and smsledger's share one folder and overwrite each other; install smsledger in a "
        "virtual environment of its own"
    ]
