"""Abuse limits ([abuse]) against the real daemon: each is crossed, answered with its documented
error and counted in momedod_abuse_refused_total, while another client keeps working.

Loopback is a /8 on Linux: the "other" client connects from 127.0.0.2, a different source
address for the per-address limits.
"""

from __future__ import annotations

import ssl

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import RawClient

from momedod.client.transport import Credentials
from momedod.config import AbuseConfig
from momedod.observability import metrics
from momedod.protocol import frames as f
from momedod.protocol import records as rec
from momedod.protocol.auth import auth_message, enroll_message
from momedod.protocol.connection import Connection, Role
from momedod.protocol.errors import ErrorCode

OTHER = "127.0.0.2"


def refused(limit: str) -> float:
    return metrics.ABUSE_REFUSED.labels(limit)._value.get()


async def raw_from(address: tuple[str, int], local: str | None = None) -> RawClient:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tcp = await trio.open_tcp_stream(*address, local_address=local)
    stream = trio.SSLStream(tcp, ctx)
    await stream.do_handshake()
    return RawClient(stream, Connection(Role.CLIENT, 64 * 1024 * 1024))


async def login(
    server, creds: Credentials, local: str | None = None, *, bad: bool = False
) -> tuple[RawClient, f.Frame | None]:
    """HELLO + AUTH by hand; returns the client and the server's answer to AUTH."""
    raw = await raw_from(server.address, local)
    await raw.send(f.Hello(1, 1, 1, "abuse-test"))
    welcome = await raw.next_frame()
    assert isinstance(welcome, f.Welcome)
    key = Ed25519PrivateKey.from_private_bytes(creds.transport_seed)
    msg = auth_message(welcome.nonce, server.fingerprint, creds.user_id, creds.device_id)
    sig = key.sign(msg)
    if bad:
        sig = bytes(64)
    await raw.send(f.Auth(2, creds.user_id, creds.device_id, sig))
    return raw, await raw.next_frame()


async def test_failed_logins_from_one_address_get_too_many_attempts(start_server):
    server = await start_server(abuse=AbuseConfig(auth_failures=3, auth_failure_window=60.0))
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    established, ok = await login(server, bob)  # logged in before the guessing starts
    assert isinstance(ok, f.AuthOk)
    before = refused("auth_failures")
    for _ in range(3):
        raw, answer = await login(server, alice, bad=True)
        assert isinstance(answer, f.Error) and answer.code == ErrorCode.AUTH_FAILED
        await raw.aclose()
    # The fourth attempt is refused at once, even with the right key, and says when to retry.
    raw, answer = await login(server, alice)
    assert isinstance(answer, f.Error) and answer.code == ErrorCode.TOO_MANY_ATTEMPTS
    assert "too many failed attempts" in answer.message and "retry in" in answer.message
    await raw.expect_closed()
    assert refused("auth_failures") == before + 1
    # Another address logs in; the established session keeps working.
    other, ok = await login(server, alice, OTHER)
    assert isinstance(ok, f.AuthOk)
    await other.send(f.Ping(7, 1))
    assert await next_reply(other, 7) == f.Pong(7, 1)
    await established.send(f.Ping(8, 2))
    assert await next_reply(established, 8) == f.Pong(8, 2)


async def enroll(server, code: str, local: str | None = None) -> tuple[RawClient, f.Frame | None]:
    """HELLO + ENROLL by hand with a fresh transport key; returns the answer to ENROLL."""
    raw = await raw_from(server.address, local)
    await raw.send(f.Hello(1, 1, 1, "abuse-test"))
    welcome = await raw.next_frame()
    assert isinstance(welcome, f.Welcome)
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes_raw()
    sig = key.sign(enroll_message(welcome.nonce, server.fingerprint, code, pub))
    await raw.send(f.Enroll(2, code, pub, "phone", sig))
    return raw, await raw.next_frame()


