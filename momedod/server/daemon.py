"""The momedod process: store, listeners, admin socket, housekeeping and signals in one trio run."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio
from prometheus_client import Gauge

import momedod
from momedod.admin.events import RateSampler, counter_total, install_log_hook
from momedod.admin.server import AdminHandler, serve_admin
from momedod.config import Config, ConfigError, ListenerConfig, load_config, server_addresses
from momedod.e2e.errors import E2EError
from momedod.e2e.roster import current_org_key
from momedod.observability import logging as mlog
from momedod.observability import metrics
from momedod.observability import systemd as sd
from momedod.protocol.errors import ErrorCode
from momedod.protocol.invite import (
    InviteLink,
    fingerprint_text,
    format_address,
    parse_fingerprint_text,
)
from momedod.server import blobs, conversations
from momedod.server.abuse import Abuse
from momedod.server.blobstore import BlobFiles
from momedod.server.clock import now_ms
from momedod.server.listener import ListenerState, serve_listener
from momedod.server.presence import Presence
from momedod.server.push import Pusher
from momedod.server.quiethours import QuietHours
from momedod.server.session import Session, SessionContext
from momedod.server.tls import TLSConfigError, TLSMaterial, ensure_self_signed, load_material
from momedod.store import FanOut, Store, StoreError, open_store

if TYPE_CHECKING:
    from momedod.server.cluster import Cluster

log = structlog.get_logger("momedod")

EXPIRE_INTERVAL = 3600.0
CLOCK_CHECK_INTERVAL = 10.0  # seconds between comparisons of the wall and monotonic clocks
CLOCK_STEP_MS = 60_000  # a wall-clock step larger than this is a jump (NTP slews smaller ones)
GAUGE_INTERVAL = 15.0
RATE_SAMPLE_INTERVAL = 0.5  # seconds between samples of the message counters
RATE_WINDOW = 5.0  # server.stats rates are averages over this many seconds
DRAIN_GRACE = 10.0  # seconds sessions get to finish their requests on SIGTERM

NODE_INFO = Gauge(
    "momedod_node_info",
    "Always 1; the labels name this node ([cluster] node_name, else the host name).",
    ["node", "version"],
    registry=metrics.REGISTRY,
)


class StartupError(Exception):
    """The daemon cannot start; the message tells the operator why."""


class Daemon:
    """Shared state of one running daemon; implements the admin ``ServerControl``."""

    def __init__(
        self,
        config: Config,
        store: Store,
        listeners: list[ListenerState],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.listeners = listeners
        self.clock = clock  # wall clock of quiet hours (tests stand it at 19:00)
        if config.cluster.enabled:  # psycopg is imported only for a cluster
            from momedod.server.cluster import ClusterPresence

            self.presence: Presence = ClusterPresence()
        else:
            self.presence = Presence()
        self.quiet = QuietHours(store, config.quiet_hours, clock)
        self.pusher = Pusher(store, config.push, quiet=self.quiet, wall_clock=clock)
        self.presence.on_offline = self.pusher.notify
        self.started = time.monotonic()
        self.open_sessions: set[Session] = set()
        # One context for every listener's sessions; a reload updates it in place.
        self.ctx = SessionContext(
            store=store,
            presence=self.presence,
            sessions=self.open_sessions,
            blob_files=BlobFiles(config.server.state_dir / "blobs"),
            pusher=self.pusher,
            quiet=self.quiet,
            abuse=Abuse(config.abuse),
            **_session_settings(config),
        )
        self.nursery: trio.Nursery | None = None
        self.sessions: trio.Nursery | None = None
        self.rates = RateSampler(_message_counters, RATE_WINDOW)
        # Fingerprint of the newest organisation key (its records are in the store; the
        # private key stays with momedoctl); put into invite links once there is one.
        self.org_fp: bytes | None = None
        self.cluster: Cluster | None = None  # [cluster] enabled: this node's part of it

    def now_ms(self) -> int:
        return now_ms()

    @property
    def fingerprint(self) -> bytes:
        return self.listeners[0].tls.fingerprint

    def public_address(self) -> tuple[str, int]:
        return self.public_addresses()[0]

    def public_addresses(self) -> tuple[tuple[str, int], ...]:
        """Where invite links point: [server] public_addresses or public_address, else the
        first listener."""
        configured = server_addresses(self.config.server)
        if configured:
            return configured
        first = self.listeners[0]
        host, port = first.bound[0] if first.bound else (first.config.address, first.config.port)
        if host in ("0.0.0.0", "::"):
            host = os.uname().nodename
        return ((host, port),)

    def pins(self) -> tuple[bytes, ...]:
        """The certificate pins invite links carry: ours, then [server] certificate_pins."""
        extra = (parse_fingerprint_text(p) for p in self.config.server.certificate_pins or ())
        return (self.fingerprint, *(p for p in extra if p != self.fingerprint))

    def invite_link(self, code: str) -> str:
        return str(InviteLink.of(self.public_addresses(), code, self.pins(), self.org_fp))

    def set_org_fp(self, fp: bytes) -> None:
        self.org_fp = fp

    def publish_events(self, events: Sequence[FanOut]) -> None:
        conversations.publish_events(self.presence, events)
        self.quiet_changed()  # group members may be under a policy now

    def quiet_changed(self) -> None:
        """Group memberships changed: rebuild who is under which policy (soon)."""
        if self.nursery is not None:
            self.nursery.start_soon(self.quiet_refresh)

    async def quiet_refresh(self) -> None:
        """Rebuild who is under which policy now (an operator changed a policy)."""
        try:
            await self.quiet.refresh()
        except StoreError as e:
            log.warning("quiet.refresh_failed", error=str(e))

    def server_info(self) -> dict[str, Any]:
        host, port = self.public_address()
        return {
            "name": self.config.server.name,
            "version": momedod.__version__,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "public_address": f"{host}:{port}",
            "public_addresses": [format_address(h, p) for h, p in self.public_addresses()],
            "certificate_pins": [fingerprint_text(p) for p in self.pins()],
            "fingerprint": fingerprint_text(self.fingerprint),
            "org_fingerprint": None if self.org_fp is None else fingerprint_text(self.org_fp),
            "state_dir": str(self.config.server.state_dir),
            "online_devices": len(self.presence),
            "node": self.node_name,
            "cluster": None if self.cluster is None else self.cluster.nodes_json(),
            "listeners": [
                {
                    "address": ls.bound[0][0] if ls.bound else ls.config.address,
                    "port": ls.bound[0][1] if ls.bound else ls.config.port,
                    "fingerprint": fingerprint_text(ls.tls.fingerprint),
                    "connections": ls.connections,
                    "max_connections": ls.config.max_connections,
                    "certificate_expires": ls.tls.not_after.isoformat(),
                }
                for ls in self.listeners
            ],
        }

    def server_stats(self) -> dict[str, Any]:
        (accepted, delivered), span = self.rates.rates(time.monotonic())
        accepted_total, delivered_total = _message_counters()
        listeners = [
            {
                "address": ls.bound[0][0] if ls.bound else ls.config.address,
                "port": ls.bound[0][1] if ls.bound else ls.config.port,
                "connections": ls.connections,
                "max_connections": ls.config.max_connections,
            }
            for ls in self.listeners
        ]
        return {
            "uptime_s": round(time.monotonic() - self.started, 1),
            "connections": sum(ls["connections"] for ls in listeners),
            "listeners": listeners,
            "online_devices": len(self.presence),
            "messages_accepted_per_s": round(accepted, 2),
            "messages_delivered_per_s": round(delivered, 2),
            "rate_window_s": round(span, 1),
            "messages_accepted_total": int(accepted_total),
            "messages_delivered_total": int(delivered_total),
        }

    @property
    def node_name(self) -> str:
        """This node's name in the cluster (the host name without [cluster])."""
        return self.config.cluster.node_name or os.uname().nodename

    def disconnect_user(self, user_id: str, code: ErrorCode) -> int:
        """Close the user's sessions here and, in a cluster, on every other node."""
        if self.cluster is not None:
            self.cluster.kick_user(user_id, code)
        return self._disconnect_user_here(user_id, code)

    def disconnect_device(self, user_id: str, device_id: int, code: ErrorCode) -> int:
        if self.cluster is not None:
            self.cluster.kick_device((user_id, device_id), code)
        return self._disconnect_device_here((user_id, device_id), code)

    def _disconnect_user_here(self, user_id: str, code: ErrorCode) -> int:
        return self.presence.disconnect_user(user_id, code, _KICK_TEXT.get(code, code.name))

    def _disconnect_device_here(self, addr: tuple[str, int], code: ErrorCode) -> int:
        return self.presence.disconnect_device(addr, code, _KICK_TEXT.get(code, code.name))

    async def cluster_status(self) -> dict[str, Any]:
        """The admin ``cluster.status`` result: every node, read from the database now."""
        if self.cluster is None:
            return {"enabled": False, "node": self.node_name, "nodes": []}
        return {"enabled": True, "node": self.node_name, "nodes": await self.cluster.status()}

    def _describe_node(self) -> tuple[int, list[str]]:
        connections = sum(ls.connections for ls in self.listeners)
        if not self.listeners and not server_addresses(self.config.server):
            return connections, []  # not listening yet
        return connections, [format_address(h, p) for h, p in self.public_addresses()]

    async def start_cluster(self) -> None:
        """Join the cluster ([cluster] enabled) before the listeners accept anyone."""
        NODE_INFO.labels(self.node_name, momedod.__version__).set(1)
        if not self.config.cluster.enabled:
            return
        import psycopg

        from momedod.server.cluster import Cluster, ClusterError, ClusterPresence
        from momedod.store.postgres import PostgresStore

        assert self.nursery is not None and isinstance(self.presence, ClusterPresence)
        if not isinstance(self.store, PostgresStore):
            raise StartupError('[cluster] needs [storage] engine = "postgres"')
        self.cluster = Cluster(
            self.config.cluster,
            self.store,
            self.presence,
            push=self.pusher.notify,
            kick_user=self._disconnect_user_here,
            kick_device=self._disconnect_device_here,
            describe=self._describe_node,
        )
        try:
            await self.nursery.start(self.cluster.run)
        except (ClusterError, psycopg.Error) as e:
            raise StartupError(f"cannot join the cluster: {e}") from e

    # --- listeners ------------------------------------------------------------------------

    async def start_listener(self, ls: ListenerState) -> None:
        assert self.nursery is not None and self.sessions is not None
        try:
            await self.nursery.start(serve_listener, ls, self.ctx, self.sessions)
        except OSError as e:
            raise StartupError(
                f"cannot listen on {ls.config.address}:{ls.config.port}: {e.strerror or e}"
            ) from e
        self.listeners.append(ls)
        for host, port in ls.bound:
            log.info("listener.ready", address=host, port=port, tls=f"{ls.config.tls_min_version}+")

    def stop_listener(self, ls: ListenerState) -> None:
        if ls.scope is not None:
            ls.scope.cancel()
        self.listeners.remove(ls)
        log.info("listener.stopped", address=ls.config.address, port=ls.config.port)

    # --- reload and shutdown -------------------------------------------------------------

    async def reload(self) -> bool:
        """SIGHUP: apply a changed config without closing connections; False if refused."""
        sd.notify("RELOADING=1", sd.monotonic_usec())
        try:
            ok = await self._reload()
        finally:
            sd.notify("READY=1", "STATUS=serving")
        metrics.RELOADS.labels("ok" if ok else "failed").inc()
        return ok

    async def _reload(self) -> bool:
        old = self.config
        try:
            new = load_config(old.source, dev=old.dev) if old.source or old.dev else old
        except ConfigError as e:
            log.error("reload.failed", error=str(e), note="keeping the running configuration")
            return False
        for what in ("state_dir",):
            if getattr(new.server, what) != getattr(old.server, what):
                log.warning("reload.needs_restart", setting=f"server.{what}")
        if new.admin != old.admin or new.storage != old.storage or new.metrics != old.metrics:
            log.warning("reload.needs_restart", setting="admin/storage/metrics")
        if new.cluster != old.cluster:
            log.warning("reload.needs_restart", setting="cluster")
        state_dir = old.server.state_dir
        wanted = {(lc.address, lc.port): lc for lc in new.listeners}
        ok = True
        # New certificates and limits for listeners that stay; a broken pair keeps the old one.
        for ls in list(self.listeners):
            lc = wanted.get(ls.key)
            if lc is None:
                continue
            try:
                tls = _load_tls(lc, state_dir)
            except TLSConfigError as e:
                ok = False
                log.error(
                    "reload.tls_failed",
                    listener=ls.name,
                    error=str(e),
                    note="the previous certificate stays in service",
                )
                continue
            if tls.fingerprint != ls.tls.fingerprint:
                log.warning(
                    "reload.new_key",
                    listener=ls.name,
                    fingerprint=fingerprint_text(tls.fingerprint),
                    note="enrolled devices pinned the old key and will refuse this one",
                )
            ls.set_tls(tls)
            ls.config = lc
            ls.set_max_connections(lc.max_connections)
        for ls in [ls for ls in self.listeners if ls.key not in wanted]:
            self.stop_listener(ls)
        current = {ls.key for ls in self.listeners}
        for key, lc in wanted.items():
            if key in current:
                continue
            try:
                await self.start_listener(ListenerState(lc, _load_tls(lc, state_dir)))
            except (TLSConfigError, StartupError) as e:
                ok = False
                log.error("reload.listener_failed", address=lc.address, port=lc.port, error=str(e))
        for name, value in _session_settings(new).items():
            setattr(self.ctx, name, value)
        self.pusher.configure(new.push)
        self.ctx.abuse.configure(new.abuse)
        self.quiet.configure(new.quiet_hours)
        await self.quiet_refresh()
        self.config = replace(
            new,
            server=replace(new.server, state_dir=old.server.state_dir),
            admin=old.admin,
            storage=old.storage,
            cluster=old.cluster,
            metrics=old.metrics,
        )
        mlog.configure(new.log.level, new.log.format)
        install_log_hook()  # configure() replaced the processors; keep admin subscribers fed
        log.info("reload.done", ok=ok, listeners=len(self.listeners))
        return ok

    async def drain(self, grace: float) -> None:
        """SIGTERM: stop accepting, let requests in progress finish, close every session."""
        sd.notify("STOPPING=1", "STATUS=stopping")
        for ls in list(self.listeners):
            if ls.scope is not None:
                ls.scope.cancel()
        for session in list(self.open_sessions):
            session.drain()
        with trio.move_on_after(grace):
            while self.open_sessions:
                await trio.sleep(0.05)
        if self.open_sessions:
            log.warning("server.drain_timeout", sessions=len(self.open_sessions))


