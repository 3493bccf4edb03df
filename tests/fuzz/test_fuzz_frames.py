"""Wire frames under hostile input: every frame type round-trips, any byte string decodes or
raises ProtocolError (never another exception), and feeding a stream in random pieces gives
the same frames, and the same error, as feeding it whole."""

from __future__ import annotations

import contextlib

from fuzz_strategies import FRAME_TYPES, U32, any_frame, encodable, frames_of, mutated, splits
from hypothesis import given, settings
from hypothesis import strategies as st

from momedod.protocol import frames as f
from momedod.protocol.connection import Connection, Role
from momedod.protocol.errors import ProtocolError


def decode_stream(pieces: list[bytes], max_frame_bytes: int = f.DEFAULT_MAX_FRAME_BYTES) -> tuple:
    """Feed ``pieces`` one by one; return (frames, error code or None, bytes left over)."""
    decoder = f.FrameDecoder(max_frame_bytes)
    out: list[f.Frame] = []
    try:
        for piece in pieces:
            decoder.feed(piece)
            while (frame := decoder.next_frame()) is not None:
                out.append(frame)
    except ProtocolError as exc:
        return out, exc.code, None
    return out, None, decoder.buffered


# Every example draws all ~60 frame types, so a third of the profile's examples still gives each
# type 20 draws per run (1,000 with the long profile).
@settings(max_examples=max(1, settings.default.max_examples // 3))
@given(st.data())
def test_every_frame_type_round_trips(data: st.DataObject) -> None:
    for frame_type in FRAME_TYPES:  # each type in every example, not by chance
        frame = data.draw(frames_of(f.FRAME_CLASSES[frame_type]))
        try:
            wire = f.encode_frame(frame)
        except ValueError:
            continue  # our own encoder refused the drawn values
        body = wire[9:]
        assert f.decode_frame(wire[4], frame.request_id, body) == frame
        assert decode_stream([wire]) == ([frame], None, 0)


@given(st.sampled_from(FRAME_TYPES), st.integers(0, U32), st.binary(max_size=400))
def test_arbitrary_body_raises_only_protocol_error(frame_type: int, rid: int, body: bytes) -> None:
    try:
        frame = f.decode_frame(frame_type, rid, body)
    except ProtocolError:
        return
    assert f.encode_frame(frame)[9:] == body  # decoding is strict: only canonical bodies parse


@given(st.integers(0, 255), st.binary(max_size=64))
def test_unknown_or_any_type_byte_raises_only_protocol_error(frame_type: int, body: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        f.decode_frame(frame_type, 1, body)


@given(st.binary(max_size=600), st.integers(5, 2048))
def test_arbitrary_stream_raises_only_protocol_error(stream: bytes, limit: int) -> None:
    frames, _code, _left = decode_stream([stream], limit)
    assert all(len(f.encode_frame(fr)) - 4 <= limit for fr in frames)


@given(st.data())
def test_mutated_frames_raise_only_protocol_error(data: st.DataObject) -> None:
    wire = b"".join(encodable(fr) for fr in data.draw(st.lists(any_frame, min_size=1, max_size=3)))
    decode_stream([data.draw(mutated(wire))])


@given(st.data())
def test_split_feeding_gives_the_same_frames_and_error_as_whole(data: st.DataObject) -> None:
    wire = b"".join(encodable(fr) for fr in data.draw(st.lists(any_frame, max_size=4)))
    if data.draw(st.booleans()):
        wire = data.draw(mutated(wire))
    limit = data.draw(st.sampled_from((f.DEFAULT_MAX_FRAME_BYTES, 64, 5)))
    assert decode_stream(data.draw(splits(wire)), limit) == decode_stream([wire], limit)


@given(st.sampled_from(list(Role)), st.data())
def test_connection_rejects_hostile_streams_with_protocol_error_only(
    role: Role, data: st.DataObject
) -> None:
    """The state machine on top of the decoder: random valid frames in random order (mostly
    out of place), mutated or not, end in frames or a ProtocolError, then CLOSED."""
    wire = b"".join(encodable(fr) for fr in data.draw(st.lists(any_frame, max_size=4)))
    if data.draw(st.booleans()):
        wire = data.draw(mutated(wire))
    conn = Connection(role)
    try:
        for piece in data.draw(splits(wire)):
            conn.receive_data(piece)
            while conn.next_event() is not None:
                pass
    except ProtocolError:
        assert conn.state.name == "CLOSED"
