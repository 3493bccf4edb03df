"""Live data for the admin ``subscribe`` stream and ``server.stats``.

``LOG_RING`` keeps the daemon's recent warnings and errors: :func:`install_log_hook` adds a
structlog processor that copies every event of level warning or higher, after the log's own
redaction, into this bounded buffer. Subscribers read it by sequence number, so a slow one
misses old entries instead of holding memory.

``RateSampler`` turns monotonically growing counters (the Prometheus counters of accepted and
delivered messages) into per-second rates over the last few seconds; the daemon samples it
from a small task.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from momedod.observability import logging as mlog

__all__ = ["LOG_RING", "LogRing", "RateSampler", "counter_total", "install_log_hook"]

_LOG_LEVELS = {"warning": "warning", "warn": "warning", "error": "error", "critical": "error"}
_SKIP_FIELDS = frozenset({"event", "level", "timestamp", "exc_info", "stack_info", "_prio"})
_MAX_FIELD_CHARS = 500


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= _MAX_FIELD_CHARS else text[: _MAX_FIELD_CHARS - 1] + "…"


class LogRing:
    """The last ``size`` warning/error log entries, numbered from 1; thread-safe."""

    def __init__(self, size: int = 200) -> None:
        self._lock = threading.Lock()
        self._entries: deque[tuple[int, dict[str, Any]]] = deque(maxlen=size)
        self._seq = 0

    @property
    def seq(self) -> int:
        """Number of the newest entry (0: none yet)."""
        with self._lock:
            return self._seq

    def add(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._seq += 1
            self._entries.append((self._seq, entry))

    def since(self, seq: int) -> list[tuple[int, dict[str, Any]]]:
        """Entries numbered above ``seq`` that are still kept, oldest first."""
        with self._lock:
            if self._seq <= seq:
                return []
            return [(n, e) for n, e in self._entries if n > seq]

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        """The structlog processor: copy warnings and errors, pass the event on unchanged."""
        level = _LOG_LEVELS.get(str(event.get("level", method)), _LOG_LEVELS.get(method))
        if level is None:
            return event
        try:
            copy = mlog._redact(logger, method, dict(event))
            fields = {
                str(k): _json_value(v)
                for k, v in copy.items()
                if k not in _SKIP_FIELDS and not str(k).startswith("_")
            }
            if copy.get("exc_info"):
                fields["exception"] = True
            self.add(
                {
                    "level": level,
                    "event": str(copy.get("event", "")),
                    "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "fields": fields,
                }
            )
        except Exception:  # never let the copy break logging itself
            pass
        return event


LOG_RING = LogRing()
"""The daemon's warnings and errors (process-wide, like the structlog configuration)."""


def install_log_hook(ring: LogRing = LOG_RING) -> None:
    """Add ``ring`` to structlog's processors, right after the redaction step if there is one
    (else before the renderer). Idempotent; call again after every ``logging.configure``."""
    processors: list[Any] = list(structlog.get_config()["processors"])
    if any(p is ring for p in processors):
        return
    try:
        at = processors.index(mlog._redact) + 1
    except ValueError:
        at = max(len(processors) - 1, 0)
    processors.insert(at, ring)
    structlog.configure(processors=processors)


def counter_total(counter: Any) -> float:
    """Current value of a prometheus_client Counter (summed over its label children)."""
    total = 0.0
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                total += float(sample.value)
    return total


class RateSampler:
    """Per-second rates of growing counters over the last ``window`` seconds.

    ``read()`` returns the counters' current values; call :meth:`sample` regularly (every
    second or faster) with a monotonic time. :meth:`rates` compares the current values with
    the newest sample at least ``window`` seconds old (or the oldest one, shortly after
    start), so the average covers ``window`` to ``window`` + one sampling interval.
    """

    def __init__(self, read: Callable[[], Sequence[float]], window: float = 5.0) -> None:
        self._read = read
        self.window = window
        self._samples: deque[tuple[float, tuple[float, ...]]] = deque()

    def sample(self, now: float) -> None:
        self._samples.append((now, tuple(self._read())))
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def rates(self, now: float) -> tuple[list[float], float]:
        """(rate per counter, the seconds they are averaged over; 0 if not measured yet).

        Shortly after the first sample the span is at least one second: what happened since
        the start counts as the last second's traffic.
        """
        current = tuple(self._read())
        if not self._samples:
            return [0.0] * len(current), 0.0
        then, values = self._samples[0]
        for t, v in self._samples:  # the newest sample that is at least a window old
            if t > now - self.window:
                break
            then, values = t, v
        span = max(now - then, 1.0)
        return [max(0.0, (c - v) / span) for c, v in zip(current, values, strict=True)], span
