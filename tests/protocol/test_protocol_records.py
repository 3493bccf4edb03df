"""Strict parsing of key-directory records (what the server accepts in KEY_PUT)."""

from __future__ import annotations

import pytest

from momedod.protocol import records as rec
from momedod.protocol.encoding import label
from momedod.protocol.errors import ErrorCode, ProtocolError

UID = "M8N22HTR"
FP = b"\x0f" * 32
PK = b"\x01" * 32
SIG = [(rec.SIGNER_UIK, FP, b"\x00" * 64)]
DK_SIG = [(rec.SIGNER_DK, FP, b"\x00" * 64)]


def identity(suite: int = 2, body_suite: int = 2, pk: bytes = PK) -> bytes:
    body = rec.identity_body(UID, body_suite, pk, b"\x02" * 40, 1000, bytes(32))
    return rec.build_record(suite, rec.RECORD_IDENTITY, body, SIG)


def device_list(*entries: rec.DeviceEntry, version: int = 4) -> bytes:
    body = rec.device_list_body(UID, version, b"\x03" * 32, 2000, entries)
    return rec.build_record(2, rec.RECORD_DEVICE_LIST, body, SIG)


def entry(device_id: int = 1, flags: int = 1, pub: bytes = PK) -> rec.DeviceEntry:
    return rec.DeviceEntry(device_id, pub, (2, 3), flags, 1500)


def prekey(
    kind: int = rec.PREKEY_SPK,
    suite: int = 2,
    body_suite: int = 2,
    device_id: int = 3,
    pub: bytes = b"k" * 1216,
) -> bytes:
    body = rec.prekey_body(UID, device_id, body_suite, kind, 77, pub, 9999)
    return rec.build_record(suite, rec.RECORD_PREKEY, body, DK_SIG)


def assert_invalid(data: bytes, fragment: str = "") -> None:
    with pytest.raises(ProtocolError) as info:
        rec.parse_record(data)
    assert info.value.code is ErrorCode.RECORD_INVALID
    assert fragment in info.value.message


def test_identity_record() -> None:
    assert rec.parse_record(identity()) == rec.RecordInfo(rec.RECORD_IDENTITY, 2, UID)


def test_device_list_record() -> None:
    info = rec.parse_record(device_list(entry(1), entry(2, flags=0), version=9))
    assert info == rec.RecordInfo(rec.RECORD_DEVICE_LIST, 2, UID, version=9)


def test_empty_device_list_is_valid() -> None:
    assert rec.parse_record(device_list()).version == 4


@pytest.mark.parametrize("kind", [rec.PREKEY_SPK, rec.PREKEY_OTPK])
def test_prekey_records(kind: int) -> None:
    info = rec.parse_record(prekey(kind=kind))
    assert info == rec.RecordInfo(
        rec.RECORD_PREKEY, 2, UID, device_id=3, prekey_kind=kind, key_id=77
    )


def test_every_truncation_is_rejected() -> None:
    for good in (identity(), device_list(entry()), prekey()):
        for n in range(len(good)):
            assert_invalid(good[:n])


def test_trailing_bytes_are_rejected() -> None:
    assert_invalid(prekey() + b"\x00", "trailing")


def test_header_checks() -> None:
    good = prekey()
    assert_invalid(b"XX" + good[2:], "magic")
    assert_invalid(good[:2] + b"\x02" + good[3:], "version")
    assert_invalid(good[:3] + b"\x01" + good[4:], "0x01")
    assert_invalid(prekey(suite=0x0104, body_suite=0x0104), "suite")


def test_unknown_record_type_is_rejected() -> None:
    body = rec.prekey_body(UID, 3, 2, 1, 77, b"k", 9)
    for record_type in (0, 4, 5, 0xFFFF):
        assert_invalid(rec.build_record(2, record_type, body, DK_SIG), "record_type")


def test_signature_entries() -> None:
    body = rec.prekey_body(UID, 3, 2, 1, 77, b"k", 9)
    assert_invalid(rec.build_record(2, rec.RECORD_PREKEY, body, []), "no signature")
    for kind in (0, 5):
        assert_invalid(rec.build_record(2, rec.RECORD_PREKEY, body, [(kind, FP, b"s")]), "signer")
    several = [(1, FP, b"a"), (2, FP, b""), (3, FP, b"c" * 3309), (4, FP, b"d")]
    assert rec.parse_record(rec.build_record(2, rec.RECORD_PREKEY, body, several)).key_id == 77


def test_body_must_be_consumed_exactly() -> None:
    body = rec.prekey_body(UID, 3, 2, 1, 77, b"k", 9)
    assert_invalid(rec.build_record(2, rec.RECORD_PREKEY, body + b"\x00", DK_SIG), "trailing")
    assert_invalid(rec.build_record(2, rec.RECORD_PREKEY, body[:-1], DK_SIG), "truncated")


def test_identity_body_checks() -> None:
    assert_invalid(identity(body_suite=3), "suite")
    assert_invalid(identity(pk=PK + b"\x00"), "ed25519_pk")
    bad_uid = rec.build_record(
        2,
        rec.RECORD_IDENTITY,
        b"M8N22HTU" + rec.identity_body(UID, 2, PK, b"", 1, bytes(32))[8:],
        SIG,
    )
    assert_invalid(bad_uid, "user_id")


def test_device_list_body_checks() -> None:
    assert_invalid(device_list(entry(1), entry(1)), "twice")
    assert_invalid(device_list(entry(0)), "device_id 0")
    assert_invalid(device_list(entry(flags=2)), "flags")
    assert_invalid(device_list(entry(pub=PK[:31])), "dk_pub")


def test_prekey_body_checks() -> None:
    assert_invalid(prekey(kind=0), "kind")
    assert_invalid(prekey(kind=3), "kind")
    assert_invalid(prekey(body_suite=3), "suite")
    assert_invalid(prekey(device_id=0), "device_id")
    assert_invalid(prekey(pub=b""), "empty")


def test_sign_message_layout() -> None:
    body = b"body"
    msg = rec.record_sign_message(2, rec.RECORD_PREKEY, rec.SIGNER_DK, body)
    assert (
        msg == label("rec") + rec.record_header(2) + b"\x00\x03" + b"\x02" + b"\x00\x00\x00\x04body"
    )
    assert rec.record_header(2) == b"MD\x01\x10\x00\x02"
