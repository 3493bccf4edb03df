"""Two enrolled devices exchange envelopes through the real daemon over TLS on loopback."""

from __future__ import annotations

import pytest
import trio
from support import new_message_id

from momedod.client.transport import connect
from momedod.protocol.frames import Deliver, Drained, Recipient


async def drain(client, timeout: float = 5.0) -> list[Deliver]:  # type: ignore[no-untyped-def]
    """Everything up to the DRAINED marker of a fresh session."""
    got = []
    while True:
        ev = await client.receive(timeout)
        if isinstance(ev, Drained):
            return got
        got.append(ev)


async def test_online_devices_exchange_messages(server):
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    async with connect(alice) as a, connect(bob) as b:
        assert await drain(a) == [] and await drain(b) == []
        mid = new_message_id()
        accepted = await a.send(
            mid, b"envelope-1", [Recipient(bob.user_id, bob.device_id, b"part-b")]
        )
        assert accepted.message_id == mid and not accepted.duplicate
        got = await b.receive(5)
        assert isinstance(got, Deliver)
        assert (got.message_id, got.payload, got.part) == (mid, b"envelope-1", b"part-b")
        await b.ack([got.seq])
        reply = new_message_id()
        await b.send(reply, b"envelope-2", [Recipient(alice.user_id, alice.device_id, b"")])
        back = await a.receive(5)
        assert isinstance(back, Deliver) and back.payload == b"envelope-2"


async def test_offline_device_gets_messages_in_order_on_connect(server):
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    ids = [new_message_id() for _ in range(5)]
    async with connect(alice) as a:
        for i, mid in enumerate(ids):
            await a.send(mid, f"m{i}".encode(), [Recipient(bob.user_id, bob.device_id, b"")])
    async with connect(bob) as b:
        got = await drain(b)
    assert [d.message_id for d in got] == ids
    assert [d.payload for d in got] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert [d.seq for d in got] == sorted(d.seq for d in got)


async def test_acked_never_redelivered_unacked_redelivered(server):
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    first, second = new_message_id(), new_message_id()
    async with connect(alice) as a:
        for mid in (first, second):
            await a.send(mid, b"x", [Recipient(bob.user_id, bob.device_id, b"")])
    async with connect(bob) as b:
        got = await drain(b)
        assert [d.message_id for d in got] == [first, second]
        await b.ack([got[0].seq])  # only the first
    async with connect(bob) as b:
        again = await drain(b)
    assert [d.message_id for d in again] == [second]


async def test_offline_message_survives_daemon_restart(tmp_path, nursery):
    from support import make_config

    from momedod.server.daemon import serve

    config = make_config(tmp_path / "state")
    mid = new_message_id()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            daemon = await inner.start(serve, config)
            from support import Server

            srv = Server(daemon, config.server.state_dir)
            alice = await srv.enroll("Alice")
            bob = await srv.enroll("Bob")
            async with connect(alice) as a:
                await a.send(mid, b"kept", [Recipient(bob.user_id, bob.device_id, b"p")])
            scope.cancel()
    # A second daemon on the same state directory (and certificate) delivers it.
    daemon2 = await nursery.start(serve, config)
    port = daemon2.listeners[0].bound[0][1]
    from dataclasses import replace

    async with connect(replace(bob, port=port)) as b:
        got = await drain(b)
    assert [(d.message_id, d.payload, d.part) for d in got] == [(mid, b"kept", b"p")]


async def test_retried_send_is_stored_once(server):
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    mid = new_message_id()
    async with connect(alice) as a:
        r1 = await a.send(mid, b"once", [Recipient(bob.user_id, bob.device_id, b"")])
        r2 = await a.send(mid, b"once", [Recipient(bob.user_id, bob.device_id, b"")])
        await a.ping()  # the retry left the connection healthy
    assert (r1.duplicate, r2.duplicate) == (False, True)
    async with connect(bob) as b:
        got = await drain(b)
    assert [d.message_id for d in got] == [mid]


