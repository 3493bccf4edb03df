"""Frames of wire protocol v1: one dataclass per frame type, their byte layouts, and the
incremental :class:`FrameDecoder`.

A frame on the wire is ``u32 length | u8 type | u32 request_id | body``; ``length`` counts
the type byte, the request_id and the body, so it is at least 5. Each dataclass below holds
``request_id`` as its first field and its own body layout in ``_write``/``_read``, next to
each other: this file is the one place where the byte layout of every frame is written down
in code (docs/PROTOCOL.md is the prose version, docs/test-vectors/frames.json the examples).

Decoding is strict (see :mod:`.encoding`): any deviation raises :class:`ProtocolError`.
Encoding validates field sizes and raises :class:`ValueError` for our own mistakes.

Frames are values: treat them as immutable. They are plain slotted dataclasses (hashable,
compared by value) rather than ``frozen=True`` ones, because a frozen dataclass pays an
``object.__setattr__`` call per field on construction, ~5 times the cost of the plain
``__init__`` (issue 7: the relay builds or parses ~5 frames per message).

The frames on the relay's hot path (SEND, SEND_BLOBS, CONV_SEND, their URGENT variants,
ACCEPTED, DELIVER, DELIVER_URGENT, ACK, OK, PING, PONG, ERROR) also have a fast encoder and
decoder below (``_FAST_ENCODE``/``_FAST_DECODE``) working with precompiled ``struct.Struct``s
on the whole frame at once. A fast function only ever handles well-formed input: on anything
unusual it returns None (or raises a ``struct`` error), and the generic field-by-field code
runs instead and produces the one exact result or error. So the generic ``_write``/``_read``
methods stay the definition of the wire format, and the fast paths must agree with them
(tests/protocol/test_codec_fast.py checks that on valid and mutated frames).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from itertools import pairwise
from typing import Any, ClassVar, TypeAlias

from .encoding import MAX_U32, USER_ID_LEN, Reader, Writer
from .errors import ErrorCode, ProtocolError
from .userid import ALPHABET

__all__ = [
    "BLOB_HASH_LEN",
    "BLOB_ID_LEN",
    "CONV_ID_LEN",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEVICE_DESKTOP",
    "DEVICE_MOBILE",
    "MAX_ACK_SEQS",
    "MAX_BLOB_CHUNK",
    "MAX_BLOB_REFS",
    "MAX_DEVICE_NAME",
    "MAX_ERROR_MESSAGE",
    "MAX_INVITE_CODE",
    "MAX_MEMBERS_WIRE",
    "MAX_PART",
    "MAX_PUSH_TARGET",
    "MAX_RECIPIENTS_WIRE",
    "MAX_SERVER_NAME",
    "MAX_SOFTWARE",
    "MESSAGE_ID_LEN",
    "MIN_FRAME_LENGTH",
    "NONCE_LEN",
    "PROTOCOL_VERSION",
    "PUSH_GATEWAY",
    "PUSH_UNIFIEDPUSH",
    "SIGNATURE_LEN",
    "TRANSPORT_PUB_LEN",
    "USER_ID_LEN",
    "Accepted",
    "Ack",
    "Auth",
    "AuthOk",
    "BlobChunk",
    "BlobData",
    "BlobFinish",
    "BlobGet",
    "BlobStart",
    "BlobStatus",
    "ConvGet",
    "ConvInfo",
    "ConvList",
    "ConvMember",
    "ConvPut",
    "ConvSend",
    "ConvSendUrgent",
    "ConvSummary",
    "Convs",
    "Deliver",
    "DeliverUrgent",
    "Drained",
    "Enroll",
    "Error",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "Hello",
    "KeyClaim",
    "KeyGet",
    "KeyPut",
    "Keys",
    "LinkCode",
    "LinkInvite",
    "Ok",
    "Ping",
    "Pong",
    "Prekey",
    "PushClear",
    "PushDropped",
    "PushSet",
    "QuietSet",
    "Recipient",
    "Send",
    "SendBlobs",
    "SendUrgent",
    "Welcome",
    "decode_frame",
    "encode_frame",
]

PROTOCOL_VERSION = 1
"""The only protocol version this implementation speaks."""
DEFAULT_MAX_FRAME_BYTES = 1_048_576
"""Frame size limit until the server announces its own in WELCOME."""
MIN_FRAME_LENGTH = 5
"""Smallest valid ``length`` prefix: type byte plus request_id, empty body."""

NONCE_LEN = 32
"""Length of the WELCOME nonce."""
MESSAGE_ID_LEN = 16
"""Length of a client-chosen message_id."""
TRANSPORT_PUB_LEN = 32
"""Length of an Ed25519 transport public key."""
SIGNATURE_LEN = 64
"""Length of an Ed25519 signature."""
MAX_SOFTWARE = 64
"""Longest HELLO software string, in UTF-8 bytes."""
MAX_SERVER_NAME = 64
"""Longest WELCOME server_name, in UTF-8 bytes."""
MAX_DEVICE_NAME = 64
"""Longest ENROLL device_name, in UTF-8 bytes."""
MAX_INVITE_CODE = 64
"""Longest ENROLL invite_code, in UTF-8 bytes."""
MAX_ERROR_MESSAGE = 256
"""Longest ERROR message, in UTF-8 bytes."""
MAX_PART = 4096
"""Longest per-recipient ``part`` of SEND/DELIVER."""
MAX_ACK_SEQS = 1024
"""Most seqs in one ACK (at least one is required)."""
MAX_RECIPIENTS_WIRE = 65535
"""Most recipients a SEND may carry at all; the server's max_recipients is usually lower."""
CONV_ID_LEN = 16
"""Length of a conversation ID."""
BLOB_ID_LEN = 16
"""Length of a blob ID."""
BLOB_HASH_LEN = 32
"""Length of the SHA-256 a BLOB_FINISH carries."""
MAX_BLOB_REFS = 16
"""Most blob IDs one CONV_SEND/SEND_BLOBS may reference."""
MAX_BLOB_CHUNK = 262_144
"""Largest BLOB_CHUNK data and BLOB_GET length (256 KiB)."""
MAX_MEMBERS_WIRE = 65535
"""Most members a CONV_INFO may list."""
PUSH_UNIFIEDPUSH = 1
"""PUSH_SET ``kind``: ``target`` is a UnifiedPush endpoint URL."""
PUSH_GATEWAY = 2
"""PUSH_SET ``kind``: ``target`` is a token for the server's configured push gateway."""
DEVICE_DESKTOP = 0
"""PUSH_SET ``device_kind``: a desktop or other work device (the default of every device)."""
DEVICE_MOBILE = 1
"""PUSH_SET ``device_kind``: a personal/mobile device (quiet hours may defer its delivery)."""
MAX_PUSH_TARGET = 2048
"""Longest PUSH_SET ``target``, in UTF-8 bytes."""
MAX_TIMEZONE = 64
"""Longest QUIET_SET ``timezone``, in UTF-8 bytes."""

_HEADER = struct.Struct(">IBI")  # length, type, request_id
_LENGTH = struct.Struct(">I")
_HEADER_LEN = _HEADER.size  # 9
_RECIPIENT_MIN_SIZE = USER_ID_LEN + 4 + 4


class FrameType(IntEnum):
    """The u8 type byte of every frame."""

    HELLO = 0x01
    WELCOME = 0x02
    ENROLL = 0x03
    AUTH = 0x04
    AUTH_OK = 0x05
    ERROR = 0x06
    OK = 0x07
    PING = 0x08
    PONG = 0x09
    SEND = 0x10
    ACCEPTED = 0x11
    DELIVER = 0x12
    ACK = 0x13
    DRAINED = 0x14
    CONV_SEND = 0x15
    SEND_BLOBS = 0x16
    KEY_PUT = 0x20
    KEY_GET = 0x21
    KEYS = 0x22
    KEY_CLAIM = 0x23
    PREKEY = 0x24
    LINK_INVITE = 0x30
    LINK_CODE = 0x31
    CONV_PUT = 0x32
    CONV_GET = 0x33
    CONV_INFO = 0x34
    CONV_LIST = 0x35
    CONVS = 0x36
    BLOB_START = 0x40
    BLOB_STATUS = 0x41
    BLOB_CHUNK = 0x42
    BLOB_FINISH = 0x43
    BLOB_GET = 0x44
    BLOB_DATA = 0x45
    PUSH_SET = 0x50
    PUSH_CLEAR = 0x51
    PUSH_DROPPED = 0x52
    SEND_URGENT = 0x53
    CONV_SEND_URGENT = 0x54
    DELIVER_URGENT = 0x55
    QUIET_SET = 0x56


