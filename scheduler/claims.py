"""Who holds a claim and for how long: owner ids, whether an owner is gone, the lease length.

A claim names its owner as ``host:pid:random`` (`make_owner`), so a daemon can tell that a claim
belongs to a process of its own host that no longer runs (`owner_is_gone`) and take its work over
at once instead of waiting out the lease. Leases are long enough to outlast one whole provider
call (`lease_for`); the times themselves come from the lease clock (`Store.lease_now`).
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta

__all__ = ["forget_live_owner", "lease_for", "make_owner", "note_live_owner", "owner_is_gone"]

#: Owner ids of the daemons alive in this process (tests and benchmarks run several).
_LIVE_OWNERS: set[str] = set()


def lease_for(call_deadline_seconds: float) -> timedelta:
    """How long a claim stays ours without renewal: twice the provider call deadline plus 5 s.

    Every provider call ends within one overall deadline (`IletiMerkeziClient.call_deadline`,
    config `api.timeout_seconds`), so half the lease covers one whole call with 2.5 s to spare.
    The sequence renews the claim before each call once a quarter of the lease is gone, so what is
    left covers that call and one backoff wait (at most a quarter lease): a live daemon's
    in-flight call is never taken for a crashed one.
    """
    return timedelta(seconds=2 * call_deadline_seconds + 5)


def make_owner() -> str:
    """A claim owner id: host, pid and a random part (pids are reused after restarts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def note_live_owner(owner: str) -> None:
    """Record that a daemon of this process works under `owner` (so its claims are not stolen)."""
    _LIVE_OWNERS.add(owner)


def forget_live_owner(owner: str) -> None:
    """Record that nothing of `owner` is in flight any more: other daemons may take its claims."""
    _LIVE_OWNERS.discard(owner)


def owner_is_gone(owner: str, me: str) -> bool:
    """True when `owner` was a process of this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit() or owner == me:
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        # Our pid: a daemon of this very process, or an earlier incarnation that had the pid.
        return owner not in _LIVE_OWNERS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
