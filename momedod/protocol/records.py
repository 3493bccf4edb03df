"""Key-directory records (E2E.md section 4.3): strict parsing for the server, and builders.

The server stores records as the bytes it received and checks only their format and owner;
signatures are the clients' business. Layout::

    SignedRecord = Header | u16 record_type | bytes body | list<SigEntry>
    Header       = u16 magic 0x4D44 ("MD") | u8 version = 1 | u8 type = 0x10 | u16 suite
    SigEntry     = u8 signer_kind (1 UIK, 2 DK, 3 SERVER, 4 ORG) | u8[32] signer_fp | bytes sig

    IdentityRec (1) = u8[8] user_id | UIKPub | u64 created_ms | u8[32] prev_fp
      UIKPub        = u16 suite | bytes ed25519_pk (32) | bytes mldsa_pk
    DeviceList (2)  = u8[8] user_id | u64 version | u8[32] prev_hash | u64 issued_ms
                      | list<DeviceEntry>
      DeviceEntry   = u32 device_id | bytes dk_pub (32) | list<u16> suites | u8 flags
                      | u64 added_ms
    Prekey (3)      = u8[8] user_id | u32 device_id | u16 suite | u8 kind (1 SPK, 2 OTPK)
                      | u32 key_id | bytes pub | u64 not_after_ms

Beyond the layout, :func:`parse_record` requires: a supported suite, a body suite (UIKPub,
Prekey) equal to the header suite, at least one signature, signer kinds 1-4, Ed25519 keys of
32 bytes, device ids >= 1 and unique within a device list, only known flag bits (bit 0,
manager), and a non-empty prekey. Anything else raises ProtocolError(RECORD_INVALID).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .encoding import MAX_U32, Reader, Writer, label
from .errors import ErrorCode, ProtocolError

__all__ = [
    "DEVICE_FLAG_MANAGER",
    "PREKEY_OTPK",
    "PREKEY_SPK",
    "RECORD_DEVICE_LIST",
    "RECORD_ENVELOPE_TYPE",
    "RECORD_IDENTITY",
    "RECORD_MAGIC",
    "RECORD_PREKEY",
    "SIGNER_DK",
    "SIGNER_ORG",
    "SIGNER_SERVER",
    "SIGNER_UIK",
    "SUPPORTED_SUITES",
    "DeviceEntry",
    "RecordInfo",
    "build_record",
    "device_list_body",
    "identity_body",
    "parse_record",
    "prekey_body",
    "record_header",
    "record_sign_message",
]

RECORD_MAGIC = 0x4D44
"""The first two bytes of every momedo envelope, ASCII "MD"."""
RECORD_VERSION = 1
"""Header version byte."""
RECORD_ENVELOPE_TYPE = 0x10
"""Header type byte of a SignedRecord."""

RECORD_IDENTITY = 1
"""record_type of an IdentityRec (owner: the user)."""
RECORD_DEVICE_LIST = 2
"""record_type of a DeviceList (owner: the user)."""
RECORD_PREKEY = 3
"""record_type of a Prekey (owner: the user's device)."""

PREKEY_SPK = 1
"""Prekey kind: signed prekey (one current per device and suite)."""
PREKEY_OTPK = 2
"""Prekey kind: one-time prekey (a pool, each handed out once)."""

SIGNER_UIK = 1
"""SigEntry signer_kind: user identity key."""
SIGNER_DK = 2
"""SigEntry signer_kind: device key."""
SIGNER_SERVER = 3
"""SigEntry signer_kind: server key."""
SIGNER_ORG = 4
"""SigEntry signer_kind: organisation key."""

DEVICE_FLAG_MANAGER = 0x01
"""DeviceEntry flag bit 0: a manager device (holds the UIK)."""

SUPPORTED_SUITES = frozenset({0x0001, 0x0002, 0x0003})
"""Suites accepted in record headers (0x0001 is for tests; clients refuse it in production)."""

_FP_LEN = 32
_ED25519_PUB_LEN = 32
_SIG_ENTRY_MIN = 1 + _FP_LEN + 4
_DEVICE_ENTRY_MIN = 4 + 4 + 4 + 1 + 8
_REC_LABEL = label("rec")


@dataclass(frozen=True)
class RecordInfo:
    """What the server needs to know about a valid record to check ownership and store it.

    ``device_id`` and the prekey fields are set for Prekey records only, ``version`` for
    DeviceList records only.
    """

    record_type: int
    suite: int
    user_id: str
    device_id: int | None = None
    version: int | None = None
    prekey_kind: int | None = None
    key_id: int | None = None


@dataclass(frozen=True)
class DeviceEntry:
    """One device in a DeviceList body."""

    device_id: int
    dk_pub: bytes
    suites: tuple[int, ...]
    flags: int
    added_ms: int


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.RECORD_INVALID, message)


