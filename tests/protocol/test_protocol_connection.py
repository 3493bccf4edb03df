"""The connection state machine, from both ends."""

from __future__ import annotations

import dataclasses

import pytest

from momedod.protocol.connection import Connection, Role, State
from momedod.protocol.errors import ErrorCode, LocalProtocolError, ProtocolError
from momedod.protocol.frames import (
    Accepted,
    Ack,
    Auth,
    AuthOk,
    BlobChunk,
    BlobData,
    BlobFinish,
    BlobGet,
    BlobStart,
    BlobStatus,
    ConvGet,
    ConvInfo,
    ConvList,
    ConvPut,
    Convs,
    ConvSend,
    Deliver,
    Drained,
    Enroll,
    Error,
    Frame,
    Hello,
    KeyClaim,
    KeyGet,
    KeyPut,
    Keys,
    Ok,
    Ping,
    Pong,
    Prekey,
    Recipient,
    Send,
    SendBlobs,
    Welcome,
    encode_frame,
)

UID = "M8N22HTR"
MID = bytes(range(16))
SIG = bytes(64)
HELLO = Hello(1, 1, 1, "test")
WELCOME = Welcome(1, 1, "srv", bytes(32), 1_048_576, 300_000, 1000, 256)
AUTH = Auth(2, UID, 1, SIG)
AUTH_OK = AuthOk(2, UID, 1, 123)


def deliver(frame: Frame, sender: Connection, receiver: Connection) -> Frame:
    """Send one frame from sender to receiver; return what the receiver got."""
    receiver.receive_data(sender.send(frame))
    got = receiver.next_event()
    assert got == frame
    return got


def ready_pair() -> tuple[Connection, Connection]:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    for frame, src, dst in (
        (HELLO, client, server),
        (WELCOME, server, client),
        (AUTH, client, server),
        (AUTH_OK, server, client),
    ):
        deliver(frame, src, dst)
    assert client.state is server.state is State.READY
    return client, server


def expect_violation(receiver: Connection, frame: Frame, code: ErrorCode) -> ProtocolError:
    receiver.receive_data(encode_frame(frame))
    with pytest.raises(ProtocolError) as info:
        receiver.next_event()
    assert info.value.code is code
    assert receiver.state is State.CLOSED
    return info.value


def test_auth_handshake_moves_both_ends_through_the_same_states() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    assert client.state is server.state is State.HELLO
    steps = [
        (HELLO, client, server, State.AWAIT_WELCOME),
        (WELCOME, server, client, State.AUTH),
        (AUTH, client, server, State.AUTHENTICATING),
        (AUTH_OK, server, client, State.READY),
    ]
    for frame, src, dst, state in steps:
        deliver(frame, src, dst)
        assert src.state is dst.state is state


def test_enroll_handshake() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    deliver(HELLO, client, server)
    deliver(WELCOME, server, client)
    deliver(Enroll(2, "CODE", bytes(32), "phone", SIG), client, server)
    assert server.state is State.AUTHENTICATING
    deliver(AuthOk(2, UID, 3, 5), server, client)
    assert client.state is server.state is State.READY


def test_ready_traffic_in_both_directions() -> None:
    client, server = ready_pair()
    for frame in (
        Send(3, MID, b"payload", (Recipient(UID, 2, b"part"),)),
        Ack(4, (1, 2)),
        KeyPut(5, b"record"),
        KeyGet(6, UID),
        KeyClaim(7, UID, 1, 2),
        Ping(8, 1),
        Pong(0, 2),
    ):
        deliver(frame, client, server)
    for frame in (
        Accepted(3, MID, 10, False),
        Deliver(0, 1, MID, 10, b"payload", b"part"),
        Drained(0, 1),
        Ok(4),
        Error(5, ErrorCode.RECORD_INVALID, "bad record"),
        Keys(6, UID, (b"r1",)),
        Prekey(7, b""),
        Pong(8, 1),
        Ping(0, 2),
    ):
        deliver(frame, server, client)
    assert client.state is server.state is State.READY


def test_pipelined_requests_in_one_chunk() -> None:
    client, server = ready_pair()
    frames = [Ping(10 + i, i) for i in range(5)]
    server.receive_data(b"".join(client.send(f) for f in frames))
    got = []
    while (frame := server.next_event()) is not None:
        got.append(frame)
    assert got == frames


@pytest.mark.parametrize(
    "early",
    [
        Send(3, MID, b"x", (Recipient(UID, 1, b""),)),
        KeyGet(3, UID),
        Ack(3, (1,)),
        Ping(3, 0),
        Auth(3, UID, 1, SIG),
    ],
)
def test_requests_before_hello_are_unexpected(early: Frame) -> None:
    server = Connection(Role.SERVER)
    expect_violation(server, early, ErrorCode.UNEXPECTED_FRAME)


