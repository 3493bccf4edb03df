"""Configured limits hold against the real daemon: timeouts, connection caps, mailbox quota."""

from __future__ import annotations

import ssl

import pytest
import trio
from support import new_message_id, raw_connect

from momedod.client.transport import ClientError, ServerError, connect
from momedod.protocol import frames as f
from momedod.protocol.auth import auth_message
from momedod.protocol.errors import ErrorCode


async def test_client_that_never_finishes_tls_is_dropped(start_server):
    server = await start_server(handshake_timeout=0.5)
    tcp = await trio.open_tcp_stream(*server.address)
    start = trio.current_time()
    with trio.fail_after(5):
        data = await tcp.receive_some(100)  # we never send a ClientHello
    assert data == b""  # closed by the server
    assert 0.4 <= trio.current_time() - start < 3


async def test_client_that_never_authenticates_is_dropped(start_server):
    server = await start_server(handshake_timeout=0.5)
    raw = await raw_connect(*server.address)
    await raw.send(f.Hello(1, 1, 1, "slow"))
    assert isinstance(await raw.next_frame(), f.Welcome)
    frame = await raw.next_frame(timeout=5)
    assert isinstance(frame, f.Error) and frame.code == ErrorCode.TIMEOUT
    await raw.expect_closed()


async def test_idle_client_is_pinged_then_dropped(start_server):
    server = await start_server(idle_timeout=1.0)
    alice = await server.enroll("Alice")
    raw = await raw_connect(*server.address)
    await raw.send(f.Hello(1, 1, 1, "mute"))
    welcome = await raw.next_frame()
    assert isinstance(welcome, f.Welcome) and welcome.idle_timeout_ms == 1000
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(alice.transport_seed)
    sig = key.sign(auth_message(welcome.nonce, server.fingerprint, alice.user_id, alice.device_id))
    await raw.send(f.Auth(2, alice.user_id, alice.device_id, sig))
    assert isinstance(await raw.next_frame(), f.AuthOk)
    seen: list[f.Frame] = []
    start = trio.current_time()
    while True:
        frame = await raw.next_frame(timeout=5)
        if frame is None:
            break
        seen.append(frame)
        if isinstance(frame, f.Error):
            break
    kinds = [type(x).__name__ for x in seen]
    assert "Ping" in kinds  # the server asked first
    assert isinstance(seen[-1], f.Error) and seen[-1].code == ErrorCode.TIMEOUT
    assert 0.9 <= trio.current_time() - start < 3


async def test_client_answering_pings_stays_connected(start_server):
    server = await start_server(idle_timeout=0.6)
    alice = await server.enroll("Alice")
    async with connect(alice) as a:
        await trio.sleep(2.0)  # several idle periods; the client library answers PINGs
        await a.ping()


async def test_max_connections_per_listener(start_server):
    server = await start_server(max_connections=2)
    first = await raw_connect(*server.address)
    second = await raw_connect(*server.address)

    async def third() -> None:
        raw = await raw_connect(*server.address)
        await raw.send(f.Hello(1, 1, 1, "third"))
        assert isinstance(await raw.next_frame(), f.Welcome)

    with trio.move_on_after(1.0) as waited:
        await third()
    assert waited.cancelled_caught  # not served while two connections are open
    await first.aclose()
    with trio.fail_after(5):
        await third()  # served once a slot is free
    await second.aclose()


async def test_mailbox_quota(start_server):
    server = await start_server(mailbox_max_messages=3)
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    to_bob = [f.Recipient(bob.user_id, bob.device_id, b"")]
    async with connect(alice) as a:
        for _ in range(3):
            await a.send(new_message_id(), b"x", to_bob)
        with pytest.raises(ServerError) as err:
            await a.send(new_message_id(), b"x", to_bob)
        assert err.value.code == ErrorCode.MAILBOX_FULL
        assert "full" in err.value.message
        await a.ping()
    async with connect(bob) as b:
        got = []
        while not isinstance(ev := await b.receive(5), f.Drained):
            got.append(ev)
        assert len(got) == 3
        await b.ack([d.seq for d in got])
    async with connect(alice) as a:
        await a.send(new_message_id(), b"x", to_bob)  # room again after the ack


async def test_disable_closes_live_connection_within_a_second(server):
    alice = await server.enroll("Alice")
    async with connect(alice) as a:
        await a.ping()
        start = trio.current_time()
        await server.admin("user.disable", user_id=alice.user_id)
        with trio.fail_after(1.0):
            with pytest.raises(ServerError) as err:
                while True:
                    await a.receive()
        assert err.value.code == ErrorCode.USER_DISABLED
        assert trio.current_time() - start < 1.0
    with pytest.raises(ServerError) as err:
        async with connect(alice):
            pass
    assert err.value.code == ErrorCode.USER_DISABLED
    await server.admin("user.enable", user_id=alice.user_id)
    async with connect(alice) as a:
        await a.ping()


async def test_revoked_device_is_disconnected_and_cannot_return(server):
    alice = await server.enroll("Alice")
    async with connect(alice) as a:
        await a.ping()
        await server.admin("device.revoke", user_id=alice.user_id, device_id=alice.device_id)
        with trio.fail_after(1.0), pytest.raises(ServerError) as err:
            while True:
                await a.receive()
        assert err.value.code == ErrorCode.DEVICE_REVOKED
    with pytest.raises(ClientError):
        async with connect(alice):
            pass


async def test_pin_mismatch_is_refused(server):
    from dataclasses import replace

    from momedod.client.transport import PinMismatch

    alice = await server.enroll("Alice")
    with pytest.raises(PinMismatch):
        async with connect(replace(alice, fingerprint=b"\x00" * 32)):
            pass


async def test_tls_below_1_3_is_refused(server):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    tcp = await trio.open_tcp_stream(*server.address)
    stream = trio.SSLStream(tcp, ctx)
    with pytest.raises(trio.BrokenResourceError):
        await stream.do_handshake()