async def test_one_payload_stored_for_many_devices(server):
    sender = await server.enroll("Sender")
    receivers = [await server.enroll(f"R{i}") for i in range(5)]
    before = (await server.daemon.store.stats()).payloads
    async with connect(sender) as s:
        await s.send(
            new_message_id(),
            b"P" * 2000,
            [Recipient(r.user_id, r.device_id, b"") for r in receivers],
        )
    stats = await server.daemon.store.stats()
    assert stats.payloads == before + 1
    assert stats.mailbox_entries == 5
    for r in receivers:
        async with connect(r) as c:
            got = await drain(c)
            assert [d.payload for d in got] == [b"P" * 2000]
            await c.ack([got[0].seq])
    assert (await server.daemon.store.stats()).payloads == before


async def test_key_directory_put_get_and_claim_once(server):
    from momedod.protocol.records import (
        DeviceEntry,
        build_record,
        device_list_body,
        identity_body,
        prekey_body,
    )

    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    ident = build_record(
        2,
        1,
        identity_body(alice.user_id, 2, b"E" * 32, b"M" * 1952, 1, b"\0" * 32),
        [(1, b"F" * 32, b"S" * 64)],
    )
    dlist = build_record(
        2,
        2,
        device_list_body(
            alice.user_id, 1, b"\0" * 32, 1, [DeviceEntry(alice.device_id, b"D" * 32, (2,), 1, 1)]
        ),
        [(1, b"F" * 32, b"S" * 64)],
    )
    spk = build_record(
        2,
        3,
        prekey_body(alice.user_id, alice.device_id, 2, 1, 7, b"K" * 1216, 9),
        [(2, b"G" * 32, b"S" * 64)],
    )
    otpk = build_record(
        2,
        3,
        prekey_body(alice.user_id, alice.device_id, 2, 2, 8, b"O" * 1216, 9),
        [(2, b"G" * 32, b"S" * 64)],
    )
    async with connect(alice) as a:
        for rec in (ident, dlist, spk, otpk):
            await a.key_put(rec)
    async with connect(bob) as b:
        records = await b.key_get(alice.user_id)
        assert records == [ident, dlist, spk]
        assert await b.key_claim(alice.user_id, alice.device_id, 2) == otpk
        assert await b.key_claim(alice.user_id, alice.device_id, 2) is None


async def test_delivery_window_holds_back_until_acked(server):
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    async with connect(alice) as a:
        for _ in range(300):
            await a.send(new_message_id(), b"w", [Recipient(bob.user_id, bob.device_id, b"")])
    async with connect(bob) as b:
        window = b.welcome.delivery_window
        assert window == 256
        got = [await b.receive(5) for _ in range(window)]
        assert all(isinstance(d, Deliver) for d in got)
        with trio.move_on_after(0.5) as idle:
            await b.receive()
        assert idle.cancelled_caught  # nothing beyond the window until we acknowledge
        await b.ack([d.seq for d in got[:10]])
        more = [await b.receive(5) for _ in range(10)]
        assert all(isinstance(d, Deliver) for d in more)
        assert [d.seq for d in got + more] == sorted(d.seq for d in got + more)
        await b.ack([d.seq for d in got[10:] + more])
        rest = await drain(b)
    assert len(got) + len(more) + len(rest) == 300


async def test_key_history_larger_than_a_frame_keeps_the_newest(start_server):
    from momedod.protocol.records import DeviceEntry, build_record, device_list_body

    server = await start_server(max_frame_bytes=4096, max_record_bytes=2000)
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    devices = [DeviceEntry(i, bytes([i]) * 32, (2,), 0, i) for i in range(1, 25)]
    lists = [
        build_record(
            2,
            2,
            device_list_body(alice.user_id, v, bytes(32), v, devices),
            [(1, b"F" * 32, b"S" * 64)],
        )
        for v in range(1, 6)
    ]
    assert all(1000 < len(x) < 2000 for x in lists)
    async with connect(alice) as a:
        for rec in lists:
            await a.key_put(rec)
    async with connect(bob) as b:
        got = await b.key_get(alice.user_id)
    assert got[-1] == lists[-1]  # the newest device list is always there
    assert got == lists[-len(got) :]  # oldest history dropped first, order kept
    assert len(got) < len(lists)