def parse_record(data: bytes) -> RecordInfo:
    """Parse a SignedRecord strictly; raise ProtocolError(RECORD_INVALID) if it is not valid."""
    try:
        r = Reader(data)
        if r.u16("magic") != RECORD_MAGIC:
            raise _invalid("not a momedo record (bad magic)")
        if (version := r.u8("version")) != RECORD_VERSION:
            raise _invalid(f"unsupported record header version {version}")
        if (envelope := r.u8("type")) != RECORD_ENVELOPE_TYPE:
            raise _invalid(f"header type 0x{envelope:02x} is not a record (0x10)")
        suite = r.u16("suite")
        if suite not in SUPPORTED_SUITES:
            raise _invalid(f"unsupported suite 0x{suite:04x}")
        record_type = r.u16("record_type")
        body = r.bytes_(MAX_U32, "body")
        n = r.count(MAX_U32, _SIG_ENTRY_MIN, "signatures")
        if n == 0:
            raise _invalid("record has no signature")
        for _ in range(n):
            kind = r.u8("signer_kind")
            if not SIGNER_UIK <= kind <= SIGNER_ORG:
                raise _invalid(f"unknown signer_kind {kind}")
            r.fixed(_FP_LEN, "signer_fp")
            r.bytes_(MAX_U32, "sig")
        r.finish("record")
        parser = _BODY_PARSERS.get(record_type)
        if parser is None:
            raise _invalid(f"unsupported record_type {record_type}")
        body_reader = Reader(body)
        info = parser(record_type, suite, body_reader)
        body_reader.finish("body")
    except ProtocolError as exc:
        if exc.code is ErrorCode.RECORD_INVALID:
            raise
        raise _invalid(exc.message) from None
    return info


def _read_key(r: Reader, what: str) -> bytes:
    key = r.bytes_(_ED25519_PUB_LEN, what)
    if len(key) != _ED25519_PUB_LEN:
        raise _invalid(f"{what}: must be {_ED25519_PUB_LEN} bytes, got {len(key)}")
    return key


def _check_body_suite(header_suite: int, body_suite: int) -> None:
    if body_suite != header_suite:
        raise _invalid(f"body suite 0x{body_suite:04x} differs from header suite")


def _parse_identity(record_type: int, suite: int, r: Reader) -> RecordInfo:
    user_id = r.user_id()
    _check_body_suite(suite, r.u16("uik suite"))
    _read_key(r, "ed25519_pk")
    r.bytes_(MAX_U32, "mldsa_pk")
    r.u64("created_ms")
    r.fixed(_FP_LEN, "prev_fp")
    return RecordInfo(record_type, suite, user_id)


def _parse_device_list(record_type: int, suite: int, r: Reader) -> RecordInfo:
    user_id = r.user_id()
    version = r.u64("version")
    r.fixed(_FP_LEN, "prev_hash")
    r.u64("issued_ms")
    seen: set[int] = set()
    for _ in range(r.count(MAX_U32, _DEVICE_ENTRY_MIN, "devices")):
        device_id = r.u32("device_id")
        if device_id == 0:
            raise _invalid("device_id 0 in device list")
        if device_id in seen:
            raise _invalid(f"device {device_id} listed twice")
        seen.add(device_id)
        _read_key(r, "dk_pub")
        r.u16_list(MAX_U32, "suites")
        flags = r.u8("flags")
        if flags & ~DEVICE_FLAG_MANAGER:
            raise _invalid(f"unknown device flags 0x{flags:02x}")
        r.u64("added_ms")
    return RecordInfo(record_type, suite, user_id, version=version)


