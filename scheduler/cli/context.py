"""What every command needs once its arguments are parsed: the config, logging, the ledger.

Apart from `scheduler.cli.commands` so that ``smsledger logs`` can start without importing the
ledger's models (SQLAlchemy and SQLModel take most of a second on a small machine): `open_ledger`
imports `ledger.api` only when a command opens the ledger.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ledger.config import Config, find_config_path, load_config
from ledger.errors import ConfigError
from ledger.logsetup import configure_logging

if TYPE_CHECKING:
    from ledger.api import Ledger

__all__ = ["POLL_SECONDS", "Context", "load_context", "open_ledger"]

#: How often `cancel --wait` and `logs --follow` look again, in seconds.
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Context:
    """What every command after parsing needs: the config and where it came from."""

    config: Config

    @property
    def config_hint(self) -> str:
        """``--config PATH `` to repeat in a suggested command, or "" for the defaults."""
        if self.config.source is None:
            return ""
        return f"--config {shlex.quote(str(Path(self.config.source).resolve()))} "


def load_context(args: argparse.Namespace) -> Context:
    """Read the config and set up logging, as every command but sandbox and demo does."""
    config = load_config(find_config_path(args.config))
    try:
        configure_logging(config.log, secrets=(config.api.key, config.api.hash))
    except OSError as exc:
        raise ConfigError(
            f"log.path {config.log.path!r} cannot be opened: {exc.strerror or exc}"
        ) from None
    return Context(config)


def open_ledger(ctx: Context, *, must_exist: bool = False) -> Ledger:
    """The config's ledger; `must_exist` for commands that only read or change existing orders,
    which must say that there is no ledger rather than create an empty one and answer from it."""
    from ledger.api import Ledger  # noqa: PLC0415 -- the models load only when a ledger is opened

    return Ledger.from_config(ctx.config, setup_logging=False, must_exist=must_exist)
