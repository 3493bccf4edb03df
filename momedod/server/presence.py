"""Which devices are online, and the hooks to wake or disconnect them.

A session registers once it is authenticated. One session per device: a newer login replaces
the older one. A committed message is offered to the online recipients' sessions directly, so
live delivery needs no store read; the offer is a hint — the mailbox in the store stays the
truth — so an offer to a device that is offline is simply dropped, and ``on_offline`` (the
push wake-up queue, if any) is told about that device instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from momedod.observability import metrics
from momedod.protocol.errors import ErrorCode
from momedod.store import EnqueueResult, MailboxEntry

Addr = tuple[str, int]


class Online(Protocol):
    """What presence needs from a session."""

    addr: Addr

    def offer(self, entry: MailboxEntry) -> None: ...

    def kick(self, code: ErrorCode, message: str) -> None: ...

    def poke(self) -> None: ...


class Presence:
    """Online sessions by device address."""

    def __init__(self) -> None:
        self._by_addr: dict[Addr, Online] = {}
        self.on_offline: Callable[[Addr, bool], None] | None = None  # (addr, urgent); no blocking

    def __len__(self) -> int:
        return len(self._by_addr)

    def register(self, session: Online) -> None:
        old = self._by_addr.get(session.addr)
        self._by_addr[session.addr] = session
        metrics.ONLINE_DEVICES.set(len(self._by_addr))
        if old is not None and old is not session:
            old.kick(ErrorCode.SESSION_REPLACED, "this device logged in on a newer connection")

    def unregister(self, session: Online) -> None:
        if self._by_addr.get(session.addr) is session:
            del self._by_addr[session.addr]
            metrics.ONLINE_DEVICES.set(len(self._by_addr))

    def deliver(
        self,
        result: EnqueueResult,
        message_id: bytes,
        payload: bytes,
        parts: Sequence[bytes],
        urgent: bool = False,
    ) -> None:
        """Hand a just-committed message to the sessions of its online recipient devices."""
        ts = result.server_ts_ms
        for (uid, did, seq), part in zip(result.deliveries, parts, strict=True):
            session = self._by_addr.get((uid, did))
            if session is not None:
                session.offer(MailboxEntry(seq, message_id, ts, payload, part, urgent))
            elif self.on_offline is not None:
                self.on_offline((uid, did), urgent)

    def poke(self, addrs: Iterable[Addr] | None = None) -> int:
        """Make the sessions of ``addrs`` (None: every session) re-read their mailbox from the
        store: another node committed messages for them (momedod.server.cluster)."""
        if addrs is None:
            sessions = list(self._by_addr.values())
        else:
            sessions = [s for s in map(self._by_addr.get, addrs) if s is not None]
        for s in sessions:
            s.poke()
        return len(sessions)

    def disconnect_user(self, user_id: str, code: ErrorCode, message: str) -> int:
        victims = [s for (uid, _), s in self._by_addr.items() if uid == user_id]
        for s in victims:
            s.kick(code, message)
        return len(victims)

    def disconnect_device(self, addr: Addr, code: ErrorCode, message: str) -> int:
        session = self._by_addr.get(addr)
        if session is None:
            return 0
        session.kick(code, message)
        return 1

    def disconnect_all(self, code: ErrorCode, message: str) -> None:
        for s in list(self._by_addr.values()):
            s.kick(code, message)
