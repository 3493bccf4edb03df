"""Frame encoding and the incremental FrameDecoder."""

from __future__ import annotations

import contextlib
import json
import random
import struct
import time
from pathlib import Path

import pytest

from momedod.protocol.errors import ErrorCode, ProtocolError
from momedod.protocol.frames import (
    Accepted,
    Ack,
    Auth,
    BlobChunk,
    BlobData,
    BlobFinish,
    BlobGet,
    BlobStatus,
    ConvInfo,
    ConvMember,
    ConvPut,
    Convs,
    ConvSend,
    ConvSummary,
    Deliver,
    Error,
    Frame,
    FrameDecoder,
    Hello,
    Ok,
    Ping,
    Recipient,
    Send,
    SendBlobs,
    decode_frame,
    encode_frame,
)

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "docs/test-vectors/frames.json").read_text("utf-8")
)
STREAM = b"".join(bytes.fromhex(v["hex"]) for v in VECTORS["frames"])
MESSAGE_ID = bytes(range(16))
CONV_ID = bytes(range(16, 32))
BLOB_ID = bytes(range(32, 48))
ANNA, BEN = ConvMember("49K49J00", 1), ConvMember("M8N22HTR", 0)


def decode_all(decoder: FrameDecoder, data: bytes, chunk: int) -> list[Frame]:
    frames: list[Frame] = []
    for i in range(0, len(data), chunk):
        decoder.feed(data[i : i + chunk])
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    return frames


def test_stream_decodes_the_same_byte_by_byte_and_in_one_chunk() -> None:
    whole = decode_all(FrameDecoder(), STREAM, len(STREAM))
    assert len(whole) == len(VECTORS["frames"])
    assert decode_all(FrameDecoder(), STREAM, 1) == whole
    assert decode_all(FrameDecoder(), STREAM, 7) == whole
    assert [encode_frame(f) for f in whole] == [bytes.fromhex(v["hex"]) for v in VECTORS["frames"]]


def test_partial_frame_waits_and_is_reported_as_buffered() -> None:
    data = encode_frame(Ping(1, 99))
    decoder = FrameDecoder()
    decoder.feed(data[:-1])
    assert decoder.next_frame() is None
    assert decoder.buffered == len(data) - 1
    decoder.feed(data[-1:])
    assert decoder.next_frame() == Ping(1, 99)
    assert decoder.buffered == 0
    assert decoder.next_frame() is None


def test_too_large_is_detected_from_the_length_prefix_alone() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024)
    decoder.feed(struct.pack(">I", 1025)[:3])
    assert decoder.next_frame() is None
    decoder.feed(struct.pack(">I", 1025)[3:])
    with pytest.raises(ProtocolError) as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    # nothing of the body was needed, and the decoder stays dead and discards input
    decoder.feed(bytes(10_000))
    assert decoder.buffered == 4
    with pytest.raises(ProtocolError) as again:
        decoder.next_frame()
    assert again.value.code is ErrorCode.FRAME_TOO_LARGE


def test_frame_of_exactly_max_frame_bytes_is_accepted() -> None:
    limit = 1024
    overhead = len(encode_frame(Send(1, MESSAGE_ID, b"", ()))) - 4
    frame = Send(1, MESSAGE_ID, b"p" * (limit - overhead), ())
    data = encode_frame(frame)
    assert struct.unpack(">I", data[:4])[0] == limit
    decoder = FrameDecoder(max_frame_bytes=limit)
    decoder.feed(data)
    assert decoder.next_frame() == frame
    decoder.max_frame_bytes = limit - 1
    decoder.feed(data)
    with pytest.raises(ProtocolError) as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_unknown_type_is_detected_before_the_body_arrives() -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">IB", 1000, 0x7F))
    with pytest.raises(ProtocolError) as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.UNKNOWN_FRAME_TYPE


def test_length_below_five_is_malformed() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00\x00\x04")
    with pytest.raises(ProtocolError) as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.MALFORMED