async def test_several_listeners_serve_the_same_mailboxes(tmp_path, nursery):
    from dataclasses import replace

    from support import make_config

    from momedod.config import ListenerConfig
    from momedod.server.daemon import serve

    base = make_config(tmp_path / "state")
    config = replace(
        base,
        listeners=(
            ListenerConfig(address="127.0.0.1", port=0),
            ListenerConfig(address="127.0.0.1", port=0, max_connections=5),
        ),
    )
    daemon = await nursery.start(serve, config)
    from support import Server

    srv = Server(daemon, config.server.state_dir)
    ports = [ls.bound[0][1] for ls in daemon.listeners]
    assert len(set(ports)) == 2
    alice = await srv.enroll("Alice")  # through the first listener
    bob = await srv.enroll("Bob")
    mid = new_message_id()
    async with connect(replace(alice, port=ports[1])) as a:
        await a.send(mid, b"via second", [Recipient(bob.user_id, bob.device_id, b"")])
    async with connect(replace(bob, port=ports[0])) as b:
        got = await drain(b)
    assert [d.message_id for d in got] == [mid]
    info = await srv.admin("server.info")
    assert [li["port"] for li in info["listeners"]] == ports


async def test_concurrent_senders_to_an_online_device_arrive_complete_and_in_order(server):
    senders = [await server.enroll(f"S{i}") for i in range(6)]
    bob = await server.enroll("Bob")
    sent: set[bytes] = set()
    async with connect(bob) as b:
        assert await drain(b) == []

        async def burst(creds) -> None:  # type: ignore[no-untyped-def]
            async with connect(creds) as c:
                for _ in range(60):
                    mid = new_message_id()
                    sent.add(mid)
                    await c.send(mid, mid, [Recipient(bob.user_id, bob.device_id, b"")])

        got: list[Deliver] = []
        async with trio.open_nursery() as n:
            for s in senders:
                n.start_soon(burst, s)
            while len(got) < 360:
                ev = await b.receive(10)
                assert isinstance(ev, Deliver)
                got.append(ev)
                await b.ack([ev.seq])
    seqs = [d.seq for d in got]
    assert seqs == list(range(seqs[0], seqs[0] + 360))  # every seq once, in order, no gaps
    assert {d.message_id for d in got} == sent
    assert all(d.payload == d.message_id for d in got)


async def test_out_of_order_offers_are_delivered_in_seq_order(server):
    """Offers reach a session in the order sender tasks resume, which need not be seq order."""
    from momedod.store import Recipient as StoreRecipient

    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    store, presence = server.daemon.store, server.daemon.presence
    async with connect(bob) as b:
        assert await drain(b) == []
        to_bob = [StoreRecipient(bob.user_id, bob.device_id, b"")]
        ids = [new_message_id() for _ in range(3)]
        results = [await store.enqueue((alice.user_id, 1), mid, mid, to_bob, 1, 100) for mid in ids]
        # Offer the last first: the session must not deliver seq 3 before 1 and 2.
        presence.deliver(results[2], ids[2], ids[2], [b""])
        got = [await b.receive(5) for _ in range(3)]
        assert [d.message_id for d in got] == ids
        presence.deliver(results[0], ids[0], ids[0], [b""])  # late offers are ignored
        with trio.move_on_after(0.3) as quiet:
            await b.receive()
        assert quiet.cancelled_caught


async def test_link_invite_adds_a_device_of_the_same_user(server):
    from momedod.client.transport import ServerError, connect_invite
    from momedod.protocol.errors import ErrorCode
    from momedod.protocol.invite import InviteLink

    alice = await server.enroll("Alice")
    _uid, pending = await server.add_user("Ben")  # someone else's invite stays untouched
    async with connect(alice) as a:
        start = server.daemon.now_ms()
        code, expires = await a.link_invite(5)  # clamped up to one minute
        assert 60_000 <= expires - start <= 61_000 + 1000
        code2, _ = await a.link_invite(600)
    host, port = server.address
    old = str(InviteLink(host, port, code, server.fingerprint))
    with pytest.raises(ServerError) as err:
        async with connect_invite(old, "stale"):
            pass
    assert err.value.code == ErrorCode.INVITE_INVALID  # the newer code replaced it
    new = str(InviteLink(host, port, code2, server.fingerprint))
    async with connect_invite(new, "tablet") as (_c, tablet):
        pass
    assert (tablet.user_id, tablet.device_id) == (alice.user_id, 2)
    async with connect_invite(pending, "ben-phone") as (_c, ben):
        assert ben.device_id == 1
