"""One configured listener: bind, cap connections, TLS-wrap and hand streams to sessions.

Accepting and serving are owned separately: the accept loop runs in the listener's own cancel
scope (a reload that removes the listener, or a shutdown, stops only accepting), while each
session runs in the daemon's session nursery, so stopping a listener closes no connection.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import structlog
import trio

from momedod.config import ListenerConfig
from momedod.observability import metrics
from momedod.server.session import Session, SessionContext
from momedod.server.tls import TLSMaterial
from momedod.server.tlsstream import TLSConn

log = structlog.get_logger("momedod.listener")

# Errors that accept(2) can return, and which indicate that the system is overloaded.
ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
SLEEP_TIME = 0.1


@dataclass
class ListenerState:
    """A configured listener: its TLS material (swapped on reload) and live counters."""

    config: ListenerConfig
    tls: TLSMaterial
    connections: int = 0
    bound: list[tuple[str, int]] = field(default_factory=list)
    limiter: trio.CapacityLimiter | None = None
    scope: trio.CancelScope | None = None  # cancels accepting only

    @property
    def key(self) -> tuple[str, int]:
        """Identity across reloads: the configured address and port."""
        return self.config.address, self.config.port

    @property
    def name(self) -> str:
        """Metrics label: the configured address and port."""
        return f"{self.config.address}:{self.config.port}"

    def set_tls(self, tls: TLSMaterial) -> None:
        self.tls = tls
        metrics.CERT_EXPIRY.labels(self.name).set(tls.not_after.timestamp())

    def set_max_connections(self, n: int) -> None:
        if self.limiter is not None:
            self.limiter.total_tokens = n
        metrics.MAX_CONNECTIONS.labels(self.name).set(n)


async def serve_listener(
    state: ListenerState,
    ctx: SessionContext,
    sessions: trio.Nursery,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind and accept until ``state.scope`` is cancelled; sessions go to ``sessions``."""
    cfg = state.config
    with trio.CancelScope() as scope:
        state.scope = scope
        listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.address)
        state.bound = [sock.socket.getsockname()[:2] for sock in listeners]
        state.limiter = trio.CapacityLimiter(cfg.max_connections)
        state.set_max_connections(cfg.max_connections)
        state.set_tls(state.tls)
        metrics.LISTENER_UP.labels(state.name).set(1)
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(_accept_loop, listener, state, ctx, sessions)
        finally:
            metrics.LISTENER_UP.labels(state.name).set(0)
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()


async def _accept_loop(
    listener: trio.SocketListener, state: ListenerState, ctx: SessionContext, sessions: trio.Nursery
) -> None:
    assert state.limiter is not None
    limiter = state.limiter
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
        metrics.CONNECTIONS_ACCEPTED.labels(state.name).inc()
        if ctx.timers.nursery is None:
            ctx.timers.nursery = sessions
        sessions.start_soon(_serve_one, stream, token, limiter, state, ctx)


async def _serve_one(
    stream: trio.SocketStream,
    token: object,
    limiter: trio.CapacityLimiter,
    state: ListenerState,
    ctx: SessionContext,
) -> None:
    state.connections += 1
    gauge = metrics.CONNECTIONS.labels(state.name)
    gauge.inc()
    peer = "?"
    try:
        try:
            host, port = stream.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            pass
        # The context at accept time: a reload's new certificate serves new connections.
        tls = TLSConn.from_stream(stream, state.tls.context)
        await Session(ctx, tls, peer, state.tls.fingerprint).run()
    except Exception:
        # A bug in one session must not take the listener (and everyone else) down.
        log.exception("session.crashed", peer=peer)
    finally:
        state.connections -= 1
        gauge.dec()
        limiter.release_on_behalf_of(token)
