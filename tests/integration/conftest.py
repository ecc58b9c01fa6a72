"""Fixtures of the integration tier: clients of a sandbox over real HTTP."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

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