# -- field helpers -----------------------------------------------------------------------


def _read_exact_bytes(r: Reader, n: int, what: str) -> bytes:
    data = r.bytes_(n, what)
    if len(data) != n:
        raise ProtocolError(ErrorCode.MALFORMED, f"{what}: must be {n} bytes, got {len(data)}")
    return data


def _write_exact_bytes(w: Writer, data: bytes, n: int, what: str) -> None:
    if len(data) != n:
        raise ValueError(f"{what} must be {n} bytes, got {len(data)}")
    w.bytes_(data)


# -- handshake ---------------------------------------------------------------------------


@dataclass(slots=True, unsafe_hash=True)
class Hello:
    """HELLO (client to server): the first frame, offering protocol versions min..max."""

    request_id: int
    min_version: int
    max_version: int
    software: str
    TYPE: ClassVar[int] = FrameType.HELLO

    def _write(self, w: Writer) -> None:
        w.u16(self.min_version).u16(self.max_version).string(self.software, MAX_SOFTWARE)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> Hello:
        return cls(
            request_id,
            r.u16("min_version"),
            r.u16("max_version"),
            r.string(MAX_SOFTWARE, "software"),
        )


@dataclass(slots=True, unsafe_hash=True)
class Welcome:
    """WELCOME (server to client): chosen version, fresh auth nonce, and the server's limits."""

    request_id: int
    version: int
    server_name: str
    nonce: bytes
    max_frame_bytes: int
    idle_timeout_ms: int
    max_recipients: int
    delivery_window: int
    TYPE: ClassVar[int] = FrameType.WELCOME

    def _write(self, w: Writer) -> None:
        w.u16(self.version).string(self.server_name, MAX_SERVER_NAME)
        w.fixed(self.nonce, NONCE_LEN)
        w.u32(self.max_frame_bytes).u32(self.idle_timeout_ms).u32(self.max_recipients)
        w.u32(self.delivery_window)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> Welcome:
        return cls(
            request_id,
            r.u16("version"),
            r.string(MAX_SERVER_NAME, "server_name"),
            r.fixed(NONCE_LEN, "nonce"),
            r.u32("max_frame_bytes"),
            r.u32("idle_timeout_ms"),
            r.u32("max_recipients"),
            r.u32("delivery_window"),
        )


@dataclass(slots=True, unsafe_hash=True)
class Enroll:
    """ENROLL (client to server): redeem an invite code, registering a new device.

    ``signature`` is the Ed25519 signature by ``transport_pub`` over
    :func:`momedod.protocol.auth.enroll_message`.
    """

    request_id: int
    invite_code: str
    transport_pub: bytes
    device_name: str
    signature: bytes
    TYPE: ClassVar[int] = FrameType.ENROLL

    def _write(self, w: Writer) -> None:
        w.string(self.invite_code, MAX_INVITE_CODE)
        _write_exact_bytes(w, self.transport_pub, TRANSPORT_PUB_LEN, "transport_pub")
        w.string(self.device_name, MAX_DEVICE_NAME)
        _write_exact_bytes(w, self.signature, SIGNATURE_LEN, "signature")

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> Enroll:
        return cls(
            request_id,
            r.string(MAX_INVITE_CODE, "invite_code"),
            _read_exact_bytes(r, TRANSPORT_PUB_LEN, "transport_pub"),
            r.string(MAX_DEVICE_NAME, "device_name"),
            _read_exact_bytes(r, SIGNATURE_LEN, "signature"),
        )


@dataclass(slots=True, unsafe_hash=True)
class Auth:
    """AUTH (client to server): log in as an enrolled device.

    ``signature`` is the Ed25519 signature by the device's transport key over
    :func:`momedod.protocol.auth.auth_message`.
    """

    request_id: int
    user_id: str
    device_id: int
    signature: bytes
    TYPE: ClassVar[int] = FrameType.AUTH

    def _write(self, w: Writer) -> None:
        w.user_id(self.user_id)
        w.u32(self.device_id)
        _write_exact_bytes(w, self.signature, SIGNATURE_LEN, "signature")

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> Auth:
        return cls(
            request_id,
            r.user_id(),
            r.u32("device_id"),
            _read_exact_bytes(r, SIGNATURE_LEN, "signature"),
        )


@dataclass(slots=True, unsafe_hash=True)
class AuthOk:
    """AUTH_OK (server to client): the connection is authenticated as user_id/device_id."""

    request_id: int
    user_id: str
    device_id: int
    server_time_ms: int
    TYPE: ClassVar[int] = FrameType.AUTH_OK

    def _write(self, w: Writer) -> None:
        w.user_id(self.user_id)
        w.u32(self.device_id).u64(self.server_time_ms)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> AuthOk:
        return cls(request_id, r.user_id(), r.u32("device_id"), r.u64("server_time_ms"))


# -- generic replies ---------------------------------------------------------------------


@dataclass(slots=True, unsafe_hash=True)
class Error:
    """ERROR (server to client): a wire error code and a short message.

    Codes below 32 are fatal (the server closes the connection after this frame); others
    answer the request with the same request_id. ``code`` is an :class:`ErrorCode` when the
    code is known, a plain int otherwise (a newer server may send new codes).
    """

    request_id: int
    code: int
    message: str
    TYPE: ClassVar[int] = FrameType.ERROR

    @property
    def is_fatal(self) -> bool:
        """True if the code is < 32, so the connection ends with this frame."""
        return self.code < 32

    def _write(self, w: Writer) -> None:
        w.u16(self.code).string(self.message, MAX_ERROR_MESSAGE)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> Error:
        code: int = r.u16("code")
        with contextlib.suppress(ValueError):  # a code from a newer server stays an int
            code = ErrorCode(code)
        return cls(request_id, code, r.string(MAX_ERROR_MESSAGE, "message"))


@dataclass(slots=True, unsafe_hash=True)
class Ok:
    """OK (server to client): the request with this request_id succeeded (empty body)."""

    request_id: int
    TYPE: ClassVar[int] = FrameType.OK

    def _write(self, w: Writer) -> None:
        pass

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> Ok:
        return cls(request_id)


@dataclass(slots=True, unsafe_hash=True)
class Ping:
    """PING (either direction): liveness check; the peer answers PONG with the same values."""

    request_id: int
    opaque: int
    TYPE: ClassVar[int] = FrameType.PING

    def _write(self, w: Writer) -> None:
        w.u64(self.opaque)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> Ping:
        return cls(request_id, r.u64("opaque"))


@dataclass(slots=True, unsafe_hash=True)
class Pong:
    """PONG (either direction): answer to PING, echoing its request_id and opaque value."""

    request_id: int
    opaque: int
    TYPE: ClassVar[int] = FrameType.PONG

    def _write(self, w: Writer) -> None:
        w.u64(self.opaque)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> Pong:
        return cls(request_id, r.u64("opaque"))


# -- messages ----------------------------------------------------------------------------


@dataclass(slots=True, unsafe_hash=True)
class Recipient:
    """One recipient device of a SEND, with the ``part`` only that device receives."""

    user_id: str
    device_id: int
    part: bytes

    def _write(self, w: Writer) -> None:
        w.user_id(self.user_id)
        w.u32(self.device_id).bytes_(self.part, MAX_PART)

    @classmethod
    def _read(cls, r: Reader) -> Recipient:
        return cls(r.user_id(), r.u32("device_id"), r.bytes_(MAX_PART, "part"))


def _write_recipients(w: Writer, recipients: tuple[Recipient, ...]) -> None:
    if len(recipients) > MAX_RECIPIENTS_WIRE:
        raise ValueError(f"{len(recipients)} recipients, at most 65535 allowed")
    w.u32(len(recipients))
    for recipient in recipients:
        recipient._write(w)


def _read_recipients(r: Reader, what: str) -> tuple[Recipient, ...]:
    n = r.count(MAX_RECIPIENTS_WIRE, _RECIPIENT_MIN_SIZE, what)
    return tuple(Recipient._read(r) for _ in range(n))


