"""Bad input gets the documented error; a second, honest client keeps working throughout."""

from __future__ import annotations

import random
import struct

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import new_message_id, raw_connect

from momedod.client.transport import ServerError, connect
from momedod.protocol import frames as f
from momedod.protocol.auth import enroll_message
from momedod.protocol.errors import ErrorCode
from momedod.protocol.invite import parse_invite_link
from momedod.protocol.records import build_record, prekey_body


async def expect_error(raw, code: ErrorCode) -> None:  # type: ignore[no-untyped-def]
    """The next frame is ERROR ``code`` and then the server closes the connection."""
    frame = await raw.next_frame()
    assert isinstance(frame, f.Error), frame
    assert frame.code == code, (ErrorCode(frame.code), frame.message)
    assert frame.message  # a human-readable reason
    if code.is_fatal:
        await raw.expect_closed()


async def hello(raw) -> f.Welcome:  # type: ignore[no-untyped-def]
    await raw.send(f.Hello(1, 1, 1, "raw-test"))
    welcome = await raw.next_frame()
    assert isinstance(welcome, f.Welcome)
    return welcome


@pytest.fixture
async def bystander(server):
    """An authenticated client that must keep working while others misbehave."""
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    async with connect(alice) as a, connect(bob) as b:
        while not isinstance(await b.receive(5), f.Drained):
            pass

        async def check() -> None:
            mid = new_message_id()
            await a.send(mid, b"still here", [f.Recipient(bob.user_id, bob.device_id, b"")])
            got = await b.receive(5)
            assert isinstance(got, f.Deliver) and got.message_id == mid
            await b.ack([got.seq])

        await check()
        yield check


def frame_bytes(ftype: int, request_id: int, body: bytes) -> bytes:
    return struct.pack(">IBI", 5 + len(body), ftype, request_id) + body


async def test_random_bytes_get_an_error_and_close(server, bystander):
    rng = random.Random(1234)
    host, port = server.address
    for _ in range(5):
        raw = await raw_connect(host, port)
        await raw.send_bytes(bytes(rng.randrange(256) for _ in range(200)))
        frame = await raw.next_frame()
        assert isinstance(frame, f.Error)
        assert ErrorCode(frame.code) in (
            ErrorCode.FRAME_TOO_LARGE,
            ErrorCode.MALFORMED,
            ErrorCode.UNKNOWN_FRAME_TYPE,
            ErrorCode.UNEXPECTED_FRAME,
        )
        await raw.expect_closed()
    await bystander()


async def test_truncated_frame_body_is_malformed(server, bystander):
    raw = await raw_connect(*server.address)
    # A HELLO whose length prefix is honest but whose body stops inside the software field.
    body = struct.pack(">HHI", 1, 1, 10) + b"abc"
    await raw.send_bytes(frame_bytes(0x01, 1, body))
    await expect_error(raw, ErrorCode.MALFORMED)
    await bystander()


async def test_oversized_length_rejected_before_body(start_server):
    server = await start_server(max_frame_bytes=4096)
    raw = await raw_connect(*server.address)
    await raw.send_bytes(struct.pack(">IBI", 5000, 0x10, 1))  # no body follows
    await expect_error(raw, ErrorCode.FRAME_TOO_LARGE)


async def test_frame_at_the_limit_is_accepted_one_over_is_not(start_server):
    server = await start_server(max_frame_bytes=4096)
    alice = await server.enroll("Alice")
    async with connect(alice) as a:
        overhead = (
            len(
                f.encode_frame(
                    f.Send(1, b"\0" * 16, b"", (f.Recipient(alice.user_id, alice.device_id, b""),))
                )
            )
            - 4
        )
        payload = b"x" * (4096 - overhead)
        await a.send(new_message_id(), payload, [f.Recipient(alice.user_id, alice.device_id, b"")])
        with pytest.raises(ServerError) as err:
            await a.send(
                new_message_id(), payload + b"x", [f.Recipient(alice.user_id, alice.device_id, b"")]
            )
        assert err.value.code == ErrorCode.FRAME_TOO_LARGE


async def test_unknown_frame_type(server, bystander):
    raw = await raw_connect(*server.address)
    await raw.send_bytes(frame_bytes(0x7E, 1, b""))
    await expect_error(raw, ErrorCode.UNKNOWN_FRAME_TYPE)
    await bystander()


async def test_send_before_authentication(server, bystander):
    raw = await raw_connect(*server.address)
    await hello(raw)
    await raw.send_bytes(
        f.encode_frame(f.Send(2, b"\0" * 16, b"x", (f.Recipient("00000000", 1, b""),)))
    )
    await expect_error(raw, ErrorCode.UNEXPECTED_FRAME)
    raw2 = await raw_connect(*server.address)
    await raw2.send_bytes(f.encode_frame(f.Ping(1, 5)))  # not even HELLO yet
    await expect_error(raw2, ErrorCode.UNEXPECTED_FRAME)
    await bystander()


