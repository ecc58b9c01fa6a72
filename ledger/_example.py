"""The example configuration, shipped inside the package so an installed smsledger can print it.

``ledger/config.example.toml`` is package data (a test holds it identical to the repository's
top-level ``config.example.toml``, which the README links), read through `importlib.resources`
so it works from a wheel, an sdist install or a zip alike.
"""

from __future__ import annotations

from importlib.resources import files

__all__ = ["example_config"]


def example_config() -> str:
    """The documented example ``smsledger.toml``: every key with its default."""
    return (files("ledger") / "config.example.toml").read_text(encoding="utf-8")