def _parse_prekey(record_type: int, suite: int, r: Reader) -> RecordInfo:
    user_id = r.user_id()
    device_id = r.u32("device_id")
    if device_id == 0:
        raise _invalid("device_id 0 in prekey")
    _check_body_suite(suite, r.u16("suite"))
    kind = r.u8("kind")
    if kind not in (PREKEY_SPK, PREKEY_OTPK):
        raise _invalid(f"unknown prekey kind {kind}")
    key_id = r.u32("key_id")
    if not r.bytes_(MAX_U32, "pub"):
        raise _invalid("pub: empty prekey")
    r.u64("not_after_ms")
    return RecordInfo(
        record_type, suite, user_id, device_id=device_id, prekey_kind=kind, key_id=key_id
    )


_BODY_PARSERS = {
    RECORD_IDENTITY: _parse_identity,
    RECORD_DEVICE_LIST: _parse_device_list,
    RECORD_PREKEY: _parse_prekey,
}


# -- builders ----------------------------------------------------------------------------


def record_header(suite: int) -> bytes:
    """Return the 6-byte record Header for ``suite``."""
    return (
        Writer().u16(RECORD_MAGIC).u8(RECORD_VERSION).u8(RECORD_ENVELOPE_TYPE).u16(suite).getvalue()
    )


def record_sign_message(suite: int, record_type: int, signer_kind: int, body: bytes) -> bytes:
    """Return what a signer signs: ``Label("rec") | Header | u16 record_type | u8 signer_kind
    | bytes body``."""
    w = Writer().raw(_REC_LABEL).raw(record_header(suite)).u16(record_type).u8(signer_kind)
    return w.bytes_(body).getvalue()


def build_record(
    suite: int, record_type: int, body: bytes, sigs: Sequence[tuple[int, bytes, bytes]]
) -> bytes:
    """Assemble a SignedRecord from a body and ``(signer_kind, signer_fp, sig)`` entries.

    Nothing is checked beyond field sizes, so tests can build invalid records too.
    """
    w = Writer().raw(record_header(suite)).u16(record_type).bytes_(body)
    w.u32(len(sigs))
    for kind, fp, sig in sigs:
        w.u8(kind).fixed(fp, _FP_LEN).bytes_(sig)
    return w.getvalue()


def identity_body(
    user_id: str,
    suite: int,
    ed25519_pk: bytes,
    mldsa_pk: bytes,
    created_ms: int,
    prev_fp: bytes,
) -> bytes:
    """Return an IdentityRec body (``prev_fp`` is all zero for the first record)."""
    w = Writer().user_id(user_id).u16(suite).bytes_(ed25519_pk).bytes_(mldsa_pk)
    return w.u64(created_ms).fixed(prev_fp, _FP_LEN).getvalue()


def device_list_body(
    user_id: str,
    version: int,
    prev_hash: bytes,
    issued_ms: int,
    devices: Sequence[DeviceEntry],
) -> bytes:
    """Return a DeviceList body."""
    w = Writer().user_id(user_id).u64(version).fixed(prev_hash, _FP_LEN).u64(issued_ms)
    w.u32(len(devices))
    for d in devices:
        w.u32(d.device_id).bytes_(d.dk_pub).u16_list(d.suites).u8(d.flags).u64(d.added_ms)
    return w.getvalue()


def prekey_body(
    user_id: str,
    device_id: int,
    suite: int,
    kind: int,
    key_id: int,
    pub: bytes,
    not_after_ms: int,
) -> bytes:
    """Return a Prekey body."""
    w = Writer().user_id(user_id).u32(device_id).u16(suite).u8(kind).u32(key_id)
    return w.bytes_(pub).u64(not_after_ms).getvalue()
