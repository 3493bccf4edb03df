"""Quiet hours: when work messages may reach a person's phone, decided without I/O.

A policy names a *working window* (days, from, to, time zone): inside it everything flows;
outside it the users under the policy are in quiet hours, so the server holds their push
wake-ups until the window opens again and, with ``defer_delivery``, holds back live delivery
of non-urgent messages to their mobile devices. Urgent messages (from senders or channels
the operator allows) always pass. Time is an argument (Unix seconds), never read here.
Several policies for one user: quiet if any of them is, until all of them are open.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "DAY_NAMES",
    "QuietPolicy",
    "QuietState",
    "evaluate",
    "parse_days",
    "parse_time",
    "parse_window",
]

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_TIME = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)|(24):(00)")


def parse_days(text: str) -> frozenset[int]:
    """``Mon-Fri``, ``Mon,Wed,Fri``, ``Sat-Sun`` or ``daily`` as weekday numbers (Mon = 0)."""
    if text.strip().lower() == "daily":
        return frozenset(range(7))
    lower = [d.lower() for d in DAY_NAMES]
    days: set[int] = set()
    for part in text.replace(" ", "").split(","):
        first, _, last = part.partition("-")
        try:
            a = lower.index(first.lower())
            b = lower.index(last.lower()) if last else a
        except ValueError:
            raise ValueError(f"{text!r}: days are Mon..Sun, e.g. 'Mon-Fri' or 'Mon,Wed'") from None
        if b < a:
            raise ValueError(f"{text!r}: write a range from the earlier day, e.g. 'Mon-Fri'")
        days.update(range(a, b + 1))
    return frozenset(days)


def parse_time(text: str) -> int:
    """``HH:MM`` (24 h; ``24:00`` is the end of the day) as minutes after midnight."""
    m = _TIME.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r}: expected a time HH:MM (00:00-24:00)")
    hours, minutes = (m[1], m[2]) if m[1] is not None else (m[3], m[4])
    return int(hours) * 60 + int(minutes)


def parse_window(text: str) -> dict[str, str]:
    """``"Mon-Fri 07:00-18:00 Europe/Berlin"`` as the ``days``/``start``/``end``/``timezone``
    keys of a ``[[quiet_hours]]`` table. Raises ValueError."""
    words = text.split()
    if len(words) != 3 or words[1].count("-") != 1:
        raise ValueError(
            f"{text!r}: expected DAYS FROM-TO TIMEZONE, e.g. 'Mon-Fri 07:00-18:00 Europe/Berlin'"
        )
    start, _, end = words[1].partition("-")
    parse_days(words[0])
    parse_time(start)
    parse_time(end)
    return {"days": words[0], "start": start, "end": end, "timezone": words[2]}


def _days_text(days: frozenset[int]) -> str:
    ordered = sorted(days)
    if ordered == list(range(7)):
        return "daily"
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 2:
        return f"{DAY_NAMES[ordered[0]]}-{DAY_NAMES[ordered[-1]]}"
    return ",".join(DAY_NAMES[d] for d in ordered)


@dataclass(frozen=True)
class QuietPolicy:
    """One working window and whom it applies to (user IDs, and members of named groups)."""

    name: str
    days: frozenset[int]
    start: int  # minutes after local midnight: the window opens
    end: int  # ... and closes (start < end; a window does not span midnight)
    timezone: str
    defer_delivery: bool = False
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    source: str = "config"  # "config" (TOML, read-only) or "operator" (momedoctl)

    def __post_init__(self) -> None:
        if not self.days:
            raise ValueError("a policy needs at least one working day")
        if not 0 <= self.start < self.end <= 24 * 60:
            raise ValueError("'from' must be earlier than 'to' (a window cannot span midnight)")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {self.timezone!r} (e.g. 'Europe/Berlin')"
            ) from None

    @property
    def window(self) -> str:
        """The window as people write it: ``Mon-Fri 07:00-18:00 Europe/Berlin``."""
        s, e = self.start, self.end
        return (
            f"{_days_text(self.days)} {s // 60:02d}:{s % 60:02d}-{e // 60:02d}:{e % 60:02d}"
            f" {self.timezone}"
        )

    def is_open(self, now: float) -> bool:
        """True inside the working window at Unix time ``now``."""
        local = datetime.fromtimestamp(now, ZoneInfo(self.timezone))
        minute = local.hour * 60 + local.minute
        return local.weekday() in self.days and self.start <= minute < self.end

    def next_open(self, now: float) -> float:
        """The Unix time the window next opens (``now`` itself if it is open)."""
        if self.is_open(now):
            return now
        tz = ZoneInfo(self.timezone)
        local = datetime.fromtimestamp(now, tz)
        for ahead in range(8):
            day = (local + timedelta(days=ahead)).date()
            if day.weekday() not in self.days:
                continue
            opens = datetime(
                day.year, day.month, day.day, self.start // 60, self.start % 60, tzinfo=tz
            )
            if opens.timestamp() > now:
                return opens.timestamp()
        raise AssertionError("a policy with a working day opens within a week")

    def to_json(self) -> dict[str, object]:
        """As the admin socket shows it."""
        return {
            "name": self.name,
            "window": self.window,
            "defer_delivery": self.defer_delivery,
            "users": list(self.users),
            "groups": list(self.groups),
            "source": self.source,
        }


@dataclass(frozen=True)
class QuietState:
    """A user's state at one moment."""

    quiet: bool = False
    defer: bool = False  # quiet, and a quiet policy defers live delivery to mobile devices
    opens_at: float = 0.0  # when all of the user's quiet policies are open again


OPEN = QuietState()


def evaluate(policies: Iterable[QuietPolicy], now: float) -> QuietState:
    """The combined state of the policies that apply to one user."""
    policies = tuple(policies)
    closed = [p for p in policies if not p.is_open(now)]
    if not closed:
        return OPEN
    # Opening one window may find another closed by then: step until all are open together.
    at = now
    for _ in range(16):
        at = max(p.next_open(at) for p in policies)
        if all(p.is_open(at) for p in policies):
            break
    return QuietState(True, any(p.defer_delivery for p in closed), at)
