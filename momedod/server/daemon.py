"""The momedod process: store, listeners, admin socket, housekeeping and signals in one trio run."""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import structlog
import trio

import momedod
from momedod.admin.server import AdminHandler, serve_admin
from momedod.config import Config
from momedod.observability import logging as mlog
from momedod.protocol.errors import ErrorCode
from momedod.protocol.invite import InviteLink, fingerprint_text
from momedod.server.listener import ListenerState, serve_listener
from momedod.server.presence import Presence
from momedod.server.session import SessionContext
from momedod.server.tls import TLSConfigError, ensure_self_signed, load_material
from momedod.store import Store, StoreError, open_store

log = structlog.get_logger("momedod")

EXPIRE_INTERVAL = 3600.0


class StartupError(Exception):
    """The daemon cannot start; the message tells the operator why."""


class Daemon:
    """Shared state of one running daemon; implements the admin ``ServerControl``."""

    def __init__(self, config: Config, store: Store, listeners: list[ListenerState]) -> None:
        self.config = config
        self.store = store
        self.listeners = listeners
        self.presence = Presence()
        self.started = time.monotonic()

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    @property
    def fingerprint(self) -> bytes:
        return self.listeners[0].tls.fingerprint

    def public_address(self) -> tuple[str, int]:
        if self.config.server.public_address:
            host, _, port_text = self.config.server.public_address.rpartition(":")
            return host.strip("[]"), int(port_text)
        first = self.listeners[0]
        host, port = first.bound[0] if first.bound else (first.config.address, first.config.port)
        if host in ("0.0.0.0", "::"):
            host = os.uname().nodename
        return host, port

    def invite_link(self, code: str) -> str:
        host, port = self.public_address()
        return str(InviteLink(host, port, code, self.fingerprint))

    def server_info(self) -> dict[str, Any]:
        host, port = self.public_address()
        return {
            "name": self.config.server.name,
            "version": momedod.__version__,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "public_address": f"{host}:{port}",
            "fingerprint": fingerprint_text(self.fingerprint),
            "state_dir": str(self.config.server.state_dir),
            "online_devices": len(self.presence),
            "listeners": [
                {
                    "address": ls.bound[0][0] if ls.bound else ls.config.address,
                    "port": ls.bound[0][1] if ls.bound else ls.config.port,
                    "fingerprint": fingerprint_text(ls.tls.fingerprint),
                    "connections": ls.connections,
                    "max_connections": ls.config.max_connections,
                }
                for ls in self.listeners
            ],
        }

    def disconnect_user(self, user_id: str, code: ErrorCode) -> int:
        return self.presence.disconnect_user(user_id, code, _KICK_TEXT.get(code, code.name))

    def disconnect_device(self, user_id: str, device_id: int, code: ErrorCode) -> int:
        return self.presence.disconnect_device(
            (user_id, device_id), code, _KICK_TEXT.get(code, code.name)
        )


_KICK_TEXT = {
    ErrorCode.USER_DISABLED: "this account was disabled by an operator",
    ErrorCode.DEVICE_REVOKED: "this device was revoked by an operator",
    ErrorCode.SHUTTING_DOWN: "server is shutting down",
}


def _fingerprint_of(listener: ListenerState) -> bytes:
    return listener.tls.fingerprint


def _load_tls(config: Config) -> list[ListenerState]:
    state_dir = config.server.state_dir
    states = []
    for lc in config.listeners:
        if lc.cert is not None and lc.key is not None:
            cert, key = lc.cert, lc.key
        else:
            hosts = [h for h in (lc.address, "localhost") if h not in ("0.0.0.0", "::")]
            cert, key = ensure_self_signed(state_dir, hosts or [os.uname().nodename])
        states.append(ListenerState(lc, load_material(cert, key, lc.tls_min_version)))
    return states


def _prepare_state_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise StartupError(f"{path}: cannot create state directory: {e.strerror}") from e
    if not os.access(path, os.W_OK):
        raise StartupError(f"{path}: state directory is not writable")


