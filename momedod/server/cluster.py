"""Several momedod nodes over one PostgreSQL database (``[cluster] enabled = true``).

Theory of operation
-------------------
The store's rows stay the truth; what travels between nodes are *hints*.

- **Liveness.** Each node keeps a row in ``cluster_nodes`` (started, heartbeat, connections,
  online devices, public addresses, version) and renews its heartbeat every
  ``heartbeat_interval`` seconds. Times are the database's clock, so nodes with skewed clocks
  agree on who is alive. A node whose heartbeat is older than ``lease_timeout`` is dead.
- **Leases.** ``cluster_devices(user_id, device_id, node)`` lists the devices with a session
  on each node. Logins and logouts are written in batches by a background task (never on the
  login path); a row counts only while its node's heartbeat is fresh, so a node that dies
  loses its leases without anyone deleting them (the live nodes delete them later).
- **Wake-ups.** After a send commits, presence hands each recipient device without a local
  session to :meth:`Cluster.offline`. A background task collects those devices, looks up
  which of them hold a live lease on another node and sends ONE ``NOTIFY`` per batch on the
  cluster's channel, naming the device addresses only (never a payload). A hint that would
  not fit NOTIFY's 8000-byte limit becomes a "check all" hint. Devices without a live lease
  anywhere get the push wake-up instead (so a device connected to another node gets no push).
- **Receiving.** A thread per node waits on ``LISTEN`` with its own connection and hands each
  hint to trio (``TrioToken.run_sync_soon``); presence pokes the named local sessions, which
  re-read their mailbox from their cursor. If the LISTEN connection drops, the node
  reconnects with back-off and then pokes every local session (a catch-up from the mailbox
  seqs) and disconnects local sessions of users or devices disabled, deleted or revoked
  meanwhile (kick hints may have been missed). The same catch-up follows a heartbeat that
  could not be written for longer than ``lease_timeout`` (the others took this node for dead
  and sent it no hints). Hints that cannot be sent are tried again on a new connection.
- **Admin actions.** Disconnecting a user or a device (disable, delete, revoke) is sent as a
  hint too; every node disconnects its sessions of that user or device on receipt.
- **One session per device.** A device that logs in on one node replaces its older session
  on another node, as on one node: the new leases are announced in a hint ("replaced"), and
  the other nodes close their session of that device (SESSION_REPLACED) if it registered
  earlier (by the nodes' wall clocks, which NTP keeps close enough for this).
- **Race of a fresh login.** A message committed just before a new lease becomes visible may
  get no hint. So after writing new leases a node pokes those sessions once: whatever was
  committed before the lease was visible is read from the store then.

The tables live in the store's schema and are created here (their own version table,
``cluster_schema``), not in the store's migrations: they hold only soft state.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
import psycopg.errors
import structlog
import trio
from prometheus_client import Counter, Gauge
from psycopg import sql

import momedod
from momedod.config import ClusterConfig
from momedod.observability import metrics
from momedod.protocol.errors import ErrorCode
from momedod.server.presence import Addr, Online, Presence
from momedod.store.postgres import PostgresStore

log = structlog.get_logger("momedod.cluster")

T = TypeVar("T")

SCHEMA_VERSION = 1
NOTIFY_LIMIT = 7900  # bytes of a NOTIFY payload (PostgreSQL's limit is 8000)
LEASE_BATCH_DELAY = 0.05  # seconds a login waits for others to share its lease write
LISTEN_POLL = 0.5  # seconds the LISTEN thread waits before looking at its stop flag
LISTEN_BACKOFF = (0.1, 5.0)  # first and longest wait before reconnecting LISTEN
HINT_RETRY = (0.1, 2.0)  # first and longest wait before sending failed kick hints again
CLEANUP_EVERY = 10  # heartbeats between deletions of dead nodes' leases
FORGET_NODE_MS = 7 * 86_400_000  # a node row silent this long is deleted
_NOW = "(extract(epoch from clock_timestamp()) * 1000)::bigint"

_DDL = (
    """CREATE TABLE cluster_nodes (
        node          TEXT PRIMARY KEY,
        started_ms    BIGINT NOT NULL,
        heartbeat_ms  BIGINT NOT NULL,
        stopped       BIGINT NOT NULL DEFAULT 0,
        connections   BIGINT NOT NULL DEFAULT 0,
        devices       BIGINT NOT NULL DEFAULT 0,
        addresses     TEXT NOT NULL DEFAULT '',
        version       TEXT NOT NULL DEFAULT ''
    )""",
    """CREATE TABLE cluster_devices (
        user_id    TEXT NOT NULL,
        device_id  BIGINT NOT NULL,
        node       TEXT NOT NULL,
        since_ms   BIGINT NOT NULL,
        PRIMARY KEY (user_id, device_id, node)
    )""",
    "CREATE INDEX cluster_devices_node ON cluster_devices (node)",
)

CLUSTER_NODES = Gauge(
    "momedod_cluster_nodes",
    "Nodes in cluster_nodes by state (live, dead, stopped), as this node saw them last.",
    ["state"],
    registry=metrics.REGISTRY,
)
HINTS_SENT = Counter(
    "momedod_cluster_hints_sent_total",
    "NOTIFY hints sent to the other nodes, by kind (wake, all, kick; kick includes replaced).",
    ["kind"],
    registry=metrics.REGISTRY,
)
HINTS_RECEIVED = Counter(
    "momedod_cluster_hints_received_total",
    "Hints received from other nodes, by kind (wake, all, kick, replaced).",
    ["kind"],
    registry=metrics.REGISTRY,
)
LISTEN_RECONNECTS = Counter(
    "momedod_cluster_listen_reconnects_total",
    "Times the LISTEN connection was lost and set up again.",
    registry=metrics.REGISTRY,
)
HEARTBEAT_FAILURES = Counter(
    "momedod_cluster_heartbeat_failures_total",
    "Heartbeats (or lease writes) that failed to reach the database.",
    registry=metrics.REGISTRY,
)


class ClusterError(Exception):
    """This node cannot join the cluster; the message tells the operator why."""


def node_name(config: ClusterConfig) -> str:
    """This node's name: ``[cluster] node_name``, else the host name."""
    return config.node_name or os.uname().nodename


