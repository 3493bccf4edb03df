"""The fuzz targets of fuzz_parsers.py: one function per target taking the fuzzer's bytes,
raising only on a bug (an exception other than the documented one, or a broken invariant),
and the seed inputs (valid encodings) each target starts from."""

from __future__ import annotations

import contextlib
import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from momedod.e2e import attachment as att
from momedod.e2e import chain, link, multi, records, roster, seal
from momedod.e2e.envelope import Addr, EnvelopeType, header
from momedod.e2e.errors import E2EError
from momedod.e2e.event import ConvEvent, parse_conv_event
from momedod.e2e.identity import DeviceKey, HybridPublicKey, UserIdentityKey
from momedod.e2e.suites import ALL_SUITES, SUITE_TEST_X25519, SUITE_XWING, kem_keypair_from_seed
from momedod.protocol import frames as f
from momedod.protocol import records as wire_records
from momedod.protocol.encoding import Writer
from momedod.protocol.errors import ErrorCode, ProtocolError

# -- frames ----------------------------------------------------------------------------------


def _decode_all(pieces: list[bytes]) -> tuple[list[f.Frame], ErrorCode | None]:
    decoder = f.FrameDecoder(4096)
    frames: list[f.Frame] = []
    try:
        for piece in pieces:
            decoder.feed(piece)
            while (frame := decoder.next_frame()) is not None:
                frames.append(frame)
    except ProtocolError as exc:
        return frames, exc.code
    return frames, None


def frames_target(data: bytes) -> None:
    if not data:
        return
    stream = data[1:]
    cut = data[0] * len(stream) // 256
    assert _decode_all([stream[:cut], stream[cut:]]) == _decode_all([stream])
    for frame_type in f.FRAME_CLASSES:
        try:
            frame = f.decode_frame(frame_type, 7, stream)
        except ProtocolError:
            continue
        assert f.encode_frame(frame)[9:] == stream  # only canonical bodies decode


def frames_seeds() -> list[bytes]:
    samples: list[f.Frame] = [
        f.Hello(1, 1, 1, "momedo"),
        f.Auth(2, "M8N22HTR", 1, bytes(64)),
        f.Send(3, bytes(16), b"payload", (f.Recipient("M8N22HTR", 1, b"part"),)),
        f.Deliver(0, 9, bytes(16), 5, b"payload", b"part"),
        f.Ack(4, (1, 2, 3)),
        f.Keys(5, "M8N22HTR", (b"rec1", b"rec2")),
        f.ConvInfo(6, bytes(16), 1, False, 2, (f.ConvMember("M8N22HTR", 1),), (b"r",), ()),
        f.BlobData(7, bytes(16), 10, 0, b"abc"),
        f.Error(8, 33, "mailbox full"),
    ]
    return [b"\x80" + f.encode_frame(s) for s in samples] + [
        b"\x40" + b"".join(f.encode_frame(s) for s in samples)
    ]


# -- envelopes -------------------------------------------------------------------------------

NOW = 1_767_225_600_000
SUITE = ALL_SUITES[SUITE_TEST_X25519]
SENDER, ME = Addr("M8N22HTR", 1), Addr("Q7AWGNX9", 2)
SENDER_DK = Ed25519PrivateKey.from_private_bytes(b"\xa1" * 32)
DIRECTORY = {SENDER: SENDER_DK.public_key().public_bytes_raw()}
MY_KEM, MY_KEM_PUB = kem_keypair_from_seed(SUITE, b"\xb2" * 32)
CONV_ID, KVD, SECRET = b"\xc0" * 16, b"\x0d" * 16, b"\x0e" * 16
UIK = UserIdentityKey(b"\x0c" * 32, SUITE_TEST_X25519)
XWING_UIK = UserIdentityKey(b"\x0c" * 32, SUITE_XWING)  # link messages refuse the test suite
XWING_PUB = kem_keypair_from_seed(ALL_SUITES[SUITE_XWING], b"\xb3" * 32)[1]
PIN = link.PinnedContact("M8N22HTR", b"\x0f" * 32, True)
DK = DeviceKey(b"\xa1" * 32)
_SENDING = chain.SendingChain.new(SUITE, SENDER, CONV_ID, 3, NOW, allow_test_suites=True)
_DIST = _SENDING.to_dist()
_DEVICE_LIST = records.sign_device_list(
    UIK, "M8N22HTR", 1, records.ZERO_HASH, NOW,
    [records.DeviceEntry(1, DK.public_bytes, (SUITE_TEST_X25519,), 1, NOW)],
)  # fmt: skip
_VERIFIED = records.verify_device_list(_DEVICE_LIST, UIK.public, allow_test_suites=True)


