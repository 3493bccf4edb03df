"""In-memory stand-ins for the store and the daemon, for testing the admin side alone."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from momedod.config import Config
from momedod.protocol import userid
from momedod.protocol.errors import ErrorCode
from momedod.store import Device, Invite, NotFound, StoreStats, User

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

    async def create_user(self, name: str, now_ms: int, invite_ttl_ms: int) -> tuple[User, Invite]:
        self._check()
        user_id = userid.generate(self._random.randbytes)
        user = User(user_id, name, now_ms, disabled=False, deleted=False)
        self.users[user_id] = user
        return user, self._invite(user_id, now_ms, invite_ttl_ms)

    async def get_user(self, user_id: str) -> User | None:
        self._check()
        return self.users.get(user_id)

    async def list_users(self) -> list[User]:
        self._check()
        return sorted(self.users.values(), key=lambda u: u.created_ms)

    async def set_user_disabled(self, user_id: str, disabled: bool) -> User:
        self._check()
        user = dataclasses.replace(self._user(user_id), disabled=disabled)
        self.users[user_id] = user
        return user

    async def delete_user(self, user_id: str, now_ms: int | None = None) -> None:
        self._check()
        self._user(user_id)
        del self.users[user_id]
        self.deleted.add(user_id)
        for key in [k for k in self.devices if k[0] == user_id]:
            del self.devices[key]

    async def new_invite(self, user_id: str, now_ms: int, ttl_ms: int) -> Invite:
        self._check()
        self._user(user_id)
        return self._invite(user_id, now_ms, ttl_ms)

    async def get_device(self, user_id: str, device_id: int) -> Device | None:
        self._check()
        return self.devices.get((user_id, device_id))

    async def list_devices(self, user_id: str) -> list[Device]:
        self._check()
        self._user(user_id)
        return [d for (u, _), d in sorted(self.devices.items()) if u == user_id]

    async def revoke_device(self, user_id: str, device_id: int, now_ms: int) -> Device:
        self._check()
        if (user_id, device_id) not in self.devices:
            raise NotFound(f"no device {user_id}/{device_id}")
        device = dataclasses.replace(
            self.devices[(user_id, device_id)], revoked_ms=now_ms, mailbox_count=0
        )
        self.devices[(user_id, device_id)] = device
        return device

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

    def disconnect_user(self, user_id: str, code: ErrorCode) -> int:
        self.disconnected.append((user_id, code))
        return self.online.pop(user_id, 0)

    def disconnect_device(self, user_id: str, device_id: int, code: ErrorCode) -> int:
        self.disconnected.append((user_id, device_id, code))
        return 1 if self.online.get(user_id) else 0

    def now_ms(self) -> int:
        return NOW_MS
