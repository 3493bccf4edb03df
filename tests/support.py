"""Helpers for integration tests: a real daemon (in-process or as a subprocess) on loopback."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from momedod.client import messenger
from momedod.client.profile import Profile, open_profile
from momedod.client.transport import Client, Credentials, connect, connect_invite
from momedod.config import (
    AbuseConfig,
    AdminConfig,
    Config,
    LimitsConfig,
    ListenerConfig,
    MetricsConfig,
    ServerConfig,
)
from momedod.protocol import frames as f
from momedod.protocol.connection import Connection, Role
from momedod.protocol.errors import ProtocolError
from momedod.protocol.invite import parse_invite_link
from momedod.protocol.userid import normalize
from momedod.server.daemon import Daemon

VENV_BIN = Path(sys.executable).parent


def make_config(
    state_dir: Path,
    *,
    port: int = 0,
    max_connections: int = 100,
    abuse: AbuseConfig | None = None,
    **limits: Any,
) -> Config:
    """A loopback config in ``state_dir``; ``limits`` override ``[limits]`` keys."""
    return Config(
        abuse=abuse or AbuseConfig(),
        server=ServerConfig(name="test", state_dir=state_dir),
        listeners=(
            ListenerConfig(address="127.0.0.1", port=port, max_connections=max_connections),
        ),
        limits=replace(LimitsConfig(), **limits),
        admin=AdminConfig(socket=state_dir / "admin.sock"),
        metrics=MetricsConfig(enabled=False),  # in-process daemons would share one port
    )


def admin_call(sock_path: Path, cmd: str, **args: Any) -> dict[str, Any]:
    """One blocking admin request over the JSON-lines socket; raises on an error reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        s.sendall(json.dumps({"id": 1, "cmd": cmd, "args": args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply = json.loads(buf)
    if not reply["ok"]:
        raise RuntimeError(f"{cmd}: {reply['error']}")
    return reply["result"]  # type: ignore[no-any-return]


async def admin(sock_path: Path, cmd: str, **args: Any) -> dict[str, Any]:
    return await trio.to_thread.run_sync(lambda: admin_call(sock_path, cmd, **args))


def new_message_id() -> bytes:
    return secrets.token_bytes(16)


@dataclass
class RawClient:
    """A TLS connection that speaks frames by hand, for bad-input tests."""

    stream: trio.SSLStream[Any]
    conn: Connection

    async def send_bytes(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, frame: f.Frame) -> None:
        await self.stream.send_all(self.conn.send(frame))

    async def next_frame(self, timeout: float = 5.0) -> f.Frame | None:
        """The next frame, or None when the server closed the connection."""
        with trio.fail_after(timeout):
            while True:
                frame = self.conn.next_event()
                if frame is not None:
                    return frame
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, ssl.SSLError):
                    return None
                if not data:
                    return None
                self.conn.receive_data(data)

    async def expect_closed(self, timeout: float = 5.0) -> None:
        while True:
            try:
                frame = await self.next_frame(timeout)
            except ProtocolError:
                return
            if frame is None:
                return

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def raw_connect(host: str, port: int) -> RawClient:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tcp = await trio.open_tcp_stream(host, port)
    stream = trio.SSLStream(tcp, ctx)
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return RawClient(stream, Connection(Role.CLIENT, 64 * 1024 * 1024))


def link_parts(link: str) -> tuple[str, int, bytes]:
    inv = parse_invite_link(link)
    return inv.host, inv.port, inv.fingerprint


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


class DaemonProcess:
    """``momedod run -c FILE`` as a real subprocess (for restart and SIGKILL tests)."""

    def __init__(self, workdir: Path, port: int, extra: str = "") -> None:
        self.workdir = workdir
        self.port = port
        self.state = workdir / "state"
        self.socket = workdir / "admin.sock"
        self.log_path = workdir / "momedod.log"
        self.config_path = workdir / "momedod.toml"
        self.metrics_port = free_port()
        self.config_path.write_text(
            f'[server]\nname = "proc"\nstate_dir = "{self.state}"\n'
            f'[[listener]]\naddress = "127.0.0.1"\nport = {port}\n'
            f'[admin]\nsocket = "{self.socket}"\n'
            f'[log]\nlevel = "debug"\nformat = "json"\n'
            f"[metrics]\nport = {self.metrics_port}\n{extra}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0, env_extra: dict[str, str] | None = None) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("STATE_DIRECTORY", "RUNTIME_DIRECTORY", "NOTIFY_SOCKET"))
        }
        env.update(env_extra or {})
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "momedod"), "run", "-c", str(self.config_path)],
            stdout=log,
            stderr=log,
            env=env,
            cwd=self.workdir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"momedod exited: {self.log_path.read_text()[-2000:]}")
            try:
                admin_call(self.socket, "server.info")
                return
            except (OSError, RuntimeError, ValueError):
                time.sleep(0.05)
        raise RuntimeError("momedod did not become ready")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


FEW_OTPKS = 3  # enrolling dozens of devices: fewer one-time prekeys each (20 by default)


async def enroll_many(server: Any, tmp_path: Path, names: list[str]) -> list[tuple[Profile, str]]:
    """Enroll one E2E client per name on ``server`` (a :class:`Server`), concurrently, each
    in its own profile ``tmp_path/p-NAME``; returns (profile, canonical user ID) in order."""
    out: dict[int, tuple[Profile, str]] = {}

    async def one(i: int, name: str) -> None:
        shown, link = await server.add_user(name)
        prof = open_profile(tmp_path / f"p-{name}", create=True)
        await messenger.enroll(prof, link, f"{name}-phone")
        out[i] = (prof, normalize(shown))

    async with trio.open_nursery() as nursery:
        for i, name in enumerate(names):
            nursery.start_soon(one, i, name)
    return [out[i] for i in range(len(names))]
