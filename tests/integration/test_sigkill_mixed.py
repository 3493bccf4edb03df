"""SIGKILL of the daemon at random points during mixed traffic, repeated.

Extends test_process.py's burst test (sends only) to everything that writes: sends to two
devices, acknowledgements, roster changes of a group (CONV_PUT) and attachment uploads with
messages referencing them. Each round runs the traffic, kills the daemon with SIGKILL after a
random delay, checks the database with SQLite's integrity_check, restarts, and checks what
the clients were told:

* every message answered with ACCEPTED is delivered (no accepted message is lost);
* no message is delivered twice within one drain, and one whose ACK was answered OK never
  comes back (a message whose ACK was cut off may: clients de-duplicate by message_id);
* the group's epoch is at least the last one answered OK;
* every attachment referenced by an accepted message downloads with its SHA-256.

The seed of each run is printed, so a failure can be replayed (MOMEDO_KILL_SEED).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import trio
from support import DaemonProcess, admin_call, free_port

from momedod.client.blobs import download_blob, upload_blob
from momedod.client.transport import (
    Client,
    ClientError,
    Credentials,
    ServerError,
    connect,
    connect_invite,
)
from momedod.e2e.envelope import Addr
from momedod.e2e.identity import DeviceKey
from momedod.e2e.roster import KIND_GROUP, ROLE_ADMIN, ROLE_MEMBER, Roster, sign_roster_device
from momedod.protocol import frames as f
from momedod.protocol.errors import ErrorCode
from momedod.store.sqlite import DB_FILENAME

DK = DeviceKey(b"\x07" * 32)  # the server does not check device signatures; clients do
LOST = (ClientError, OSError, trio.BrokenResourceError, trio.ClosedResourceError)


@contextlib.contextmanager
def until_killed() -> Iterator[None]:
    """End a traffic task quietly when the daemon dies; an error answer is a failure."""
    try:
        yield
    except ServerError:
        raise
    except LOST:
        pass


@dataclass
class Ledger:
    """What the clients were told, across kills. Mailbox sets are per device: "B", "C"."""

    accepted: dict[str, set[bytes]] = field(default_factory=lambda: {"B": set(), "C": set()})
    acked: dict[str, set[bytes]] = field(default_factory=lambda: {"B": set(), "C": set()})
    ack_unsure: set[bytes] = field(default_factory=set)  # B's ACK sent, its answer cut off
    rosters: dict[int, Roster] = field(default_factory=dict)  # by epoch, all we ever sent
    confirmed_epoch: int = 0
    blobs: dict[bytes, bytes] = field(default_factory=dict)  # blob_id -> sha256, referenced


async def enroll(proc: DaemonProcess, name: str) -> Credentials:
    link = admin_call(proc.socket, "user.add", name=name)["invite"]["link"]
    async with connect_invite(link, name) as (_client, creds):
        return creds


async def drain_and_ack(creds: Credentials, acked: set[bytes]) -> list[bytes]:
    """Everything waiting for the device, acknowledged as it arrives (like a real client,
    which must: the server stops at its delivery window until ACKs come)."""
    got = []
    async with connect(creds) as c:
        while not isinstance(ev := await c.receive(15), f.Drained):
            got.append(ev.message_id)
            await c.ack([ev.seq])
            acked.add(ev.message_id)
    return got


async def traffic(
    a: Credentials, b: Credentials, c: Credentials, led: Ledger, rng: random.Random
) -> None:
    """Run every kind of write until the daemon dies under it (A's writers share A's one
    connection, pipelined: a second login of the same device would replace the first)."""
    to_both = (f.Recipient(b.user_id, b.device_id, b""), f.Recipient(c.user_id, c.device_id, b""))

    async def sends(client: Client) -> None:
        with until_killed():
            while True:
                mid = os.urandom(16)
                await client.send(mid, b"m" * rng.randint(1, 3000), to_both)
                led.accepted["B"].add(mid)
                led.accepted["C"].add(mid)

    async def group_changes(client: Client) -> None:
        with until_killed():
            while True:
                current = led.rosters[max(led.rosters)] if led.rosters else None
                members = {a.user_id: ROLE_ADMIN, c.user_id: ROLE_MEMBER}
                if rng.random() < 0.5:
                    members[b.user_id] = ROLE_MEMBER
                if current is None:
                    roster = Roster.first(os.urandom(16), KIND_GROUP, members, "kill test")
                else:
                    roster = current.next(members=members)
                led.rosters[roster.epoch] = roster
                record = sign_roster_device(roster, Addr(a.user_id, a.device_id), DK)
                await client.conv_put(roster.conv_id, record)
                led.confirmed_epoch = roster.epoch
                await trio.sleep(0.02)

    async def uploads(client: Client) -> None:
        with until_killed():
            while True:
                blob_id, data = os.urandom(16), os.urandom(rng.randint(1, 300_000))
                await upload_blob(client, blob_id, data)
                mid = os.urandom(16)
                await client.send_blobs(mid, blob_id, to_both[:1], [blob_id])
                led.accepted["B"].add(mid)
                led.blobs[blob_id] = hashlib.sha256(data).digest()

    async def acks() -> None:
        with until_killed():
            async with connect(b) as client:
                while True:
                    ev = await client.receive()
                    if isinstance(ev, f.Deliver):
                        led.ack_unsure.add(ev.message_id)
                        await client.ack([ev.seq])
                        led.acked["B"].add(ev.message_id)
                        led.ack_unsure.discard(ev.message_id)

    async def writer_a() -> None:
        with until_killed():
            async with connect(a) as client, trio.open_nursery() as n:
                for task in (sends, group_changes, uploads):
                    n.start_soon(task, client)

    async with trio.open_nursery() as n:
        n.start_soon(writer_a)
        n.start_soon(acks)


async def check_after_restart(
    proc: DaemonProcess, a: Credentials, b: Credentials, c: Credentials, led: Ledger
) -> None:
    for name, creds in (("B", b), ("C", c)):
        acked_before = set(led.acked[name])
        got = await drain_and_ack(creds, led.acked[name])
        assert len(got) == len(set(got)), f"{name}: a message was delivered twice in one drain"
        assert not (acked_before & set(got)), f"{name}: a message whose ACK was confirmed came back"
        unsure = led.ack_unsure if name == "B" else set()
        missing = led.accepted[name] - led.acked[name] - unsure
        assert not missing, f"{name}: {len(missing)} accepted messages lost"
    async with connect(b) as client:
        for blob_id, sha in list(led.blobs.items())[-3:]:
            assert hashlib.sha256(await download_blob(client, blob_id)).digest() == sha

    if led.rosters:
        async with connect(a) as client:
            conv_id = led.rosters[min(led.rosters)].conv_id
            try:
                epoch = (await client.conv_get(conv_id)).epoch
            except ServerError as e:  # the group's creation itself was cut off
                assert e.code == ErrorCode.NOT_FOUND and led.confirmed_epoch == 0, e
                epoch = 0
            assert epoch >= led.confirmed_epoch
            for cut_off in [e for e in led.rosters if e > epoch]:
                del led.rosters[cut_off]  # never committed: the next change reuses the epoch


def integrity_ok(proc: DaemonProcess) -> None:
    with contextlib.closing(sqlite3.connect(proc.state / DB_FILENAME)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []


@pytest.mark.parametrize("rounds", [2, pytest.param(15, marks=pytest.mark.long)])
async def test_sigkill_at_random_points_of_mixed_traffic(tmp_path, rounds: int) -> None:  # type: ignore[no-untyped-def]
    seed = int(os.environ.get("MOMEDO_KILL_SEED", random.randrange(2**32)))
    print(f"MOMEDO_KILL_SEED={seed}")
    rng = random.Random(seed)
    proc = DaemonProcess(tmp_path, free_port())
    proc.start()
    try:
        a, b, c = [await enroll(proc, name) for name in ("Anna", "Ben", "Cleo")]
        led = Ledger()
        for _ in range(rounds):
            async with trio.open_nursery() as n:
                n.start_soon(traffic, a, b, c, led, rng)
                await trio.sleep(rng.uniform(0.3, 1.5))
                await trio.to_thread.run_sync(proc.kill)
            integrity_ok(proc)
            proc.start()
            await check_after_restart(proc, a, b, c, led)
        assert len(led.accepted["C"]) > 10 * rounds and led.confirmed_epoch >= 1
        print(
            f"{rounds} kills: {len(led.accepted['C'])} sends, {len(led.acked['B'])} acks by B,"
            f" epoch {led.confirmed_epoch}, {len(led.blobs)} attachments"
        )
    finally:
        proc.stop()
        integrity_ok(proc)