@dataclass(slots=True, unsafe_hash=True)
class Send:
    """SEND (client to server): store ``payload`` once for every recipient device.

    Answered with ACCEPTED once durably stored. A retry with the same ``message_id`` from the
    same device is not stored twice (ACCEPTED with duplicate=True).
    """

    request_id: int
    message_id: bytes
    payload: bytes
    recipients: tuple[Recipient, ...]
    TYPE: ClassVar[int] = FrameType.SEND

    def _write(self, w: Writer) -> None:
        w.fixed(self.message_id, MESSAGE_ID_LEN).bytes_(self.payload)
        _write_recipients(w, self.recipients)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> Send:
        message_id = r.fixed(MESSAGE_ID_LEN, "message_id")
        payload = r.bytes_(MAX_U32, "payload")
        return cls(request_id, message_id, payload, _read_recipients(r, "recipients"))


@dataclass(slots=True, unsafe_hash=True)
class Accepted:
    """ACCEPTED (server to client): the SEND with this message_id is durably stored."""

    request_id: int
    message_id: bytes
    server_ts_ms: int
    duplicate: bool
    TYPE: ClassVar[int] = FrameType.ACCEPTED

    def _write(self, w: Writer) -> None:
        w.fixed(self.message_id, MESSAGE_ID_LEN).u64(self.server_ts_ms).u8(int(self.duplicate))

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> Accepted:
        message_id = r.fixed(MESSAGE_ID_LEN, "message_id")
        server_ts_ms = r.u64("server_ts_ms")
        flag = r.u8("duplicate")
        if flag > 1:
            raise ProtocolError(ErrorCode.MALFORMED, f"duplicate: must be 0 or 1, got {flag}")
        return cls(request_id, message_id, server_ts_ms, flag == 1)


@dataclass(slots=True, unsafe_hash=True)
class Deliver:
    """DELIVER (server to client): one mailbox entry; acknowledge ``seq`` with ACK."""

    request_id: int
    seq: int
    message_id: bytes
    server_ts_ms: int
    payload: bytes
    part: bytes
    TYPE: ClassVar[int] = FrameType.DELIVER

    def _write(self, w: Writer) -> None:
        w.u64(self.seq).fixed(self.message_id, MESSAGE_ID_LEN).u64(self.server_ts_ms)
        w.bytes_(self.payload).bytes_(self.part, MAX_PART)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> Deliver:
        return cls(
            request_id,
            r.u64("seq"),
            r.fixed(MESSAGE_ID_LEN, "message_id"),
            r.u64("server_ts_ms"),
            r.bytes_(MAX_U32, "payload"),
            r.bytes_(MAX_PART, "part"),
        )


@dataclass(slots=True, unsafe_hash=True)
class Ack:
    """ACK (client to server): delete these delivered mailbox entries (1..1024 seqs)."""

    request_id: int
    seqs: tuple[int, ...]
    TYPE: ClassVar[int] = FrameType.ACK

    def _write(self, w: Writer) -> None:
        if not self.seqs:
            raise ValueError("an ACK needs at least one seq")
        w.u64_list(self.seqs, MAX_ACK_SEQS)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> Ack:
        seqs = r.u64_list(MAX_ACK_SEQS, "seqs")
        if not seqs:
            raise ProtocolError(ErrorCode.MALFORMED, "seqs: at least one seq required")
        return cls(request_id, seqs)


@dataclass(slots=True, unsafe_hash=True)
class Drained:
    """DRAINED (server to client): the backlog present at login has been delivered.

    Sent once per session; ``last_seq`` is the seq of the last backlog entry, 0 if none.
    """

    request_id: int
    last_seq: int
    TYPE: ClassVar[int] = FrameType.DRAINED

    def _write(self, w: Writer) -> None:
        w.u64(self.last_seq)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> Drained:
        return cls(request_id, r.u64("last_seq"))


# -- key directory -----------------------------------------------------------------------


@dataclass(slots=True, unsafe_hash=True)
class KeyPut:
    """KEY_PUT (client to server): upload one SignedRecord; answered with OK."""

    request_id: int
    record: bytes
    TYPE: ClassVar[int] = FrameType.KEY_PUT

    def _write(self, w: Writer) -> None:
        w.bytes_(self.record)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> KeyPut:
        return cls(request_id, r.bytes_(MAX_U32, "record"))


@dataclass(slots=True, unsafe_hash=True)
class KeyGet:
    """KEY_GET (client to server): fetch a user's key records; answered with KEYS."""

    request_id: int
    user_id: str
    TYPE: ClassVar[int] = FrameType.KEY_GET

    def _write(self, w: Writer) -> None:
        w.user_id(self.user_id)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> KeyGet:
        return cls(request_id, r.user_id())


@dataclass(slots=True, unsafe_hash=True)
class Keys:
    """KEYS (server to client): a user's key records (identity, device lists, current SPKs)."""

    request_id: int
    user_id: str
    records: tuple[bytes, ...]
    TYPE: ClassVar[int] = FrameType.KEYS

    def _write(self, w: Writer) -> None:
        w.user_id(self.user_id)
        w.list_(self.records, Writer.bytes_)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> Keys:
        user_id = r.user_id()
        n = r.count(MAX_U32, 4, "records")
        return cls(request_id, user_id, tuple(r.bytes_(MAX_U32, "record") for _ in range(n)))


@dataclass(slots=True, unsafe_hash=True)
class KeyClaim:
    """KEY_CLAIM (client to server): take one one-time prekey of a device; answered PREKEY."""

    request_id: int
    user_id: str
    device_id: int
    suite: int
    TYPE: ClassVar[int] = FrameType.KEY_CLAIM

    def _write(self, w: Writer) -> None:
        w.user_id(self.user_id)
        w.u32(self.device_id).u16(self.suite)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> KeyClaim:
        return cls(request_id, r.user_id(), r.u32("device_id"), r.u16("suite"))


@dataclass(slots=True, unsafe_hash=True)
class Prekey:
    """PREKEY (server to client): the claimed one-time prekey record, empty if none is left."""

    request_id: int
    record: bytes
    TYPE: ClassVar[int] = FrameType.PREKEY

    def _write(self, w: Writer) -> None:
        w.bytes_(self.record)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> Prekey:
        return cls(request_id, r.bytes_(MAX_U32, "record"))


@dataclass(slots=True, unsafe_hash=True)
class LinkInvite:
    """LINK_INVITE (client to server): a one-time invite for a further device of my user."""

    request_id: int
    ttl_seconds: int
    TYPE: ClassVar[int] = FrameType.LINK_INVITE

    def _write(self, w: Writer) -> None:
        w.u32(self.ttl_seconds)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> LinkInvite:
        return cls(request_id, r.u32("ttl_seconds"))


@dataclass(slots=True, unsafe_hash=True)
class LinkCode:
    """LINK_CODE (server to client): the invite code for the new device and its expiry."""

    request_id: int
    invite_code: str
    expires_ms: int
    TYPE: ClassVar[int] = FrameType.LINK_CODE

    def _write(self, w: Writer) -> None:
        w.string(self.invite_code, MAX_INVITE_CODE).u64(self.expires_ms)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> LinkCode:
        return cls(request_id, r.string(MAX_INVITE_CODE, "invite_code"), r.u64("expires_ms"))


# -- conversations -----------------------------------------------------------------------


def _write_blob_ids(w: Writer, blob_ids: tuple[bytes, ...]) -> None:
    if len(blob_ids) > MAX_BLOB_REFS:
        raise ValueError(f"{len(blob_ids)} blob ids, at most {MAX_BLOB_REFS} allowed")
    w.u32(len(blob_ids))
    for blob_id in blob_ids:
        w.fixed(blob_id, BLOB_ID_LEN)


def _read_blob_ids(r: Reader) -> tuple[bytes, ...]:
    n = r.count(MAX_BLOB_REFS, BLOB_ID_LEN, "blob_ids")
    return tuple(r.fixed(BLOB_ID_LEN, "blob_id") for _ in range(n))


