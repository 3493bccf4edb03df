"""The fast encoders/decoders of the hot frames agree with the generic field-by-field code.

``frames._encode_generic``/``_decode_generic`` (the ``_write``/``_read`` methods) define the
wire format; ``encode_frame``, ``decode_frame`` and ``FrameDecoder`` take the fast paths for
SEND, SEND_BLOBS, CONV_SEND, ACCEPTED, DELIVER, ACK, OK, PING/PONG, ERROR. Every valid frame
must give the same bytes and the same frame both ways, and every corrupted body the same
frame or the same error (code and message) as the generic decoder.
"""

from __future__ import annotations

import random

import pytest

from momedod.protocol import frames as f
from momedod.protocol.errors import ErrorCode, ProtocolError

MID = bytes(range(16))
CONV = bytes(range(16, 32))
BLOB_A, BLOB_B = b"A" * 16, b"B" * 16
R1 = f.Recipient("ABCDEFGH", 1, b"")
R2 = f.Recipient("0123456Z", 0xFFFF_FFFF, b"p" * f.MAX_PART)

VALID: list[f.Frame] = [
    f.Send(1, MID, b"x" * 1536, (R1,)),
    f.Send(0xFFFF_FFFF, MID, b"", ()),
    f.Send(2, MID, b"payload", (R1, R2, f.Recipient("ZZZZZZZZ", 7, b"part"))),
    f.SendUrgent(3, MID, b"urgent", (R1,)),
    f.SendBlobs(4, MID, b"x" * 100, (R1, R2), (BLOB_A, BLOB_B)),
    f.SendBlobs(5, MID, b"", (), ()),
    f.ConvSend(6, MID, CONV, b"group post", (R1,), (BLOB_A,)),
    f.ConvSend(7, MID, CONV, b"", (), ()),
    f.ConvSendUrgent(8, MID, CONV, b"alarm", (R2,), tuple([BLOB_A] * f.MAX_BLOB_REFS)),
    f.Accepted(9, MID, 1_700_000_000_000, False),
    f.Accepted(9, MID, 0xFFFF_FFFF_FFFF_FFFF, True),
    f.Deliver(0, 42, MID, 1_700_000_000_000, b"y" * 1536, b""),
    f.Deliver(0, 0, MID, 0, b"", b"q" * f.MAX_PART),
    f.DeliverUrgent(0, 43, MID, 1, b"urgent", b"part"),
    f.Ack(10, (42,)),
    f.Ack(11, tuple(range(f.MAX_ACK_SEQS))),
    f.Ok(12),
    f.Ping(0, 0),
    f.Ping(13, 0xFFFF_FFFF_FFFF_FFFF),
    f.Pong(13, 5),
    f.Error(14, ErrorCode.MALFORMED, "bad frame"),
    f.Error(0, 4711, "ünknown cöde from a newer server"),
    f.Error(15, ErrorCode.NOT_FOUND, ""),
]


def generic_outcome(data: bytes) -> object:
    """What the generic decoder makes of one whole frame: the frame or (code, message)."""
    _length, frame_type, request_id = f._HEADER.unpack_from(data)
    try:
        return f._decode_generic(frame_type, request_id, data[f._HEADER_LEN :])
    except ProtocolError as exc:
        return (exc.code, exc.message)


def fast_outcome(data: bytes) -> object:
    """What FrameDecoder (fast path first) makes of the same bytes."""
    decoder = f.FrameDecoder(0xFFFF_FFFF)
    decoder.feed(data)
    try:
        frame = decoder.next_frame()
    except ProtocolError as exc:
        return (exc.code, exc.message)
    assert frame is not None and decoder.buffered == 0
    return frame


@pytest.mark.parametrize("frame", VALID, ids=lambda fr: type(fr).__name__)
def test_fast_paths_match_generic_on_valid_frames(frame: f.Frame) -> None:
    assert type(frame) in f._FAST_ENCODE and frame.TYPE in f._FAST_DECODE
    data = f.encode_frame(frame)
    assert data == f._encode_generic(frame)
    decoded = fast_outcome(data)
    assert decoded == frame and type(decoded) is type(frame)
    assert f.decode_frame(frame.TYPE, frame.request_id, data[f._HEADER_LEN :]) == frame
    assert generic_outcome(data) == frame