def _session_settings(config: Config) -> dict[str, Any]:
    """The SessionContext fields that come from the configuration (and change on reload)."""
    limits = config.limits
    return {
        "server_name": config.server.name,
        "max_frame_bytes": limits.max_frame_bytes,
        "handshake_timeout": limits.handshake_timeout,
        "idle_timeout": limits.idle_timeout,
        "write_timeout": limits.write_timeout,
        "max_recipients": limits.max_recipients,
        "max_record_bytes": limits.max_record_bytes,
        "mailbox_max_messages": limits.mailbox_max_messages,
        "users_create_groups": config.policy.users_create_groups,
        "max_group_size": config.policy.max_group_size,
        "attachments": config.attachments,
    }


_KICK_TEXT = {
    ErrorCode.USER_DISABLED: "this account was disabled by an operator",
    ErrorCode.DEVICE_REVOKED: "this device was revoked by an operator",
    ErrorCode.SHUTTING_DOWN: "server is shutting down",
    ErrorCode.SESSION_REPLACED: "this device logged in on a newer connection (another node)",
}


def _load_tls(lc: ListenerConfig, state_dir: Path) -> TLSMaterial:
    if lc.cert is not None and lc.key is not None:
        cert, key = lc.cert, lc.key
    else:
        hosts = [h for h in (lc.address, "localhost") if h not in ("0.0.0.0", "::")]
        cert, key = ensure_self_signed(state_dir, hosts or [os.uname().nodename])
    return load_material(cert, key, lc.tls_min_version)


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