@dataclass(slots=True, unsafe_hash=True)
class ConvSend:
    """CONV_SEND (client to server): post ``payload`` to a conversation.

    The server checks membership (a channel: admins only) and fans the payload out to every
    member device and the sender's other devices; ``parts`` name only the devices that get a
    non-empty part (e.g. a ChainDist Seal or a Multi wrap). ``blob_ids`` are the attachments
    the message references (their readers get access). Answered with ACCEPTED.
    """

    request_id: int
    message_id: bytes
    conv_id: bytes
    payload: bytes
    parts: tuple[Recipient, ...]
    blob_ids: tuple[bytes, ...] = ()
    TYPE: ClassVar[int] = FrameType.CONV_SEND

    def _write(self, w: Writer) -> None:
        w.fixed(self.message_id, MESSAGE_ID_LEN).fixed(self.conv_id, CONV_ID_LEN)
        w.bytes_(self.payload)
        _write_recipients(w, self.parts)
        _write_blob_ids(w, self.blob_ids)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> ConvSend:
        message_id = r.fixed(MESSAGE_ID_LEN, "message_id")
        conv_id = r.fixed(CONV_ID_LEN, "conv_id")
        payload = r.bytes_(MAX_U32, "payload")
        parts = _read_recipients(r, "parts")
        return cls(request_id, message_id, conv_id, payload, parts, _read_blob_ids(r))


@dataclass(slots=True, unsafe_hash=True)
class SendBlobs:
    """SEND_BLOBS (client to server): a SEND that references attachments (``blob_ids``)."""

    request_id: int
    message_id: bytes
    payload: bytes
    recipients: tuple[Recipient, ...]
    blob_ids: tuple[bytes, ...]
    TYPE: ClassVar[int] = FrameType.SEND_BLOBS

    def _write(self, w: Writer) -> None:
        w.fixed(self.message_id, MESSAGE_ID_LEN).bytes_(self.payload)
        _write_recipients(w, self.recipients)
        _write_blob_ids(w, self.blob_ids)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> SendBlobs:
        message_id = r.fixed(MESSAGE_ID_LEN, "message_id")
        payload = r.bytes_(MAX_U32, "payload")
        recipients = _read_recipients(r, "recipients")
        return cls(request_id, message_id, payload, recipients, _read_blob_ids(r))


@dataclass(slots=True, unsafe_hash=True)
class ConvPut:
    """CONV_PUT (client to server): create a user group or change its roster (answered OK)."""

    request_id: int
    conv_id: bytes
    roster_record: bytes
    TYPE: ClassVar[int] = FrameType.CONV_PUT

    def _write(self, w: Writer) -> None:
        w.fixed(self.conv_id, CONV_ID_LEN).bytes_(self.roster_record)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> ConvPut:
        return cls(request_id, r.fixed(CONV_ID_LEN, "conv_id"), r.bytes_(MAX_U32, "roster_record"))


@dataclass(slots=True, unsafe_hash=True)
class ConvGet:
    """CONV_GET (client to server): a conversation's membership and rosters after an epoch."""

    request_id: int
    conv_id: bytes
    since_epoch: int
    TYPE: ClassVar[int] = FrameType.CONV_GET

    def _write(self, w: Writer) -> None:
        w.fixed(self.conv_id, CONV_ID_LEN).u64(self.since_epoch)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> ConvGet:
        return cls(request_id, r.fixed(CONV_ID_LEN, "conv_id"), r.u64("since_epoch"))


@dataclass(slots=True, unsafe_hash=True)
class ConvMember:
    """One member in CONV_INFO: user and role (0 member, 1 admin)."""

    user_id: str
    role: int

    def _write(self, w: Writer) -> None:
        if self.role not in (0, 1):
            raise ValueError(f"role must be 0 or 1, got {self.role}")
        w.user_id(self.user_id)
        w.u8(self.role)

    @classmethod
    def _read(cls, r: Reader) -> ConvMember:
        user_id = r.user_id()
        role = r.u8("role")
        if role > 1:
            raise ProtocolError(ErrorCode.MALFORMED, f"role: must be 0 or 1, got {role}")
        return cls(user_id, role)


def _strictly_ascending(members: tuple[ConvMember, ...]) -> bool:
    return all(a.user_id < b.user_id for a, b in pairwise(members))


def _write_kind_managed(w: Writer, kind: int, managed: bool) -> None:
    if kind not in (1, 2):
        raise ValueError(f"kind must be 1 (group) or 2 (channel), got {kind}")
    w.u8(kind).u8(int(managed))


def _read_kind_managed(r: Reader) -> tuple[int, bool]:
    kind = r.u8("kind")
    if kind not in (1, 2):
        raise ProtocolError(ErrorCode.MALFORMED, f"kind: must be 1 or 2, got {kind}")
    managed = r.u8("managed")
    if managed > 1:
        raise ProtocolError(ErrorCode.MALFORMED, f"managed: must be 0 or 1, got {managed}")
    return kind, managed == 1


@dataclass(slots=True, unsafe_hash=True)
class ConvInfo:
    """CONV_INFO (server to client): the server's membership, newer rosters, org key records.

    ``members`` are in strictly ascending ``user_id`` order (no user twice); ``rosters`` are
    the RosterRecords with an epoch above CONV_GET's ``since_epoch``, oldest first;
    ``org_keys`` every OrgKeyRecord, oldest first. Records are opaque here (docs/E2E.md).
    """

    request_id: int
    conv_id: bytes
    kind: int
    managed: bool
    epoch: int
    members: tuple[ConvMember, ...]
    rosters: tuple[bytes, ...]
    org_keys: tuple[bytes, ...]
    TYPE: ClassVar[int] = FrameType.CONV_INFO

    def _write(self, w: Writer) -> None:
        w.fixed(self.conv_id, CONV_ID_LEN)
        _write_kind_managed(w, self.kind, self.managed)
        w.u64(self.epoch)
        if len(self.members) > MAX_MEMBERS_WIRE:
            raise ValueError(f"{len(self.members)} members, at most {MAX_MEMBERS_WIRE}")
        if not _strictly_ascending(self.members):
            raise ValueError("members must be in strictly ascending user_id order")
        w.u32(len(self.members))
        for member in self.members:
            member._write(w)
        w.list_(self.rosters, Writer.bytes_)
        w.list_(self.org_keys, Writer.bytes_)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> ConvInfo:
        conv_id = r.fixed(CONV_ID_LEN, "conv_id")
        kind, managed = _read_kind_managed(r)
        epoch = r.u64("epoch")
        n = r.count(MAX_MEMBERS_WIRE, USER_ID_LEN + 1, "members")
        members = tuple(ConvMember._read(r) for _ in range(n))
        if not _strictly_ascending(members):
            raise ProtocolError(
                ErrorCode.MALFORMED, "members: not in strictly ascending user_id order"
            )
        n = r.count(MAX_U32, 4, "rosters")
        rosters = tuple(r.bytes_(MAX_U32, "roster") for _ in range(n))
        n = r.count(MAX_U32, 4, "org_keys")
        org_keys = tuple(r.bytes_(MAX_U32, "org_key") for _ in range(n))
        return cls(request_id, conv_id, kind, managed, epoch, members, rosters, org_keys)


@dataclass(slots=True, unsafe_hash=True)
class ConvList:
    """CONV_LIST (client to server): the conversations my user is a member of."""

    request_id: int
    TYPE: ClassVar[int] = FrameType.CONV_LIST

    def _write(self, w: Writer) -> None:
        pass

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> ConvList:
        return cls(request_id)


@dataclass(slots=True, unsafe_hash=True)
class ConvSummary:
    """One conversation in CONVS."""

    conv_id: bytes
    kind: int
    managed: bool
    epoch: int

    def _write(self, w: Writer) -> None:
        w.fixed(self.conv_id, CONV_ID_LEN)
        _write_kind_managed(w, self.kind, self.managed)
        w.u64(self.epoch)

    @classmethod
    def _read(cls, r: Reader) -> ConvSummary:
        conv_id = r.fixed(CONV_ID_LEN, "conv_id")
        kind, managed = _read_kind_managed(r)
        return cls(conv_id, kind, managed, r.u64("epoch"))


@dataclass(slots=True, unsafe_hash=True)
class Convs:
    """CONVS (server to client, reply to CONV_LIST)."""

    request_id: int
    convs: tuple[ConvSummary, ...]
    TYPE: ClassVar[int] = FrameType.CONVS

    def _write(self, w: Writer) -> None:
        w.u32(len(self.convs))
        for conv in self.convs:
            conv._write(w)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> Convs:
        n = r.count(MAX_U32, CONV_ID_LEN + 10, "convs")
        return cls(request_id, tuple(ConvSummary._read(r) for _ in range(n)))


