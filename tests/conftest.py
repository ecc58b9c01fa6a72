"""Fixtures every tier may use: a hermetic environment, default logging, real ledger files,
sandboxes."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from receiver import Receiver

import ledger.logsetup
from ledger import Ledger, Order
from scheduler.provider.sandbox import Faults, Sandbox

_ENV_PREFIXES = ("SMSLEDGER_", "ILETIMERKEZI_")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SMSLEDGER_* or ILETIMERKEZI_* variable of the developer's shell reaches a test."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def default_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with a fresh secret redactor and leaves structlog at its defaults."""
    monkeypatch.setattr(ledger.logsetup, "redactor", ledger.logsetup.SecretRedactor())
    yield
    structlog.reset_defaults()


@pytest.fixture
def ledger_factory(tmp_path: Path) -> Iterator[Callable[..., Ledger]]:
    """Open a `Ledger` on a real SQLite file in tmp_path (or at `url`); keyword arguments go to
    `Ledger`.

    Calls with the same `name` open the same file (as two processes would); all are closed after
    the test.
    """
    opened: list[Ledger] = []

    def make(name: str = "ledger.db", *, url: str | None = None, **kwargs: Any) -> Ledger:
        new = Ledger(url or f"sqlite:///{tmp_path / name}", **kwargs)
        opened.append(new)
        return new

    yield make
    for each in opened:
        each.close()


@pytest.fixture
def tmp_ledger(ledger_factory: Callable[..., Ledger]) -> Ledger:
    """A ledger with the default margins on a fresh SQLite file."""
    return ledger_factory()


@pytest.fixture
def order_factory(request: pytest.FixtureRequest) -> Callable[..., Order]:
    """Register an order and return it: a fresh id, one hour after the ledger's clock, no label.

    Override any of ``order_id``, ``send_at``, ``label``; ``ledger=`` registers in another ledger
    than `tmp_ledger` (which is then not even created).
    """
    ids = itertools.count(1)

    def make(**overrides: Any) -> Order:
        target: Ledger = overrides.pop("ledger", None) or request.getfixturevalue("tmp_ledger")
        order_id = overrides.pop("order_id", f"order-{next(ids)}")
        send_at = overrides.pop("send_at", target.now() + timedelta(hours=1))
        return target.register(order_id, send_at=send_at, **overrides)

    return make


@pytest.fixture
def sandbox_options() -> dict[str, Any]:
    """The `Sandbox` keyword arguments `make_sandbox` starts from (and `make_client` takes its
    credentials from); a test module overrides this fixture for its own key, hash, clock, seed."""
    return {}


@pytest.fixture
def make_sandbox(sandbox_options: dict[str, Any]) -> Iterator[Callable[..., Sandbox]]:
    """Start a sandbox on a free port: `sandbox_options`, then `faults` and any keyword argument
    of `Sandbox`. Every sandbox started is stopped after the test."""
    started: list[Sandbox] = []

    def make(faults: Faults | None = None, **overrides: Any) -> Sandbox:
        sandbox = Sandbox(**{**sandbox_options, "faults": faults, **overrides}).start()
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        sandbox.stop()


@pytest.fixture
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    """One sandbox with `sandbox_options` and no faults."""
    return make_sandbox()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on a free port (tests/receiver.py), closed after the test."""
    made = Receiver()
    yield made
    made.close()
