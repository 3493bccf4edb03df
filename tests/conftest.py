"""Shared fixtures: an in-process daemon on loopback with real TLS and a real admin socket."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

sys.path.insert(0, str(Path(__file__).parent))

from pg import pg_server  # noqa: F401  (the throwaway PostgreSQL server, session-scoped)
from support import Server, make_config

from momedod.server.daemon import serve

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