# -- blobs (attachments) -----------------------------------------------------------------


@dataclass(slots=True, unsafe_hash=True)
class BlobStart:
    """BLOB_START (client to server): begin or resume the upload of ``size`` bytes."""

    request_id: int
    blob_id: bytes
    size: int
    TYPE: ClassVar[int] = FrameType.BLOB_START

    def _write(self, w: Writer) -> None:
        w.fixed(self.blob_id, BLOB_ID_LEN).u64(self.size)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> BlobStart:
        return cls(request_id, r.fixed(BLOB_ID_LEN, "blob_id"), r.u64("size"))


@dataclass(slots=True, unsafe_hash=True)
class BlobStatus:
    """BLOB_STATUS (server to client): how much of an upload the server holds.

    ``received`` ≤ ``size``; ``complete`` (after BLOB_FINISH) implies ``received == size``.
    """

    request_id: int
    blob_id: bytes
    size: int
    received: int
    complete: bool
    TYPE: ClassVar[int] = FrameType.BLOB_STATUS

    def _write(self, w: Writer) -> None:
        if self.received > self.size or (self.complete and self.received != self.size):
            raise ValueError(
                f"inconsistent status: {self.received} of {self.size} bytes,"
                f" complete={self.complete}"
            )
        w.fixed(self.blob_id, BLOB_ID_LEN).u64(self.size).u64(self.received)
        w.u8(int(self.complete))

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> BlobStatus:
        blob_id = r.fixed(BLOB_ID_LEN, "blob_id")
        size = r.u64("size")
        received = r.u64("received")
        flag = r.u8("complete")
        if flag > 1:
            raise ProtocolError(ErrorCode.MALFORMED, f"complete: must be 0 or 1, got {flag}")
        if received > size:
            raise ProtocolError(ErrorCode.MALFORMED, "received: larger than size")
        if flag == 1 and received != size:
            raise ProtocolError(ErrorCode.MALFORMED, "complete: set but received != size")
        return cls(request_id, blob_id, size, received, flag == 1)


@dataclass(slots=True, unsafe_hash=True)
class BlobChunk:
    """BLOB_CHUNK (client to server): ``data`` at ``offset`` of an upload."""

    request_id: int
    blob_id: bytes
    offset: int
    data: bytes
    TYPE: ClassVar[int] = FrameType.BLOB_CHUNK

    def _write(self, w: Writer) -> None:
        if not self.data:
            raise ValueError("a BLOB_CHUNK needs at least one byte")
        w.fixed(self.blob_id, BLOB_ID_LEN).u64(self.offset).bytes_(self.data, MAX_BLOB_CHUNK)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> BlobChunk:
        blob_id = r.fixed(BLOB_ID_LEN, "blob_id")
        offset = r.u64("offset")
        data = r.bytes_(MAX_BLOB_CHUNK, "data")
        if not data:
            raise ProtocolError(ErrorCode.MALFORMED, "data: must not be empty")
        return cls(request_id, blob_id, offset, data)


@dataclass(slots=True, unsafe_hash=True)
class BlobFinish:
    """BLOB_FINISH (client to server): the upload is complete; ``sha256`` of all its bytes."""

    request_id: int
    blob_id: bytes
    sha256: bytes
    TYPE: ClassVar[int] = FrameType.BLOB_FINISH

    def _write(self, w: Writer) -> None:
        w.fixed(self.blob_id, BLOB_ID_LEN).fixed(self.sha256, BLOB_HASH_LEN)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> BlobFinish:
        return cls(request_id, r.fixed(BLOB_ID_LEN, "blob_id"), r.fixed(BLOB_HASH_LEN, "sha256"))


@dataclass(slots=True, unsafe_hash=True)
class BlobGet:
    """BLOB_GET (client to server): read ``length`` bytes of a blob from ``offset``."""

    request_id: int
    blob_id: bytes
    offset: int
    length: int
    TYPE: ClassVar[int] = FrameType.BLOB_GET

    def _write(self, w: Writer) -> None:
        if not 1 <= self.length <= MAX_BLOB_CHUNK:
            raise ValueError(f"length must be 1..{MAX_BLOB_CHUNK}, got {self.length}")
        w.fixed(self.blob_id, BLOB_ID_LEN).u64(self.offset).u32(self.length)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> BlobGet:
        blob_id = r.fixed(BLOB_ID_LEN, "blob_id")
        offset = r.u64("offset")
        length = r.u32("length")
        if not 1 <= length <= MAX_BLOB_CHUNK:
            raise ProtocolError(
                ErrorCode.MALFORMED, f"length: must be 1..{MAX_BLOB_CHUNK}, got {length}"
            )
        return cls(request_id, blob_id, offset, length)


@dataclass(slots=True, unsafe_hash=True)
class BlobData:
    """BLOB_DATA (server to client): bytes of a blob from ``offset``.

    ``data`` never extends past ``size``; it is empty when ``offset`` is at or beyond the end.
    """

    request_id: int
    blob_id: bytes
    size: int
    offset: int
    data: bytes
    TYPE: ClassVar[int] = FrameType.BLOB_DATA

    def _write(self, w: Writer) -> None:
        if self.data and self.offset + len(self.data) > self.size:
            raise ValueError("data extends past the end of the blob")
        w.fixed(self.blob_id, BLOB_ID_LEN).u64(self.size).u64(self.offset)
        w.bytes_(self.data, MAX_BLOB_CHUNK)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> BlobData:
        blob_id = r.fixed(BLOB_ID_LEN, "blob_id")
        size = r.u64("size")
        offset = r.u64("offset")
        data = r.bytes_(MAX_BLOB_CHUNK, "data")
        if data and offset + len(data) > size:
            raise ProtocolError(ErrorCode.MALFORMED, "data: extends past the end of the blob")
        return cls(request_id, blob_id, size, offset, data)


# -- push wake-ups -----------------------------------------------------------------------


@dataclass(slots=True, unsafe_hash=True)
class PushSet:
    """PUSH_SET (client to server): this device's push target, replacing any earlier one.

    ``kind`` is :data:`PUSH_UNIFIEDPUSH` (``target`` is an endpoint URL) or
    :data:`PUSH_GATEWAY` (``target`` is a token for the server's push gateway);
    ``device_kind`` is :data:`DEVICE_DESKTOP` or :data:`DEVICE_MOBILE`. Answered with OK.
    """

    request_id: int
    kind: int
    device_kind: int
    target: str
    TYPE: ClassVar[int] = FrameType.PUSH_SET

    def _write(self, w: Writer) -> None:
        if self.kind not in (PUSH_UNIFIEDPUSH, PUSH_GATEWAY):
            raise ValueError(f"unknown push kind {self.kind}")
        if self.device_kind not in (DEVICE_DESKTOP, DEVICE_MOBILE):
            raise ValueError(f"unknown device kind {self.device_kind}")
        if not self.target:
            raise ValueError("a push target must not be empty")
        w.u8(self.kind).u8(self.device_kind).string(self.target, MAX_PUSH_TARGET)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> PushSet:
        kind = r.u8("kind")
        if kind not in (PUSH_UNIFIEDPUSH, PUSH_GATEWAY):
            raise ProtocolError(ErrorCode.MALFORMED, f"kind: must be 1 or 2, got {kind}")
        device_kind = r.u8("device_kind")
        if device_kind not in (DEVICE_DESKTOP, DEVICE_MOBILE):
            raise ProtocolError(
                ErrorCode.MALFORMED, f"device_kind: must be 0 or 1, got {device_kind}"
            )
        target = r.string(MAX_PUSH_TARGET, "target")
        if not target:
            raise ProtocolError(ErrorCode.MALFORMED, "target: must not be empty")
        return cls(request_id, kind, device_kind, target)


@dataclass(slots=True, unsafe_hash=True)
class PushClear:
    """PUSH_CLEAR (client to server): remove this device's push target (empty body; OK)."""

    request_id: int
    TYPE: ClassVar[int] = FrameType.PUSH_CLEAR

    def _write(self, w: Writer) -> None:
        pass

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> PushClear:
        return cls(request_id)


