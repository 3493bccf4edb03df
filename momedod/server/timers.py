"""One timer task for every session: authentication deadlines, pings and idle timeouts.

A task per session that sleeps until its next deadline costs memory for every idle connection
and a wake-up per check. Instead each session keeps at most one entry in a shared heap: the
time of its next check. The entry is not moved when the session receives data (that would
cost a heap operation per frame); when it comes due, the session looks at its own clock
(``on_timer``) and answers when to check next, or None when it needs no more checks.
``schedule`` replaces a session's entry (the old one is skipped when it comes due); ``cancel``
drops it.
"""

from __future__ import annotations

import heapq
import math
from itertools import count
from typing import Protocol

import structlog
import trio

log = structlog.get_logger("momedod.timers")


class Timed(Protocol):
    def on_timer(self, now: float) -> float | None: ...


class Timers:
    """The heap of next checks, served by one task started in ``nursery`` when needed."""

    def __init__(self) -> None:
        self.nursery: trio.Nursery | None = None  # where the task runs (the session nursery)
        self._heap: list[tuple[float, int, Timed]] = []
        self._current: dict[Timed, int] = {}  # each session's live entry
        self._order = count()
        self._running = False
        self._sleep: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, when: float, session: Timed) -> None:
        token = self._current[session] = next(self._order)
        heapq.heappush(self._heap, (when, token, session))
        if self._sleep is not None and when < self._sleep.deadline:
            self._sleep.deadline = when
        if not self._running:
            if self.nursery is None:
                raise RuntimeError("Timers.nursery is not set")
            self.nursery.start_soon(self._run)
            self._running = True

    def cancel(self, session: Timed) -> None:
        self._current.pop(session, None)

    async def _run(self) -> None:
        heap = self._heap
        try:
            while heap:
                with trio.CancelScope(deadline=heap[0][0]) as self._sleep:
                    await trio.sleep_forever()
                self._sleep = None
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    _, token, session = heapq.heappop(heap)
                    if self._current.get(session) != token:
                        continue
                    try:
                        nxt = session.on_timer(now)
                    except Exception:  # a bug in one session must not stop everyone's timers
                        log.exception("timer.failed")
                        self._current.pop(session, None)
                        continue
                    if nxt is None:
                        del self._current[session]
                    else:
                        token = self._current[session] = next(self._order)
                        heapq.heappush(heap, (max(nxt, now), token, session))
        finally:
            self._sleep = None
            self._running = False

    @property
    def next_due(self) -> float:
        return self._heap[0][0] if self._heap else math.inf
