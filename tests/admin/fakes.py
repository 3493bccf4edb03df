"""In-memory stand-ins for the store and the daemon, for testing the admin side alone."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from momedod.config import Config
from momedod.protocol import userid
from momedod.protocol.errors import ErrorCode
from momedod.store import (
    AuditEntry,
    AuditNote,
    Device,
    InvalidCursor,
    Invite,
    NotFound,
    StoreStats,
    User,
    UserPage,
    UserQuery,
    UserSummary,
)
from momedod.store.base import AUDIT_FORBIDDEN_KEYS, display_device, display_user
from momedod.store.txn import fold_text

NOW_MS = 1_795_978_800_000  # 2026-11-29T19:00:00Z; invites made now expire 2026-12-06
FINGERPRINT = "A" * 52


class FakeStore:
    """The user/device part of the Store API, in dictionaries."""

    def __init__(self, seed: int = 1) -> None:
        self._random = random.Random(seed)
        self.users: dict[str, User] = {}
        self.deleted: set[str] = set()
        self.devices: dict[tuple[str, int], Device] = {}
        self.invites: list[tuple[Invite, int]] = []  # (invite, ttl_ms passed in)
        self.fail: Exception | None = None  # raised by the next call
        self.audit: list[AuditEntry] = []

    def _check(self) -> None:
        if self.fail is not None:
            fail, self.fail = self.fail, None
            raise fail

    def _user(self, user_id: str) -> User:
        if user_id not in self.users:
            raise NotFound(f"no user {user_id}")
        return self.users[user_id]

    def _invite(self, user_id: str, now_ms: int, ttl_ms: int) -> Invite:
        code = "".join(self._random.choice(userid.ALPHABET) for _ in range(20))
        invite = Invite(user_id, code, now_ms, now_ms + ttl_ms)
        self.invites.append((invite, ttl_ms))
        return invite

    def _audit(
        self,
        note: AuditNote | None,
        user_id: str | None = None,
        target: str | None = None,
        **extra: Any,
    ) -> int | None:
        if note is None:
            return None
        about = note.user_id or user_id
        detail = {**note.detail, **extra}
        for key in AUDIT_FORBIDDEN_KEYS.intersection(detail):
            del detail[key]
        entry = AuditEntry(
            id=len(self.audit) + 1,
            ts_ms=note.ts_ms,
            uid=note.uid,
            action=note.action,
            target=note.target or target or (display_user(about) if about else ""),
            user_id=about,
            detail=detail,
        )
        self.audit.append(entry)
        return entry.id

    async def create_user(
        self, name: str, now_ms: int, invite_ttl_ms: int, *, audit: AuditNote | None = None
    ) -> tuple[User, Invite]:
        self._check()
        user_id = userid.generate(self._random.randbytes)
        user = User(user_id, name, now_ms, disabled=False, deleted=False)
        self.users[user_id] = user
        invite = self._invite(user_id, now_ms, invite_ttl_ms)
        self._audit(audit, user_id)
        return user, invite

    async def get_user(self, user_id: str) -> User | None:
        self._check()
        return self.users.get(user_id)

    async def list_users(self) -> list[User]:
        self._check()
        return sorted(self.users.values(), key=lambda u: u.created_ms)

    async def set_user_disabled(
        self, user_id: str, disabled: bool, *, audit: AuditNote | None = None
    ) -> User:
        self._check()
        user = dataclasses.replace(self._user(user_id), disabled=disabled)
        self.users[user_id] = user
        self._audit(audit, user_id)
        return user

    async def set_user_bot(
        self, user_id: str, bot: bool, *, audit: AuditNote | None = None
    ) -> User:
        self._check()
        user = dataclasses.replace(self._user(user_id), bot=bot)
        self.users[user_id] = user
        self._audit(audit, user_id)
        return user

    async def rename_user(self, user_id: str, name: str, *, audit: AuditNote | None = None) -> User:
        self._check()
        old = self._user(user_id)
        user = dataclasses.replace(old, name=name)
        self.users[user_id] = user
        self._audit(audit, user_id, old_name=old.name, name=name)
        return user

    async def delete_user(
        self, user_id: str, now_ms: int | None = None, *, audit: AuditNote | None = None
    ) -> None:
        self._check()
        self._user(user_id)
        del self.users[user_id]
        self.deleted.add(user_id)
        for key in [k for k in self.devices if k[0] == user_id]:
            del self.devices[key]
        self._audit(audit, user_id)

    async def new_invite(
        self, user_id: str, now_ms: int, ttl_ms: int, *, audit: AuditNote | None = None
    ) -> Invite:
        self._check()
        self._user(user_id)
        invite = self._invite(user_id, now_ms, ttl_ms)
        self._audit(audit, user_id)
        return invite

    def _summary(self, user: User) -> UserSummary:
        devices = [d for (u, _), d in self.devices.items() if u == user.user_id]
        seen = [d.last_seen_ms for d in devices if d.last_seen_ms is not None]
        return UserSummary(
            user=user,
            active_devices=sum(1 for d in devices if d.active),
            devices=len(devices),
            last_seen_ms=max(seen) if seen else None,
            mailbox=sum(d.mailbox_count for d in devices),
        )

    async def bulk_invites(
        self,
        without_active_device: bool,
        now_ms: int,
        ttl_ms: int,
        *,
        audit: AuditNote | None = None,
    ) -> list[tuple[User, Invite]]:
        self._check()
        result = []
        for user in await self.list_users():
            if user.disabled:
                continue
            if without_active_device and self._summary(user).active_devices:
                continue
            result.append((user, self._invite(user.user_id, now_ms, ttl_ms)))
            self._audit(audit, user.user_id)
        return result

    async def find_users(
        self, query: UserQuery, *, after: str | None = None, limit: int = 100
    ) -> UserPage:
        self._check()
        ordered = list(enumerate(await self.list_users()))
        start = 0
        if after is not None:
            if not after.startswith("fake") or not after[4:].isdigit():
                raise InvalidCursor("bad cursor")
            start = int(after[4:]) + 1
        found: list[tuple[int, UserSummary]] = []
        for pos, user in ordered[start:]:
            s = self._summary(user)
            if query.disabled is not None and user.disabled != query.disabled:
                continue
            if query.without_active_device and s.active_devices:
                continue
            activity = s.last_seen_ms if s.last_seen_ms is not None else user.created_ms
            if query.inactive_since_ms is not None and activity >= query.inactive_since_ms:
                continue
            if (query.search or query.id_fragment) and not (
                (query.search and fold_text(query.search) in fold_text(user.name))
                or (query.id_fragment and query.id_fragment in user.user_id)
            ):
                continue
            found.append((pos, s))
        page = found[:limit]
        more = len(found) > limit
        return UserPage(tuple(s for _, s in page), f"fake{page[-1][0]}" if more else None)

    async def add_audit(self, note: AuditNote) -> int:
        self._check()
        entry_id = self._audit(note)
        assert entry_id is not None
        return entry_id

    async def list_audit(
        self,
        *,
        after_id: int | None = None,
        before_id: int | None = None,
        limit: int = 100,
        user_id: str | None = None,
        action: str | None = None,
    ) -> list[AuditEntry]:
        self._check()
        entries = [
            e
            for e in self.audit
            if (user_id is None or e.user_id == user_id)
            and (
                action is None
                or e.action == action
                or (action.endswith(".") and e.action.startswith(action))
            )
        ]
        if after_id is not None:
            return [e for e in entries if e.id > after_id][:limit]
        newest = [e for e in reversed(entries) if before_id is None or e.id < before_id]
        return newest[:limit]

    async def disk_usage(self) -> int:
        return 123_456

    async def get_device(self, user_id: str, device_id: int) -> Device | None:
        self._check()
        return self.devices.get((user_id, device_id))

    async def list_devices(self, user_id: str) -> list[Device]:
        self._check()
        self._user(user_id)
        return [d for (u, _), d in sorted(self.devices.items()) if u == user_id]

    async def revoke_device(
        self, user_id: str, device_id: int, now_ms: int, *, audit: AuditNote | None = None
    ) -> Device:
        self._check()
        if (user_id, device_id) not in self.devices:
            raise NotFound(f"no device {user_id}/{device_id}")
        device = dataclasses.replace(
            self.devices[(user_id, device_id)], revoked_ms=now_ms, mailbox_count=0
        )
        self.devices[(user_id, device_id)] = device
        self._audit(audit, user_id, target=display_device(user_id, device_id))
        return device

    async def list_conversations(self, user_id: str | None = None) -> list[Any]:
        return []  # groups: see test_admin_groups.py and test_admin_import.py (real store)

    async def stats(self) -> StoreStats:
        self._check()
        active = [d for d in self.devices.values() if d.active]
        return StoreStats(
            users=len(self.users),
            devices=len(active),
            mailbox_entries=sum(d.mailbox_count for d in active),
            payloads=0,
        )

    # --- test helpers (not Store API) ---

    def add_user(self, name: str, created_ms: int = NOW_MS - 86_400_000) -> User:
        user = User(userid.generate(self._random.randbytes), name, created_ms, False, False)
        self.users[user.user_id] = user
        return user

    def add_device(self, user_id: str, name: str, **fields: Any) -> Device:
        device_id = 1 + sum(1 for (u, _) in self.devices if u == user_id)
        values: dict[str, Any] = {
            "transport_pub": bytes(32),
            "created_ms": NOW_MS - 3_600_000,
            "revoked_ms": None,
            "last_seen_ms": None,
            "mailbox_count": 0,
        }
        values.update(fields)
        device = Device(user_id, device_id, name, **values)
        self.devices[(user_id, device_id)] = device
        return device


class FakeControl:
    """The daemon as the admin handler sees it; records every disconnect it is asked for."""

    def __init__(self, store: Any = None, config: Config | None = None) -> None:
        self.store = store if store is not None else FakeStore()
        self.config = config or Config()
        self.disconnected: list[tuple[Any, ...]] = []
        self.online: dict[str, int] = {}  # user_id -> live sessions

    def invite_link(self, code: str) -> str:
        return f"momedo://127.0.0.1:7443/invite/{code}#{FINGERPRINT}"

    def server_info(self) -> dict[str, Any]:
        return {
            "name": self.config.server.name,
            "version": "0.1.0",
            "uptime_s": 11_520.4,
            "public_address": "127.0.0.1:7443",
            "fingerprint": FINGERPRINT,
            "state_dir": str(self.config.server.state_dir),
            "listeners": [
                {
                    "address": "127.0.0.1",
                    "port": 7443,
                    "fingerprint": FINGERPRINT,
                    "connections": 3,
                    "max_connections": 10000,
                }
            ],
        }

    def server_stats(self) -> dict[str, Any]:
        return {
            "uptime_s": 11_520.4,
            "connections": 3,
            "listeners": [
                {"address": "127.0.0.1", "port": 7443, "connections": 3, "max_connections": 10000}
            ],
            "online_devices": 2,
            "messages_accepted_per_s": 1.5,
            "messages_delivered_per_s": 3.25,
            "rate_window_s": 5.0,
            "messages_accepted_total": 100,
            "messages_delivered_total": 250,
        }

    def disconnect_user(self, user_id: str, code: ErrorCode) -> int:
        self.disconnected.append((user_id, code))
        return self.online.pop(user_id, 0)

    def disconnect_device(self, user_id: str, device_id: int, code: ErrorCode) -> int:
        self.disconnected.append((user_id, device_id, code))
        return 1 if self.online.get(user_id) else 0

    def now_ms(self) -> int:
        return NOW_MS
