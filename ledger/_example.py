"""The example configuration, shipped inside the package so an installed smsledger can print it.

``ledger/config.example.toml`` is package data and the only copy (the README links it), read
through `importlib.resources` so it works from a wheel, an sdist install or a zip alike.
"""

from __future__ import annotations

from importlib.resources import files

__all__ = ["example_config"]


def example_config() -> str:
    """The documented example ``smsledger.toml``: every key with its default."""
    return (files("ledger") / "config.example.toml").read_text(encoding="utf-8")
