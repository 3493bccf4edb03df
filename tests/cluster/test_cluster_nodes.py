"""Two real momedod nodes (subprocesses) over one PostgreSQL database (issue 10, nodes).

Each test starts nodes A and B with ``[cluster] enabled = true`` in a fresh schema of the
session's throwaway PostgreSQL server (tests/pg.py), on loopback, with the same TLS
certificate and key files (one pin covers both) and ``[server] public_addresses`` listing
both, so invite links carry both addresses and clients fail over between them.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import trio
from pg import PgServer
from support import VENV_BIN, DaemonProcess, admin_call, free_port, new_message_id

from momedod.client.transport import (
    Backoff,
    Client,
    ClientError,
    Credentials,
    ServerError,
    connect,
    connect_invite,
    open_client,
)
from momedod.protocol.errors import ErrorCode
from momedod.protocol.frames import Deliver, Drained, Recipient
from momedod.server.tls import ensure_self_signed

FAST = Backoff(0.05, 0.3)
HEARTBEAT = 0.2
LEASE = 2.5  # generous: a loaded 2-core test machine may delay heartbeats


@dataclass
class Nodes:
    a: DaemonProcess
    b: DaemonProcess
    addresses: tuple[tuple[str, int], tuple[str, int]]


def _node(
    workdir: Path, name: str, port: int, ports: list[int], dsn: str, tls: Path
) -> DaemonProcess:
    workdir.mkdir()
    proc = DaemonProcess(workdir, port)
    public = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    proc.config_path.write_text(
        f'[server]\nname = "cluster"\nstate_dir = "{proc.state}"\npublic_addresses = [{public}]\n'
        f'[[listener]]\naddress = "127.0.0.1"\nport = {port}\n'
        f'cert = "{tls / "cert.pem"}"\nkey = "{tls / "key.pem"}"\n'
        f'[admin]\nsocket = "{proc.socket}"\n'
        f'[log]\nlevel = "info"\nformat = "json"\n'
        f"[metrics]\nport = {proc.metrics_port}\n"
        f'[storage]\nengine = "postgres"\ndsn = "{dsn}"\npool_size = 4\n'
        f'[cluster]\nenabled = true\nnode_name = "{name}"\n'
        f"heartbeat_interval = {HEARTBEAT}\nlease_timeout = {LEASE}\n"
    )
    return proc


@pytest.fixture
def nodes(tmp_path: Path, pg_server: PgServer) -> Iterator[Nodes]:
    dsn = pg_server.new_dsn().replace('"', '\\"')
    cert, _key = ensure_self_signed(tmp_path / "shared", ["localhost"])
    ports = [free_port(), free_port()]
    a = _node(tmp_path / "a", "node-a", ports[0], ports, dsn, cert.parent)
    b = _node(tmp_path / "b", "node-b", ports[1], ports, dsn, cert.parent)
    try:
        with ThreadPoolExecutor(2) as pool:  # both at once (migrations take a lock)
            for started in [pool.submit(node.start, 30) for node in (a, b)]:
                started.result()
        yield Nodes(a, b, (("127.0.0.1", ports[0]), ("127.0.0.1", ports[1])))
    finally:
        for node in (a, b):
            if node.proc is not None and node.proc.poll() is None:
                node.stop()


async def enroll(node: DaemonProcess, name: str) -> Credentials:
    """A user and device enrolled through ``node``'s admin socket and listener."""
    link = admin_call(node.socket, "user.add", name=name)["invite"]["link"]
    async with connect_invite(link, f"{name}-phone", backoff=FAST) as (_client, creds):
        return creds


@asynccontextmanager
async def at(creds: Credentials, address: tuple[str, int]) -> AsyncIterator[Client]:
    """A client logged in at one node (no failover)."""
    async with open_client(*address, creds.fingerprints) as client:
        await client.login(creds.user_id, creds.device_id, creds.transport_seed)
        yield client


