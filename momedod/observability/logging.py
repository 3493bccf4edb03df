"""Structured logging setup (structlog).

Format ``auto`` picks a console renderer on a TTY, logfmt with syslog priority prefixes when
stderr is the journal (``JOURNAL_STREAM`` names stderr's device and inode), and JSON otherwise.
Events carry sizes, kinds and IDs only: never payloads, keys or invite codes.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# syslog priorities understood by journald as a "<N>" line prefix.
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}

# Keys whose values must never reach a log line, whatever a caller passes by mistake.
_REDACT = frozenset(
    {
        "payload",
        "part",
        "record",
        "signature",
        "key",
        "private_key",
        "code",
        "invite_code",
        "transport_pub",
        "seed",
    }
)


def _redact(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    for name in _REDACT.intersection(event):
        event[name] = "[redacted]"
    return event


def _journal_stderr() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _priority_prefix(_logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    event["_prio"] = _PRIORITY.get(method, 6)
    return event


class _PrefixedLogfmt:
    def __init__(self) -> None:
        self._inner = structlog.processors.LogfmtRenderer(key_order=["event"])

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> str:
        prio = event.pop("_prio", 6)
        return f"<{prio}>" + self._inner(logger, method, event)


def resolve_format(fmt: str) -> str:
    """Return the concrete renderer name for a configured ``[log] format``."""
    if fmt != "auto":
        return fmt
    if _journal_stderr():
        return "journald"
    if sys.stderr.isatty():
        return "console"
    return "json"


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog for the daemon; safe to call more than once."""
    concrete = resolve_format(fmt)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _redact,
    ]
    if concrete == "console":
        processors += [
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(
                # Plain tracebacks: rich ones print local variables, which may hold payloads.
                colors=sys.stderr.isatty(),
                exception_formatter=structlog.dev.plain_traceback,
            ),
        ]
    elif concrete == "journald":
        # A traceback becomes one escaped value: journald splits entries at newlines, and
        # only the first line would carry the priority prefix.
        processors += [
            structlog.processors.format_exc_info,
            _priority_prefix,
            _PrefixedLogfmt(),
        ]
    elif concrete == "logfmt":
        processors += [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.LogfmtRenderer(key_order=["timestamp", "event"]),
        ]
    else:
        processors += [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