@dataclass(slots=True, unsafe_hash=True)
class PushDropped:
    """PUSH_DROPPED (server to client, request_id 0): the server dropped this device's target.

    Sent once, right after AUTH_OK, to the first connection after the drop. ``status`` is
    the HTTP status that made the server give up (404, 410, ...), 0 if the target kept
    failing without one (timeouts, refused connections); ``dropped_ms`` is when.
    """

    request_id: int
    kind: int
    status: int
    dropped_ms: int
    TYPE: ClassVar[int] = FrameType.PUSH_DROPPED

    def _write(self, w: Writer) -> None:
        w.u8(self.kind).u16(self.status).u64(self.dropped_ms)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> PushDropped:
        return cls(request_id, r.u8("kind"), r.u16("status"), r.u64("dropped_ms"))


# -- urgent messages: the same layouts under their own type bytes ---------------------------


@dataclass(slots=True, unsafe_hash=True)
class SendUrgent(Send):
    """SEND_URGENT (client to server): a SEND marked urgent (passes quiet hours).

    Body exactly as SEND. The server refuses it with FORBIDDEN unless the operator allowed
    the sender to send urgent messages.
    """

    TYPE: ClassVar[int] = FrameType.SEND_URGENT


@dataclass(slots=True, unsafe_hash=True)
class ConvSendUrgent(ConvSend):
    """CONV_SEND_URGENT (client to server): a CONV_SEND marked urgent.

    Body exactly as CONV_SEND. Allowed if the operator allowed the sender or the
    conversation (e.g. an emergency channel); FORBIDDEN otherwise.
    """

    TYPE: ClassVar[int] = FrameType.CONV_SEND_URGENT


@dataclass(slots=True, unsafe_hash=True)
class DeliverUrgent(Deliver):
    """DELIVER_URGENT (server to client, request_id 0): a DELIVER of an urgent message.

    Body exactly as DELIVER; acknowledged with ACK like any DELIVER.
    """

    TYPE: ClassVar[int] = FrameType.DELIVER_URGENT


@dataclass(slots=True, unsafe_hash=True)
class QuietSet:
    """QUIET_SET (client to server): the user's own working window, which can only narrow
    the operator's quiet-hours policies (it is one more policy for this user).

    ``days`` is a bit mask, bit 0 Monday .. bit 6 Sunday; 0 removes the user's setting (the
    other fields are then ignored). ``start``/``end`` are minutes after local midnight
    (start < end <= 1440), ``defer`` also defers delivery to the user's mobile devices.
    Answered with OK.
    """

    request_id: int
    days: int
    defer: bool
    start: int
    end: int
    timezone: str
    TYPE: ClassVar[int] = FrameType.QUIET_SET

    def _write(self, w: Writer) -> None:
        if not 0 <= self.days <= 0x7F or not 0 <= self.start <= 1440 or not 0 <= self.end <= 1440:
            raise ValueError("days is a 7-bit mask, start and end minutes 0-1440")
        w.u8(self.days).u8(int(self.defer)).u16(self.start).u16(self.end)
        w.string(self.timezone, MAX_TIMEZONE)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> QuietSet:
        days, flags = r.u8("days"), r.u8("flags")
        if days > 0x7F:
            raise ProtocolError(ErrorCode.MALFORMED, f"days: bit 7 must be 0, got {days}")
        if flags > 1:
            raise ProtocolError(ErrorCode.MALFORMED, f"flags: only bit 0 is defined, got {flags}")
        start, end = r.u16("start"), r.u16("end")
        if start > 1440 or end > 1440:
            raise ProtocolError(ErrorCode.MALFORMED, "start/end: at most 1440 minutes")
        return cls(request_id, days, flags == 1, start, end, r.string(MAX_TIMEZONE, "timezone"))


Frame: TypeAlias = (
    Hello
    | Welcome
    | Enroll
    | Auth
    | AuthOk
    | Error
    | Ok
    | Ping
    | Pong
    | Send
    | Accepted
    | Deliver
    | Ack
    | Drained
    | KeyPut
    | KeyGet
    | Keys
    | KeyClaim
    | Prekey
    | LinkInvite
    | LinkCode
    | ConvSend
    | SendBlobs
    | ConvPut
    | ConvGet
    | ConvInfo
    | ConvList
    | Convs
    | BlobStart
    | BlobStatus
    | BlobChunk
    | BlobFinish
    | BlobGet
    | BlobData
    | PushSet
    | PushClear
    | PushDropped
    | SendUrgent
    | ConvSendUrgent
    | DeliverUrgent
    | QuietSet
)
"""Any frame of protocol v1."""

FRAME_CLASSES: dict[int, type[Frame]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Welcome,
        Enroll,
        Auth,
        AuthOk,
        Error,
        Ok,
        Ping,
        Pong,
        Send,
        Accepted,
        Deliver,
        Ack,
        Drained,
        KeyPut,
        KeyGet,
        Keys,
        KeyClaim,
        Prekey,
        LinkInvite,
        LinkCode,
        ConvSend,
        SendBlobs,
        ConvPut,
        ConvGet,
        ConvInfo,
        ConvList,
        Convs,
        BlobStart,
        BlobStatus,
        BlobChunk,
        BlobFinish,
        BlobGet,
        BlobData,
        PushSet,
        PushClear,
        PushDropped,
        SendUrgent,
        ConvSendUrgent,
        DeliverUrgent,
        QuietSet,
    )
}
"""Frame class by type byte."""


# -- fast paths for the relay's hot frames (see the module docstring) ---------------------------

_Buffer: TypeAlias = bytes | bytearray | memoryview
_FastDecoder: TypeAlias = Callable[[int, _Buffer, int, int], "Frame | None"]
_FastEncoder: TypeAlias = Callable[[Any], "bytes | None"]

_U32 = struct.Struct(">I")
_U16_U32 = struct.Struct(">HI")
_U64 = struct.Struct(">Q")
_ID_U32 = struct.Struct(">16sI")  # message_id, payload length
_ID_ID_U32 = struct.Struct(">16s16sI")  # message_id, conv_id, payload length
_RECIPIENT = struct.Struct(">8sII")  # user_id, device_id, part length
_DELIVER_HEAD = struct.Struct(">Q16sQI")  # seq, message_id, server_ts_ms, payload length
_ACCEPTED_BODY = struct.Struct(">16sQB")
_H_EMPTY = _HEADER
_H_U64 = struct.Struct(">IBIQ")  # header + one u64 (PING, PONG)
_H_U32 = struct.Struct(">IBII")  # header + one u32 (ACK's count)
_H_ERROR = struct.Struct(">IBIHI")  # header + code + message length
_H_ACCEPTED = struct.Struct(">IBI16sQB")
_H_DELIVER = struct.Struct(">IBIQ16sQI")
_H_SEND = struct.Struct(">IBI16sI")
_H_CONV_SEND = struct.Struct(">IBI16s16sI")
_ERROR_CODES: dict[int, int] = {int(code): code for code in ErrorCode}
_USER_ID_CHARS = ALPHABET.encode("ascii")
_NO_BLOBS = _U32.pack(0)


def _fast_recipients(b: _Buffer, p: int, end: int) -> tuple[tuple[Recipient, ...], int] | None:
    """``list<Recipient>`` at ``p``: (recipients, position after them), or None."""
    if end - p < 4:
        return None
    (count,) = _U32.unpack_from(b, p)
    p += 4
    if count > MAX_RECIPIENTS_WIRE or count * _RECIPIENT_MIN_SIZE > end - p:
        return None
    out = []
    for _ in range(count):
        if end - p < _RECIPIENT_MIN_SIZE:
            return None
        raw_uid, device_id, n = _RECIPIENT.unpack_from(b, p)
        p += _RECIPIENT_MIN_SIZE
        if n > MAX_PART or n > end - p or raw_uid.translate(None, _USER_ID_CHARS):
            return None
        out.append(Recipient(raw_uid.decode("ascii"), device_id, bytes(b[p : p + n])))
        p += n
    return tuple(out), p


def _fast_blob_ids(b: _Buffer, p: int, end: int) -> tuple[bytes, ...] | None:
    """``list<u8[16]>`` of blob IDs filling exactly ``b[p:end]``, or None."""
    if end - p < 4:
        return None
    (count,) = _U32.unpack_from(b, p)
    p += 4
    if count > MAX_BLOB_REFS or end - p != count * BLOB_ID_LEN:
        return None
    return tuple(bytes(b[q : q + BLOB_ID_LEN]) for q in range(p, end, BLOB_ID_LEN))


