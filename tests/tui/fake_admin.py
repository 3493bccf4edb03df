"""A scripted admin-protocol server on a Unix socket, for deterministic TUI snapshots.

It speaks the daemon's JSON-lines protocol (``momedod.admin.protocol``: one reply line per
request, ``subscribe`` followed by event lines) but answers from fixed data, so the screens
do not show random user IDs, fingerprints, times or uptimes. It runs on the asyncio loop of
the test (the one ``App.run_test`` runs on) and records every request it gets.

The canned replies have the exact shapes the real daemon sends (captured from ``momedod``
and fixed by hand); ``replies`` maps a command to its result, or to a function of the
request's arguments returning a result or raising AdminError.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from momedod.admin.protocol import (
    AdminError,
    AdminErrorCode,
    Event,
    Response,
    decode_request,
    encode_event,
    encode_response,
)

Reply = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]

FINGERPRINT = "DSJB425DUCKUZO6I7B5LEHJ6POREUK25IU4FHAVM5IOZ5XLYYISQ"
LINK = (
    "momedo://chat.schule-am-see.de:7443/invite/DQA1ZZGQBB0YBS007ZJ2#"
    "DSJB425DUCKUZO6I7B5LEHJ6POREUK25IU4FHAVM5IOZ5XLYYISQ"
)

SERVER_INFO: dict[str, Any] = {
    "name": "Schule am See",
    "version": "0.1.0",
    "uptime_s": 273_781.4,
    "public_address": "chat.schule-am-see.de:7443",
    "fingerprint": FINGERPRINT,
    "state_dir": "/var/lib/momedo",
    "online_devices": 17,
    "listeners": [
        {
            "address": "0.0.0.0",
            "port": 7443,
            "fingerprint": FINGERPRINT,
            "connections": 19,
            "max_connections": 10000,
            "certificate_expires": "2036-11-26T21:59:00+00:00",
        }
    ],
    "users": 6,
    "devices": 9,
    "mailbox_entries": 42,
}

SERVER_STATS: dict[str, Any] = {
    "uptime_s": 273_781.4,
    "connections": 19,
    "listeners": [
        {"address": "0.0.0.0", "port": 7443, "connections": 19, "max_connections": 10000}
    ],
    "online_devices": 17,
    "messages_accepted_per_s": 3.4,
    "messages_delivered_per_s": 9.25,
    "rate_window_s": 10.0,
    "messages_accepted_total": 51234,
    "messages_delivered_total": 160110,
    "time": "2026-12-01T10:15:00Z",
    "users": 6,
    "devices": 9,
    "mailbox_entries": 42,
    "mailbox_oldest_age_s": 5_420.0,
    "store_bytes": 23_053_600,
}

LOG_EVENTS: list[dict[str, Any]] = [
    {
        "level": "warning",
        "event": "tls.handshake_timeout",
        "time": "2026-12-01T10:12:03Z",
        "fields": {"peer": "203.0.113.9"},
    },
    {
        "level": "error",
        "event": "reload.failed",
        "time": "2026-12-01T10:14:41Z",
        "fields": {"error": "listener port 7443 cannot change without a restart"},
    },
]


def _user(
    user_id: str,
    name: str,
    *,
    devices: int = 1,
    disabled: bool = False,
    last_seen: str | None = "2026-12-01T09:58:00Z",
    mailbox: int = 0,
) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "name": name,
        "created": "2026-11-02T08:00:00Z",
        "disabled": disabled,
        "devices": devices,
        "last_seen": last_seen,
        "mailbox": mailbox,
    }


USERS: list[dict[str, Any]] = [
    _user("GSRZ-2T7A", "Anna Schmidt", devices=2, mailbox=3),
    _user("M8N2-2HTR", "Ben Meyer"),
    _user("Q7AW-GNX9", "Carla Vogt", disabled=True, devices=0),
    _user("T4KP-9WQE", "Dilara Öztürk", mailbox=39),
    _user("X2HB-7RMC", "Emil Kraus", devices=0, last_seen=None),
    _user("ZC5D-3JVL", "Frau Dr. Johanna Lindqvist-Hohenberger (Sekretariat)", devices=4),
]

DEVICES: list[dict[str, Any]] = [
    {
        "device_id": 1,
        "name": "Pixel 7",
        "created": "2026-11-02T08:12:00Z",
        "last_seen": "2026-12-01T09:58:00Z",
        "revoked": None,
        "mailbox": 3,
    },
    {
        "device_id": 2,
        "name": "iPad (Lehrerzimmer)",
        "created": "2026-11-03T07:40:00Z",
        "last_seen": "2026-11-28T14:02:00Z",
        "revoked": None,
        "mailbox": 0,
    },
    {
        "device_id": 3,
        "name": "old phone",
        "created": "2026-11-02T08:00:00Z",
        "last_seen": "2026-11-10T16:30:00Z",
        "revoked": "2026-11-11T07:05:00Z",
        "mailbox": 0,
    },
]

AUDIT: list[dict[str, Any]] = [
    {
        "id": 12,
        "time": "2026-12-01T10:02:11Z",
        "uid": 1001,
        "action": "device.revoke",
        "target": "GSRZ-2T7A/3",
        "user_id": "GSRZ-2T7A",
        "detail": {},
    },
    {
        "id": 11,
        "time": "2026-12-01T09:47:30Z",
        "uid": 1001,
        "action": "user.invite",
        "target": "X2HB-7RMC",
        "user_id": "X2HB-7RMC",
        "detail": {},
    },
    {
        "id": 10,
        "time": "2026-11-30T16:20:05Z",
        "uid": 1002,
        "action": "user.disable",
        "target": "Q7AW-GNX9",
        "user_id": "Q7AW-GNX9",
        "detail": {},
    },
    {
        "id": 9,
        "time": "2026-11-30T03:15:00Z",
        "uid": 0,
        "action": "server.backup",
        "target": "/var/backups/momedo/2026-11-30T0315",
        "user_id": None,
        "detail": {},
    },
    {
        "id": 8,
        "time": "2026-11-29T11:00:42Z",
        "uid": None,
        "action": "user.add",
        "target": "X2HB-7RMC",
        "user_id": "X2HB-7RMC",
        "detail": {"name": "Emil Kraus"},
    },
]


def _group(
    conv_id: str, name: str | None, kind: str, members: int, epoch: int, managed: bool = True
) -> dict[str, Any]:
    return {
        "conv_id": conv_id,
        "name": name,
        "kind": kind,
        "managed": managed,
        "epoch": epoch,
        "members": members,
        "created": "2026-11-02T08:30:00Z",
    }


GROUPS: list[dict[str, Any]] = [
    _group("a11d1ee420e43dd23f178d465626ee1e", "Klasse 5a", "group", 4, 6),
    _group("48286a469f5733c41e3793b26a986083", "Eltern 5a", "channel", 3, 2),
    _group("9c0e3b7d51a24f6e8b1d2c3a4f5e6d7c", "Lehrerzimmer", "group", 6, 11),
    _group(
        "f3a9d27e0b6c4e1d9a8b7c6d5e4f3a2b",
        "Schulkonferenz 2026/27: Vertreterinnen und Vertreter der Eltern",
        "channel",
        2,
        1,
    ),
    _group("1b2c3d4e5f60718293a4b5c6d7e8f901", "Fußball AG", "group", 4, 3, managed=False),
]

GROUP_MEMBERS: list[dict[str, Any]] = [
    {"user_id": "M8N2-2HTR", "name": "Ben Meyer", "role": "member"},
    {"user_id": "GSRZ-2T7A", "name": "Anna Schmidt", "role": "admin"},
    {"user_id": "T4KP-9WQE", "name": "Dilara Öztürk", "role": "member"},
    {"user_id": "K9PD-4XWA", "name": None, "role": "member"},
]


QUIET_POLICIES: list[dict[str, Any]] = [
    {
        "name": "Kollegium",
        "window": "Mon-Fri 07:00-18:00 Europe/Berlin",
        "defer_delivery": True,
        "users": [],
        "groups": ["Lehrerzimmer"],
        "source": "operator",
        "open_now": True,
    },
    {
        "name": "Verwaltung",
        "window": "Mon-Thu 07:30-16:00 Europe/Berlin",
        "defer_delivery": False,
        "users": ["M8N2-2HTR", "T4KP-9WQE"],
        "groups": [],
        "source": "config",
        "open_now": False,
    },
    {
        "name": "user:GSRZ-2T7A",
        "window": "Mon-Fri 08:00-15:00 Europe/Berlin",
        "defer_delivery": False,
        "users": ["GSRZ-2T7A"],
        "groups": [],
        "source": "user",
        "open_now": True,
    },
]

QUIET_URGENT: dict[str, list[str]] = {"users": ["GSRZ-2T7A"], "groups": ["Eltern 5a"]}


def default_replies() -> dict[str, Reply]:
    """Answers for every command the console uses; tests replace entries as they need."""
    invite = {"code": "DQA1ZZGQBB0YBS007ZJ2", "link": LINK, "expires": "2026-12-08T10:15:00Z"}

    def user_add(args: dict[str, Any]) -> dict[str, Any]:
        user = _user("HV3N-8KQD", args["name"], devices=0, last_seen=None)
        return {"user": user, "invite": invite}

    def by_id(args: dict[str, Any]) -> dict[str, Any]:
        for user in USERS:
            if user["user_id"] == args["user_id"]:
                return {"user": user}
        raise AdminError(AdminErrorCode.NOT_FOUND, f"no user {args['user_id']}")

    return {
        "server.info": SERVER_INFO,
        "server.stats": SERVER_STATS,
        "user.list": {"users": USERS, "next": None},
        "user.add": user_add,
        "user.disable": by_id,
        "user.enable": by_id,
        "user.delete": lambda args: {"deleted": args["user_id"]},
        "user.invite": lambda args: {**by_id(args), "invite": invite},
        "device.list": {"devices": DEVICES},
        "device.revoke": lambda args: {"device": DEVICES[0]},
        "audit.list": {"entries": AUDIT, "next": None},
        "group.list": {"groups": GROUPS},
        "quiet.list": {"policies": QUIET_POLICIES, "urgent": QUIET_URGENT},
        "quiet.set": lambda args: {"policy": {**args, "source": "operator"}},
        "quiet.delete": lambda args: {"deleted": args["name"]},
        "urgent.set": lambda args: {
            "target": args.get("user_id") or args["group"],
            "allowed": True,
        },
        # the roster is left out: the snapshots show groups, changes are tested on momedod
        "group.show": lambda args: {
            "group": next(g for g in GROUPS if g["conv_id"] == args["group"]),
            "members": GROUP_MEMBERS,
            "roster": None,
        },
    }


class FakeAdmin:
    """Serves ``replies`` on a Unix socket at ``path``; use as ``async with FakeAdmin(path)``."""

    def __init__(self, path: Path, replies: dict[str, Reply] | None = None) -> None:
        self.path = path
        self.replies = default_replies() if replies is None else replies
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.stats: dict[str, Any] = SERVER_STATS
        self.log_events: list[dict[str, Any]] = LOG_EVENTS
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FakeAdmin:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._server = await asyncio.start_unix_server(self._serve, os.fspath(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _answer(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        reply = self.replies.get(cmd)
        if reply is None:
            raise AdminError(AdminErrorCode.UNKNOWN_COMMAND, f"unknown command {cmd!r}")
        return copy.deepcopy(reply(args) if callable(reply) else reply)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while line := await reader.readline():
                request = decode_request(line)
                self.requests.append((request.cmd, request.args))
                if request.cmd == "subscribe":
                    interval = float(request.args.get("interval", 1.0))
                    result = {"subscribed": True, "interval": interval}
                    writer.write(encode_response(Response(id=request.id, result=result)))
                    await self._stream(writer, interval)
                    return
                try:
                    response = Response(request.id, result=self._answer(request.cmd, request.args))
                except AdminError as e:
                    response = Response(request.id, error=e)
                writer.write(encode_response(response))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _stream(self, writer: asyncio.StreamWriter, interval: float) -> None:
        """Like the daemon: stats at once and every interval; the log events once."""
        writer.write(encode_event(Event("stats", copy.deepcopy(self.stats))))
        for record in self.log_events:
            writer.write(encode_event(Event("log", copy.deepcopy(record))))
        await writer.drain()
        while True:
            await asyncio.sleep(interval)
            writer.write(encode_event(Event("stats", copy.deepcopy(self.stats))))
            await writer.drain()