class ClusterPresence(Presence):
    """Presence that records logins and logouts for the lease table."""

    def __init__(self) -> None:
        super().__init__()
        self.lease_changes: dict[Addr, bool] = {}  # addr -> connected (True) / gone (False)
        self.on_lease_change: Callable[[], None] | None = None
        self.since_ms: dict[Addr, int] = {}  # wall-clock time each session registered

    def register(self, session: Online) -> None:
        super().register(session)
        self.since_ms[session.addr] = int(time.time() * 1000)
        self._lease_changed(session.addr, True)

    def unregister(self, session: Online) -> None:
        before = len(self)
        super().unregister(session)
        if len(self) != before:
            self.since_ms.pop(session.addr, None)
            self._lease_changed(session.addr, False)

    def addrs(self) -> list[Addr]:
        return list(self._by_addr)

    def _lease_changed(self, addr: Addr, connected: bool) -> None:
        self.lease_changes[addr] = connected
        if self.on_lease_change is not None:
            self.on_lease_change()


@dataclass(frozen=True)
class NodeStatus:
    node: str
    state: str  # "live", "dead" or "stopped"
    started_ms: int
    heartbeat_age_s: float
    connections: int
    devices: int  # devices with a live lease on the node
    addresses: tuple[str, ...]
    version: str

    def to_json(self, me: str) -> dict[str, Any]:
        return {
            "node": self.node,
            "state": self.state,
            "self": self.node == me,
            "started_ms": self.started_ms,
            "heartbeat_age_s": round(self.heartbeat_age_s, 1),
            "connections": self.connections,
            "devices": self.devices,
            "addresses": list(self.addresses),
            "version": self.version,
        }