async def drained(client: Client) -> None:
    while not isinstance(await client.receive(5), Drained):
        pass


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(sender: Client, receiver: Client, to: Credentials, count: int) -> list[float]:
    """Send ``count`` messages one at a time; return each one's latency from the start of
    its SEND to its DELIVER (the receiver acknowledges in batches, apart from receiving)."""
    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []
    order: list[bytes] = []
    unacked: list[int] = []
    ack_wanted, all_in = trio.Event(), trio.Event()

    async def receive() -> None:
        while len(order) < count:
            ev = await receiver.receive(10)
            assert isinstance(ev, Deliver)
            latencies.append(time.perf_counter() - sent_at[ev.message_id])
            order.append(ev.message_id)
            unacked.append(ev.seq)
            ack_wanted.set()
        all_in.set()

    async def ack() -> None:
        nonlocal ack_wanted
        while True:
            await ack_wanted.wait()
            ack_wanted = trio.Event()
            seqs = unacked[:]
            del unacked[:]
            await receiver.ack(seqs)

    ids = [new_message_id() for _ in range(count)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        nursery.start_soon(ack)
        for mid in ids:
            sent_at[mid] = time.perf_counter()
            await sender.send(mid, b"latency", [Recipient(to.user_id, to.device_id, b"")])
            await trio.sleep(0.005)  # one message at a time: latency, not throughput
        with trio.fail_after(15):
            await all_in.wait()
        nursery.cancel_scope.cancel()
    assert order == ids  # every message, once, in order
    return latencies


def summary(latencies: list[float]) -> str:
    p50, p99 = statistics.median(latencies), percentile(latencies, 99)
    return f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"


async def test_live_delivery_from_a_sender_on_a_to_a_recipient_on_b(nodes: Nodes) -> None:
    alice, bob = await enroll(nodes.a, "Alice"), await enroll(nodes.a, "Bob")
    assert alice.fingerprints == bob.fingerprints and len(alice.fingerprints) == 1  # one pin
    assert alice.addresses == nodes.addresses
    count = 200
    async with at(alice, nodes.addresses[0]) as sender:
        await drained(sender)
        async with at(bob, nodes.addresses[1]) as receiver:
            await drained(receiver)
            await trio.sleep(3 * HEARTBEAT)  # B's lease for Bob is written and visible
            cross = await measure(sender, receiver, bob, count)
        # The same with both on node A, for comparison (no hint between nodes).
        async with at(bob, nodes.addresses[0]) as receiver:
            await drained(receiver)
            local = await measure(sender, receiver, bob, count)
    print(f"\ncross-node latency, {count} messages, send on A -> DELIVER on B: {summary(cross)}")
    print(f"same-node latency,  {count} messages, send on A -> DELIVER on A: {summary(local)}")
    # Woken by a hint, not by a poll or a heartbeat (HEARTBEAT is 0.2 s).
    assert statistics.median(cross) < HEARTBEAT / 2
    assert admin_call(nodes.b.socket, "server.info")["node"] == "node-b"
    # Every series of each node's /metrics carries its node label.
    for node, name in ((nodes.a, "node-a"), (nodes.b, "node-b")):
        text = await trio.to_thread.run_sync(scrape, node.metrics_port)
        samples = [line for line in text.splitlines() if line and not line.startswith("#")]
        assert samples and all(f'node="{name}"' in line for line in samples), name
    assert metric_value(scrape(nodes.b.metrics_port), "momedod_messages_delivered_total") >= count


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_sigkill_of_node_a_during_traffic_loses_and_duplicates_nothing(
    nodes: Nodes,
) -> None:
    alice = await enroll(nodes.a, "Alice")
    bob = await enroll(nodes.a, "Bob")  # on A, fails over to B
    carol = await enroll(nodes.a, "Carol")  # on B all along: cross-node before the kill
    count, kill_at = 150, 50
    accepted: list[bytes] = []
    got: dict[str, dict[bytes, set[int]]] = {"bob": {}, "carol": {}}
    reconnects = {"alice": 0, "bob": 0}
    killed = trio.Event()
    recipients = [
        Recipient(bob.user_id, bob.device_id, b""),
        Recipient(carol.user_id, carol.device_id, b""),
    ]

    async def receive_failover(name: str, creds: Credentials) -> None:
        while True:
            try:
                async with connect(creds, backoff=FAST, rounds=None) as client:
                    while True:
                        ev = await client.receive()
                        if isinstance(ev, Deliver):
                            got[name].setdefault(ev.message_id, set()).add(ev.seq)
                            await client.ack([ev.seq])
            except ClientError:
                reconnects[name] += 1

    async def receive_on_b(creds: Credentials) -> None:
        async with at(creds, nodes.addresses[1]) as client:
            while True:
                ev = await client.receive()
                if isinstance(ev, Deliver):
                    got["carol"].setdefault(ev.message_id, set()).add(ev.seq)
                    await client.ack([ev.seq])

    async def send_all() -> None:
        ids = [new_message_id() for _ in range(count)]
        i = 0
        while i < count:
            try:
                async with connect(alice, backoff=FAST, rounds=None) as client:
                    while i < count:
                        # After a failure the same message ID is sent again: the store
                        # accepts it once (duplicate=True the second time).
                        await client.send(ids[i], f"m{i}".encode(), recipients)
                        accepted.append(ids[i])
                        i += 1
                        if i == kill_at:
                            await trio.to_thread.run_sync(nodes.a.kill)
                            killed.set()
                        await trio.sleep(0.01)
            except ClientError:
                reconnects["alice"] += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_failover, "bob", bob)
        nursery.start_soon(receive_on_b, carol)
        with trio.fail_after(40):
            await send_all()
            while any(len(got[n]) < count for n in got):
                await trio.sleep(0.05)
        await trio.sleep(0.5)  # room for a late duplicate to show up
        nursery.cancel_scope.cancel()
    assert killed.is_set() and reconnects["alice"] >= 1 and reconnects["bob"] >= 1
    assert len(accepted) == count == len(set(accepted))
    for name in ("bob", "carol"):
        assert set(got[name]) == set(accepted), name
        # Exactly once in the store: each message has one mailbox seq (a redelivery of an
        # unacknowledged message after the reconnect repeats that seq; the client de-dups).
        assert all(len(seqs) == 1 for seqs in got[name].values()), name


