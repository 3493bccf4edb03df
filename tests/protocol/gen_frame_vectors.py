"""Generate docs/test-vectors/frames.json, the wire protocol test vectors.

    python tests/protocol/gen_frame_vectors.py > docs/test-vectors/frames.json

Everything is deterministic (fixed seeds, no clock), so the output only changes when the
protocol does; tests/protocol/test_protocol_vectors.py checks that the committed file equals
this script's output. The JSON conversion helpers are shared with that test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import struct
import sys
from enum import IntEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from momedod.protocol import auth, invite, records, userid
from momedod.protocol.errors import ErrorCode
from momedod.protocol.frames import (
    FRAME_CLASSES,
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
    ConvMember,
    ConvPut,
    Convs,
    ConvSend,
    ConvSendUrgent,
    ConvSummary,
    Deliver,
    DeliverUrgent,
    Drained,
    Enroll,
    Error,
    Frame,
    FrameType,
    Hello,
    KeyClaim,
    KeyGet,
    KeyPut,
    Keys,
    LinkCode,
    LinkInvite,
    Ok,
    Ping,
    Pong,
    Prekey,
    PushClear,
    PushDropped,
    PushSet,
    QuietSet,
    Recipient,
    Send,
    SendBlobs,
    SendUrgent,
    Welcome,
    encode_frame,
)

# Fixed inputs. The device seed is the secret key of RFC 8032 section 7.1, test 1.
DEVICE_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
NONCE = bytes(range(32))
CERT_DER = b"momedo test certificate (not real DER)"
CERT_FP = hashlib.sha256(CERT_DER).digest()
USER_ID = "M8N22HTR"
INVITE_CODE = "7Z2QH4KMW9XRB3TNC8VD"
MESSAGE_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
CONV_ID = bytes.fromhex("c0a1c0a1c0a1c0a1c0a1c0a1c0a1c0a1")
CONV_ID_2 = bytes.fromhex("0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c")
BLOB_ID = bytes.fromhex("b10bb10bb10bb10bb10bb10bb10bb10b")
BLOB_ID_2 = bytes.fromhex("b20bb20bb20bb20bb20bb20bb20bb20b")
BLOB_BYTES = bytes(range(40))  # a 40-byte "ciphertext" uploaded in two chunks
ORG_FP = hashlib.sha256(b"momedo test organisation key").digest()
CERT_FP_2 = hashlib.sha256(b"momedo test certificate of a second node").digest()

_BYTES_FIELDS = frozenset(
    {
        "nonce",
        "transport_pub",
        "signature",
        "message_id",
        "payload",
        "part",
        "record",
        "conv_id",
        "roster_record",
        "blob_id",
        "sha256",
        "data",
    }
)
_BYTES_LIST_FIELDS = frozenset({"records", "rosters", "org_keys", "blob_ids"})
_RECIPIENT_FIELDS = frozenset({"recipients", "parts"})


# -- JSON conversion (also used by the tests) ---------------------------------------------


def frame_to_json(frame: Frame) -> dict[str, Any]:
    """Return the JSON form of a frame: its type name and fields, bytes as hex."""
    out: dict[str, Any] = {"type": FrameType(frame.TYPE).name}
    for field in dataclasses.fields(frame):
        value = getattr(frame, field.name)
        if isinstance(value, bytes):
            value = value.hex()
        elif field.name in _RECIPIENT_FIELDS:
            value = [
                {"user_id": r.user_id, "device_id": r.device_id, "part": r.part.hex()}
                for r in value
            ]
        elif field.name in _BYTES_LIST_FIELDS:
            value = [item.hex() for item in value]
        elif field.name == "members":
            value = [{"user_id": m.user_id, "role": m.role} for m in value]
        elif field.name == "convs":
            value = [
                {"conv_id": c.conv_id.hex(), "kind": c.kind, "managed": c.managed, "epoch": c.epoch}
                for c in value
            ]
        elif field.name == "seqs":
            value = list(value)
        elif isinstance(value, IntEnum):
            value = int(value)
        out[field.name] = value
    return out


def frame_from_json(data: dict[str, Any]) -> Frame:
    """Inverse of :func:`frame_to_json`."""
    cls = FRAME_CLASSES[FrameType[data["type"]]]
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        value = data[field.name]
        if field.name in _BYTES_FIELDS:
            value = bytes.fromhex(value)
        elif field.name in _RECIPIENT_FIELDS:
            value = tuple(
                Recipient(r["user_id"], r["device_id"], bytes.fromhex(r["part"])) for r in value
            )
        elif field.name in _BYTES_LIST_FIELDS:
            value = tuple(bytes.fromhex(item) for item in value)
        elif field.name == "members":
            value = tuple(ConvMember(m["user_id"], m["role"]) for m in value)
        elif field.name == "convs":
            value = tuple(
                ConvSummary(bytes.fromhex(c["conv_id"]), c["kind"], c["managed"], c["epoch"])
                for c in value
            )
        elif field.name == "seqs":
            value = tuple(value)
        kwargs[field.name] = value
    return cls(**kwargs)


def raw_frame(frame_type: int, request_id: int, body: bytes) -> bytes:
    """Build a frame by hand (for must-fail cases the encoder refuses to produce)."""
    return struct.pack(">IBI", 5 + len(body), frame_type, request_id) + body


def _bytes(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


# -- the vectors -------------------------------------------------------------------------


def _device_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(DEVICE_SEED)


def _transport_pub() -> bytes:
    return _device_key().public_key().public_bytes_raw()


def _auth_signature() -> bytes:
    return _device_key().sign(auth.auth_message(NONCE, CERT_FP, USER_ID, 1))


def _enroll_signature() -> bytes:
    message = auth.enroll_message(NONCE, CERT_FP, INVITE_CODE, _transport_pub())
    return _device_key().sign(message)


def _example_records() -> list[tuple[str, bytes]]:
    fp = hashlib.sha256(b"signer").digest()
    sig = bytes(64)
    identity = records.build_record(
        2,
        records.RECORD_IDENTITY,
        records.identity_body(
            USER_ID, 2, bytes(range(32)), b"\x5a" * 8, 1_700_000_000_000, bytes(32)
        ),
        [(records.SIGNER_UIK, fp, sig)],
    )
    device_list = records.build_record(
        2,
        records.RECORD_DEVICE_LIST,
        records.device_list_body(
            USER_ID,
            1,
            bytes(32),
            1_700_000_000_000,
            [
                records.DeviceEntry(
                    1, _transport_pub(), (2, 3), records.DEVICE_FLAG_MANAGER, 1_700_000_000_000
                )
            ],
        ),
        [(records.SIGNER_UIK, fp, sig)],
    )
    spk = records.build_record(
        2,
        records.RECORD_PREKEY,
        records.prekey_body(USER_ID, 1, 2, records.PREKEY_SPK, 7, b"\xa5" * 16, 1_703_000_000_000),
        [(records.SIGNER_DK, fp, sig)],
    )
    otpk = records.build_record(
        2,
        records.RECORD_PREKEY,
        records.prekey_body(
            USER_ID, 1, 2, records.PREKEY_OTPK, 1001, b"\x3c" * 16, 1_703_000_000_000
        ),
        [(records.SIGNER_DK, fp, sig)],
    )
    return [("identity", identity), ("device_list", device_list), ("spk", spk), ("otpk", otpk)]


def _addr(user_id: str, device_id: int) -> bytes:
    return user_id.encode("ascii") + struct.pack(">I", device_id)


def example_roster_record() -> bytes:
    """An epoch-1 RosterRecord (docs/E2E.md) of a user group, signed by device M8N22HTR/1.

    Built by hand from the documented layout; the signature is a real Ed25519 signature by
    DEVICE_SEED (standing in for the device key) over Label("roster") | Header | bytes
    roster | u8 signer_kind | Addr signer.
    """
    members = [("49K49J00", 0), (USER_ID, 1)]  # strictly ascending user_id
    roster = (
        CONV_ID
        + struct.pack(">Q", 1)  # epoch
        + bytes(32)  # prev_hash: zero for epoch 1
        + struct.pack(">BBH", 1, 1, 2)  # kind GROUP, mode CHAINS, min_suite 2
        + struct.pack(">I", len(members))
        + b"".join(uid.encode("ascii") + bytes([role]) for uid, role in members)
        + _bytes("Bauamt Süd".encode())
    )
    header = struct.pack(">HBBH", 0x4D44, 1, 0x12, 0x0002)
    signed = header + _bytes(roster) + b"\x02" + _addr(USER_ID, 1)
    sig = _device_key().sign(b"momedo/v1/roster\x00" + signed)
    return signed + _bytes(sig)


def conv_event(what: int, conv_id: bytes, epoch: int) -> bytes:
    """A server ConvEvent payload: Header(type 0x20 EVENT, suite 0) | what | conv_id | epoch."""
    return struct.pack(">HBBHB", 0x4D44, 1, 0x20, 0, what) + conv_id + struct.pack(">Q", epoch)


def frame_vectors() -> list[tuple[str, Frame]]:
    """Every frame type at least once, with the interesting variants."""
    recs = dict(_example_records())
    return [
        ("hello", Hello(1, 1, 1, "momedo-cli/0.1")),
        ("hello_empty_software", Hello(1, 1, 3, "")),
        (
            "welcome",
            Welcome(1, 1, "Rathaus Musterstadt", NONCE, 1_048_576, 300_000, 1000, 256),
        ),
        ("enroll", Enroll(2, INVITE_CODE, _transport_pub(), "Anna's phone", _enroll_signature())),
        ("auth", Auth(2, USER_ID, 1, _auth_signature())),
        ("auth_ok", AuthOk(2, USER_ID, 1, 1_700_000_000_123)),
        ("error_fatal", Error(0, ErrorCode.AUTH_FAILED, "authentication failed")),
        ("error_request", Error(9, ErrorCode.UNKNOWN_RECIPIENT, "unknown recipient M8N2-2HTR/3")),
        ("error_utf8_message", Error(9, ErrorCode.BAD_REQUEST, "Empfänger doppelt")),
        ("error_unknown_code", Error(9, 50, "")),
        ("ok", Ok(5)),
        ("ping_from_client", Ping(6, 0x0102030405060708)),
        ("ping_from_server", Ping(0, 42)),
        ("pong_to_client", Pong(6, 0x0102030405060708)),
        ("pong_to_server", Pong(0, 42)),
        (
            "send_one_recipient",
            Send(7, MESSAGE_ID, b"sealed payload", (Recipient(USER_ID, 1, b"\x01\x02"),)),
        ),
        (
            "send_two_recipients",
            Send(
                8,
                MESSAGE_ID,
                b"\xc0\xff\xee",
                (Recipient(USER_ID, 1, b""), Recipient("49K49J00", 2, b"wrap")),
            ),
        ),
        ("send_no_recipients", Send(9, MESSAGE_ID, b"", ())),
        ("accepted", Accepted(7, MESSAGE_ID, 1_700_000_000_456, False)),
        ("accepted_duplicate", Accepted(7, MESSAGE_ID, 1_700_000_000_456, True)),
        ("deliver", Deliver(0, 17, MESSAGE_ID, 1_700_000_000_456, b"sealed payload", b"\x01\x02")),
        ("deliver_empty_part", Deliver(0, 18, MESSAGE_ID, 1_700_000_000_789, b"x", b"")),
        ("ack_one", Ack(10, (17,))),
        ("ack_three", Ack(11, (17, 18, 2**64 - 1))),
        ("drained", Drained(0, 18)),
        ("drained_empty_mailbox", Drained(0, 0)),
        ("key_put", KeyPut(12, recs["spk"])),
        ("key_get", KeyGet(13, USER_ID)),
        ("keys", Keys(13, USER_ID, (recs["identity"], recs["device_list"], recs["spk"]))),
        ("keys_none", Keys(13, "49K49J00", ())),
        ("key_claim", KeyClaim(14, USER_ID, 1, 2)),
        ("prekey", Prekey(14, recs["otpk"])),
        ("prekey_none_left", Prekey(14, b"")),
        ("link_invite", LinkInvite(15, 600)),
        ("link_code", LinkCode(15, INVITE_CODE, 1_764_000_600_000)),
        (
            "conv_send",
            ConvSend(
                16,
                MESSAGE_ID,
                CONV_ID,
                b"sealed group payload",
                (Recipient("49K49J00", 2, b"chain dist"),),
                (BLOB_ID,),
            ),
        ),
        ("conv_send_no_parts_no_blobs", ConvSend(16, MESSAGE_ID, CONV_ID, b"chain msg", (), ())),
        (
            "send_blobs",
            SendBlobs(
                17,
                MESSAGE_ID,
                b"sealed payload",
                (Recipient(USER_ID, 1, b"\x01\x02"),),
                (BLOB_ID, BLOB_ID_2),
            ),
        ),
        ("conv_put", ConvPut(18, CONV_ID, example_roster_record())),
        ("conv_get", ConvGet(19, CONV_ID, 0)),
        (
            "conv_info",
            ConvInfo(
                19,
                CONV_ID,
                1,
                False,
                1,
                (ConvMember("49K49J00", 0), ConvMember(USER_ID, 1)),
                (example_roster_record(),),
                (),
            ),
        ),
        ("conv_get_since_epoch", ConvGet(20, CONV_ID_2, 7)),
        (
            "conv_info_managed_channel_up_to_date",
            ConvInfo(
                20,
                CONV_ID_2,
                2,
                True,
                7,
                (ConvMember("49K49J00", 1), ConvMember(USER_ID, 0)),
                (),
                (b"placeholder: an OrgKeyRecord",),
            ),
        ),
        ("conv_list", ConvList(21)),
        (
            "convs",
            Convs(21, (ConvSummary(CONV_ID, 1, False, 1), ConvSummary(CONV_ID_2, 2, True, 7))),
        ),
        ("convs_none", Convs(21, ())),
        ("blob_start", BlobStart(22, BLOB_ID, len(BLOB_BYTES))),
        ("blob_status_new", BlobStatus(22, BLOB_ID, len(BLOB_BYTES), 0, False)),
        ("blob_chunk", BlobChunk(23, BLOB_ID, 0, BLOB_BYTES[:24])),
        ("blob_status_partial", BlobStatus(23, BLOB_ID, len(BLOB_BYTES), 24, False)),
        ("blob_chunk_last", BlobChunk(24, BLOB_ID, 24, BLOB_BYTES[24:])),
        ("blob_finish", BlobFinish(25, BLOB_ID, hashlib.sha256(BLOB_BYTES).digest())),
        ("blob_status_complete", BlobStatus(25, BLOB_ID, len(BLOB_BYTES), 40, True)),
        ("blob_get", BlobGet(26, BLOB_ID, 0, 262_144)),
        ("blob_data", BlobData(26, BLOB_ID, len(BLOB_BYTES), 0, BLOB_BYTES)),
        ("blob_get_at_end", BlobGet(27, BLOB_ID, 40, 1024)),
        ("blob_data_at_end", BlobData(27, BLOB_ID, len(BLOB_BYTES), 40, b"")),
        (
            "deliver_conv_event",
            Deliver(
                0,
                19,
                bytes.fromhex("5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e"),
                1_700_000_001_000,
                conv_event(1, CONV_ID, 2),
                b"",
            ),
        ),
        ("push_set_unifiedpush", PushSet(28, 1, 1, "https://ntfy.example.org/upAbC123?up=1")),
        ("push_set_gateway", PushSet(29, 2, 0, "fcm:opaque-token-42")),
        ("push_clear", PushClear(30)),
        ("quiet_set", QuietSet(33, 0b0011111, False, 8 * 60, 16 * 60, "Europe/Berlin")),
        ("quiet_set_clear", QuietSet(34, 0, False, 0, 0, "")),
        ("push_dropped", PushDropped(0, 1, 410, 1_764_000_000_000)),
        (
            "send_urgent",
            SendUrgent(31, MESSAGE_ID, b"sealed payload", (Recipient(USER_ID, 1, b""),)),
        ),
        ("conv_send_urgent", ConvSendUrgent(32, MESSAGE_ID, CONV_ID, b"sealed payload", ())),
        (
            "deliver_urgent",
            DeliverUrgent(0, 20, MESSAGE_ID, 1_764_000_000_000, b"sealed payload", b""),
        ),
        (
            "deliver_held_event",
            Deliver(
                0,
                21,
                bytes.fromhex("5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f"),
                1_764_000_000_000,
                conv_event(4, MESSAGE_ID, 1_764_050_400_000),
                b"",
            ),
        ),
    ]


def must_fail_vectors() -> list[tuple[str, bytes, ErrorCode]]:
    """Frames a decoder must reject (with max_frame_bytes = 1048576), and the error."""
    hello_body = struct.pack(">HH", 1, 1) + _bytes(b"cli")
    auth_body = b"M8N22HTR" + struct.pack(">I", 1) + _bytes(bytes(64))
    accepted_body = MESSAGE_ID + struct.pack(">Q", 1)
    recipient = b"M8N22HTR" + struct.pack(">I", 1) + _bytes(b"")
    send_head = MESSAGE_ID + _bytes(b"p")
    conv_send_head = MESSAGE_ID + CONV_ID + _bytes(b"p") + struct.pack(">I", 0)
    member_a, member_b = b"49K49J00\x00", b"M8N22HTR\x01"
    conv_info_head = CONV_ID + b"\x01\x00" + struct.pack(">Q", 1)
    no_records = struct.pack(">II", 0, 0)

    def conv_info(head: bytes, members: bytes) -> bytes:
        count = len(members) // 9
        return raw_frame(0x34, 19, head + struct.pack(">I", count) + members + no_records)

    blob_head = BLOB_ID + struct.pack(">Q", 0)
    m = ErrorCode.MALFORMED
    return [
        ("length_below_5", struct.pack(">I", 4) + b"\x07\x00\x00\x00", m),
        ("length_zero", struct.pack(">I", 0), m),
        (
            "length_above_max_frame_bytes",
            struct.pack(">I", 1_048_577) + b"\x01",
            ErrorCode.FRAME_TOO_LARGE,
        ),
        ("unknown_type_0x7f", raw_frame(0x7F, 1, b""), ErrorCode.UNKNOWN_FRAME_TYPE),
        ("unknown_type_0x00", raw_frame(0x00, 1, b""), ErrorCode.UNKNOWN_FRAME_TYPE),
        ("unknown_type_0x17", raw_frame(0x17, 1, b""), ErrorCode.UNKNOWN_FRAME_TYPE),
        ("unknown_type_0x37", raw_frame(0x37, 1, b""), ErrorCode.UNKNOWN_FRAME_TYPE),
        ("unknown_type_0x46", raw_frame(0x46, 1, b""), ErrorCode.UNKNOWN_FRAME_TYPE),
        ("hello_truncated", raw_frame(0x01, 1, hello_body[:-1]), m),
        ("hello_trailing_byte", raw_frame(0x01, 1, hello_body + b"\x00"), m),
        (
            "hello_software_65_bytes",
            raw_frame(0x01, 1, struct.pack(">HH", 1, 1) + _bytes(b"a" * 65)),
            m,
        ),
        (
            "hello_software_bad_utf8",
            raw_frame(0x01, 1, struct.pack(">HH", 1, 1) + _bytes(b"\xff")),
            m,
        ),
        (
            "hello_length_prefix_beyond_body",
            raw_frame(0x01, 1, struct.pack(">HHI", 1, 1, 0xFFFFFFFF)),
            m,
        ),
        ("ok_with_body", raw_frame(0x07, 5, b"\x00"), m),
        ("push_set_kind_3", raw_frame(0x50, 28, b"\x03\x00" + _bytes(b"x")), m),
        ("push_set_device_kind_2", raw_frame(0x50, 28, b"\x01\x02" + _bytes(b"x")), m),
        ("push_set_empty_target", raw_frame(0x50, 28, b"\x01\x00" + _bytes(b"")), m),
        ("push_set_target_2049_bytes", raw_frame(0x50, 28, b"\x01\x00" + _bytes(b"h" * 2049)), m),
        ("push_clear_with_body", raw_frame(0x51, 30, b"\x00"), m),
        ("quiet_set_days_bit_7", raw_frame(0x56, 33, b"\x80\x00\x01\xe0\x03\xc0" + _bytes(b"")), m),
        ("quiet_set_flags_2", raw_frame(0x56, 33, b"\x1f\x02\x01\xe0\x03\xc0" + _bytes(b"")), m),
        ("quiet_set_end_1441", raw_frame(0x56, 33, b"\x1f\x00\x01\xe0\x05\xa1" + _bytes(b"")), m),
        (
            "enroll_transport_pub_31_bytes",
            raw_frame(
                0x03, 2, _bytes(b"CODE") + _bytes(bytes(31)) + _bytes(b"d") + _bytes(bytes(64))
            ),
            m,
        ),
        (
            "enroll_signature_65_bytes",
            raw_frame(
                0x03, 2, _bytes(b"CODE") + _bytes(bytes(32)) + _bytes(b"d") + _bytes(bytes(65))
            ),
            m,
        ),
        ("auth_user_id_with_U", raw_frame(0x04, 2, b"M8N22HTU" + auth_body[8:]), m),
        ("auth_user_id_lower_case", raw_frame(0x04, 2, b"m8n22htr" + auth_body[8:]), m),
        ("auth_user_id_with_dash", raw_frame(0x04, 2, b"M8N2-2HT" + auth_body[8:]), m),
        (
            "error_message_257_bytes",
            raw_frame(0x06, 0, struct.pack(">H", 1) + _bytes(b"e" * 257)),
            m,
        ),
        ("accepted_duplicate_flag_2", raw_frame(0x11, 7, accepted_body + b"\x02"), m),
        ("ack_empty", raw_frame(0x13, 10, struct.pack(">I", 0)), m),
        ("ack_1025_seqs", raw_frame(0x13, 10, struct.pack(">I", 1025) + bytes(8 * 1025)), m),
        ("ack_count_beyond_body", raw_frame(0x13, 10, struct.pack(">IQ", 2, 1)), m),
        (
            "deliver_part_4097_bytes",
            raw_frame(
                0x12,
                0,
                struct.pack(">Q", 1)
                + MESSAGE_ID
                + struct.pack(">Q", 1)
                + _bytes(b"p")
                + _bytes(bytes(4097)),
            ),
            m,
        ),
        (
            "send_65536_recipients",
            raw_frame(0x10, 7, send_head + struct.pack(">I", 65536) + recipient),
            m,
        ),
        (
            "send_recipient_count_beyond_body",
            raw_frame(0x10, 7, send_head + struct.pack(">I", 3) + recipient),
            m,
        ),
        (
            "send_part_4097_bytes",
            raw_frame(
                0x10, 7, send_head + struct.pack(">I", 1) + recipient[:12] + _bytes(bytes(4097))
            ),
            m,
        ),
        (
            "keys_record_count_beyond_body",
            raw_frame(0x22, 13, b"M8N22HTR" + struct.pack(">I", 1000)),
            m,
        ),
        (
            "key_claim_truncated_suite",
            raw_frame(0x23, 14, b"M8N22HTR" + struct.pack(">IB", 1, 2)),
            m,
        ),
        (
            "conv_send_17_blob_ids",
            raw_frame(0x15, 16, conv_send_head + struct.pack(">I", 17) + BLOB_ID * 17),
            m,
        ),
        (
            "conv_send_truncated_blob_id",
            raw_frame(0x15, 16, conv_send_head + b"\x00\x00\x00\x01" + BLOB_ID[:15]),
            m,
        ),
        ("conv_send_without_blob_list", raw_frame(0x15, 16, conv_send_head), m),
        ("conv_send_truncated_conv_id", raw_frame(0x15, 16, MESSAGE_ID + CONV_ID[:8]), m),
        (
            "send_blobs_17_blob_ids",
            raw_frame(0x16, 17, send_head + struct.pack(">II", 0, 17) + BLOB_ID * 17),
            m,
        ),
        ("send_blobs_without_blob_list", raw_frame(0x16, 17, send_head + struct.pack(">I", 0)), m),
        ("conv_put_truncated_record", raw_frame(0x32, 18, CONV_ID + _bytes(b"roster")[:-1]), m),
        ("conv_get_truncated_epoch", raw_frame(0x33, 19, CONV_ID + bytes(7)), m),
        ("conv_list_with_body", raw_frame(0x35, 21, b"\x00"), m),
        ("conv_info_role_2", conv_info(conv_info_head, member_a[:8] + b"\x02"), m),
        ("conv_info_kind_3", conv_info(CONV_ID + b"\x03\x00" + bytes(8), member_a), m),
        ("conv_info_kind_0", conv_info(CONV_ID + b"\x00\x00" + bytes(8), member_a), m),
        ("conv_info_managed_2", conv_info(CONV_ID + b"\x01\x02" + bytes(8), member_a), m),
        ("conv_info_members_descending", conv_info(conv_info_head, member_b + member_a), m),
        ("conv_info_member_twice", conv_info(conv_info_head, member_a + member_a), m),
        (
            "conv_info_member_count_beyond_body",
            raw_frame(0x34, 19, conv_info_head + struct.pack(">I", 2) + member_a + no_records),
            m,
        ),
        (
            "conv_info_without_org_keys",
            raw_frame(0x34, 19, conv_info_head + struct.pack(">II", 0, 0)),
            m,
        ),
        (
            "convs_kind_3",
            raw_frame(0x36, 21, struct.pack(">I", 1) + CONV_ID + b"\x03\x00" + bytes(8)),
            m,
        ),
        (
            "convs_count_beyond_body",
            raw_frame(0x36, 21, struct.pack(">I", 2) + CONV_ID + b"\x01\x00" + bytes(8)),
            m,
        ),
        ("blob_start_truncated_size", raw_frame(0x40, 22, BLOB_ID + bytes(7)), m),
        (
            "blob_status_complete_2",
            raw_frame(0x41, 22, BLOB_ID + struct.pack(">QQB", 40, 40, 2)),
            m,
        ),
        (
            "blob_status_received_above_size",
            raw_frame(0x41, 22, BLOB_ID + struct.pack(">QQB", 40, 41, 0)),
            m,
        ),
        (
            "blob_status_complete_but_short",
            raw_frame(0x41, 22, BLOB_ID + struct.pack(">QQB", 40, 24, 1)),
            m,
        ),
        ("blob_chunk_empty_data", raw_frame(0x42, 23, blob_head + _bytes(b"")), m),
        (
            "blob_chunk_data_length_262145",
            raw_frame(0x42, 23, blob_head + struct.pack(">I", 262_145) + b"\x00"),
            m,
        ),
        ("blob_chunk_truncated_data", raw_frame(0x42, 23, blob_head + _bytes(b"abc")[:-1]), m),
        ("blob_finish_sha256_31_bytes", raw_frame(0x43, 25, BLOB_ID + bytes(31)), m),
        ("blob_get_length_0", raw_frame(0x44, 26, blob_head + struct.pack(">I", 0)), m),
        ("blob_get_length_262145", raw_frame(0x44, 26, blob_head + struct.pack(">I", 262_145)), m),
        ("blob_get_truncated_length", raw_frame(0x44, 26, blob_head + b"\x00\x00\x01"), m),
        (
            "blob_data_past_size",
            raw_frame(0x45, 26, BLOB_ID + struct.pack(">QQ", 40, 39) + _bytes(b"ab")),
            m,
        ),
        (
            "blob_data_data_length_262145",
            raw_frame(0x45, 26, BLOB_ID + struct.pack(">QQI", 2**40, 0, 262_145) + b"\x00"),
            m,
        ),
    ]


def user_id_vectors() -> list[dict[str, str]]:
    """The documented example plus IDs drawn from a seeded generator."""
    rng = random.Random(20240601)
    bodies = ["M8N22HT", "0000000", "ZZZZZZZ"]
    bodies += ["".join(rng.choice(userid.ALPHABET) for _ in range(7)) for _ in range(7)]
    out = []
    for body in bodies:
        check = userid.check_char(body)
        out.append({"body7": body, "check": check, "display": userid.display(body + check)})
    return out


def auth_vectors() -> list[dict[str, Any]]:
    """The AUTH and ENROLL signed messages with Ed25519 signatures from DEVICE_SEED."""
    pub = _transport_pub()
    auth_msg = auth.auth_message(NONCE, CERT_FP, USER_ID, 1)
    enroll_msg = auth.enroll_message(NONCE, CERT_FP, INVITE_CODE, pub)
    return [
        {
            "kind": "auth",
            "nonce": NONCE.hex(),
            "cert_fp": CERT_FP.hex(),
            "user_id": USER_ID,
            "device_id": 1,
            "message": auth_msg.hex(),
            "seed": DEVICE_SEED.hex(),
            "public_key": pub.hex(),
            "signature": _auth_signature().hex(),
        },
        {
            "kind": "enroll",
            "nonce": NONCE.hex(),
            "cert_fp": CERT_FP.hex(),
            "invite_code": INVITE_CODE,
            "transport_pub": pub.hex(),
            "message": enroll_msg.hex(),
            "seed": DEVICE_SEED.hex(),
            "public_key": pub.hex(),
            "signature": _enroll_signature().hex(),
        },
    ]


def invite_vectors() -> list[dict[str, Any]]:
    """Invite links for a DNS name, an IPv4 and an IPv6 address, without and with ORGFP; then
    links of a server with several nodes: two addresses, and two addresses with two pins."""
    out = []
    one = (CERT_FP,)
    two = (CERT_FP, CERT_FP_2)
    cases: tuple[tuple[str, tuple[tuple[str, int], ...], tuple[bytes, ...], bytes | None], ...]
    cases = (
        ("chat.example.org", (("chat.example.org", 7443),), one, None),
        ("192.0.2.10", (("192.0.2.10", 443),), one, None),
        ("2001:db8::10", (("2001:db8::10", 7443),), one, None),
        ("chat.example.org_org", (("chat.example.org", 7443),), one, ORG_FP),
        ("2001:db8::10_org", (("2001:db8::10", 7443),), one, ORG_FP),
        (
            "two_addresses",
            (("a.chat.example.org", 7443), ("b.chat.example.org", 7443)),
            one,
            None,
        ),
        (
            "two_addresses_two_pins_org",
            (("chat.example.org", 7443), ("2001:db8::11", 7443)),
            two,
            ORG_FP,
        ),
    )
    for name, addresses, pins, org_fp in cases:
        link = invite.InviteLink.of(addresses, INVITE_CODE, pins, org_fp)
        out.append(
            {
                "name": name,
                "host": addresses[0][0],
                "port": addresses[0][1],
                "addresses": [{"host": h, "port": p} for h, p in addresses],
                "code": INVITE_CODE,
                "fingerprint": CERT_FP.hex(),
                "fingerprint_text": invite.fingerprint_text(CERT_FP),
                "fingerprints": [x.hex() for x in pins],
                "fingerprints_text": [invite.fingerprint_text(x) for x in pins],
                "org_fingerprint": org_fp.hex() if org_fp else None,
                "org_fingerprint_text": invite.fingerprint_text(org_fp) if org_fp else None,
                "link": str(link),
            }
        )
    return out


def invite_must_fail_vectors() -> list[dict[str, str]]:
    """Invite links a parser must reject."""
    fp = invite.fingerprint_text(CERT_FP)
    org = invite.fingerprint_text(ORG_FP)
    fp2 = invite.fingerprint_text(CERT_FP_2)
    nine = [invite.fingerprint_text(hashlib.sha256(bytes([i])).digest()) for i in range(9)]
    good = f"chat.example.org:7443/invite/{INVITE_CODE}"
    tail = f"/invite/{INVITE_CODE}#{fp}"
    return [
        {"name": "wrong_scheme", "link": f"https://{good}#{fp}"},
        {"name": "no_fingerprint", "link": f"momedo://{good}"},
        {"name": "short_fingerprint", "link": f"momedo://{good}#{fp[:-1]}"},
        {"name": "no_port", "link": f"momedo://chat.example.org/invite/{INVITE_CODE}#{fp}"},
        {"name": "port_0", "link": f"momedo://chat.example.org:0/invite/{INVITE_CODE}#{fp}"},
        {
            "name": "ipv6_without_brackets",
            "link": f"momedo://2001:db8::10:7443/invite/{INVITE_CODE}#{fp}",
        },
        {"name": "code_with_U", "link": f"momedo://chat.example.org:7443/invite/UUUU#{fp}"},
        {"name": "wrong_path", "link": f"momedo://chat.example.org:7443/join/{INVITE_CODE}#{fp}"},
        {"name": "empty_org_fingerprint", "link": f"momedo://{good}#{fp}."},
        {"name": "short_org_fingerprint", "link": f"momedo://{good}#{fp}.{org[:-1]}"},
        {"name": "long_org_fingerprint", "link": f"momedo://{good}#{fp}.{org}A"},
        {"name": "org_fingerprint_not_canonical", "link": f"momedo://{good}#{fp}.{org[:-1]}B"},
        {"name": "org_fingerprint_bad_character", "link": f"momedo://{good}#{fp}.{org[:-1]}1"},
        {"name": "three_fingerprints", "link": f"momedo://{good}#{fp}.{org}.{org}"},
        {"name": "org_fingerprint_only", "link": f"momedo://{good}#.{org}"},
        {"name": "org_fingerprint_comma", "link": f"momedo://{good}#{fp},{org}"},
        # several addresses (separated by ",") and pins (separated by "+")
        {"name": "empty_address", "link": f"momedo://a.example:1,,b.example:1{tail}"},
        {"name": "trailing_comma", "link": f"momedo://a.example:1,{tail}"},
        {"name": "leading_comma", "link": f"momedo://,a.example:1{tail}"},
        {"name": "duplicate_address", "link": f"momedo://a.example:1,a.example:1{tail}"},
        {"name": "duplicate_address_case", "link": f"momedo://a.example:1,A.EXAMPLE.:1{tail}"},
        {"name": "duplicate_ipv6", "link": f"momedo://[2001:db8::1]:1,[2001:db8:0::1]:1{tail}"},
        {"name": "second_address_no_port", "link": f"momedo://a.example:1,b.example{tail}"},
        {
            "name": "second_address_ipv6_without_brackets",
            "link": f"momedo://a.example:1,2001:db8::1:1{tail}",
        },
        {
            "name": "nine_addresses",
            "link": "momedo://" + ",".join(f"n{i}.example:1" for i in range(9)) + tail,
        },
        {"name": "empty_pin", "link": f"momedo://{good}#{fp}+"},
        {"name": "leading_plus", "link": f"momedo://{good}#+{fp}"},
        {"name": "duplicate_pin", "link": f"momedo://{good}#{fp}+{fp}"},
        {"name": "second_pin_short", "link": f"momedo://{good}#{fp}+{fp2[:-1]}"},
        {"name": "second_pin_not_canonical", "link": f"momedo://{good}#{fp}+{fp2[:-1]}B"},
        {"name": "nine_pins", "link": f"momedo://{good}#" + "+".join(nine)},
        {"name": "plus_after_org_fingerprint", "link": f"momedo://{good}#{fp}.{org}+{fp2}"},
        {
            "name": "longer_than_2048",
            "link": "momedo://"
            + ",".join(f"{'n' * 63}.{'x' * 63}.{'y' * 63}.{'z' * 58}.e{i}:65535" for i in range(8))
            + tail,
        },
    ]


def record_vectors() -> list[dict[str, Any]]:
    """Valid SignedRecords and what the server reads from them."""
    out = []
    for name, data in _example_records():
        info = records.parse_record(data)
        out.append({"name": name, "hex": data.hex(), "info": dataclasses.asdict(info)})
    return out


def record_must_fail_vectors() -> list[dict[str, str]]:
    """Records the server must reject with RECORD_INVALID."""
    good = dict(_example_records())["spk"]
    fp = bytes(32)
    body = records.prekey_body(USER_ID, 1, 2, records.PREKEY_SPK, 7, b"\xa5" * 16, 1)
    cases = {
        "bad_magic": b"MX" + good[2:],
        "header_version_2": good[:2] + b"\x02" + good[3:],
        "header_type_seal": good[:3] + b"\x01" + good[4:],
        "unknown_suite": records.build_record(0x0104, 3, body, [(2, fp, b"s")]),
        "unknown_record_type_4": records.build_record(2, 4, body, [(2, fp, b"s")]),
        "truncated": good[:-1],
        "trailing_byte": good + b"\x00",
        "no_signature": records.build_record(2, 3, body, []),
        "signer_kind_5": records.build_record(2, 3, body, [(5, fp, b"s")]),
        "body_trailing_byte": records.build_record(2, 3, body + b"\x00", [(2, fp, b"s")]),
        "prekey_kind_3": records.build_record(
            2, 3, records.prekey_body(USER_ID, 1, 2, 3, 7, b"k", 1), [(2, fp, b"s")]
        ),
        "prekey_suite_differs_from_header": records.build_record(3, 3, body, [(2, fp, b"s")]),
        "device_list_unknown_flag": records.build_record(
            2,
            2,
            records.device_list_body(
                USER_ID, 1, bytes(32), 1, [records.DeviceEntry(1, bytes(32), (2,), 0x02, 1)]
            ),
            [(1, fp, b"s")],
        ),
    }
    return [{"name": name, "hex": data.hex()} for name, data in cases.items()]


def build() -> dict[str, Any]:
    """All vectors as one JSON-ready object."""
    return {
        "description": (
            "momedo wire protocol v1 test vectors (docs/PROTOCOL.md). Generated by "
            "tests/protocol/gen_frame_vectors.py; bytes are lower-case hex. 'frames': decode(hex)"
            " == frame and encode(frame) == hex. 'must_fail': decoding hex with max_frame_bytes ="
            " 1048576 fails with 'error'. Signatures are Ed25519 from 'seed' (RFC 8032 test 1)."
        ),
        "frames": [
            {"name": name, "frame": frame_to_json(frame), "hex": encode_frame(frame).hex()}
            for name, frame in frame_vectors()
        ],
        "must_fail": [
            {"name": name, "hex": data.hex(), "error": code.name}
            for name, data, code in must_fail_vectors()
        ],
        "user_ids": user_id_vectors(),
        "auth_messages": auth_vectors(),
        "invite_links": invite_vectors(),
        "invite_links_must_fail": invite_must_fail_vectors(),
        "records": record_vectors(),
        "records_must_fail": record_must_fail_vectors(),
    }


def render() -> str:
    """The exact text of docs/test-vectors/frames.json."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