class _Link:
    """One dedicated database connection used from one worker thread at a time; it is
    opened on first use and again after it broke."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._conn: psycopg.Connection[Any] | None = None
        self._limiter = trio.CapacityLimiter(1)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` in a worker thread."""
        return await trio.to_thread.run_sync(self._call, fn, args, limiter=self._limiter)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._conn is None or self._conn.closed:
            self._conn = self._store.connect_dedicated()
        try:
            return fn(self._conn, *args)
        except psycopg.Error:
            if self._conn.broken or self._conn.closed:
                self._conn.close()
                self._conn = None
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Cluster:
    """This node's part of the cluster; ``run`` it in the daemon's nursery."""

    def __init__(
        self,
        config: ClusterConfig,
        store: PostgresStore,
        presence: ClusterPresence,
        *,
        push: Callable[[Addr, bool], None] | None,
        kick_user: Callable[[str, ErrorCode], int],
        kick_device: Callable[[Addr, ErrorCode], int],
        describe: Callable[[], tuple[int, Sequence[str]]],
    ) -> None:
        self.config = config
        self.node = node_name(config)
        self.store = store
        self.presence = presence
        self._push = push
        self._kick_user = kick_user
        self._kick_device = kick_device
        self._describe = describe  # -> (connections, public addresses) of this node
        self.channel = ""
        self._control = _Link(store)  # heartbeats, leases, status
        self._hints = _Link(store)  # wake-up and kick hints (never waits behind a heartbeat)
        self._pending: dict[Addr, bool] = {}  # devices to wake -> urgent
        self._kicks: list[str] = []  # kick hints to send
        self._hint_wanted = trio.Event()
        self._lease_wanted = trio.Event()
        self._resync = True  # write every lease of this node again (start, after a failure)
        self.nodes: list[NodeStatus] = []  # as of the last heartbeat
        self.listening = False
        self.listen_pid = 0  # the LISTEN connection's server process
        self._token: trio.lowlevel.TrioToken | None = None
        presence.on_lease_change = self._lease_wanted.set
        presence.on_offline = self.offline

    @property
    def _lease_ms(self) -> int:
        return int(self.config.lease_timeout * 1000)

    # --- hooks used by the daemon ------------------------------------------------------------

    def offline(self, addr: Addr, urgent: bool) -> None:
        """A committed message for a device without a session on this node (presence's
        ``on_offline``): wake it on another node, or push if it has no live lease."""
        self._pending[addr] = self._pending.get(addr, False) or urgent
        self._hint_wanted.set()

    def kick_user(self, user_id: str, code: ErrorCode) -> None:
        """An admin action closed this user's sessions here; close them on every node."""
        self._queue_kick({"f": self.node, "ku": user_id, "c": int(code)})

    def kick_device(self, addr: Addr, code: ErrorCode) -> None:
        self._queue_kick({"f": self.node, "kd": [addr[0], addr[1]], "c": int(code)})

    def _queue_replaced(self, addrs: list[Addr]) -> None:
        """Hints that these devices logged in here (in as many NOTIFYs as they need)."""
        chunk: list[list[Any]] = []
        size = 0
        for uid, did in addrs:
            since = self.presence.since_ms.get((uid, did))
            if since is None:  # gone again meanwhile
                continue
            chunk.append([uid, did, since])
            size += len(uid) + 40
            if size > NOTIFY_LIMIT - 100:
                self._queue_kick({"f": self.node, "rp": chunk})
                chunk, size = [], 0
        if chunk:
            self._queue_kick({"f": self.node, "rp": chunk})

    def _queue_kick(self, hint: dict[str, Any]) -> None:
        self._kicks.append(json.dumps(hint, separators=(",", ":")))
        self._hint_wanted.set()

    def nodes_json(self) -> list[dict[str, Any]]:
        return [n.to_json(self.node) for n in self.nodes]

    async def status(self) -> list[dict[str, Any]]:
        """Every node's row, read now (admin ``cluster.status``)."""
        self.nodes = await self._control.run(self._read_nodes)
        return self.nodes_json()

    # --- running -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join the cluster, then keep heartbeats, leases, hints and LISTEN going."""
        self._token = trio.lowlevel.current_trio_token()
        try:
            self.channel = await self._control.run(_setup_schema)
            await self._join()
            async with trio.open_nursery() as nursery:
                await nursery.start(self._listen_loop)
                nursery.start_soon(self._heartbeat_loop)
                nursery.start_soon(self._lease_loop)
                nursery.start_soon(self._hint_loop)
                log.info("cluster.joined", node=self.node, channel=self.channel)
                task_status.started()
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self._leave()

    async def _join(self) -> None:
        """Insert or take over this node's row; refuse a name a live node uses."""
        deadline = trio.current_time() + self.config.lease_timeout + 1
        while True:
            age = await self._control.run(self._claim)
            if age is None:
                return
            if trio.current_time() > deadline:
                raise ClusterError(
                    f"node name {self.node!r} is in use by a live node (heartbeat {age / 1000:.1f}"
                    " s ago); give each node its own [cluster] node_name"
                )
            log.warning("cluster.name_in_use", node=self.node, heartbeat_age_ms=age)
            await trio.sleep(self.config.heartbeat_interval)

    def _claim(self, conn: psycopg.Connection[Any]) -> int | None:
        with conn.transaction():
            row = conn.execute(
                f"SELECT {_NOW} - heartbeat_ms, stopped FROM cluster_nodes WHERE node = %s"
                " FOR UPDATE",
                (self.node,),
            ).fetchone()
            if row is not None and not row[1] and row[0] < self._lease_ms:
                return int(row[0])  # alive: a restart after SIGKILL waits for the lease
            conn.execute(
                "INSERT INTO cluster_nodes (node, started_ms, heartbeat_ms, version)"
                f" VALUES (%s, {_NOW}, {_NOW}, %s) ON CONFLICT (node) DO UPDATE SET"
                " started_ms = EXCLUDED.started_ms, heartbeat_ms = EXCLUDED.heartbeat_ms,"
                " stopped = 0, connections = 0, devices = 0, version = EXCLUDED.version",
                (self.node, momedod.__version__),
            )
            conn.execute("DELETE FROM cluster_devices WHERE node = %s", (self.node,))
        return None

    async def _leave(self) -> None:
        """A clean stop: the other nodes see this node as stopped and its leases gone."""

        def leave(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute(
                    f"UPDATE cluster_nodes SET stopped = 1, heartbeat_ms = {_NOW}, connections"
                    " = 0, devices = 0 WHERE node = %s",
                    (self.node,),
                )
                conn.execute("DELETE FROM cluster_devices WHERE node = %s", (self.node,))

        try:
            with trio.move_on_after(5):
                await self._control.run(leave)
        except psycopg.Error as e:
            log.warning("cluster.leave_failed", error=_first_line(e))
        finally:
            self._control.close()
            self._hints.close()

    # --- heartbeat -----------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        beats = 0
        last_beat = trio.current_time()
        while True:
            connections, addresses = self._describe()
            devices = len(self.presence)

            try:
                self.nodes = await self._control.run(
                    self._beat, connections, devices, " ".join(addresses), beats
                )
                for state in ("live", "dead", "stopped"):
                    CLUSTER_NODES.labels(state).set(sum(n.state == state for n in self.nodes))
                if trio.current_time() - last_beat > self.config.lease_timeout:
                    # The others took this node for dead meanwhile: they sent no hints for
                    # its sessions (and may have dropped its leases). Catch up.
                    log.warning("cluster.heartbeat_restored", node=self.node)
                    self._resync = True
                    self._lease_wanted.set()
                    self.presence.poke()
                last_beat = trio.current_time()
            except psycopg.Error as e:
                HEARTBEAT_FAILURES.inc()
                log.warning("cluster.heartbeat_failed", error=_first_line(e))
            beats += 1
            await trio.sleep(self.config.heartbeat_interval)

    def _beat(
        self, conn: psycopg.Connection[Any], connections: int, devices: int, addrs: str, beats: int
    ) -> list[NodeStatus]:
        changed = conn.execute(
            f"UPDATE cluster_nodes SET heartbeat_ms = {_NOW}, stopped = 0,"
            " connections = %s, devices = %s, addresses = %s WHERE node = %s",
            (connections, devices, addrs, self.node),
        ).rowcount
        if not changed:  # deleted by an operator: come back
            conn.execute(
                "INSERT INTO cluster_nodes (node, started_ms, heartbeat_ms, connections,"
                f" devices, addresses, version) VALUES (%s, {_NOW}, {_NOW}, %s, %s, %s, %s)"
                " ON CONFLICT (node) DO NOTHING",
                (self.node, connections, devices, addrs, momedod.__version__),
            )
            self._resync = True
        if beats % CLEANUP_EVERY == 0:
            self._cleanup(conn)
        return self._read_nodes(conn)

    def _cleanup(self, conn: psycopg.Connection[Any]) -> None:
        """Delete the leases of dead nodes and the rows of nodes gone for long."""
        conn.execute(
            "DELETE FROM cluster_devices WHERE node IN (SELECT node FROM cluster_nodes"
            f" WHERE heartbeat_ms < {_NOW} - %s OR stopped <> 0)",
            (self._lease_ms,),
        )
        conn.execute(
            f"DELETE FROM cluster_nodes WHERE heartbeat_ms < {_NOW} - %s", (FORGET_NODE_MS,)
        )

    def _read_nodes(self, conn: psycopg.Connection[Any]) -> list[NodeStatus]:
        rows = conn.execute(
            f"SELECT n.node, n.started_ms, {_NOW} - n.heartbeat_ms, n.stopped, n.connections,"
            " n.addresses, n.version, (SELECT count(*) FROM cluster_devices d"
            " WHERE d.node = n.node) FROM cluster_nodes n ORDER BY n.node"
        ).fetchall()
        out = []
        for node, started, age, stopped, conns, addresses, version, leased in rows:
            state = "stopped" if stopped else "live" if age < self._lease_ms else "dead"
            out.append(
                NodeStatus(
                    node=node,
                    state=state,
                    started_ms=int(started),
                    heartbeat_age_s=max(0, int(age)) / 1000,
                    connections=int(conns) if state == "live" else 0,
                    devices=int(leased) if state == "live" else 0,
                    addresses=tuple(addresses.split()),
                    version=version,
                )
            )
        return out

    # --- leases -----------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        delay = HINT_RETRY[0]
        while True:
            if not self._resync and not self.presence.lease_changes:
                await self._lease_wanted.wait()
            self._lease_wanted = trio.Event()
            self.presence.on_lease_change = self._lease_wanted.set
            await trio.sleep(LEASE_BATCH_DELAY)  # let a burst of logins share one write
            changes, self.presence.lease_changes = self.presence.lease_changes, {}
            resync, self._resync = self._resync, False
            if resync:
                current = set(self.presence.addrs())
                added, gone = sorted(current), []
            else:
                added = [a for a, on in changes.items() if on]
                gone = [a for a, on in changes.items() if not on]
            try:
                await self._control.run(self._write_leases, resync, added, gone)
            except psycopg.Error as e:
                HEARTBEAT_FAILURES.inc()
                log.warning("cluster.lease_write_failed", error=_first_line(e))
                self._resync = True  # write the whole set once the database answers
                await trio.sleep(delay)
                delay = min(delay * 2, HINT_RETRY[1])
                continue
            delay = HINT_RETRY[0]
            # Messages committed before these leases became visible may have got no hint.
            self.presence.poke(added)
            # Devices that logged in here: their older sessions on other nodes are replaced.
            self._queue_replaced([a for a, on in changes.items() if on])

    def _write_leases(
        self, conn: psycopg.Connection[Any], resync: bool, added: list[Addr], gone: list[Addr]
    ) -> None:
        with conn.transaction():
            if resync:
                conn.execute("DELETE FROM cluster_devices WHERE node = %s", (self.node,))
            if gone:
                conn.execute(
                    "DELETE FROM cluster_devices WHERE node = %s AND (user_id, device_id) IN"
                    " (SELECT * FROM unnest(%s::text[], %s::bigint[]))",
                    (self.node, [a[0] for a in gone], [a[1] for a in gone]),
                )
            if added:
                conn.execute(
                    "INSERT INTO cluster_devices (user_id, device_id, node, since_ms)"
                    f" SELECT u, d, %s, {_NOW} FROM unnest(%s::text[], %s::bigint[]) AS t(u, d)"
                    " ON CONFLICT DO NOTHING",
                    (self.node, [a[0] for a in added], [a[1] for a in added]),
                )

    # --- sending hints -------------------------------------------------------------------------

    async def _hint_loop(self) -> None:
        delay = HINT_RETRY[0]
        while True:
            if not self._pending and not self._kicks:
                await self._hint_wanted.wait()
            self._hint_wanted = trio.Event()
            pending, self._pending = self._pending, {}
            kicks, self._kicks = self._kicks, []
            try:
                leased = await self._hints.run(self._send_hints, pending, kicks)
            except psycopg.Error as e:
                log.warning(
                    "cluster.hint_failed", error=_first_line(e), wake=len(pending), kicks=len(kicks)
                )
                # Tried again (the connection is opened anew): a push instead could leave a
                # session on another node unwoken.
                for addr, urgent in pending.items():
                    self._pending[addr] = self._pending.get(addr, False) or urgent
                self._kicks = kicks + self._kicks
                await trio.sleep(delay)
                delay = min(delay * 2, HINT_RETRY[1])
                continue
            delay = HINT_RETRY[0]
            self._push_all(pending, leased)

    def _push_all(self, pending: dict[Addr, bool], leased: Iterable[Addr]) -> None:
        if self._push is None:
            return
        skip = set(leased)
        for addr, urgent in pending.items():
            if addr not in skip:
                self._push(addr, urgent)

    def _send_hints(
        self, conn: psycopg.Connection[Any], pending: dict[Addr, bool], kicks: list[str]
    ) -> set[Addr]:
        """One NOTIFY for the devices with a live lease on another node, plus the kicks;
        returns those devices (they get no push)."""
        leased: set[Addr] = set()
        if pending:
            addrs = list(pending)
            rows = conn.execute(
                "SELECT DISTINCT d.user_id, d.device_id FROM cluster_devices d"
                " JOIN cluster_nodes n ON n.node = d.node"
                f" WHERE n.node <> %s AND n.stopped = 0 AND n.heartbeat_ms > {_NOW} - %s"
                " AND (d.user_id, d.device_id) IN"
                " (SELECT * FROM unnest(%s::text[], %s::bigint[]))",
                (self.node, self._lease_ms, [a[0] for a in addrs], [a[1] for a in addrs]),
            ).fetchall()
            leased = {(str(u), int(d)) for u, d in rows}
        payloads = list(kicks)
        if leased:
            wake = json.dumps(
                {"f": self.node, "w": sorted([u, d] for u, d in leased)}, separators=(",", ":")
            )
            if len(wake.encode()) > NOTIFY_LIMIT:
                wake = json.dumps({"f": self.node, "all": 1}, separators=(",", ":"))
                HINTS_SENT.labels("all").inc()
            else:
                HINTS_SENT.labels("wake").inc()
            payloads.append(wake)
        if payloads:
            with conn.transaction():
                for payload in payloads:
                    conn.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))
            if kicks:
                HINTS_SENT.labels("kick").inc(len(kicks))

        return leased

    # --- receiving hints -----------------------------------------------------------------------

    async def _listen_loop(self, *, task_status: trio.TaskStatus[None]) -> None:
        delay = LISTEN_BACKOFF[0]
        first = True
        limiter = trio.CapacityLimiter(1)
        while True:
            try:
                conn = await trio.to_thread.run_sync(self._listen_connect)
            except psycopg.Error as e:
                if first:
                    raise ClusterError(
                        f"cannot LISTEN on {self.store.where}: {_first_line(e)}"
                    ) from e
                log.warning("cluster.listen_failed", error=_first_line(e), retry_s=delay)
                await trio.sleep(delay)
                delay = min(delay * 2, LISTEN_BACKOFF[1])
                continue
            self.listening = True
            if first:
                first = False
                task_status.started()
            else:
                LISTEN_RECONNECTS.inc()
                log.info("cluster.listen_restored", node=self.node)
                # Hints may have been missed meanwhile: catch up from the mailboxes, and
                # apply admin actions taken on other nodes.
                self.presence.poke()
                await self._recheck_sessions()
            delay = LISTEN_BACKOFF[0]
            stop = threading.Event()
            try:
                await trio.to_thread.run_sync(
                    self._listen_thread, conn, stop, abandon_on_cancel=True, limiter=limiter
                )
            except psycopg.Error as e:
                log.warning("cluster.listen_lost", error=_first_line(e))
            finally:
                stop.set()
                self.listening = False
            await trio.sleep(delay)

    def _listen_connect(self) -> psycopg.Connection[Any]:
        conn = self.store.connect_dedicated()
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except BaseException:
            conn.close()
            raise
        self.listen_pid = conn.info.backend_pid
        return conn

    def _listen_thread(self, conn: psycopg.Connection[Any], stop: threading.Event) -> None:
        token = self._token
        assert token is not None
        try:
            while not stop.is_set():
                for n in conn.notifies(timeout=LISTEN_POLL):
                    if n.channel == self.channel:
                        token.run_sync_soon(self.on_hint, n.payload)
                    if stop.is_set():
                        break
        except trio.RunFinishedError:
            pass
        finally:
            conn.close()

    def on_hint(self, payload: str) -> None:
        """One hint from the LISTEN thread (in trio's thread)."""
        try:
            hint = json.loads(payload)
            if not isinstance(hint, dict) or hint.get("f") == self.node:
                return
            if "w" in hint:
                HINTS_RECEIVED.labels("wake").inc()
                self.presence.poke((str(u), int(d)) for u, d in hint["w"])
            elif "all" in hint:
                HINTS_RECEIVED.labels("all").inc()
                self.presence.poke()
            elif "ku" in hint:
                HINTS_RECEIVED.labels("kick").inc()
                self._kick_user(str(hint["ku"]), ErrorCode(int(hint["c"])))
            elif "rp" in hint:
                HINTS_RECEIVED.labels("replaced").inc()
                for uid, did, since in hint["rp"]:
                    addr = (str(uid), int(did))
                    mine = self.presence.since_ms.get(addr)
                    # Only an older session is replaced (two logins of one device at once:
                    # the hint of the older one may arrive after the newer one registered).
                    if mine is not None and mine < int(since):
                        self._kick_device(addr, ErrorCode.SESSION_REPLACED)
            elif "kd" in hint:
                HINTS_RECEIVED.labels("kick").inc()
                uid, did = hint["kd"]
                self._kick_device((str(uid), int(did)), ErrorCode(int(hint["c"])))
        except (ValueError, TypeError, KeyError) as e:
            log.warning("cluster.bad_hint", error=str(e))

    async def _recheck_sessions(self) -> None:
        """Disconnect local sessions whose user or device was disabled, deleted or revoked
        while this node could not hear the other nodes' kick hints."""
        addrs = self.presence.addrs()
        if not addrs:
            return

        def check(conn: psycopg.Connection[Any]) -> list[tuple[str, int, int]]:
            rows = conn.execute(
                "SELECT d.user_id, d.device_id, u.disabled + u.deleted FROM devices d"
                " JOIN users u ON u.user_id = d.user_id"
                " WHERE (u.disabled <> 0 OR u.deleted <> 0 OR d.revoked_ms IS NOT NULL)"
                " AND (d.user_id, d.device_id) IN"
                " (SELECT * FROM unnest(%s::text[], %s::bigint[]))",
                ([a[0] for a in addrs], [a[1] for a in addrs]),
            ).fetchall()
            return [(str(u), int(d), int(off)) for u, d, off in rows]

        try:
            victims = await self._control.run(check)
        except psycopg.Error as e:
            log.warning("cluster.recheck_failed", error=_first_line(e))
            return
        for uid, did, user_off in victims:
            if user_off:
                self._kick_user(uid, ErrorCode.USER_DISABLED)
            else:
                self._kick_device((uid, did), ErrorCode.DEVICE_REVOKED)


def _setup_schema(conn: psycopg.Connection[Any]) -> str:
    """Create the cluster tables (once, under a lock); return the NOTIFY channel's name."""
    with conn.transaction():
        schema = conn.execute("SELECT current_schema()").fetchone()
        if schema is None or schema[0] is None:
            raise ClusterError("the database connection has no schema to create tables in")
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('momedo.cluster_schema'))")
        conn.execute("CREATE TABLE IF NOT EXISTS cluster_schema (version BIGINT NOT NULL)")
        row = conn.execute("SELECT max(version) FROM cluster_schema").fetchone()
        version = 0 if row is None or row[0] is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise ClusterError(
                f"the cluster tables are of a newer momedod (version {version}); upgrade this node"
            )
        if version < 1:
            for ddl in _DDL:
                conn.execute(ddl)
            conn.execute("INSERT INTO cluster_schema (version) VALUES (1)")
    # Channels are per database; the schema tells clusters in one database apart.
    digest = hashlib.sha256(str(schema[0]).encode()).hexdigest()[:16]
    return f"momedo_cluster_{digest}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