def test_send_before_auth_ok_is_rejected_at_every_handshake_step() -> None:
    send = Send(3, MID, b"x", (Recipient(UID, 1, b""),))
    steps = [(HELLO, Role.CLIENT), (WELCOME, Role.SERVER), (AUTH, Role.CLIENT)]
    for n in range(1, len(steps) + 1):
        client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
        for frame, role in steps[:n]:
            if role is Role.CLIENT:
                deliver(frame, client, server)
            else:
                deliver(frame, server, client)
        state = server.state
        err = expect_violation(server, send, ErrorCode.UNEXPECTED_FRAME)
        assert state.name in err.message
        # and our own client refuses to send it, without changing state
        with pytest.raises(LocalProtocolError):
            client.send(send)
        assert client.state is state


def test_second_hello_and_second_auth_are_unexpected() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    deliver(HELLO, client, server)
    expect_violation(server, HELLO, ErrorCode.UNEXPECTED_FRAME)
    _, server = ready_pair()
    expect_violation(server, AUTH, ErrorCode.UNEXPECTED_FRAME)


def test_frame_from_the_wrong_direction_is_an_unknown_type() -> None:
    expect_violation(Connection(Role.SERVER), WELCOME, ErrorCode.UNKNOWN_FRAME_TYPE)
    _, server = ready_pair()
    expect_violation(server, Deliver(0, 1, MID, 1, b"", b""), ErrorCode.UNKNOWN_FRAME_TYPE)
    client, _ = ready_pair()
    expect_violation(client, Send(3, MID, b"", ()), ErrorCode.UNKNOWN_FRAME_TYPE)
    expect_violation(Connection(Role.CLIENT), HELLO, ErrorCode.UNKNOWN_FRAME_TYPE)


def test_sending_the_other_sides_frames_is_a_local_error() -> None:
    client, server = ready_pair()
    with pytest.raises(LocalProtocolError):
        client.send(Deliver(0, 1, MID, 1, b"", b""))
    with pytest.raises(LocalProtocolError):
        client.send(Error(0, ErrorCode.INTERNAL, "x"))
    with pytest.raises(LocalProtocolError):
        server.send(Send(3, MID, b"", ()))
    assert client.state is server.state is State.READY


def test_server_answers_a_violation_with_one_fatal_error_then_nothing() -> None:
    server = Connection(Role.SERVER)
    expect_violation(server, Ping(3, 0), ErrorCode.UNEXPECTED_FRAME)
    data = server.send(Error(0, ErrorCode.UNEXPECTED_FRAME, "PING before HELLO"))
    client = Connection(Role.CLIENT)
    client.receive_data(data)
    frame = client.next_event()
    assert isinstance(frame, Error) and frame.code is ErrorCode.UNEXPECTED_FRAME
    assert client.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        server.send(Error(0, ErrorCode.MALFORMED, "again"))
    with pytest.raises(LocalProtocolError):
        server.send(Ok(3))


def test_unsupported_version_closes_both_ends() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    deliver(Hello(1, 2, 3, "future"), client, server)
    deliver(Error(1, ErrorCode.UNSUPPORTED_VERSION, "server speaks 1..1"), server, client)
    assert client.state is server.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        client.send(AUTH)
    client.receive_data(encode_frame(WELCOME))  # ignored after CLOSED
    assert client.next_event() is None


def test_fatal_error_while_authenticating_closes_the_client() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    deliver(HELLO, client, server)
    deliver(WELCOME, server, client)
    deliver(AUTH, client, server)
    deliver(Error(0, ErrorCode.AUTH_FAILED, "authentication failed"), server, client)
    assert client.state is server.state is State.CLOSED


def test_fatal_error_in_ready_closes_and_non_fatal_does_not() -> None:
    client, server = ready_pair()
    deliver(Error(3, ErrorCode.MAILBOX_FULL, "mailbox full"), server, client)
    assert client.state is server.state is State.READY
    deliver(Error(0, ErrorCode.SESSION_REPLACED, "newer session"), server, client)
    assert client.state is server.state is State.CLOSED
    assert client.next_event() is None


def test_server_may_send_fatal_error_before_hello() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    deliver(Error(0, ErrorCode.SERVER_BUSY, "busy"), server, client)
    assert client.state is State.CLOSED


def test_non_fatal_error_outside_ready_is_unexpected() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    deliver(HELLO, client, server)
    with pytest.raises(LocalProtocolError):
        server.send(Error(1, ErrorCode.BAD_REQUEST, "x"))
    expect_violation(client, Error(1, ErrorCode.BAD_REQUEST, "x"), ErrorCode.UNEXPECTED_FRAME)


