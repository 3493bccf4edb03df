"""Shared fixtures: an in-process daemon on loopback with real TLS and a real admin socket."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

sys.path.insert(0, str(Path(__file__).parent))

from support import admin, link_parts, make_config

from momedod.client.transport import Client, Credentials, connect, connect_invite
from momedod.server.daemon import Daemon, serve


@dataclass
class Server:
    """A running in-process daemon and shortcuts to use it like an operator and a client."""

    daemon: Daemon
    state_dir: Path

    @property
    def socket(self) -> Path:
        return self.daemon.config.admin.socket

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.daemon.listeners[0].bound[0]
        return host, port

    @property
    def fingerprint(self) -> bytes:
        return self.daemon.fingerprint

    async def admin(self, cmd: str, **args: Any) -> dict[str, Any]:
        return await admin(self.socket, cmd, **args)

    async def add_user(self, name: str) -> tuple[str, str]:
        """Create a user through the admin socket; returns (user_id, invite link)."""
        result = await self.admin("user.add", name=name)
        return result["user"]["user_id"], result["invite"]["link"]

    @asynccontextmanager
    async def enrolled(self, name: str) -> AsyncIterator[tuple[Client, Credentials]]:
        _uid, link = await self.add_user(name)
        host, port, _fp = link_parts(link)
        assert (host, port) == self.address
        async with connect_invite(link, f"{name}-phone") as (client, creds):
            yield client, creds

    async def enroll(self, name: str) -> Credentials:
        async with self.enrolled(name) as (_client, creds):
            return creds

    def connect(self, creds: Credentials) -> Any:
        return connect(creds)


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server(tmp_path: Path, nursery: trio.Nursery) -> StartServer:
    """Start a daemon with overridden ``[limits]``: ``await start_server(idle_timeout=1)``."""

    async def start(state_dir: Path | None = None, **options: Any) -> Server:
        config = make_config(state_dir or tmp_path / "state", **options)
        daemon = await nursery.start(serve, config)
        return Server(daemon, config.server.state_dir)

    return start


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    return await start_server()