class ClockWatch:
    """Detect steps of the wall clock while the daemon runs.

    Between two readings the wall clock should advance as much as the monotonic clock. If it
    advanced more than CLOCK_STEP_MS further, the system clock was stepped forward (NTP after a
    boot with a stale time): stamps written before the step are older by the step than they
    look. Those are exactly the stamps below ``expected + 1`` (``expected`` = last wall reading
    plus monotonic time elapsed), because the step is larger than the check interval.
    Backward steps need no repair (items only look younger); they are logged.
    """

    def __init__(self, wall_ms: int, mono_s: float) -> None:
        self.wall_ms, self.mono_s = wall_ms, mono_s

    def step(self, wall_ms: int, mono_s: float) -> tuple[int, int]:
        """Take a reading; return (step in ms, wall time the step happened after)."""
        expected = self.wall_ms + int((mono_s - self.mono_s) * 1000)
        self.wall_ms, self.mono_s = wall_ms, mono_s
        return wall_ms - expected, expected + 1


async def _clock_watch(daemon: Daemon) -> None:
    watch = ClockWatch(daemon.now_ms(), trio.current_time())
    while True:
        await trio.sleep(CLOCK_CHECK_INTERVAL)
        step, before = watch.step(daemon.now_ms(), trio.current_time())
        if abs(step) <= CLOCK_STEP_MS:
            continue
        log.warning("clock.stepped", seconds=step // 1000)
        if step > 0:
            try:
                await daemon.store.shift_clock(step, before)
            except StoreError as e:
                log.error("clock.shift_failed", error=str(e))


async def _store_gauges(daemon: Daemon) -> None:
    """Refresh the gauges that come from the store and the disk (not on every scrape)."""
    state_dir = daemon.config.server.state_dir
    while True:
        try:
            stats = await daemon.store.stats()
            values: dict[str, float] = {
                "momedod_users": stats.users,
                "momedod_devices": stats.devices,
                "momedod_mailbox_entries": stats.mailbox_entries,
                "momedod_blobs": stats.blobs,
                "momedod_blob_bytes": stats.blob_bytes,
            }
            oldest = stats.oldest_entry_ms
            values["momedod_mailbox_oldest_age_seconds"] = (
                0.0 if oldest is None else max(0.0, (daemon.now_ms() - oldest) / 1000)
            )
            fs = os.statvfs(state_dir)
            values["momedod_state_dir_free_bytes"] = fs.f_bavail * fs.f_frsize
            values["momedod_state_dir_size_bytes"] = fs.f_blocks * fs.f_frsize
            values["momedod_store_size_bytes"] = sum(
                p.stat().st_size for p in state_dir.glob("momedo.sqlite3*") if p.is_file()
            )
            metrics.STORE_SNAPSHOT.update(**values)
        except (StoreError, OSError) as e:
            log.warning("metrics.store_gauges_failed", error=str(e))
        await trio.sleep(GAUGE_INTERVAL)


async def _stored_org_fp(store: Store) -> bytes | None:
    """The newest organisation key's fingerprint, if the store holds a valid chain."""
    records = await store.list_org_keys()
    if not records:
        return None
    try:
        return current_org_key(records, None).fp
    except E2EError as e:
        log.error("org_key.invalid_chain", error=str(e), note="invite links carry no org key")
        return None


def _message_counters() -> tuple[float, float]:
    return counter_total(metrics.MESSAGES_ACCEPTED), counter_total(metrics.MESSAGES_DELIVERED)


async def _rate_sampler(daemon: Daemon) -> None:
    while True:
        daemon.rates.sample(time.monotonic())
        await trio.sleep(RATE_SAMPLE_INTERVAL)


async def _loop_lag() -> None:
    while True:
        expected = trio.current_time() + 1.0
        await trio.sleep_until(expected)
        metrics.LOOP_LAG.set(max(0.0, trio.current_time() - expected))


async def _watchdog(interval: float) -> None:
    # Fed from the event loop itself: a stalled loop stops the pings and systemd restarts us.
    while True:
        sd.notify("WATCHDOG=1")
        await trio.sleep(interval)


def _banner(daemon: Daemon) -> None:
    fp = fingerprint_text(daemon.fingerprint)
    cfg = daemon.config
    log.info(
        "server.ready",
        fingerprint=fp,
        metrics=f"http://{cfg.metrics.address}:{cfg.metrics.port}/metrics"
        if cfg.metrics.enabled
        else "disabled",
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
    config: Config,
    *,
    clock: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until cancelled (the tests start it in-process this way too).

    ``clock`` is the wall clock quiet hours are judged by (tests pass a controllable one).
    """
    _prepare_state_dir(config.server.state_dir)
    try:
        listeners = [
            ListenerState(lc, _load_tls(lc, config.server.state_dir)) for lc in config.listeners
        ]
    except TLSConfigError as e:
        raise StartupError(str(e)) from e
    try:
        store_cm = open_store(
            config.storage.engine,
            config.server.state_dir,
            dsn=config.storage.dsn,
            pool_size=config.storage.pool_size,
            observer=metrics.StoreMetrics(),
        )
        store = await store_cm.__aenter__()
    except StoreError as e:
        raise StartupError(str(e)) from e
    metrics_server = None
    try:
        daemon = Daemon(config, store, [], clock)
        daemon.org_fp = await _stored_org_fp(store)
        if config.metrics.enabled:
            try:
                metrics_server = metrics.serve(
                    config.metrics.address,
                    config.metrics.port,
                    node=daemon.node_name if config.cluster.enabled else None,
                )
            except OSError as e:
                raise StartupError(
                    f"cannot serve metrics on {config.metrics.address}:{config.metrics.port}: "
                    f"{e.strerror or e}"
                ) from e
        metrics.START_TIME.set(time.time())
        async with trio.open_nursery() as nursery:
            daemon.nursery = nursery
            daemon.sessions = await nursery.start(_session_nursery)
            # Policies and push targets before the first session can look at them.
            await daemon.quiet.refresh()
            nursery.start_soon(daemon.quiet.run)
            await nursery.start(daemon.pusher.run)
            await daemon.start_cluster()
            for ls in listeners:
                await daemon.start_listener(ls)
            try:
                await nursery.start(serve_admin, config.admin.socket, AdminHandler(daemon))
            except OSError as e:
                raise StartupError(
                    f"{config.admin.socket}: cannot create admin socket: {e.strerror or e}"
                ) from e
            nursery.start_soon(_housekeeping, daemon)
            nursery.start_soon(_clock_watch, daemon)
            nursery.start_soon(blobs.run_collector, daemon.ctx)
            nursery.start_soon(_store_gauges, daemon)
            nursery.start_soon(_rate_sampler, daemon)
            nursery.start_soon(_loop_lag)
            interval = sd.watchdog_interval()
            if interval:
                nursery.start_soon(_watchdog, interval)
            _banner(daemon)
            sd.notify("READY=1", "STATUS=serving")
            task_status.started(daemon)
            await trio.sleep_forever()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        with trio.CancelScope(shield=True):
            await store_cm.__aexit__(None, None, None)


async def _session_nursery(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    # Sessions live here, apart from the listeners, so stopping a listener closes nothing.
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


async def _main(config: Config) -> None:
    metrics.install_gc_timer()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            daemon: Daemon = await nursery.start(serve, config)
            # Start-up is done (store open, listeners and admin socket bound): what is alive
            # now stays alive, so the garbage collector need not walk it again (issue 7).
            metrics.freeze_heap()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await daemon.reload()
                    continue
                log.info("server.stopping", signal=signal.Signals(signum).name)
                await daemon.drain(DRAIN_GRACE)
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
