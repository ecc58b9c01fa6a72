"""What a plain ``pip install`` of the wheel gets: the migrations, the example config, the licence.

Building the wheel runs setuptools in pip's isolated build environment (a few seconds, and the
package index must be reachable for setuptools itself): marked slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ledger._example import example_config

REPO = Path(__file__).resolve().parents[2]


def test_the_packaged_example_config_is_the_one_the_readme_links() -> None:
    """One copy only: the package data file, which the README links and the loader reads."""
    packaged = (REPO / "ledger" / "config.example.toml").read_text(encoding="utf-8")

    assert "(ledger/config.example.toml)" in (REPO / "README.md").read_text(encoding="utf-8")
    assert not (REPO / "config.example.toml").exists()
    assert example_config() == packaged


def test_the_deployment_constraints_pin_every_dependency_inside_its_declared_range() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = [
        Requirement(r)
        for r in project["dependencies"] + project["optional-dependencies"]["postgres"]
    ]
    pins = {}
    for line in (REPO / "deploy" / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version

    outside = [
        (str(r), pin)
        for r in declared
        if (pin := pins.get(canonicalize_name(r.name))) is None or pin not in r.specifier
    ]

    assert outside == []


@pytest.mark.slow
def test_the_wheel_ships_migrations_example_config_and_licence(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("smsledger-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = next(zf.read(n) for n in names if n.endswith(".dist-info/METADATA")).decode()
    migrations = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "ledger" / "migrations").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }

    assert "ledger/config.example.toml" in names
    assert migrations - names == set()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in metadata.splitlines()

    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)  # a wheel is installed by unpacking it: what pip does, minus scripts
    env = {**os.environ, "PYTHONPATH": str(site)}
    read = subprocess.run(
        [
            sys.executable,
            "-c",
            "import ledger, ledger._example as e; print(ledger.__file__); "
            "print(e.example_config(), end='')",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    where, _, text = read.stdout.partition("\n")
    assert Path(where).is_relative_to(site)
    assert text == (REPO / "ledger" / "config.example.toml").read_text(encoding="utf-8")
