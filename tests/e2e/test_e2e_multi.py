"""Multi (asymmetric mode): round trips, every tampering, wrong recipient, CEK commitment."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from momedod.e2e import padding
from momedod.e2e.chain import CONV_LABEL, OpenedConv, conv_payload_body
from momedod.e2e.envelope import Addr, ContentType
from momedod.e2e.errors import E2EError
from momedod.e2e.identity import DeviceKey
from momedod.e2e.multi import (
    CEK_LEN,
    MAX_WRAP,
    WRAP_LABEL,
    cek_commit,
    multi_body_key,
    multi_encrypt,
    multi_open,
)
from momedod.e2e.suites import (
    ALL_SUITES,
    KemPrivateKey,
    Suite,
    kem_keypair_from_seed,
    kem_public_from_bytes,
)
from momedod.protocol.encoding import Writer, label

CONV = bytes(range(16))
MSG_ID = bytes(range(16, 32))
KVD = bytes(range(32, 48))
NOW = 1_767_225_600_000
SUITE1 = ALL_SUITES[1]
SUITE2 = ALL_SUITES[2]
ALL = [pytest.param(ALL_SUITES[i], id=f"suite{i}") for i in (1, 2, 3)]


class Device:
    """A device with a DK and one SPK (id 1) and one OTPK (id 2) per suite, all from seeds."""

    def __init__(self, addr: Addr, tag: int) -> None:
        self.addr = addr
        self.dk = DeviceKey(bytes([tag]) * 32)
        self.keys: dict[tuple[int, int, int], tuple[KemPrivateKey, bytes]] = {}
        for suite_id in (1, 2, 3):
            for kind in (1, 2):
                seed = bytes([tag, suite_id, kind]) * 10 + b"\x00\x00"
                self.keys[(suite_id, kind, kind)] = kem_keypair_from_seed(
                    ALL_SUITES[suite_id], seed
                )

    def rcpt(self, suite: Suite, kind: int = 1) -> tuple[Addr, int, int, bytes]:
        return (self.addr, kind, kind, self.keys[(suite.id, kind, kind)][1])

    def private_for(self, suite_id: int, kind: int, key_id: int) -> KemPrivateKey | None:
        entry = self.keys.get((suite_id, kind, key_id))
        return entry[0] if entry else None


A = Device(Addr("M8N22HTR", 1), 0xA1)
B = Device(Addr("49K49JAC", 2), 0xB2)
C = Device(Addr("7QXW3ZC7", 1), 0xC3)
DIRECTORY = {d.addr: d.dk.public_bytes for d in (A, B, C)}


def encrypt(
    suite: Suite = SUITE1,
    to: tuple[Device, ...] = (B, C),
    content: bytes = b"hello group",
    content_type: int = ContentType.TEXT,
    cek: bytes | None = None,
    kind: int = 1,
) -> tuple[bytes, dict[Addr, bytes]]:
    return multi_encrypt(
        suite,
        A.addr,
        A.dk,
        CONV,
        7,
        NOW,
        MSG_ID,
        KVD,
        content_type,
        content,
        [d.rcpt(suite, kind) for d in to],
        allow_test_suites=True,
        cek=cek,
    )


def open_as(
    payload: bytes, wrap: bytes, me: Device = B, directory: dict[Addr, bytes] | None = None
) -> OpenedConv:
    dirs = DIRECTORY if directory is None else directory
    return multi_open(payload, wrap, me.addr, me.private_for, dirs.get, allow_test_suites=True)


def reason(
    payload: bytes, wrap: bytes, me: Device = B, directory: dict[Addr, bytes] | None = None
) -> str:
    with pytest.raises(E2EError) as exc:
        open_as(payload, wrap, me, directory)
    assert str(exc.value) == "cannot open envelope"
    return exc.value.reason


@pytest.mark.parametrize("suite", ALL)
def test_round_trip_every_recipient(suite: Suite) -> None:
    payload, wraps = encrypt(suite)
    assert set(wraps) == {B.addr, C.addr}
    for dev in (B, C):
        opened = open_as(payload, wraps[dev.addr], dev)
        assert opened.conv_id == CONV and opened.epoch == 7 and opened.sender == A.addr
        assert opened.ts_ms == NOW and opened.msg_id == MSG_ID and opened.kvd == KVD
        assert opened.content_type == ContentType.TEXT and opened.content == b"hello group"
        assert opened.chain_id == b"" and opened.n == 0
    assert payload[:6] == b"MD\x01\x03" + suite.id.to_bytes(2, "big")
    # the body is padded to a 256-byte bucket
    body_len = struct.unpack(">I", payload[38:42])[0]
    assert len(payload) == 42 + body_len
    assert (body_len - suite.tag_size) % padding.BUCKET == 0
    for wrap in wraps.values():
        assert len(wrap) <= MAX_WRAP
        assert len(wrap) == 12 + 1 + 4 + 4 + suite.enc_size + CEK_LEN + suite.tag_size


def test_wrap_size_suite2() -> None:
    _, wraps = encrypt(SUITE2, to=(B,))
    assert len(wraps[B.addr]) == 1189


def test_otpk_and_large_content() -> None:
    payload, wraps = encrypt(kind=2, content=bytes(100_000))
    assert open_as(payload, wraps[C.addr], C).content == bytes(100_000)
    assert (len(payload) - 42 - 16) % 256 == 0


def test_cek_makes_the_payload_deterministic() -> None:
    cek = bytes(range(32))
    p1, w1 = encrypt(cek=cek)
    p2, w2 = encrypt(cek=cek)
    assert p1 == p2 and p1[6:38] == cek_commit(cek)
    assert w1[B.addr] != w2[B.addr]  # HPKE is randomised
    assert open_as(p1, w2[B.addr]).content == b"hello group"


def test_every_flipped_byte_fails() -> None:
    payload, wraps = encrypt(to=(B,))
    wrap = wraps[B.addr]
    for i in range(len(payload)):
        bad = bytearray(payload)
        bad[i] ^= 0x01
        with pytest.raises(E2EError):
            open_as(bytes(bad), wrap)
    for i in range(len(wrap)):
        bad = bytearray(wrap)
        bad[i] ^= 0x01
        with pytest.raises(E2EError):
            open_as(payload, bytes(bad))


def test_flipped_bytes_suite2_sampled() -> None:
    payload, wraps = encrypt(SUITE2, to=(B,))
    wrap = wraps[B.addr]
    for i in [*range(0, len(payload), 13), len(payload) - 1]:
        bad = bytearray(payload)
        bad[i] ^= 0x80
        with pytest.raises(E2EError):
            open_as(bytes(bad), wrap)
    for i in [*range(0, len(wrap), 29), len(wrap) - 1]:
        bad = bytearray(wrap)
        bad[i] ^= 0x80
        with pytest.raises(E2EError):
            open_as(payload, bytes(bad))


def test_truncation_and_trailing_bytes() -> None:
    payload, wraps = encrypt(to=(B,))
    wrap = wraps[B.addr]
    assert reason(payload + b"\x00", wrap) == "malformed"
    assert reason(payload[:-1], wrap) == "malformed"
    assert reason(payload, wrap + b"\x00") == "malformed"
    assert reason(payload, wrap[:-1]) == "malformed"
    assert reason(payload, b"") == "malformed"
    assert reason(payload[:5], wrap) == "malformed"
    assert reason(payload, wrap + bytes(MAX_WRAP)) == "malformed"


def test_wrong_recipient() -> None:
    payload, wraps = encrypt()
    assert reason(payload, wraps[B.addr], C) == "recipient"
    # B's wrap relabelled for C: C's key does not open it (info binds the address)
    moved = C.addr.encode() + wraps[B.addr][12:]
    assert reason(payload, moved, C) == "decrypt"
    # A device that was not a recipient has no wrap at all
    payload2, wraps2 = encrypt(to=(B,))
    assert C.addr not in wraps2
    assert reason(payload2, wraps2[B.addr], C) == "recipient"


def test_wrap_does_not_move_to_another_payload() -> None:
    _, w1 = encrypt()
    p2, _ = encrypt()
    assert reason(p2, w1[B.addr]) == "decrypt"


def test_cek_commit_mismatch() -> None:
    """A sender that wraps a different CEK for one member is caught by the commitment."""
    cek1, cek2 = bytes([1]) * 32, bytes([2]) * 32
    payload, wraps = encrypt(cek=cek1)
    # a forged wrap of CEK2 for B, bound to this payload's header and commitment
    aad = payload[:38]
    prefix = Writer().u8(1).u32(1).getvalue(B.addr.encode())
    pub = kem_public_from_bytes(SUITE1, B.rcpt(SUITE1)[3])
    forged = Writer().bytes_(SUITE1.hpke.encrypt(cek2, pub, WRAP_LABEL + aad + prefix))
    assert reason(payload, forged.getvalue(prefix)) == "cek_commit"
    # ... and the honest one still opens
    assert open_as(payload, wraps[B.addr]).content == b"hello group"
    # a wrap of a CEK of the wrong length
    short = Writer().bytes_(SUITE1.hpke.encrypt(cek1[:31], pub, WRAP_LABEL + aad + prefix))
    assert reason(payload, short.getvalue(prefix)) == "decrypt"


def test_cek_commit_value() -> None:
    cek = bytes(range(32))
    assert cek_commit(cek) == hmac.new(cek, label("cek-commit"), hashlib.sha256).digest()


def test_sender_checks() -> None:
    payload, wraps = encrypt()
    wrap = wraps[B.addr]
    assert reason(payload, wrap, directory={}) == "unknown_sender"
    assert reason(payload, wrap, directory={A.addr: C.dk.public_bytes}) == "signature"


def test_key_lookup_failures() -> None:
    payload, wraps = encrypt()
    wrap = wraps[B.addr]
    # key_kind 3 (LINK) is never a Multi recipient
    assert reason(payload, wrap[:12] + b"\x03" + wrap[13:]) == "key_kind"
    # unknown key id
    assert reason(payload, wrap[:13] + struct.pack(">I", 99) + wrap[17:]) == "unknown_key"

    def wrong_suite(suite_id: int, kind: int, key_id: int) -> KemPrivateKey | None:
        return B.private_for(2, kind, key_id)

    with pytest.raises(E2EError) as exc:
        multi_open(payload, wrap, B.addr, wrong_suite, DIRECTORY.get, allow_test_suites=True)
    assert exc.value.reason == "key_suite"


def test_test_suite_refused_by_default() -> None:
    payload, wraps = encrypt()
    with pytest.raises(E2EError) as exc:
        multi_open(payload, wraps[B.addr], B.addr, B.private_for, DIRECTORY.get)
    assert exc.value.reason == "suite"
    with pytest.raises(ValueError):
        multi_encrypt(SUITE1, A.addr, A.dk, CONV, 1, NOW, MSG_ID, KVD, 1, b"x", [B.rcpt(SUITE1)])


@pytest.mark.parametrize(
    "content_type", [ContentType.CHAIN_DIST, ContentType.SYNC, ContentType.LINK_PROVISION, 0, 99]
)
def test_seal_only_and_unknown_content_types_refused(content_type: int) -> None:
    with pytest.raises(ValueError):
        encrypt(content_type=content_type)


def test_argument_errors() -> None:
    with pytest.raises(ValueError):
        encrypt(to=(B, B))
    with pytest.raises(ValueError):
        encrypt(cek=bytes(31))
    with pytest.raises(ValueError):
        multi_encrypt(
            SUITE1,
            A.addr,
            A.dk,
            CONV,
            1,
            NOW,
            MSG_ID,
            KVD,
            1,
            b"x",
            [(B.addr, 3, 1, B.rcpt(SUITE1)[3])],
            allow_test_suites=True,
        )
    with pytest.raises(E2EError) as exc:
        multi_encrypt(
            SUITE1,
            A.addr,
            A.dk,
            CONV,
            1,
            NOW,
            MSG_ID,
            KVD,
            1,
            b"x",
            [(B.addr, 1, 1, bytes(31))],
            allow_test_suites=True,
        )
    assert exc.value.reason == "kem_public"


def test_ed25519_private_key_is_accepted_too() -> None:
    raw = Ed25519PrivateKey.from_private_bytes(A.dk.seed)
    cek = bytes(range(32))
    p1, _ = encrypt(cek=cek)
    p2, _ = multi_encrypt(
        SUITE1,
        A.addr,
        raw,
        CONV,
        7,
        NOW,
        MSG_ID,
        KVD,
        ContentType.TEXT,
        b"hello group",
        [B.rcpt(SUITE1)],
        allow_test_suites=True,
        cek=cek,
    )
    assert p1 == p2


def test_nonzero_padding_and_bad_payload_rejected() -> None:
    """A sender-built body with non-zero padding or a wrong length is refused."""
    cek = bytes(range(32))
    aad = b"MD\x01\x03\x00\x01" + cek_commit(cek)
    body = conv_payload_body(CONV, 7, A.addr, NOW, MSG_ID, KVD, 1, b"x")

    def build(plain_body: bytes) -> tuple[bytes, bytes]:
        sig = A.dk.sign_labelled(CONV_LABEL + aad + plain_body)
        pt = Writer().bytes_(sig).getvalue(plain_body)
        ct = SUITE1.aead_cipher(multi_body_key(SUITE1, cek)).encrypt(bytes(12), pt, aad)
        payload = Writer().bytes_(ct).getvalue(aad)
        _, wraps = encrypt(cek=cek, to=(B,))
        return payload, wraps[B.addr]

    p, w = build(body)
    assert open_as(p, w).content == b"x"
    dirty = bytearray(body)
    dirty[-1] = 1
    assert reason(*build(bytes(dirty))) == "padding"
    assert reason(*build(body + bytes(1))) == "padding"  # length not a multiple of 256