async def _housekeeping(daemon: Daemon) -> None:
    ttl_ms = daemon.config.limits.mailbox_ttl_days * 86_400_000
    while True:
        try:
            dropped = await daemon.store.expire(daemon.now_ms(), ttl_ms)
            if dropped:
                log.info("mailbox.expired", entries=dropped)
        except StoreError as e:
            log.error("mailbox.expire_failed", error=str(e))
        await trio.sleep(EXPIRE_INTERVAL)


def _banner(daemon: Daemon) -> None:
    fp = fingerprint_text(daemon.fingerprint)
    for ls in daemon.listeners:
        for host, port in ls.bound:
            log.info("listener.ready", address=host, port=port, tls=f"{ls.config.tls_min_version}+")
    log.info(
        "server.ready",
        fingerprint=fp,
        admin_socket=str(daemon.config.admin.socket),
        state_dir=str(daemon.config.server.state_dir),
    )
    if daemon.config.dev:
        host, port = daemon.public_address()
        print(
            f"\nmomedod {momedod.__version__} (dev mode) listening on {host}:{port}\n"
            f"  certificate fingerprint: {fp}\n"
            f"  state directory:         {daemon.config.server.state_dir}\n"
            f"  admin socket:            {daemon.config.admin.socket}\n"
            f"Next step, in another terminal of this checkout:\n"
            f"  .venv/bin/momedoctl --dev user add 'Your Name'\n"
            f"Stop with Ctrl-C.\n",
            file=sys.stderr,
            flush=True,
        )


async def serve(
    config: Config, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the daemon until cancelled (the tests start it in-process this way too)."""
    _prepare_state_dir(config.server.state_dir)
    try:
        listeners = _load_tls(config)
    except TLSConfigError as e:
        raise StartupError(str(e)) from e
    try:
        store_cm = open_store(config.storage.engine, config.server.state_dir)
        store = await store_cm.__aenter__()
    except StoreError as e:
        raise StartupError(str(e)) from e
    try:
        daemon = Daemon(config, store, listeners)
        limits = config.limits
        async with trio.open_nursery() as nursery:
            for ls in listeners:
                ctx = SessionContext(
                    store=store,
                    presence=daemon.presence,
                    server_name=config.server.name,
                    fingerprint=functools.partial(_fingerprint_of, ls),
                    max_frame_bytes=limits.max_frame_bytes,
                    handshake_timeout=limits.handshake_timeout,
                    idle_timeout=limits.idle_timeout,
                    write_timeout=limits.write_timeout,
                    max_recipients=limits.max_recipients,
                    max_record_bytes=limits.max_record_bytes,
                    mailbox_max_messages=limits.mailbox_max_messages,
                )
                try:
                    await nursery.start(serve_listener, ls, ctx)
                except OSError as e:
                    raise StartupError(
                        f"cannot listen on {ls.config.address}:{ls.config.port}: {e.strerror or e}"
                    ) from e
            try:
                await nursery.start(serve_admin, config.admin.socket, AdminHandler(daemon))
            except OSError as e:
                raise StartupError(
                    f"{config.admin.socket}: cannot create admin socket: {e.strerror or e}"
                ) from e
            nursery.start_soon(_housekeeping, daemon)
            _banner(daemon)
            task_status.started(daemon)
            await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await store_cm.__aexit__(None, None, None)


async def _main(config: Config) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            daemon: Daemon = await nursery.start(serve, config)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("signal.hup", note="configuration reload is not supported yet")
                    continue
                log.info("server.stopping", signal=signal.Signals(signum).name)
                daemon.presence.disconnect_all(ErrorCode.SHUTTING_DOWN, "server is shutting down")
                await trio.sleep(0.2)  # let the sessions write their SHUTTING_DOWN frames
                nursery.cancel_scope.cancel()
                break


def _find_startup_error(exc: BaseException) -> StartupError | None:
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_startup_error(inner)
            if found is not None:
                return found
    return None


def run(config: Config) -> int:
    """Entry point of ``momedod run``; returns the process exit code."""
    mlog.configure(config.log.level, config.log.format)
    try:
        trio.run(_main, config)
    except (StartupError, BaseExceptionGroup) as exc:
        err = _find_startup_error(exc)
        if err is None:
            raise
        log.error("server.start_failed", error=str(err))
        print(f"momedod: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    log.info("server.stopped")
    return 0
