"""One configured listener: bind, cap connections, TLS-wrap and hand streams to sessions."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import structlog
import trio

from momedod.config import ListenerConfig
from momedod.server.session import Session, SessionContext
from momedod.server.tls import TLSMaterial

log = structlog.get_logger("momedod.listener")

# Errors that accept(2) can return, and which indicate that the system is overloaded.
ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
SLEEP_TIME = 0.1


@dataclass
class ListenerState:
    """A bound listener and its live counters (read by the admin socket)."""

    config: ListenerConfig
    tls: TLSMaterial
    connections: int = 0
    bound: list[tuple[str, int]] = field(default_factory=list)


async def serve_listener(
    state: ListenerState,
    ctx: SessionContext,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind and serve until cancelled; a connection token is taken before each accept."""
    cfg = state.config
    listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.address)
    state.bound = [sock.socket.getsockname()[:2] for sock in listeners]
    limiter = trio.CapacityLimiter(cfg.max_connections)
    task_status.started()
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, limiter, state, ctx, nursery)


async def _accept_loop(
    listener: trio.SocketListener,
    limiter: trio.CapacityLimiter,
    state: ListenerState,
    ctx: SessionContext,
    nursery: trio.Nursery,
) -> None:
    async with listener:
        while True:
            token = object()
            await limiter.acquire_on_behalf_of(token)
            try:
                stream = await listener.accept()
            except OSError as exc:
                limiter.release_on_behalf_of(token)
                if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                    log.error("accept.overloaded", errno=errno.errorcode.get(exc.errno or 0))
                    await trio.sleep(SLEEP_TIME)
                    continue
                raise
            except BaseException:
                limiter.release_on_behalf_of(token)
                raise
            nursery.start_soon(_serve_one, stream, token, limiter, state, ctx)


async def _serve_one(
    stream: trio.SocketStream,
    token: object,
    limiter: trio.CapacityLimiter,
    state: ListenerState,
    ctx: SessionContext,
) -> None:
    state.connections += 1
    peer = "?"
    try:
        try:
            host, port = stream.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            pass
        tls = trio.SSLStream(stream, state.tls.context, server_side=True)
        await Session(ctx, tls, peer).run()
    except Exception:
        # A bug in one session must not take the listener (and everyone else) down.
        log.exception("session.crashed", peer=peer)
    finally:
        state.connections -= 1
        limiter.release_on_behalf_of(token)