def test_error_message_names_frame_and_field_but_not_payload() -> None:
    body = MESSAGE_ID + struct.pack(">I", 100) + b"TOP SECRET PAYLOAD"
    with pytest.raises(ProtocolError) as info:
        decode_frame(0x10, 7, body)
    assert info.value.code is ErrorCode.MALFORMED
    assert "SEND" in info.value.message and "payload" in info.value.message
    assert "SECRET" not in str(info.value)


def test_buffer_stays_usable_after_decoding_payload_frames() -> None:
    # payloads are parsed through a memoryview of the receive buffer; a view left alive
    # would make the next feed() fail with BufferError
    decoder = FrameDecoder()
    frames = [Deliver(0, i, MESSAGE_ID, 5, b"x" * (i * 100), b"p") for i in range(1, 30)]
    data = b"".join(encode_frame(f) for f in frames)
    assert decode_all(decoder, data, 333) == frames
    payload = frames[-1].payload
    assert type(payload) is bytes


def test_many_small_frames_decode_in_linear_time() -> None:
    n = 100_000
    data = encode_frame(Ping(1, 0)) * n
    decoder = FrameDecoder()
    start = time.perf_counter()
    decoder.feed(data)
    count = 0
    while decoder.next_frame() is not None:
        count += 1
    elapsed = time.perf_counter() - start
    assert count == n
    assert elapsed < 10, f"{n} frames took {elapsed:.1f}s: quadratic buffer handling?"


def test_error_code_known_and_unknown() -> None:
    known = decode_frame(0x06, 0, struct.pack(">HI", 6, 0))
    assert isinstance(known, Error)
    assert known.code is ErrorCode.AUTH_FAILED and known.is_fatal
    unknown = decode_frame(0x06, 3, struct.pack(">HI", 50, 0))
    assert isinstance(unknown, Error)
    assert unknown.code == 50 and not unknown.is_fatal


def test_accepted_duplicate_is_a_strict_flag() -> None:
    assert encode_frame(Accepted(1, MESSAGE_ID, 2, True))[-1] == 1
    assert encode_frame(Accepted(1, MESSAGE_ID, 2, False))[-1] == 0


@pytest.mark.parametrize(
    "frame",
    [
        Auth(1, "M8N22HTR", 1, bytes(63)),
        Auth(1, "M8N2-2HT", 1, bytes(64)),
        Hello(1, 1, 1, "x" * 65),
        Send(1, bytes(15), b"", ()),
        Send(1, MESSAGE_ID, b"", (Recipient("M8N22HTR", 1, bytes(4097)),)),
        Ack(1, ()),
        Ack(1, tuple(range(1025))),
        Ping(-1, 0),
        Ping(2**32, 0),
        Ok(1 << 40),
        Error(0, 70000, ""),
        ConvSend(1, MESSAGE_ID, CONV_ID, b"", (), (BLOB_ID,) * 17),
        ConvSend(1, MESSAGE_ID, CONV_ID[:15], b"", ()),
        SendBlobs(1, MESSAGE_ID, b"", (), (BLOB_ID[:15],)),
        ConvPut(1, CONV_ID + b"\x00", b"roster"),
        ConvInfo(1, CONV_ID, 3, False, 1, (), (), ()),
        ConvInfo(1, CONV_ID, 0, False, 1, (), (), ()),
        ConvInfo(1, CONV_ID, 1, False, 1, (ConvMember("49K49J00", 2),), (), ()),
        ConvInfo(1, CONV_ID, 1, False, 1, (BEN, ANNA), (), ()),
        ConvInfo(1, CONV_ID, 1, False, 1, (ANNA, ANNA), (), ()),
        Convs(1, (ConvSummary(CONV_ID, 7, True, 1),)),
        BlobStatus(1, BLOB_ID, 40, 41, False),
        BlobStatus(1, BLOB_ID, 40, 39, True),
        BlobChunk(1, BLOB_ID, 0, b""),
        BlobChunk(1, BLOB_ID, 0, bytes(262_145)),
        BlobFinish(1, BLOB_ID, bytes(31)),
        BlobGet(1, BLOB_ID, 0, 0),
        BlobGet(1, BLOB_ID, 0, 262_145),
        BlobData(1, BLOB_ID, 40, 39, b"ab"),
        BlobData(1, BLOB_ID, 2**40, 0, bytes(262_145)),
    ],
)
def test_encoder_refuses_invalid_fields(frame: Frame) -> None:
    with pytest.raises(ValueError):
        encode_frame(frame)


