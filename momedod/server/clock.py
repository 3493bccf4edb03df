"""The server's wall clock: milliseconds since the Unix epoch, the ``now_ms`` every store
call and every timestamp on the wire is given (one definition for all server modules)."""

from __future__ import annotations

import time

__all__ = ["now_ms"]


def now_ms() -> int:
    """The wall-clock time in milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000
