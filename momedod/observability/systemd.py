"""systemd integration without a dependency: sd_notify datagrams and the watchdog interval.

``notify("READY=1")`` is a no-op unless ``$NOTIFY_SOCKET`` is set (i.e. not under
``Type=notify``), so the daemon calls it unconditionally.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*states: str) -> bool:
    """Send state lines (``READY=1``, ``STOPPING=1``, ...) to systemd; False if not under it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError:
        return False
    return True


def monotonic_usec() -> str:
    """The ``MONOTONIC_USEC=`` line systemd wants beside ``RELOADING=1``."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``$WATCHDOG_USEC``), or None if not wanted."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
