"""The parts of the cluster code that need no daemon: [cluster] configuration, the hint
logic between two in-process nodes over the throwaway PostgreSQL, the TUI's node lines."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import trio
from pg import PgServer

from momedo_tui.app import server_lines
from momedod.admin import ctl
from momedod.config import ClusterConfig, ConfigError, load_config
from momedod.protocol.errors import ErrorCode
from momedod.server.cluster import Cluster, ClusterPresence
from momedod.store.postgres import PostgresStore

PG = '[storage]\nengine = "postgres"\ndsn = "host=/run/postgresql dbname=momedo"\n'


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "momedod.toml"
    path.write_text(text)
    return load_config(path, environ={})


def test_cluster_config_loads_with_postgres(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        PG + '[cluster]\nenabled = true\nnode_name = "chat-1"\nheartbeat_interval = 0.5\n'
        "lease_timeout = 2\n",
    )
    assert config.cluster == ClusterConfig(True, "chat-1", 0.5, 2.0)
    assert load(tmp_path, "").cluster == ClusterConfig()  # off by default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[cluster]\nenabled = true\n",
            "cluster.enabled: several nodes share one PostgreSQL database; set [storage] engine"
            ' = "postgres" and dsn (engine is "sqlite")',
        ),
        (
            PG + '[cluster]\nnode_name = "a b"\n',
            "cluster.node_name: expected a node name: 1 to 63 letters, digits, '.', '_' or '-'",
        ),
        (
            PG + "[cluster]\nheartbeat_interval = 2\nlease_timeout = 3\n",
            "cluster.lease_timeout: must be at least twice heartbeat_interval (3 s < 2 x 2 s)",
        ),
        (PG + "[cluster]\nleases = 3\n", "cluster.leases: unknown key"),
    ],
)
def test_cluster_config_errors_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert message in str(info.value)


@dataclass(eq=False)
class FakeSession:
    addr: tuple[str, int]
    pokes: int = 0
    kicked: list[ErrorCode] = field(default_factory=list)

    def offer(self, entry: object) -> None:
        raise AssertionError("no local delivery in these tests")

    def kick(self, code: ErrorCode, message: str) -> None:
        self.kicked.append(code)

    def poke(self) -> None:
        self.pokes += 1


@dataclass
class Node:
    cluster: Cluster
    presence: ClusterPresence
    pushed: list[tuple[tuple[str, int], bool]]


async def start_node(nursery: trio.Nursery, store: PostgresStore, name: str) -> Node:
    presence = ClusterPresence()
    pushed: list[tuple[tuple[str, int], bool]] = []

    def kick_user(uid: str, code: ErrorCode) -> int:
        return presence.disconnect_user(uid, code, "kicked")

    def kick_device(addr: tuple[str, int], code: ErrorCode) -> int:
        return presence.disconnect_device(addr, code, "kicked")

    cluster = Cluster(
        ClusterConfig(True, name, 0.1, 2.0),
        store,
        presence,
        push=lambda addr, urgent: pushed.append((addr, urgent)),
        kick_user=kick_user,
        kick_device=kick_device,
        describe=lambda: (len(presence), ["127.0.0.1:7443"]),
    )
    await nursery.start(cluster.run)
    return Node(cluster, presence, pushed)


async def eventually(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.01)


async def test_hints_wake_leased_devices_push_the_others_and_check_all_when_too_big(
    tmp_path: Path, pg_server: PgServer, nursery: trio.Nursery
) -> None:
    store = PostgresStore(tmp_path, pg_server.new_dsn(), pool_size=2)
    await store.open()
    try:
        x = await start_node(nursery, store, "x")
        y = await start_node(nursery, store, "y")
        assert x.cluster.channel == y.cluster.channel  # one channel per schema
        on_y = [FakeSession((f"USER{i:08d}", 1)) for i in range(400)]
        for s in on_y:
            y.presence.register(s)
        # The new leases are written in one batch; y pokes them once (a fresh login's race).
        await eventually(lambda: all(s.pokes == 1 for s in on_y))
        await eventually(lambda: {n.node: n.devices for n in x.cluster.nodes} == {"x": 0, "y": 400})

        # Two leased devices and one connected nowhere: one hint naming the two, a push
        # (urgent kept) for the third only.
        x.cluster.offline(on_y[0].addr, False)
        x.cluster.offline(on_y[1].addr, True)
        x.cluster.offline(("NOBODY", 1), True)
        await eventually(lambda: on_y[0].pokes == 2 and on_y[1].pokes == 2)
        await eventually(lambda: x.pushed == [(("NOBODY", 1), True)])
        await trio.sleep(0.2)
        assert [s.pokes for s in on_y[2:]] == [1] * 398  # nobody else woken

        # 400 addresses do not fit one NOTIFY (8000 bytes): a "check all" hint instead.
        for s in on_y:
            x.cluster.offline(s.addr, False)
        await eventually(lambda: all(s.pokes >= 2 for s in on_y[2:]))
        assert x.pushed == [(("NOBODY", 1), True)]

        # A device that left y: its lease goes, and a message for it is pushed.
        y.presence.unregister(on_y[5])
        await trio.sleep(0.3)
        x.cluster.offline(on_y[5].addr, False)
        await eventually(lambda: (on_y[5].addr, False) in x.pushed)

        # Kicks reach the other node's sessions.
        x.cluster.kick_user(on_y[7].addr[0], ErrorCode.USER_DISABLED)
        x.cluster.kick_device(on_y[8].addr, ErrorCode.DEVICE_REVOKED)
        await eventually(lambda: on_y[7].kicked == [ErrorCode.USER_DISABLED])
        await eventually(lambda: on_y[8].kicked == [ErrorCode.DEVICE_REVOKED])
        assert not on_y[9].kicked
        status = {n["node"]: n for n in await x.cluster.status()}
        assert status["x"]["self"] and status["y"]["state"] == "live"
        nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await store.close()


def test_tui_server_panel_lists_the_nodes() -> None:
    info = {
        "public_address": "chat1.example.org:7443",
        "fingerprint": "FP",
        "listeners": [],
        "cluster": [
            {
                "node": "chat1",
                "self": True,
                "state": "live",
                "connections": 3,
                "heartbeat_age_s": 0.4,
            },
            {
                "node": "chat2",
                "self": False,
                "state": "dead",
                "connections": 0,
                "heartbeat_age_s": 12.0,
            },
        ],
    }
    lines = server_lines(info)
    assert ("Nodes", "chat1 (this)  live  3 connections, heartbeat 0.4 s ago") in lines
    assert ("", "chat2  dead  0 connections, heartbeat 12.0 s ago") in lines
    assert not any(label == "Nodes" for label, _ in server_lines({**info, "cluster": None}))


async def test_a_node_that_lost_listen_catches_up_and_applies_missed_admin_actions(
    tmp_path: Path, pg_server: PgServer, nursery: trio.Nursery
) -> None:
    dsn = pg_server.new_dsn()
    store = PostgresStore(tmp_path, dsn, pool_size=2)
    await store.open()
    try:
        y = await start_node(nursery, store, "y")
        kept, disabled, revoked = (FakeSession((f"USER{i:08d}", 1)) for i in range(3))
        for s in (kept, disabled, revoked):
            y.presence.register(s)
        await eventually(lambda: kept.pokes == 1)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for s in (kept, disabled, revoked):
                conn.execute(
                    "INSERT INTO users (user_id, name, created_ms) VALUES (%s, 'n', 0)",
                    (s.addr[0],),
                )
                conn.execute(
                    "INSERT INTO devices (user_id, device_id, name, transport_pub, created_ms)"
                    " VALUES (%s, 1, 'd', %s, 0)",
                    (s.addr[0], b"k" * 32),
                )
            # Changed by another node whose kick hints this node would miss: the LISTEN
            # connection dies (as in a database failover) ...
            conn.execute("UPDATE users SET disabled = 1 WHERE user_id = %s", (disabled.addr[0],))
            conn.execute("UPDATE devices SET revoked_ms = 1 WHERE user_id = %s", (revoked.addr[0],))
            old_pid = y.cluster.listen_pid
            conn.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
        # ... and comes back: every session catches up from the store, and the sessions of
        # the disabled user and the revoked device are closed.
        await eventually(lambda: y.cluster.listen_pid not in (0, old_pid) and kept.pokes == 2)
        await eventually(lambda: disabled.kicked == [ErrorCode.USER_DISABLED])
        await eventually(lambda: revoked.kicked == [ErrorCode.DEVICE_REVOKED])
        assert not kept.kicked
        nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await store.close()


async def test_a_login_on_another_node_replaces_the_older_session(
    tmp_path: Path, pg_server: PgServer, nursery: trio.Nursery
) -> None:
    store = PostgresStore(tmp_path, pg_server.new_dsn(), pool_size=2)
    await store.open()
    try:
        x = await start_node(nursery, store, "x")
        y = await start_node(nursery, store, "y")
        old, other = FakeSession(("USER00000001", 1)), FakeSession(("USER00000001", 2))
        x.presence.register(old)
        x.presence.register(other)
        await eventually(lambda: old.pokes == 1)
        new = FakeSession(("USER00000001", 1))
        y.presence.register(new)  # the same device, now through node y
        await eventually(lambda: old.kicked == [ErrorCode.SESSION_REPLACED])
        assert not other.kicked and not new.kicked
        nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await store.close()


def test_momedoctl_shows_the_nodes_and_says_when_there_is_no_cluster() -> None:
    nodes = [
        {
            "node": "chat1",
            "state": "live",
            "self": True,
            "connections": 12,
            "devices": 10,
            "heartbeat_age_s": 0.3,
            "version": "0.1.0",
            "addresses": ["chat1:7443", "chat2:7443"],
        },
        {
            "node": "chat2",
            "state": "dead",
            "self": False,
            "connections": 0,
            "devices": 0,
            "heartbeat_age_s": 31.0,
            "version": "0.1.0",
            "addresses": [],
        },
    ]
    lines = ctl._show_cluster_status({"enabled": True, "node": "chat1", "nodes": nodes}, None)
    assert lines[0].split() == [
        "NODE",
        "STATE",
        "CONNECTIONS",
        "DEVICES",
        "HEARTBEAT",
        "VERSION",
        "ADDRESSES",
    ]
    assert lines[1].split() == [
        "chat1",
        "*",
        "live",
        "12",
        "10",
        "0.3",
        "s",
        "ago",
        "0.1.0",
        "chat1:7443,",
        "chat2:7443",
    ]
    assert lines[2].split() == ["chat2", "dead", "0", "0", "31.0", "s", "ago", "0.1.0"]
    assert lines[3] == "1 of 2 nodes live; * = the node that answered"
    off = ctl._show_cluster_status({"enabled": False, "node": "pi", "nodes": []}, None)
    assert off == ["Node pi is not part of a cluster ([cluster] enabled = false)."]
    info = {"name": "x", "node": "chat1", "cluster": nodes, "listeners": []}
    assert "Node:            chat1" in ctl._show_server_info(info, None)
    assert not any(
        line.startswith("Node") for line in ctl._show_server_info({**info, "cluster": None}, None)
    )


async def test_a_hint_whose_connection_died_is_sent_again_not_pushed(
    tmp_path: Path, pg_server: PgServer, nursery: trio.Nursery
) -> None:
    dsn = pg_server.new_dsn()
    store = PostgresStore(tmp_path, dsn, pool_size=2)
    await store.open()
    try:
        x = await start_node(nursery, store, "x")
        y = await start_node(nursery, store, "y")
        on_y = FakeSession(("USER00000001", 1))
        y.presence.register(on_y)
        await eventually(lambda: on_y.pokes == 1)
        x.cluster.offline(on_y.addr, False)  # opens x's hint connection
        await eventually(lambda: on_y.pokes == 2)
        hints = x.cluster._hints._conn
        assert hints is not None
        with psycopg.connect(dsn, autocommit=True) as conn:  # as in a database failover
            conn.execute("SELECT pg_terminate_backend(%s)", (hints.info.backend_pid,))
        x.cluster.offline(on_y.addr, False)
        await eventually(lambda: on_y.pokes == 3)
        assert x.pushed == []  # the device is connected to y: woken there, never pushed
        nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await store.close()