def _my_key(suite_id: int, kind: int, key_id: int):  # type: ignore[no-untyped-def]
    return MY_KEM if (suite_id, key_id) == (SUITE.id, 1) else None


def _receiving() -> chain.ReceivingChain:
    return chain.ReceivingChain.from_dist(_DIST, SENDER, SUITE.id, allow_test_suites=True)


def _open_seal(data: bytes) -> None:
    seal.open_seal(data, ME, _my_key, DIRECTORY.get, allow_test_suites=True)


def _seal_plaintext(data: bytes) -> None:
    """``data`` is a SealPayload, correctly encrypted to our prekey: reach its parser."""
    prefix = Writer().u8(1).u32(1).getvalue(header(EnvelopeType.SEAL, SUITE.id))
    ct = SUITE.hpke.encrypt(data, MY_KEM.public_key(), seal.SEAL_LABEL + prefix + ME.encode())  # type: ignore[union-attr]
    _open_seal(Writer().bytes_(ct).getvalue(prefix))


def _chain_decrypt(data: bytes) -> None:
    receiving = _receiving()
    before = receiving.to_bytes()
    try:
        receiving.decrypt(data, DIRECTORY[SENDER], NOW)
    except E2EError:
        assert receiving.to_bytes() == before, "a failed decrypt changed the chain"
        raise


def _chain_plaintext(data: bytes) -> None:
    """``data`` is a ConvPayload under the AEAD of message 0 of our chain."""
    aad = Writer().fixed(_DIST.chain_id, 16).u32(0).getvalue(header(EnvelopeType.CHAIN, SUITE.id))
    mk, _ = chain.chain_step(_DIST.ck)
    key, nonce = chain.message_key_nonce(SUITE, mk, _DIST.chain_id)
    envelope = Writer().bytes_(SUITE.aead_cipher(key).encrypt(nonce, data, aad)).getvalue(aad)
    _chain_decrypt(envelope)


def _multi(data: bytes) -> None:
    """``u16 len | payload | wrap``."""
    cut = 2 + int.from_bytes(data[:2], "big")
    multi.multi_open(data[2:cut], data[cut:], ME, _my_key, DIRECTORY.get, allow_test_suites=True)


def _attachment(data: bytes) -> None:
    """``u16 size | ciphertext`` (with its correct hash: decryption itself is attacked)."""
    size, ciphertext = int.from_bytes(data[:2], "big"), data[2:]
    att.decrypt_attachment(ciphertext, b"\x0b" * 32, hashlib.sha256(ciphertext).digest(), size)


def _wire_record(data: bytes) -> None:
    try:
        wire_records.parse_record(data)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.RECORD_INVALID
        raise E2EError(reason="record") from None


