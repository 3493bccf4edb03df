"""Hypothesis strategies shared by the fuzz properties: valid frames and byte mutations.

Valid frames are drawn field by field from the field's *name* (``user_id``, ``message_id``,
``part`` ...), so a frame type added to ``FRAME_CLASSES`` later is covered without a change
here; a field name this module does not know gets a generic value, and a frame the encoder
refuses (ValueError: our own range checks) is rejected as a test case, not counted as a bug.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from hypothesis import assume
from hypothesis import strategies as st

from momedod.protocol import frames as f
from momedod.protocol.userid import ALPHABET

U16 = 0xFFFF
U32 = 0xFFFF_FFFF
U64 = 0xFFFF_FFFF_FFFF_FFFF

user_ids = st.text(ALPHABET, min_size=8, max_size=8)
small_bytes = st.binary(max_size=64)


def _text(max_bytes: int) -> st.SearchStrategy[str]:
    # No surrogates: they cannot be encoded as UTF-8 at all (that is the caller's mistake).
    chars = st.characters(exclude_categories=("Cs",))
    return st.text(chars, max_size=max_bytes).filter(lambda s: len(s.encode()) <= max_bytes)


def _any_int() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(0, 3), st.integers(0, 0xFF), st.integers(0, U16), st.integers(0, U32)
    )


recipients = st.builds(
    f.Recipient, user_ids, st.integers(0, U32), st.binary(max_size=f.MAX_PART // 16)
)
conv_members = st.lists(
    st.tuples(user_ids, st.integers(0, 1)), max_size=4, unique_by=lambda m: m[0]
).map(lambda ms: tuple(f.ConvMember(u, r) for u, r in sorted(ms)))
conv_summaries = st.builds(
    f.ConvSummary, st.binary(min_size=16, max_size=16), st.integers(1, 2), st.booleans(),
    st.integers(0, U64),
)  # fmt: skip

# Field name -> strategy. Fixed-size and length-limited fields first, then the generic ones.
_BY_NAME: dict[str, st.SearchStrategy[Any]] = {
    "request_id": st.integers(0, U32),
    "user_id": user_ids,
    "device_id": st.integers(0, U32),
    "nonce": st.binary(min_size=f.NONCE_LEN, max_size=f.NONCE_LEN),
    "transport_pub": st.binary(min_size=32, max_size=32),
    "signature": st.binary(min_size=64, max_size=64),
    "message_id": st.binary(min_size=16, max_size=16),
    "conv_id": st.binary(min_size=16, max_size=16),
    "blob_id": st.binary(min_size=16, max_size=16),
    "sha256": st.binary(min_size=32, max_size=32),
    "software": _text(f.MAX_SOFTWARE),
    "server_name": _text(f.MAX_SERVER_NAME),
    "device_name": _text(f.MAX_DEVICE_NAME),
    "invite_code": _text(f.MAX_INVITE_CODE),
    "message": _text(f.MAX_ERROR_MESSAGE),
    "target": _text(64),
    "code": st.integers(0, U16),
    "min_version": st.integers(0, U16),
    "max_version": st.integers(0, U16),
    "version": st.integers(0, U16),
    "suite": st.integers(0, U16),
    "part": st.binary(max_size=f.MAX_PART // 8),
    "payload": st.binary(max_size=300),
    "record": st.binary(max_size=300),
    "roster_record": st.binary(max_size=300),
    "data": st.binary(min_size=1, max_size=300),
    "recipients": st.lists(recipients, max_size=3).map(tuple),
    "parts": st.lists(recipients, max_size=3).map(tuple),
    "seqs": st.lists(st.integers(0, U64), min_size=1, max_size=5).map(tuple),
    "records": st.lists(small_bytes, max_size=3).map(tuple),
    "rosters": st.lists(small_bytes, max_size=3).map(tuple),
    "org_keys": st.lists(small_bytes, max_size=3).map(tuple),
    "blob_ids": st.lists(st.binary(min_size=16, max_size=16), max_size=3).map(tuple),
    "members": conv_members,
    "convs": st.lists(conv_summaries, max_size=3).map(tuple),
    "length": st.integers(1, f.MAX_BLOB_CHUNK),
    "kind": st.integers(0, 3),
    "size": st.one_of(st.integers(0, 1000), st.integers(0, U64)),
    "offset": st.one_of(st.integers(0, 1000), st.integers(0, U64)),
    "received": st.one_of(st.integers(0, 1000), st.integers(0, U64)),
}
_BY_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "int": st.one_of(_any_int(), st.integers(0, U64)),
    "bool": st.booleans(),
    "bytes": small_bytes,
    "str": _text(32),
}


def _field_strategy(field: dataclasses.Field[Any]) -> st.SearchStrategy[Any]:
    if field.name in _BY_NAME:
        return _BY_NAME[field.name]
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    if kind not in _BY_TYPE:
        raise AssertionError(f"no strategy for field {field.name}: {kind}")
    return _BY_TYPE[kind]


def frames_of(cls: type[f.Frame]) -> st.SearchStrategy[f.Frame]:
    """Frames of one class that the encoder accepts."""
    fields = {fl.name: _field_strategy(fl) for fl in dataclasses.fields(cls)}
    return st.fixed_dictionaries(fields).map(lambda kw: cls(**kw))


FRAME_TYPES = sorted(f.FRAME_CLASSES)
any_frame = st.sampled_from(FRAME_TYPES).flatmap(lambda t: frames_of(f.FRAME_CLASSES[t]))


def encodable(frame: f.Frame) -> bytes:
    """``encode_frame(frame)``, rejecting the example if our own encoder refuses it."""
    try:
        return f.encode_frame(frame)
    except ValueError:
        assume(False)
        raise  # unreachable: assume(False) raises


_INTERESTING_U32 = (0, 1, 4, 5, 8, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF)


@st.composite
def mutated(draw: st.DrawFn, data: bytes, max_ops: int = 4) -> bytes:
    """``data`` after 1..max_ops random edits: flips, interesting bytes and u32 length
    fields, insertions, deletions, truncation, duplication of a slice."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.integers(0, 6))
        pos = draw(st.integers(0, len(buf)))
        if op == 0 and buf:  # flip bits of one byte
            i = min(pos, len(buf) - 1)
            buf[i] ^= draw(st.integers(1, 255))
        elif op == 1 and buf:  # an interesting byte value
            buf[min(pos, len(buf) - 1)] = draw(st.sampled_from((0, 1, 0x7F, 0x80, 0xFF)))
        elif op == 2 and len(buf) >= 4:  # an interesting big-endian u32 (lengths, counts)
            i = min(pos, len(buf) - 4)
            value = draw(st.sampled_from((*_INTERESTING_U32, len(buf), len(buf) - i)))
            buf[i : i + 4] = (value & U32).to_bytes(4, "big")
        elif op == 3:  # insert random bytes
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == 4 and buf:  # delete a range
            end = draw(st.integers(pos, min(len(buf), pos + 16)))
            del buf[pos:end]
        elif op == 5:  # truncate
            del buf[pos:]
        else:  # duplicate a slice
            end = draw(st.integers(pos, min(len(buf), pos + 32)))
            buf[pos:pos] = buf[pos:end]
    return bytes(buf)


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut into consecutive pieces at random places (empty pieces included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]