async def test_invite_code_guesses_get_too_many_attempts(start_server):
    server = await start_server(abuse=AbuseConfig(auth_failures=2, auth_failure_window=60.0))
    for i, expected in enumerate([ErrorCode.INVITE_INVALID] * 2 + [ErrorCode.TOO_MANY_ATTEMPTS]):
        raw, answer = await enroll(server, f"AAAABBBBCCCCDDDDEEE{i}")
        assert isinstance(answer, f.Error) and answer.code == expected
        await raw.aclose()
    # The guesser's address is blocked even for a real code; another address enrolls.
    result = await server.admin("user.add", name="Carla")
    code = result["invite"]["code"]
    raw, answer = await enroll(server, code)
    assert isinstance(answer, f.Error) and answer.code == ErrorCode.TOO_MANY_ATTEMPTS
    raw, answer = await enroll(server, code, OTHER)
    assert isinstance(answer, f.AuthOk)


async def next_reply(raw: RawClient, request_id: int) -> f.Frame:
    while True:
        frame = await raw.next_frame()
        assert frame is not None
        if getattr(frame, "request_id", 0) == request_id:
            return frame


async def test_frame_flood_is_slowed_to_the_rate_and_others_are_not(start_server):
    server = await start_server(abuse=AbuseConfig(frames_per_second=50, frame_burst=10))
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    flooder, ok = await login(server, alice)
    assert isinstance(ok, f.AuthOk)
    other, ok = await login(server, bob)  # the same address: the limit is per connection
    assert isinstance(ok, f.AuthOk)
    before = refused("frames")
    start = trio.current_time()
    await flooder.send_bytes(b"".join(flooder.conn.send(f.Ping(100 + i, i)) for i in range(60)))
    await trio.sleep(0.2)  # the flood is being worked off ...
    for i in range(5):  # ... while the other connection is served at once
        sent = trio.current_time()
        await other.send(f.Ping(600 + i, i))
        assert await next_reply(other, 600 + i) == f.Pong(600 + i, i)
        assert trio.current_time() - sent < 0.5
    answers = [await next_reply(flooder, 100 + i) for i in range(60)]
    assert answers == [f.Pong(100 + i, i) for i in range(60)]  # all served, none refused
    assert trio.current_time() - start >= 0.8  # 50 beyond the burst at 50 per second
    assert refused("frames") >= before + 45


async def test_key_lookups_are_limited_per_device(start_server):
    server = await start_server(abuse=AbuseConfig(key_lookups_per_minute=3))
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    enumerator, ok = await login(server, alice)
    assert isinstance(ok, f.AuthOk)
    before = refused("key_lookups")
    replies = []
    for i in range(5):
        await enumerator.send(f.KeyGet(10 + i, bob.user_id))
        replies.append(await next_reply(enumerator, 10 + i))
    assert all(isinstance(r, f.Keys) for r in replies[:3])
    assert all(isinstance(r, f.Error) and r.code == ErrorCode.RATE_LIMITED for r in replies[3:])
    await enumerator.send(f.KeyClaim(20, bob.user_id, bob.device_id, 2))
    claim = await next_reply(enumerator, 20)
    assert isinstance(claim, f.Error) and claim.code == ErrorCode.RATE_LIMITED
    assert refused("key_lookups") == before + 3
    # The limit is the device's, not the connection's: a reconnect does not reset it.
    again, ok = await login(server, alice, OTHER)
    assert isinstance(ok, f.AuthOk)
    await again.send(f.KeyGet(30, bob.user_id))
    assert isinstance(await next_reply(again, 30), f.Error)
    # Another device looks up keys as usual.
    looker, ok = await login(server, bob)
    assert isinstance(ok, f.AuthOk)
    await looker.send(f.KeyGet(40, alice.user_id))
    assert isinstance(await next_reply(looker, 40), f.Keys)


def otpk(user_id: str, device_id: int, key_id: int) -> bytes:
    body = rec.prekey_body(user_id, device_id, 2, rec.PREKEY_OTPK, key_id, b"k" * 1216, 2**40)
    return rec.build_record(2, rec.RECORD_PREKEY, body, [(rec.SIGNER_DK, b"\x0f" * 32, bytes(64))])