def _fast_send_head(b: _Buffer, p: int, end: int) -> tuple[bytes, bytes, int] | None:
    """SEND's message_id and payload: (message_id, payload, position after), or None."""
    if end - p < _ID_U32.size:
        return None
    message_id, n = _ID_U32.unpack_from(b, p)
    p += _ID_U32.size
    if n > end - p:
        return None
    return message_id, bytes(b[p : p + n]), p + n


def _dec_send(cls: type[Send]) -> _FastDecoder:
    def decode(request_id: int, b: _Buffer, p: int, end: int) -> Send | None:
        head = _fast_send_head(b, p, end)
        if head is None:
            return None
        message_id, payload, p = head
        found = _fast_recipients(b, p, end)
        if found is None or found[1] != end:
            return None
        return cls(request_id, message_id, payload, found[0])

    return decode


def _dec_send_blobs(request_id: int, b: _Buffer, p: int, end: int) -> SendBlobs | None:
    head = _fast_send_head(b, p, end)
    if head is None:
        return None
    message_id, payload, p = head
    found = _fast_recipients(b, p, end)
    if found is None:
        return None
    blob_ids = _fast_blob_ids(b, found[1], end)
    if blob_ids is None:
        return None
    return SendBlobs(request_id, message_id, payload, found[0], blob_ids)


def _dec_conv_send(cls: type[ConvSend]) -> _FastDecoder:
    def decode(request_id: int, b: _Buffer, p: int, end: int) -> ConvSend | None:
        if end - p < _ID_ID_U32.size:
            return None
        message_id, conv_id, n = _ID_ID_U32.unpack_from(b, p)
        p += _ID_ID_U32.size
        if n > end - p:
            return None
        payload = bytes(b[p : p + n])
        found = _fast_recipients(b, p + n, end)
        if found is None:
            return None
        blob_ids = _fast_blob_ids(b, found[1], end)
        if blob_ids is None:
            return None
        return cls(request_id, message_id, conv_id, payload, found[0], blob_ids)

    return decode


def _dec_accepted(request_id: int, b: _Buffer, p: int, end: int) -> Accepted | None:
    if end - p != _ACCEPTED_BODY.size:
        return None
    message_id, server_ts_ms, flag = _ACCEPTED_BODY.unpack_from(b, p)
    if flag > 1:
        return None
    return Accepted(request_id, message_id, server_ts_ms, flag == 1)


def _dec_deliver(cls: type[Deliver]) -> _FastDecoder:
    def decode(request_id: int, b: _Buffer, p: int, end: int) -> Deliver | None:
        if end - p < _DELIVER_HEAD.size + 4:
            return None
        seq, message_id, server_ts_ms, n = _DELIVER_HEAD.unpack_from(b, p)
        p += _DELIVER_HEAD.size
        if n + 4 > end - p:
            return None
        payload = bytes(b[p : p + n])
        p += n
        (m,) = _U32.unpack_from(b, p)
        p += 4
        if m > MAX_PART or end - p != m:
            return None
        return cls(request_id, seq, message_id, server_ts_ms, payload, bytes(b[p:end]))

    return decode


def _dec_ack(request_id: int, b: _Buffer, p: int, end: int) -> Ack | None:
    if end - p < 4:
        return None
    (n,) = _U32.unpack_from(b, p)
    if not 1 <= n <= MAX_ACK_SEQS or end - p - 4 != 8 * n:
        return None
    if n == 1:
        return Ack(request_id, _U64.unpack_from(b, p + 4))
    return Ack(request_id, struct.unpack_from(f">{n}Q", b, p + 4))


def _dec_ok(request_id: int, b: _Buffer, p: int, end: int) -> Ok | None:
    return Ok(request_id) if p == end else None


def _dec_u64(cls: type[Ping] | type[Pong]) -> _FastDecoder:
    def decode(request_id: int, b: _Buffer, p: int, end: int) -> Ping | Pong | None:
        if end - p != 8:
            return None
        return cls(request_id, _U64.unpack_from(b, p)[0])

    return decode


def _dec_error(request_id: int, b: _Buffer, p: int, end: int) -> Error | None:
    if end - p < _U16_U32.size:
        return None
    code, n = _U16_U32.unpack_from(b, p)
    p += _U16_U32.size
    if n > MAX_ERROR_MESSAGE or end - p != n:
        return None
    try:
        message = str(b[p:end], "utf-8")
    except UnicodeDecodeError:
        return None
    return Error(request_id, _ERROR_CODES.get(code, code), message)


def _enc_recipients(out: list[bytes], recipients: tuple[Recipient, ...]) -> int | None:
    """Append ``list<Recipient>`` to ``out``; return its size, or None if anything is off."""
    if len(recipients) > MAX_RECIPIENTS_WIRE:
        return None
    out.append(_U32.pack(len(recipients)))
    size = 4
    for rcpt in recipients:
        raw_uid = rcpt.user_id.encode("utf-8")
        part = rcpt.part
        n = len(part)
        if len(raw_uid) != USER_ID_LEN or raw_uid.translate(None, _USER_ID_CHARS) or n > MAX_PART:
            return None
        out.append(_RECIPIENT.pack(raw_uid, rcpt.device_id, n))
        out.append(part)
        size += _RECIPIENT_MIN_SIZE + n
    return size


def _enc_blob_ids(out: list[bytes], blob_ids: tuple[bytes, ...]) -> int | None:
    """Append ``list<u8[16]>``; return its size, or None if anything is off."""
    if len(blob_ids) > MAX_BLOB_REFS or any(len(b) != BLOB_ID_LEN for b in blob_ids):
        return None
    out.append(_U32.pack(len(blob_ids)))
    out.extend(blob_ids)
    return 4 + BLOB_ID_LEN * len(blob_ids)


def _enc_send(fr: Send | SendBlobs) -> bytes | None:
    message_id, payload = fr.message_id, fr.payload
    if len(message_id) != MESSAGE_ID_LEN:
        return None
    out = [b"", payload]
    size = _enc_recipients(out, fr.recipients)
    if size is None:
        return None
    if isinstance(fr, SendBlobs):
        more = _enc_blob_ids(out, fr.blob_ids)
        if more is None:
            return None
        size += more
    n = len(payload)
    length = MIN_FRAME_LENGTH + _ID_U32.size + n + size
    out[0] = _H_SEND.pack(length, fr.TYPE, fr.request_id, message_id, n)
    return b"".join(out) if length <= MAX_U32 else None


def _enc_conv_send(fr: ConvSend) -> bytes | None:
    message_id, conv_id, payload = fr.message_id, fr.conv_id, fr.payload
    if len(message_id) != MESSAGE_ID_LEN or len(conv_id) != CONV_ID_LEN:
        return None
    out = [b"", payload]
    size = _enc_recipients(out, fr.parts)
    more = _enc_blob_ids(out, fr.blob_ids)
    if size is None or more is None:
        return None
    n = len(payload)
    length = MIN_FRAME_LENGTH + _ID_ID_U32.size + n + size + more
    out[0] = _H_CONV_SEND.pack(length, fr.TYPE, fr.request_id, message_id, conv_id, n)
    return b"".join(out) if length <= MAX_U32 else None


def _enc_accepted(fr: Accepted) -> bytes | None:
    if len(fr.message_id) != MESSAGE_ID_LEN:
        return None
    return _H_ACCEPTED.pack(
        MIN_FRAME_LENGTH + _ACCEPTED_BODY.size,
        fr.TYPE,
        fr.request_id,
        fr.message_id,
        fr.server_ts_ms,
        int(fr.duplicate),
    )


def _enc_deliver(fr: Deliver) -> bytes | None:
    message_id, payload, part = fr.message_id, fr.payload, fr.part
    n, m = len(payload), len(part)
    if len(message_id) != MESSAGE_ID_LEN or m > MAX_PART:
        return None
    length = MIN_FRAME_LENGTH + _DELIVER_HEAD.size + n + 4 + m
    if length > MAX_U32:
        return None
    head = _H_DELIVER.pack(length, fr.TYPE, fr.request_id, fr.seq, message_id, fr.server_ts_ms, n)
    return b"".join((head, payload, _U32.pack(m), part))