@pytest.mark.parametrize(
    "frame",
    [
        ConvSend(1, MESSAGE_ID, CONV_ID, b"p", (), (BLOB_ID,) * 16),
        SendBlobs(1, MESSAGE_ID, b"p", (Recipient("M8N22HTR", 1, b""),), (BLOB_ID,) * 16),
        BlobChunk(1, BLOB_ID, 2**64 - 1, bytes(262_144)),
        BlobGet(1, BLOB_ID, 0, 262_144),
        BlobGet(1, BLOB_ID, 0, 1),
        BlobData(1, BLOB_ID, 10, 10, b""),
        BlobData(1, BLOB_ID, 10, 11, b""),
        BlobData(1, BLOB_ID, 10, 8, b"ab"),
        BlobStatus(1, BLOB_ID, 0, 0, True),
        ConvInfo(1, CONV_ID, 2, True, 2**64 - 1, (ANNA, BEN), (b"", b"r"), (b"k",)),
    ],
)
def test_boundary_values_round_trip(frame: Frame) -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(frame))
    assert decoder.next_frame() == frame


def test_conv_send_without_blob_ids_defaults_to_none() -> None:
    frame = ConvSend(1, MESSAGE_ID, CONV_ID, b"p", ())
    assert frame.blob_ids == ()
    assert encode_frame(frame).endswith(b"\x00\x00\x00\x00" * 2)


def test_send_blobs_body_is_send_body_plus_blob_list() -> None:
    recipients = (Recipient("M8N22HTR", 1, b"\x01"),)
    send = encode_frame(Send(5, MESSAGE_ID, b"payload", recipients))
    blobs = encode_frame(SendBlobs(5, MESSAGE_ID, b"payload", recipients, (BLOB_ID,)))
    tail = struct.pack(">I", 1) + BLOB_ID
    assert blobs[9:] == send[9:] + tail
    assert blobs[4] == 0x16 and struct.unpack(">I", blobs[:4])[0] == len(blobs) - 4


def test_fuzz_decoder_only_raises_protocol_error() -> None:
    rng = random.Random(0x30DED0)
    seeds = [bytes.fromhex(v["hex"]) for v in VECTORS["frames"]]
    outcomes = {"frames": 0, "errors": 0}
    for _ in range(3000):
        kind = rng.random()
        if kind < 0.3:
            data = rng.randbytes(rng.randrange(1, 200))
        else:
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 4)):
                if not data:
                    break
                pos = rng.randrange(len(data))
                action = rng.random()
                if action < 0.6:
                    data[pos] = rng.randrange(256)
                elif action < 0.8:
                    del data[pos:]
                else:
                    data[pos:pos] = rng.randbytes(rng.randrange(1, 5))
            data = bytes(data)
        decoder = FrameDecoder(max_frame_bytes=4096)
        try:
            frames = decode_all(decoder, data, rng.randrange(1, 50))
        except ProtocolError as exc:
            assert isinstance(exc.code, ErrorCode)
            outcomes["errors"] += 1
        else:
            outcomes["frames"] += len(frames)
            for frame in frames:  # whatever decodes must re-encode to the same bytes
                again = FrameDecoder(4096)
                again.feed(encode_frame(frame))
                assert again.next_frame() == frame
    assert outcomes["errors"] > 1000 and outcomes["frames"] > 100


def test_every_single_byte_change_of_a_frame_decodes_or_raises_protocol_error() -> None:
    for vector in VECTORS["frames"]:
        data = bytes.fromhex(vector["hex"])
        for pos in range(len(data)):
            mutated = data[:pos] + bytes([data[pos] ^ 0x41]) + data[pos + 1 :]
            decoder = FrameDecoder()
            decoder.feed(mutated)
            with contextlib.suppress(ProtocolError):
                decoder.next_frame()
