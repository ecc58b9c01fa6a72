"""The iletiMerkezi provider: the client smsledger speaks it with, its errors and wire format.

Nothing here imports the ledger. The sandbox (`scheduler.provider.sandbox`), a local stand-in for
the provider, is imported only when asked for.
"""

from __future__ import annotations

# The package's surface is exactly its modules' public names: listed once, in each module.
from scheduler.provider import client, errors
from scheduler.provider.client import *  # noqa: F403
from scheduler.provider.errors import *  # noqa: F403

__all__ = client.__all__ + errors.__all__