def _enc_ack(fr: Ack) -> bytes | None:
    seqs = fr.seqs
    n = len(seqs)
    if not 1 <= n <= MAX_ACK_SEQS:
        return None
    head = _H_U32.pack(MIN_FRAME_LENGTH + 4 + 8 * n, fr.TYPE, fr.request_id, n)
    return head + struct.pack(f">{n}Q", *seqs)


def _enc_ok(fr: Ok) -> bytes | None:
    return _H_EMPTY.pack(MIN_FRAME_LENGTH, fr.TYPE, fr.request_id)


def _enc_u64(fr: Ping | Pong) -> bytes | None:
    return _H_U64.pack(MIN_FRAME_LENGTH + 8, fr.TYPE, fr.request_id, fr.opaque)


def _enc_error(fr: Error) -> bytes | None:
    message = fr.message.encode("utf-8")
    n = len(message)
    if n > MAX_ERROR_MESSAGE:
        return None
    return _H_ERROR.pack(MIN_FRAME_LENGTH + 6 + n, fr.TYPE, fr.request_id, fr.code, n) + message


_FAST_DECODE: dict[int, _FastDecoder] = {
    FrameType.SEND: _dec_send(Send),
    FrameType.SEND_URGENT: _dec_send(SendUrgent),
    FrameType.SEND_BLOBS: _dec_send_blobs,
    FrameType.CONV_SEND: _dec_conv_send(ConvSend),
    FrameType.CONV_SEND_URGENT: _dec_conv_send(ConvSendUrgent),
    FrameType.ACCEPTED: _dec_accepted,
    FrameType.DELIVER: _dec_deliver(Deliver),
    FrameType.DELIVER_URGENT: _dec_deliver(DeliverUrgent),
    FrameType.ACK: _dec_ack,
    FrameType.OK: _dec_ok,
    FrameType.PING: _dec_u64(Ping),
    FrameType.PONG: _dec_u64(Pong),
    FrameType.ERROR: _dec_error,
}
"""Fast decoders by type byte: ``(request_id, buffer, body start, body end)`` -> frame or None."""

_FAST_ENCODE: dict[type[Frame], _FastEncoder] = {
    Send: _enc_send,
    SendUrgent: _enc_send,
    SendBlobs: _enc_send,
    ConvSend: _enc_conv_send,
    ConvSendUrgent: _enc_conv_send,
    Accepted: _enc_accepted,
    Deliver: _enc_deliver,
    DeliverUrgent: _enc_deliver,
    Ack: _enc_ack,
    Ok: _enc_ok,
    Ping: _enc_u64,
    Pong: _enc_u64,
    Error: _enc_error,
}
"""Fast encoders by frame class: the whole frame with its length prefix, or None."""

# What a fast function may raise on input the generic code then rejects with its own error.
_FAST_FAILURES = (struct.error, TypeError, ValueError, OverflowError, AttributeError)


def _encode_generic(frame: Frame) -> bytes:
    if not 0 <= frame.request_id <= MAX_U32:
        raise ValueError(f"request_id out of range: {frame.request_id}")
    w = Writer()
    frame._write(w)
    length = MIN_FRAME_LENGTH + len(w)
    if length > MAX_U32:
        raise ValueError(f"frame of {length} bytes cannot be encoded")
    return w.getvalue(_HEADER.pack(length, frame.TYPE, frame.request_id))


def _decode_generic(
    frame_type: int, request_id: int, body: bytes | bytearray | memoryview
) -> Frame:
    cls = FRAME_CLASSES.get(frame_type)
    if cls is None:
        raise ProtocolError(ErrorCode.UNKNOWN_FRAME_TYPE, f"unknown frame type 0x{frame_type:02x}")
    r = Reader(body)
    try:
        frame = cls._read(request_id, r)
        r.finish()
    except ProtocolError as exc:
        name = FrameType(frame_type).name
        raise ProtocolError(exc.code, f"{name}: {exc.message}") from None
    return frame


def encode_frame(frame: Frame) -> bytes:
    """Encode a whole frame, including its u32 length prefix.

    Raises :class:`ValueError` if a field is out of range or of the wrong size.
    """
    fast = _FAST_ENCODE.get(type(frame))
    if fast is not None:
        try:
            data = fast(frame)
        except _FAST_FAILURES:
            data = None
        if data is not None:
            return data
    return _encode_generic(frame)


def decode_frame(frame_type: int, request_id: int, body: bytes | bytearray | memoryview) -> Frame:
    """Decode one frame body, given the type byte and request_id from the frame header.

    Raises :class:`ProtocolError`: UNKNOWN_FRAME_TYPE for a type not in protocol v1,
    MALFORMED if the body does not parse exactly.
    """
    fast = _FAST_DECODE.get(frame_type)
    if fast is not None:
        frame = fast(request_id, body, 0, len(body))
        if frame is not None:
            return frame
    return _decode_generic(frame_type, request_id, body)


class FrameDecoder:
    """Splits a byte stream into frames, incrementally.

    :meth:`feed` whatever arrived; call :meth:`next_frame` until it returns None. Errors are
    detected as early as possible: a length prefix above ``max_frame_bytes`` raises
    FRAME_TOO_LARGE as soon as its 4 bytes are in, before any of the body is buffered; an
    unknown type byte raises UNKNOWN_FRAME_TYPE as soon as it arrives. After an error the
    decoder is dead: it discards further input and raises the same error again.

    Received bytes go into one ``bytearray``; decoded frames advance an offset, and the
    consumed prefix is dropped once per :meth:`feed`, so many small frames cost linear time.
    Frame bodies are parsed in place through a ``memoryview``.
    """

    __slots__ = ("_buf", "_error", "_max", "_pos")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max = _check_max_frame_bytes(max_frame_bytes)
        self._error: ProtocolError | None = None

    @property
    def max_frame_bytes(self) -> int:
        """The largest ``length`` prefix accepted (type + request_id + body)."""
        return self._max

    @max_frame_bytes.setter
    def max_frame_bytes(self, value: int) -> None:
        self._max = _check_max_frame_bytes(value)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames (a partial frame at EOF)."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes."""
        if self._error is not None:
            return
        if self._pos:
            try:
                del self._buf[: self._pos]  # cheap: CPython just moves the buffer start
            except BufferError:  # defensive: some view of the buffer is still alive
                self._buf = self._buf[self._pos :]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None if more data is needed.

        Raises :class:`ProtocolError` (FRAME_TOO_LARGE, MALFORMED, UNKNOWN_FRAME_TYPE).
        """
        if self._error is not None:
            raise ProtocolError(self._error.code, self._error.message)
        try:
            return self._next_frame()
        except ProtocolError as exc:
            self._error = exc
            raise

    def _next_frame(self) -> Frame | None:
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        if available < 4:
            return None
        (length,) = _LENGTH.unpack_from(buf, pos)
        if length > self._max:
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"frame of {length} bytes exceeds the limit of {self._max} bytes",
            )
        if length < MIN_FRAME_LENGTH:
            raise ProtocolError(ErrorCode.MALFORMED, f"frame length {length} is below 5")
        if available < 5:
            return None
        frame_type = buf[pos + 4]
        cls = FRAME_CLASSES.get(frame_type)
        if cls is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_FRAME_TYPE, f"unknown frame type 0x{frame_type:02x}"
            )
        end = pos + 4 + length
        if len(buf) < end:
            return None
        (request_id,) = _U32.unpack_from(buf, pos + 5)
        self._pos = end
        # Parse the body in place. Every view is released before feed() may resize the
        # buffer (a bytearray cannot be resized while a view of it exists); the fast decoders
        # only make short-lived slices of the view, copied into bytes at once.
        with memoryview(buf) as view:
            fast = _FAST_DECODE.get(frame_type)
            if fast is not None:
                frame = fast(request_id, view, pos + _HEADER_LEN, end)
                if frame is not None:
                    return frame
            with view[pos + _HEADER_LEN : end] as body:
                return _decode_generic(frame_type, request_id, body)


def _check_max_frame_bytes(value: int) -> int:
    if not MIN_FRAME_LENGTH <= value <= MAX_U32:
        raise ValueError(f"max_frame_bytes must be between 5 and {MAX_U32}, got {value}")
    return value