async def test_unsupported_version(server):
    raw = await raw_connect(*server.address)
    await raw.send(f.Hello(1, 7, 9, "future"))
    await expect_error(raw, ErrorCode.UNSUPPORTED_VERSION)


async def test_wrong_signature_fails_auth(server, bystander):
    alice = await server.enroll("Alice")
    raw = await raw_connect(*server.address)
    await hello(raw)
    await raw.send(f.Auth(2, alice.user_id, alice.device_id, b"\x01" * 64))
    await expect_error(raw, ErrorCode.AUTH_FAILED)
    # A valid signature by a different key is just as wrong.
    raw = await raw_connect(*server.address)
    welcome = await hello(raw)
    from momedod.protocol.auth import auth_message

    other = Ed25519PrivateKey.generate()
    sig = other.sign(
        auth_message(welcome.nonce, server.fingerprint, alice.user_id, alice.device_id)
    )
    await raw.send(f.Auth(2, alice.user_id, alice.device_id, sig))
    await expect_error(raw, ErrorCode.AUTH_FAILED)
    await bystander()


async def test_signature_bound_to_nonce_cannot_be_replayed(server):
    alice = await server.enroll("Alice")
    from momedod.protocol.auth import auth_message

    key = Ed25519PrivateKey.from_private_bytes(alice.transport_seed)
    raw = await raw_connect(*server.address)
    first = await hello(raw)
    sig = key.sign(auth_message(first.nonce, server.fingerprint, alice.user_id, alice.device_id))
    raw2 = await raw_connect(*server.address)
    await hello(raw2)  # a different nonce
    await raw2.send(f.Auth(2, alice.user_id, alice.device_id, sig))
    await expect_error(raw2, ErrorCode.AUTH_FAILED)
    await raw.send(f.Auth(2, alice.user_id, alice.device_id, sig))
    assert isinstance(await raw.next_frame(), f.AuthOk)


async def enroll_raw(server, code: str) -> f.Frame | None:  # type: ignore[no-untyped-def]
    raw = await raw_connect(*server.address)
    welcome = await hello(raw)
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes_raw()
    sig = key.sign(enroll_message(welcome.nonce, server.fingerprint, code, pub))
    await raw.send(f.Enroll(2, code, pub, "raw", sig))
    frame = await raw.next_frame()
    await raw.aclose()
    return frame


async def test_reused_invite_is_rejected(server, bystander):
    _uid, link = await server.add_user("Carol")
    code = parse_invite_link(link).code
    assert isinstance(await enroll_raw(server, code), f.AuthOk)
    again = await enroll_raw(server, code)
    assert isinstance(again, f.Error) and again.code == ErrorCode.INVITE_INVALID
    unknown = await enroll_raw(server, "0" * 20)
    assert isinstance(unknown, f.Error) and unknown.code == ErrorCode.INVITE_INVALID
    garbage = await enroll_raw(server, "not a code!")
    assert isinstance(garbage, f.Error) and garbage.code == ErrorCode.INVITE_INVALID
    await bystander()


async def test_expired_invite_is_rejected(server, bystander):
    uid, _link = await server.add_user("Dave")
    from momedod.protocol.userid import normalize

    store = server.daemon.store
    invite = await store.new_invite(normalize(uid), server.daemon.now_ms() - 7_200_000, 3_600_000)
    frame = await enroll_raw(server, invite.code)
    assert isinstance(frame, f.Error) and frame.code == ErrorCode.INVITE_EXPIRED
    await bystander()


async def test_request_errors_keep_the_connection(server):
    alice = await server.enroll("Alice")
    async with connect(alice) as a:
        with pytest.raises(ServerError) as err:
            await a.send(new_message_id(), b"x", [f.Recipient("00000000", 1, b"")])
        assert err.value.code == ErrorCode.UNKNOWN_RECIPIENT
        with pytest.raises(ServerError) as err:
            await a.key_put(b"not a record")
        assert err.value.code == ErrorCode.RECORD_INVALID
        foreign = build_record(
            2, 3, prekey_body("00000000", 1, 2, 1, 1, b"k" * 32, 1), [(2, b"f" * 32, b"s" * 64)]
        )
        with pytest.raises(ServerError) as err:
            await a.key_put(foreign)
        assert err.value.code == ErrorCode.RECORD_FORBIDDEN
        with pytest.raises(ServerError) as err:
            await a.key_get("00000000")
        assert err.value.code == ErrorCode.NOT_FOUND
        await a.ping()  # still connected and authenticated


async def test_many_bad_clients_at_once(server, bystander):
    """A burst of garbage connections does not disturb an honest session."""

    async def garbage(seed: int) -> None:
        raw = await raw_connect(*server.address)
        rng = random.Random(seed)
        await raw.send_bytes(bytes(rng.randrange(256) for _ in range(64)))
        await raw.expect_closed()

    async with trio.open_nursery() as n:
        for seed in range(20):
            n.start_soon(garbage, seed)
        n.start_soon(bystander)
    await bystander()