def test_request_id_rules() -> None:
    client, server = ready_pair()
    with pytest.raises(LocalProtocolError):
        client.send(Send(0, MID, b"", ()))
    with pytest.raises(LocalProtocolError):
        server.send(Deliver(5, 1, MID, 1, b"", b""))
    with pytest.raises(LocalProtocolError):
        server.send(Error(0, ErrorCode.NOT_FOUND, "non-fatal errors answer a request"))
    expect_violation(server, KeyGet(0, UID), ErrorCode.MALFORMED)
    client, _ = ready_pair()
    expect_violation(client, Drained(9, 0), ErrorCode.MALFORMED)
    expect_violation(Connection(Role.SERVER), Hello(0, 1, 1, ""), ErrorCode.MALFORMED)


def test_drained_only_once_per_session() -> None:
    client, server = ready_pair()
    deliver(Drained(0, 0), server, client)
    with pytest.raises(LocalProtocolError):
        server.send(Drained(0, 0))
    expect_violation(client, Drained(0, 0), ErrorCode.UNEXPECTED_FRAME)


def test_malformed_bytes_close_the_connection() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(b"\x00\x00\x00\x06\x01\x00\x00\x00\x01\xff")
    with pytest.raises(ProtocolError) as info:
        server.next_event()
    assert info.value.code is ErrorCode.MALFORMED
    assert server.state is State.CLOSED
    assert server.next_event() is None


def test_frame_size_limit_learned_from_welcome() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER, max_frame_bytes=1024)
    deliver(HELLO, client, server)
    deliver(Welcome(1, 1, "srv", bytes(32), 1024, 300_000, 10, 256), server, client)
    deliver(AUTH, client, server)
    deliver(AUTH_OK, server, client)
    big = Send(3, MID, bytes(2000), (Recipient(UID, 1, b""),))
    # before learning the limit the client would send it, and the server refuses it
    data = client.send(big)
    server.receive_data(data[:4])
    with pytest.raises(ProtocolError) as info:
        server.next_event()
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    client.set_max_frame_bytes(1024)
    assert client.max_frame_bytes == 1024
    with pytest.raises(LocalProtocolError):
        client.send(Send(4, MID, bytes(2000), (Recipient(UID, 1, b""),)))
    assert client.state is State.READY


def test_buffered_reports_a_cut_off_frame() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(encode_frame(HELLO)[:-2])
    assert server.next_event() is None
    assert server.buffered > 0


CID, BID = bytes(range(16, 32)), bytes(range(32, 48))
CONV_AND_BLOB_REQUESTS: list[Frame] = [
    ConvSend(3, MID, CID, b"p", (Recipient(UID, 2, b"x"),), (BID,)),
    SendBlobs(4, MID, b"p", (Recipient(UID, 2, b""),), (BID,)),
    ConvPut(5, CID, b"roster"),
    ConvGet(6, CID, 0),
    ConvList(7),
    BlobStart(8, BID, 40),
    BlobChunk(9, BID, 0, b"data"),
    BlobFinish(10, BID, bytes(32)),
    BlobGet(11, BID, 0, 4),
]
CONV_AND_BLOB_REPLIES: list[Frame] = [
    Accepted(3, MID, 1, False),
    Ok(5),
    ConvInfo(6, CID, 1, False, 1, (), (b"roster",), ()),
    Convs(7, ()),
    BlobStatus(8, BID, 40, 0, False),
    BlobData(11, BID, 40, 0, b"data"),
]


def test_conversation_and_blob_frames_flow_in_ready() -> None:
    client, server = ready_pair()
    for request in CONV_AND_BLOB_REQUESTS:
        deliver(request, client, server)
    for reply in CONV_AND_BLOB_REPLIES:
        deliver(reply, server, client)
    assert client.state is server.state is State.READY


@pytest.mark.parametrize("request_frame", CONV_AND_BLOB_REQUESTS, ids=lambda f: type(f).__name__)
def test_conversation_and_blob_requests_need_ready_and_a_request_id(
    request_frame: Frame,
) -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    with pytest.raises(LocalProtocolError):
        client.send(request_frame)
    deliver(HELLO, client, server)
    expect_violation(server, request_frame, ErrorCode.UNEXPECTED_FRAME)
    _, server = ready_pair()
    expect_violation(server, dataclasses.replace(request_frame, request_id=0), ErrorCode.MALFORMED)


@pytest.mark.parametrize("reply", CONV_AND_BLOB_REPLIES, ids=lambda f: type(f).__name__)
def test_conversation_and_blob_replies_come_only_from_the_server(reply: Frame) -> None:
    client, server = ready_pair()
    with pytest.raises(LocalProtocolError):
        client.send(reply)
    expect_violation(server, reply, ErrorCode.UNKNOWN_FRAME_TYPE)
