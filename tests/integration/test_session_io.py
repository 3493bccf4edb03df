"""The session's I/O path: pipelined requests, the shared timer, the bounded live buffer.

Sessions write replies from the task that produced them (no writer task), read and decrypt
everything available at once (``momedod.server.tlsstream``), and share one timer task for
their deadlines (``momedod.server.timers``). These tests hold the behaviour a client sees.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
import trio
from support import RawClient, new_message_id, raw_connect

from momedod.client.transport import Credentials
from momedod.protocol import frames as f
from momedod.protocol.auth import auth_message
from momedod.protocol.errors import ErrorCode
from momedod.server import session as session_mod
from momedod.server.timers import Timers
from momedod.server.tls import ensure_self_signed, load_material
from momedod.server.tlsstream import TLSConn


async def log_in(server, creds: Credentials) -> RawClient:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = await raw_connect(*server.address)
    await raw.send(f.Hello(1, 1, 1, "io-test"))
    welcome = await raw.next_frame()
    assert isinstance(welcome, f.Welcome)
    key = Ed25519PrivateKey.from_private_bytes(creds.transport_seed)
    msg = auth_message(welcome.nonce, server.fingerprint, creds.user_id, creds.device_id)
    await raw.send(f.Auth(2, creds.user_id, creds.device_id, key.sign(msg)))
    assert isinstance(await raw.next_frame(), f.AuthOk)
    drained = await raw.next_frame()
    assert isinstance(drained, f.Drained)
    return raw


async def test_pipelined_requests_in_one_write_are_all_answered_in_order(start_server):
    server = await start_server()
    alice = await server.enroll("Alice")
    raw = await log_in(server, alice)
    n = 500  # more than the outbox holds (OUTBOX_FRAMES): the reader must wait for room
    await raw.send_bytes(b"".join(raw.conn.send(f.Ping(10 + i, 1000 + i)) for i in range(n)))
    got = [await raw.next_frame() for _ in range(n)]
    assert [(p.request_id, p.opaque) for p in got if isinstance(p, f.Pong)] == [
        (10 + i, 1000 + i) for i in range(n)
    ]
    await raw.aclose()


async def test_a_frame_split_over_many_small_tls_records_is_read_whole(start_server):
    server = await start_server()
    alice, bob = await server.enroll("Alice"), await server.enroll("Bob")
    a, b = await log_in(server, alice), await log_in(server, bob)
    payload = bytes(range(256)) * 1000  # 256,000 bytes, sent 1,000 bytes per TLS record
    mid = new_message_id()
    data = a.conn.send(f.Send(3, mid, payload, (f.Recipient(bob.user_id, bob.device_id, b""),)))
    for i in range(0, len(data), 1000):
        await a.send_bytes(data[i : i + 1000])
    accepted = await a.next_frame()
    assert isinstance(accepted, f.Accepted) and accepted.message_id == mid
    deliver = await b.next_frame()
    assert isinstance(deliver, f.Deliver) and deliver.payload == payload
    await a.aclose()
    await b.aclose()


async def test_silent_clients_time_out_and_active_ones_stay(start_server):
    server = await start_server(handshake_timeout=0.5, idle_timeout=1.0)
    alice, bob = await server.enroll("Alice"), await server.enroll("Bob")
    unauthenticated = []
    for _ in range(3):
        raw = await raw_connect(*server.address)
        await raw.send(f.Hello(1, 1, 1, "never-auth"))
        assert isinstance(await raw.next_frame(), f.Welcome)
        unauthenticated.append(raw)
    for raw in unauthenticated:  # every session's deadline fires, from the one timer task
        frame = await raw.next_frame(timeout=3)
        assert isinstance(frame, f.Error) and frame.code == ErrorCode.TIMEOUT
        await raw.expect_closed()
    silent, active = await log_in(server, alice), await log_in(server, bob)

    async def keep_talking() -> None:
        for i in range(10):
            await active.send(f.Ping(100 + i, i))
            assert isinstance(await active.next_frame(), f.Pong)
            await trio.sleep(0.3)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_talking)
        seen = []
        while (frame := await silent.next_frame(timeout=5)) is not None:
            seen.append(frame)
            if isinstance(frame, f.Error):
                break
    assert isinstance(seen[0], f.Ping)  # asked first, after half the idle timeout ...
    assert isinstance(seen[-1], f.Error) and seen[-1].code == ErrorCode.TIMEOUT  # ... then dropped
    # The active session was never pinged (it kept talking) and is still served.
    await active.send(f.Ping(999, 7))
    assert await active.next_frame() == f.Pong(999, 7)
    await silent.aclose()
    await active.aclose()
    with trio.fail_after(5):  # closed sessions leave no timer entries behind
        while len(server.daemon.ctx.timers) > 0:
            await trio.sleep(0.05)


async def test_live_buffer_is_bounded_by_bytes_and_nothing_is_lost(start_server, monkeypatch):
    # The recipient may have one DELIVER outstanding, so offers pile up in its live buffer;
    # the buffer holds at most LIVE_MAX_BYTES of payload and the rest comes from the store.
    monkeypatch.setattr(session_mod, "DELIVERY_WINDOW", 1)
    monkeypatch.setattr(session_mod, "LIVE_MAX_BYTES", 5000)
    server = await start_server()
    alice, bob = await server.enroll("Alice"), await server.enroll("Bob")
    a, b = await log_in(server, alice), await log_in(server, bob)
    to_bob = (f.Recipient(bob.user_id, bob.device_id, b""),)
    sent = []
    for i in range(12):
        mid = new_message_id()
        sent.append(mid)
        await a.send(f.Send(10 + i, mid, bytes([i]) * 2000, to_bob))
        assert isinstance(await a.next_frame(), f.Accepted)
    bob_sessions = [s for s in server.daemon.ctx.sessions if s.addr[0] == bob.user_id]
    assert bob_sessions and all(s._live_bytes <= 5000 for s in bob_sessions)
    received = []
    while len(received) < len(sent):
        frame = await b.next_frame()
        assert isinstance(frame, f.Deliver), frame
        received.append(frame)
        await b.send(f.Ack(100 + frame.seq, (frame.seq,)))
        assert isinstance(await b.next_frame(), f.Ok)
    assert [d.message_id for d in received] == sent
    assert [d.seq for d in received] == sorted({d.seq for d in received})
    await a.aclose()
    await b.aclose()


async def test_timers_replace_cancel_and_stop_when_empty(nursery, autojump_clock):
    timers = Timers()
    timers.nursery = nursery
    calls: list[tuple[str, float]] = []

    class Probe:
        def __init__(self, name: str, then: list[float]) -> None:
            self.name, self.then = name, then

        def on_timer(self, now: float) -> float | None:
            calls.append((self.name, now))
            return self.then.pop(0) if self.then else None

    start = trio.current_time()
    a, b, c = Probe("a", [start + 5]), Probe("b", []), Probe("c", [])
    timers.schedule(start + 3, a)
    timers.schedule(start + 10, b)
    timers.schedule(start + 1, b)  # replaces b's entry at +10
    timers.schedule(start + 2, c)
    timers.cancel(c)
    await trio.sleep(20)
    assert [(n, round(t - start)) for n, t in calls] == [("b", 1), ("a", 3), ("a", 5)]
    assert len(timers) == 0
    timers.schedule(trio.current_time() + 1, b)  # the task starts again when needed
    await trio.sleep(2)
    assert [n for n, _ in calls] == ["b", "a", "a", "b"]


async def test_tls_conn_waits_for_a_full_kernel_buffer_and_reads_close_notify(tmp_path: Path):
    cert, key = ensure_self_signed(tmp_path, ["localhost"])
    server_ctx = load_material(cert, key).context
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    ours, theirs = socket.socketpair()
    conn = TLSConn(ours, server_ctx)
    peer = trio.SSLStream(trio.SocketStream(trio.socket.from_stdlib_socket(theirs)), client_ctx)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.do_handshake)
        await peer.do_handshake()
    assert conn.receive_nowait() is None  # nothing sent yet: wait first
    big = b"x" * (8 << 20)  # more than the socket buffers hold while the peer does not read
    assert conn.send_nowait(big) is False and conn.unsent > 0
    got = bytearray()

    async def read_all() -> None:
        while len(got) < len(big):
            got.extend(await peer.receive_some(1 << 20))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        with trio.fail_after(10):
            await conn.wait_sent()
    assert conn.unsent == 0 and bytes(got) == big
    await peer.send_all(b"hello")
    assert await conn.receive_some() == b"hello"
    await peer.aclose()  # sends close_notify
    assert await conn.receive_some() == b""
    conn.close()
    with pytest.raises(trio.ClosedResourceError):
        conn.send_nowait(b"late")