def with_body(data: bytes, body: bytes) -> bytes:
    """``data``'s header with another body (and the matching length prefix)."""
    return f._HEADER.pack(5 + len(body), data[4], int.from_bytes(data[5:9], "big")) + body


def test_fast_decoders_agree_with_generic_on_corrupted_bodies() -> None:
    rng = random.Random(7)
    checked = rejected = 0
    for frame in VALID:
        body = f.encode_frame(frame)[f._HEADER_LEN :]
        variants = [body[:n] for n in range(min(len(body), 80))]  # every short truncation
        variants += [body[:-1], body + b"\x00", body + b"\x00" * 8]
        for _ in range(150):
            mutated = bytearray(body)
            for _ in range(rng.randint(1, 3)):
                if not mutated:
                    break
                i = rng.randrange(min(len(mutated), 64))  # the headers and counts live here
                mutated[i] = rng.choice((0, 1, 0xFF, 0x7F, 0x80, rng.randrange(256)))
            variants.append(bytes(mutated))
        for variant in variants:
            data = with_body(f.encode_frame(frame), variant)
            expected = generic_outcome(data)
            assert fast_outcome(data) == expected, (frame, variant)
            checked += 1
            rejected += isinstance(expected, tuple)
    assert checked > 3000 and rejected > 1000  # the corruptions did exercise the error paths


def test_many_frames_in_one_read_decode_in_order() -> None:
    stream = b"".join(f.encode_frame(frame) for frame in VALID) * 3
    decoder = f.FrameDecoder(0xFFFF_FFFF)
    decoder.feed(stream[:-3])
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    assert out == (VALID * 3)[:-1] and decoder.buffered == len(f.encode_frame(VALID[-1])) - 3
    decoder.feed(stream[-3:])
    assert decoder.next_frame() == VALID[-1] and decoder.buffered == 0


@pytest.mark.parametrize(
    "frame",
    [
        f.Send(1, b"short", b"", ()),
        f.Send(1, MID, b"", (f.Recipient("abcdefgh", 1, b""),)),  # not the alphabet
        f.Send(1, MID, b"", (f.Recipient("ABCDEFGH", 1, b"p" * (f.MAX_PART + 1)),)),
        f.Send(1, MID, b"", (f.Recipient("ABCDEFGH", -1, b""),)),
        f.Send(0x1_0000_0000, MID, b"", ()),
        f.SendBlobs(1, MID, b"", (), (b"short",)),
        f.SendBlobs(1, MID, b"", (), tuple([BLOB_A] * (f.MAX_BLOB_REFS + 1))),
        f.ConvSend(1, MID, b"short", b"", (), ()),
        f.Accepted(1, MID[:15], 0, False),
        f.Accepted(1, MID, -1, False),
        f.Deliver(-1, 1, MID, 0, b"", b""),
        f.Deliver(0, 1, MID, 0, b"", b"p" * (f.MAX_PART + 1)),
        f.Ack(1, ()),
        f.Ack(1, tuple(range(f.MAX_ACK_SEQS + 1))),
        f.Ack(1, (-5,)),
        f.Ping(1, 1 << 64),
        f.Error(1, 0x1_0000, "code too big"),
        f.Error(1, 1, "x" * (f.MAX_ERROR_MESSAGE + 1)),
    ],
)
def test_invalid_fields_raise_the_generic_error(frame: f.Frame) -> None:
    with pytest.raises(ValueError) as generic:
        f._encode_generic(frame)
    with pytest.raises(ValueError) as fast:
        f.encode_frame(frame)
    assert str(fast.value) == str(generic.value)


def test_frames_stay_hashable_values() -> None:
    a = f.Deliver(0, 1, MID, 2, b"p", b"")
    b = f.decode_frame(f.FrameType.DELIVER, 0, f.encode_frame(a)[f._HEADER_LEN :])
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
