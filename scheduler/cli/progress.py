"""A progress bar for long commands, drawn only for a person watching a terminal.

`Progress` draws one line that it rewrites (``\\r``) on the stream it is given, and only when that
stream is a terminal: output piped into a file or another program stays free of it. Redrawn at
most every `_EVERY` seconds, so a loop may call `update` as often as it likes.
"""

from __future__ import annotations

import time
from typing import TextIO

__all__ = ["Progress"]

_WIDTH = 30
_EVERY = 0.1


class Progress:
    """``what [#########.........]  1234/5000`` on a terminal; nothing anywhere else."""

    def __init__(self, what: str, total: int, stream: TextIO, *, enabled: bool = True) -> None:
        self.what = what
        self.total = total
        self.stream = stream
        self.enabled = enabled and _is_terminal(stream)
        self._last = 0.0
        self._drawn = False

    def update(self, done: int, *, extra: str = "", force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < _EVERY:
            return
        self._last = now
        filled = _WIDTH if self.total <= 0 else min(_WIDTH, _WIDTH * done // self.total)
        bar = "#" * filled + "." * (_WIDTH - filled)
        tail = f"  {extra}" if extra else ""
        self.stream.write(f"\r\x1b[2K{self.what} [{bar}] {done}/{self.total}{tail}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Clear the bar's line, so what is printed next starts on a clean line."""
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._drawn = False


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