async def test_disabling_a_user_on_a_disconnects_its_device_on_b_within_2_s(
    nodes: Nodes,
) -> None:
    dora, erik = await enroll(nodes.a, "Dora"), await enroll(nodes.a, "Erik")
    cases = (
        ("user.disable", dora, {"user_id": dora.user_id}, ErrorCode.USER_DISABLED),
        (
            "device.revoke",
            erik,
            {"user_id": erik.user_id, "device_id": erik.device_id},
            ErrorCode.DEVICE_REVOKED,
        ),
    )
    for action, creds, args, code in cases:
        async with at(creds, nodes.addresses[1]) as client:
            await drained(client)
            started = time.perf_counter()
            await trio.to_thread.run_sync(partial(admin_call, nodes.a.socket, action, **args))
            with pytest.raises(ServerError) as info:
                await client.receive(5)
            elapsed = time.perf_counter() - started
        assert info.value.code == code, info.value
        assert elapsed < 2.0, f"{action} on A: device on B disconnected after {elapsed:.2f} s"
        print(f"\n{action} on node A: the device on node B was disconnected in {elapsed:.3f} s")
    # Logging in again at B is refused too (the store is the truth).
    with pytest.raises(ServerError):
        async with at(dora, nodes.addresses[1]):
            pass


def ctl(node: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "momedoctl"), "-c", str(node.config_path), "cluster", "status", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


async def test_cluster_status_shows_both_nodes_then_a_dead_after_sigkill(nodes: Nodes) -> None:
    bob = await enroll(nodes.a, "Bob")
    async with at(bob, nodes.addresses[1]) as client:
        await drained(client)
        await trio.sleep(3 * HEARTBEAT)
        done = ctl(nodes.a, "--json")
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert status["node"] == "node-a"
        by_name = {n["node"]: n for n in status["nodes"]}
        assert set(by_name) == {"node-a", "node-b"}
        assert by_name["node-a"]["state"] == by_name["node-b"]["state"] == "live"
        assert by_name["node-a"]["self"] and not by_name["node-b"]["self"]
        assert by_name["node-b"]["devices"] == 1 and by_name["node-b"]["connections"] == 1

        nodes.a.kill()
        await trio.sleep(LEASE + 2 * HEARTBEAT)
        text = ctl(nodes.b).stdout
        assert "node-a " in text and "node-b *" in text, text
        line_a = next(line for line in text.splitlines() if line.startswith("node-a"))
        assert " dead " in line_a, text
        assert "1 of 2 nodes live" in text
        info = admin_call(nodes.b.socket, "server.info")
        assert {n["node"]: n["state"] for n in info["cluster"]} == {
            "node-a": "dead",
            "node-b": "live",
        }

        # A restarted under its name takes its row over (after its old lease ran out).
        nodes.a.start(timeout=30)
        status = admin_call(nodes.b.socket, "cluster.status")
        assert {n["node"]: n["state"] for n in status["nodes"]} == {
            "node-a": "live",
            "node-b": "live",
        }
        # A clean stop (SIGTERM) is not a death: A says so before it goes.
        assert nodes.a.stop() == 0
        status = admin_call(nodes.b.socket, "cluster.status")
        assert {n["node"]: n["state"] for n in status["nodes"]} == {
            "node-a": "stopped",
            "node-b": "live",
        }