_OPENERS = [
    _open_seal,
    _seal_plaintext,
    _chain_decrypt,
    _chain_plaintext,
    _multi,
    _attachment,
    _wire_record,
    lambda d: records.verify_identity_record(d, allow_test_suites=True),
    lambda d: records.verify_device_list(d, UIK.public, allow_test_suites=True),
    lambda d: records.verify_prekey(d, _VERIFIED, NOW, allow_test_suites=True),
    lambda d: roster.parse_roster_record(d, allow_test_suites=True),
    lambda d: roster.parse_org_key_record(d, allow_test_suites=True),
    parse_conv_event,
    att.AttachmentPointer.decode,
    lambda d: link.LinkRequest.decode(d, SECRET),
    lambda d: link.LinkProvision.decode(d, ME, SECRET),
    lambda d: chain.ReceivingChain.from_bytes(d, allow_test_suites=True),
    lambda d: chain.SendingChain.from_bytes(d, allow_test_suites=True),
    chain.ChainDist.decode,
    seal.SealReplayGuard.from_bytes,
    lambda d: HybridPublicKey.parse(d, allow_test_suites=True),
]


def envelopes_target(data: bytes) -> None:
    if not data:
        return
    with contextlib.suppress(E2EError):
        _OPENERS[data[0] % len(_OPENERS)](data[1:])


def envelopes_seeds() -> list[bytes]:
    """One valid input per opener (the selector byte first)."""
    sending = chain.SendingChain.new(SUITE, SENDER, CONV_ID, 3, NOW, allow_test_suites=True)
    payload, wraps = multi.multi_encrypt(
        SUITE, SENDER, SENDER_DK, CONV_ID, 3, NOW, bytes(16), KVD, 1, b"hi",
        [(ME, 1, 1, MY_KEM_PUB)], allow_test_suites=True,
    )  # fmt: skip
    multi_seed = len(payload).to_bytes(2, "big") + payload + wraps[ME]
    ciphertext, _, _ = att.encrypt_attachment(b"file" * 100, b"\x0b" * 32)
    org = UserIdentityKey(b"\x09" * 32, SUITE_TEST_X25519)
    rost = roster.Roster.first(CONV_ID, roster.KIND_GROUP, [("M8N22HTR", 1)], "t")
    prekey = records.sign_prekey(DK, "M8N22HTR", 1, SUITE_TEST_X25519, 1, 7, MY_KEM_PUB, NOW + 1)
    by_opener = {
        0: seal.seal(
            SUITE,
            SENDER,
            SENDER_DK,
            ME,
            1,
            1,
            MY_KEM_PUB,
            NOW,
            bytes(16),
            1,
            b"hi",
            allow_test_suites=True,
        ),
        2: _SENDING_COPY_ENVELOPE,
        4: multi_seed,
        5: (400).to_bytes(2, "big") + ciphertext,
        6: _DEVICE_LIST,
        7: records.sign_identity_record(UIK, "M8N22HTR", NOW),
        8: _DEVICE_LIST,
        9: prekey,
        10: roster.sign_roster_org(rost, org),
        11: roster.make_org_key_record(1, org, None),
        12: ConvEvent(1, CONV_ID, 2).encode(),
        13: att.AttachmentPointer(bytes(16), bytes(32), bytes(32), 5, name="a.txt").encode(),
        14: link.LinkRequest(SUITE_XWING, ME, DK.public_bytes, XWING_PUB).encode(SECRET),
        15: link.LinkProvision(XWING_UIK.public, (PIN,)).encode(ME, SECRET),
        16: _receiving().to_bytes(),
        17: sending.to_bytes(),
        18: _DIST.encode(),
        19: seal.SealReplayGuard().to_bytes(),
        20: UIK.public.encode(),
    }
    return [bytes([i]) + data for i, data in by_opener.items()]


# The first message of the chain the receiving side starts from (made once, at import).
_SENDING_COPY_ENVELOPE = chain.SendingChain.from_bytes(
    _SENDING.to_bytes(), allow_test_suites=True
).encrypt(SENDER_DK, NOW, bytes(16), KVD, 1, b"hello")

TARGETS = {"frames": frames_target, "envelopes": envelopes_target}


def seeds(target: str) -> list[bytes]:
    return frames_seeds() if target == "frames" else envelopes_seeds()