async def test_one_time_prekeys_are_capped_per_device(start_server):
    server = await start_server(abuse=AbuseConfig(max_prekeys_per_device=4))
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    uploader, ok = await login(server, alice)
    assert isinstance(ok, f.AuthOk)
    for key_id in range(1, 6):
        await uploader.send(f.KeyPut(key_id, otpk(alice.user_id, alice.device_id, key_id)))
        reply = await next_reply(uploader, key_id)
        if key_id <= 4:
            assert isinstance(reply, f.Ok)
        else:
            assert isinstance(reply, f.Error) and reply.code == ErrorCode.QUOTA_EXCEEDED
    # Claiming one makes room again; Bob's device uploads its own as usual.
    await uploader.send(f.KeyClaim(10, alice.user_id, alice.device_id, 2))
    assert isinstance(await next_reply(uploader, 10), f.Prekey)
    await uploader.send(f.KeyPut(11, otpk(alice.user_id, alice.device_id, 9)))
    assert isinstance(await next_reply(uploader, 11), f.Ok)
    other, ok = await login(server, bob)
    assert isinstance(ok, f.AuthOk)
    await other.send(f.KeyPut(12, otpk(bob.user_id, bob.device_id, 1)))
    assert isinstance(await next_reply(other, 12), f.Ok)


async def test_connections_per_address_are_capped(start_server):
    server = await start_server(abuse=AbuseConfig(connections_per_address=2))
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    first, ok = await login(server, alice)
    assert isinstance(ok, f.AuthOk)
    second = await raw_from(server.address)
    before = refused("connections")
    third = await raw_from(server.address)
    answer = await third.next_frame()
    assert isinstance(answer, f.Error) and answer.code == ErrorCode.SERVER_BUSY
    assert "from your address" in answer.message
    await third.expect_closed()
    assert refused("connections") == before + 1
    other, ok = await login(server, bob, OTHER)  # another address is served
    assert isinstance(ok, f.AuthOk)
    await first.send(f.Ping(3, 3))  # and the connections already open keep working
    assert await next_reply(first, 3) == f.Pong(3, 3)
    await other.aclose()
    await second.aclose()
    with trio.fail_after(5):  # a slot is free again once a connection closed
        while True:
            fourth = await raw_from(server.address)
            await fourth.send(f.Hello(1, 1, 1, "fourth"))
            if isinstance(await fourth.next_frame(), f.Welcome):
                break
            await trio.sleep(0.05)


async def test_tls_handshakes_wait_for_a_slot_and_sessions_keep_working(start_server):
    server = await start_server(handshake_timeout=1.0, abuse=AbuseConfig(max_tls_handshakes=1))
    alice = await server.enroll("Alice")
    session, ok = await login(server, alice)
    assert isinstance(ok, f.AuthOk)
    before = refused("tls_handshakes")
    stalled = await trio.open_tcp_stream(*server.address)  # holds the only slot, never speaks
    await trio.sleep(0.1)
    start = trio.current_time()
    with trio.fail_after(5):
        late = await raw_from(server.address)  # waits until the stalled one times out
    assert trio.current_time() - start >= 0.5
    assert refused("tls_handshakes") >= before + 1
    await late.send(f.Hello(1, 1, 1, "late"))
    assert isinstance(await late.next_frame(), f.Welcome)
    await session.send(f.Ping(9, 9))  # the established session was never held up
    assert await next_reply(session, 9) == f.Pong(9, 9)
    await stalled.aclose()


async def test_memory_is_bounded_when_addresses_cycle(monkeypatch):
    from momedod.server import abuse

    monkeypatch.setattr(abuse, "MAX_KEYS", 8)
    buckets = abuse.Buckets("auth_failures", 1.0, 3)
    for i in range(100):  # an attacker cycling through addresses
        buckets.charge(f"10.0.0.{i}")
    assert len(buckets) <= 8
    assert buckets.blocked("10.0.0.99") == 0.0  # one failure each: nobody is blocked
