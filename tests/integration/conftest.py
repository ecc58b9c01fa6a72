"""Fixtures of the integration tier: ledgers on real files, clients of a sandbox over real HTTP,
daemons over both.

A module tunes them by overriding the option fixtures (`ledger_url`, `ledger_options`,
`client_options`, `daemon_options`, and `sandbox_options` from tests/conftest.py) instead of
copying a fixture."""

from __future__ import annotations

import random
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger import Ledger
from scheduler.daemon import Daemon
from scheduler.provider.client import IletiMerkeziClient
from scheduler.provider.sandbox import DEFAULT_HASH, DEFAULT_KEY, Sandbox

# Made once: an httpx.Client builds a default SSL context (~50 ms) unless given one.
_TLS = ssl.create_default_context()


@pytest.fixture
def client_options() -> dict[str, Any]:
    """The `IletiMerkeziClient` keyword arguments `make_client` starts from; a test module
    overrides this fixture (a shorter deadline, its clock)."""
    return {}


@pytest.fixture
def make_client(
    sandbox_options: dict[str, Any], client_options: dict[str, Any]
) -> Iterator[Callable[..., IletiMerkeziClient]]:
    """Build a client of a running sandbox: its URL, the credentials of `sandbox_options` (else
    the sandbox's defaults), a 5 s deadline, then `client_options` and keyword overrides
    (`transport=None`: the client's own pool, as in production). All are closed after the test."""
    made: list[IletiMerkeziClient] = []

    def make(sandbox: Sandbox, **overrides: Any) -> IletiMerkeziClient:
        options: dict[str, Any] = {
            "key": sandbox_options.get("key", DEFAULT_KEY),
            "hash": sandbox_options.get("hash", DEFAULT_HASH),
            "timeout": 5.0,
            "transport": httpx.HTTPTransport(verify=_TLS),
            **client_options,
            **overrides,
        }
        client = IletiMerkeziClient(sandbox.url, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    """The database `open_ledger` opens: one SQLite file in tmp_path (a module may override this,
    e.g. with one URL per engine)."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def ledger_options() -> dict[str, Any]:
    """The `Ledger` keyword arguments `open_ledger` starts from; a module overrides this (its
    clock, its margins)."""
    return {"synchronous": "NORMAL"}


@pytest.fixture
def open_ledger(
    ledger_factory: Callable[..., Ledger], ledger_url: str, ledger_options: dict[str, Any]
) -> Callable[..., Ledger]:
    """Open (another) `Ledger` on the test's database, as another process would: `ledger_options`,
    then keyword overrides. All are closed after the test (`ledger_factory`)."""

    def make(**overrides: Any) -> Ledger:
        return ledger_factory(url=ledger_url, **{**ledger_options, **overrides})

    return make


@pytest.fixture
def ledger(open_ledger: Callable[..., Ledger]) -> Ledger:
    """The test's ledger (`open_ledger` with no overrides)."""
    return open_ledger()


@pytest.fixture
def client(sandbox: Sandbox, make_client: Callable[..., IletiMerkeziClient]) -> IletiMerkeziClient:
    """A client of `sandbox`."""
    return make_client(sandbox)


@pytest.fixture
def daemon_options() -> dict[str, Any]:
    """The `Daemon` keyword arguments `make_daemon` starts from; a module overrides this (its
    clock, sleep and lease)."""
    return {}


@pytest.fixture
def make_daemon(
    request: pytest.FixtureRequest,
    daemon_options: dict[str, Any],
    make_client: Callable[..., IletiMerkeziClient],
) -> Iterator[Callable[..., Daemon]]:
    """Build a `Daemon` over `ledger` (default: the `ledger` fixture) and `client` (default: the
    `client` fixture), with a seeded `rng`, then `daemon_options` and keyword overrides. Every
    daemon is stopped after the test, before its client is closed."""
    made: list[Daemon] = []

    def make(
        ledger: Ledger | None = None, client: IletiMerkeziClient | None = None, **overrides: Any
    ) -> Daemon:
        daemon = Daemon(
            ledger if ledger is not None else request.getfixturevalue("ledger"),
            client if client is not None else request.getfixturevalue("client"),
            **{"rng": random.Random(0), **daemon_options, **overrides},
        )
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop(grace=5.0)
