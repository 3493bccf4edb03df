"""Seal: round trips, every tampering, wrong recipient, reflection, replay, padding."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from vectors_crypto import OTHER, RECIPIENT, SENDER

from momedod.e2e import padding
from momedod.e2e.envelope import Addr, ContentType
from momedod.e2e.errors import E2EError
from momedod.e2e.seal import DAY_MS, OpenedSeal, SealReplayGuard, open_seal, seal
from momedod.e2e.suites import ALL_SUITES, KemPrivateKey, Suite, kem_keypair_from_seed

NOW = 1_767_225_600_000
MSG_ID = bytes(range(16))
SUITE2 = ALL_SUITES[2]
ALL = [pytest.param(ALL_SUITES[i], id=f"suite{i}") for i in (1, 2, 3)]


class Device:
    """A device with a DK and one SPK (id 1) and one OTPK (id 2) per suite, all from seeds."""

    def __init__(self, addr: Addr, tag: int) -> None:
        self.addr = addr
        self.dk = Ed25519PrivateKey.from_private_bytes(bytes([tag]) * 32)
        self.dk_pub = self.dk.public_key().public_bytes_raw()
        self.keys: dict[tuple[int, int, int], tuple[KemPrivateKey, bytes]] = {}
        for suite_id in (1, 2, 3):
            for kind in (1, 2):
                seed = bytes([tag, suite_id, kind]) * 10 + b"\x00\x00"
                self.keys[(suite_id, kind, kind)] = kem_keypair_from_seed(
                    ALL_SUITES[suite_id], seed
                )

    def public(self, suite: Suite, kind: int = 1) -> bytes:
        return self.keys[(suite.id, kind, kind)][1]

    def private_for(self, suite_id: int, kind: int, key_id: int) -> KemPrivateKey | None:
        entry = self.keys.get((suite_id, kind, key_id))
        return entry[0] if entry else None


A = Device(SENDER, 0xA1)
B = Device(RECIPIENT, 0xB2)
C = Device(OTHER, 0xC3)
DIRECTORY = {d.addr: d.dk_pub for d in (A, B, C)}


def seal_to(
    suite: Suite = SUITE2,
    sender: Device = A,
    to: Device = B,
    kind: int = 1,
    content_type: int = ContentType.TEXT,
    content: bytes = b"hello",
    ts_ms: int = NOW,
) -> bytes:
    return seal(
        suite,
        sender.addr,
        sender.dk,
        to.addr,
        kind,
        kind,
        to.public(suite, kind),
        ts_ms,
        MSG_ID,
        content_type,
        content,
        allow_test_suites=True,
    )


def open_as(
    data: bytes,
    me: Device = B,
    directory: Callable[[Addr], bytes | None] = DIRECTORY.get,
    allow_test_suites: bool = True,
) -> OpenedSeal:
    return open_seal(data, me.addr, me.private_for, directory, allow_test_suites=allow_test_suites)


def reason_of(data: bytes, me: Device = B) -> str:
    with pytest.raises(E2EError) as exc:
        open_as(data, me)
    assert str(exc.value) == "cannot open envelope"
    return exc.value.reason


# -- an independent encoder written from the spec, to build envelopes seal() refuses ------


def addr(a: Addr) -> bytes:
    return a.user_id.encode() + struct.pack(">I", a.device_id)


def blob(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def raw_seal(
    *,
    suite: Suite = SUITE2,
    signer: Ed25519PrivateKey = A.dk,
    sender: Addr = A.addr,
    recipient: Addr = B.addr,
    to: Device = B,
    content_type: int = ContentType.TEXT,
    content: bytes = b"hello",
    pad: bytes | None = None,
    sig_len: int = 64,
    label: bytes = b"momedo/v1/seal\x00",
) -> bytes:
    prefix = struct.pack(">HBBHBI", 0x4D44, 1, 1, suite.id, 1, 1)
    fields = (
        addr(sender)
        + addr(recipient)
        + struct.pack(">Q", NOW)
        + MSG_ID
        + struct.pack(">H", content_type)
        + blob(content)
    )
    if pad is None:
        pad = bytes(-(len(fields) + 4 + 4 + 64) % 256)
    signed = fields + blob(pad)
    sig = signer.sign(label + prefix + signed)[:sig_len]
    payload = signed + blob(sig)
    public = to.keys[(suite.id, 1, 1)][0].public_key()
    info = b"momedo/v1/seal\x00" + prefix + addr(to.addr)
    return prefix + blob(suite.hpke.encrypt(payload, public, info))


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("suite", ALL)
@pytest.mark.parametrize("kind", [1, 2])
def test_seal_round_trip(suite: Suite, kind: int) -> None:
    data = seal_to(suite, kind=kind, content=b"Sitzung um 10 Uhr")
    opened = open_as(data)
    assert opened == OpenedSeal(
        A.addr, B.addr, NOW, MSG_ID, ContentType.TEXT, b"Sitzung um 10 Uhr", kind, kind, suite.id
    )
    # Header | kind | id | u32 len | enc | payload (256 bytes) | tag
    assert len(data) == 6 + 1 + 4 + 4 + suite.enc_size + 256 + 16


def test_short_text_seal_size_for_the_default_suite() -> None:
    assert len(seal_to(SUITE2, content=b"ok")) == 1407


@pytest.mark.parametrize("size", [0, 1, 100, 187, 188, 189, 1000, 4096])
def test_payload_is_padded_to_256_byte_buckets(size: int) -> None:
    data = seal_to(content=bytes(size))
    payload_len = len(data) - 15 - SUITE2.enc_size - 16
    assert payload_len % 256 == 0
    assert payload_len - 256 < 12 + 12 + 8 + 16 + 2 + 4 + size + 4 + 4 + 64 <= payload_len
    assert open_as(data).content == bytes(size)


def test_spec_built_seal_opens_so_the_layout_is_as_documented() -> None:
    assert open_as(raw_seal(content=b"independent")).content == b"independent"


def test_every_content_type_is_allowed_in_a_seal() -> None:
    for ct in ContentType:
        assert open_as(seal_to(content_type=ct)).content_type == ct


# -- tampering ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suite", "bits"),
    [
        pytest.param(SUITE2, (0x01, 0x80), id="suite2"),
        pytest.param(ALL_SUITES[3], (0x01,), id="suite3"),
    ],
)
def test_flipping_any_byte_of_a_seal_is_rejected(suite: Suite, bits: tuple[int, ...]) -> None:
    data = seal_to(suite)
    reasons: set[str] = set()
    start = time.perf_counter()
    for i in range(len(data)):
        for bit in bits:
            tampered = data[:i] + bytes([data[i] ^ bit]) + data[i + 1 :]
            reasons.add(reason_of(tampered))
    elapsed = time.perf_counter() - start
    assert open_as(data).content == b"hello"
    # Header, framing, key lookup and AEAD/KEM failures all show up, with one message.
    assert {"header", "suite", "unknown_key", "decrypt", "malformed"} <= reasons
    assert elapsed < 10, f"{len(bits) * len(data)} attempts took {elapsed:.1f} s"


def test_truncated_seals_are_rejected_at_every_length() -> None:
    data = seal_to(SUITE2)
    for n in range(len(data)):
        reason_of(data[:n])


def test_trailing_bytes_are_rejected() -> None:
    assert reason_of(seal_to() + b"\x00") == "malformed"


def test_oversized_length_field_is_rejected() -> None:
    data = seal_to()
    assert reason_of(data[:11] + b"\xff\xff\xff\xff" + data[15:]) == "malformed"


def test_suite_rewritten_in_the_header_is_rejected() -> None:
    s3 = seal_to(ALL_SUITES[3])
    assert reason_of(s3[:4] + b"\x00\x02" + s3[6:]) == "decrypt"  # B's suite-2 key, other info
    s2 = seal_to(SUITE2)
    assert reason_of(s2[:4] + b"\x00\x03" + s2[6:]) == "malformed"  # too short for suite 3
    with pytest.raises(E2EError) as exc:
        open_as(s2[:4] + b"\x00\x01" + s2[6:], allow_test_suites=False)
    assert exc.value.reason == "suite"


def test_key_of_another_suite_is_never_used() -> None:
    # A key store that ignores the suite hands out B's suite-3 key for a suite-2 Seal.
    def careless(_suite: int, kind: int, key_id: int) -> KemPrivateKey | None:
        return B.private_for(3, kind, key_id)

    with pytest.raises(E2EError) as exc:
        open_seal(seal_to(SUITE2), B.addr, careless, DIRECTORY.get)
    assert exc.value.reason == "key_suite"


def test_key_kind_rewritten_is_rejected() -> None:
    # Both kinds exist for B; the OTPK is the wrong key and the SPK info differs.
    data = seal_to(kind=1)
    assert reason_of(data[:6] + b"\x02" + data[7:]) in {"unknown_key", "decrypt"}


# -- wrong recipient, reflection, forwarding ---------------------------------------------


def test_another_device_cannot_open_a_seal() -> None:
    data = seal_to(to=B)
    assert reason_of(data, me=C) == "decrypt"  # C's own key, C's info: KEM/AEAD fail


def test_seal_opened_under_another_address_fails() -> None:
    data = seal_to(to=B)
    with pytest.raises(E2EError) as exc:
        open_seal(data, C.addr, B.private_for, DIRECTORY.get, allow_test_suites=True)
    assert exc.value.reason == "decrypt"  # info binds the recipient address


def _reencrypt(data: bytes, holder: Device, to: Device) -> bytes:
    """What a malicious recipient can do: decrypt its Seal and re-encrypt the signed payload."""
    prefix = data[:11]
    ct = data[15:]
    private = holder.keys[(SUITE2.id, 1, 1)][0]
    payload = SUITE2.hpke.decrypt(ct, private, b"momedo/v1/seal\x00" + prefix + addr(holder.addr))
    public = to.keys[(SUITE2.id, 1, 1)][0].public_key()
    new_ct = SUITE2.hpke.encrypt(payload, public, b"momedo/v1/seal\x00" + prefix + addr(to.addr))
    return prefix + blob(new_ct)


def test_seal_reflected_to_its_sender_is_rejected() -> None:
    reflected = _reencrypt(seal_to(sender=A, to=B), holder=B, to=A)
    assert reason_of(reflected, me=A) == "recipient"


def test_seal_forwarded_to_a_third_device_is_rejected() -> None:
    forwarded = _reencrypt(seal_to(sender=A, to=B), holder=B, to=C)
    assert reason_of(forwarded, me=C) == "recipient"


def test_signed_recipient_must_be_me() -> None:
    assert reason_of(raw_seal(recipient=C.addr)) == "recipient"


# -- sender and signature ------------------------------------------------------------------


def test_unknown_sender_device_is_rejected() -> None:
    with pytest.raises(E2EError) as exc:
        open_as(seal_to(), directory=lambda _a: None)
    assert exc.value.reason == "unknown_sender"


def test_signature_by_another_device_key_is_rejected() -> None:
    assert reason_of(raw_seal(signer=C.dk, sender=A.addr)) == "signature"


def test_chain_signature_does_not_verify_as_a_seal_signature() -> None:
    assert reason_of(raw_seal(label=b"momedo/v1/conv\x00")) == "signature"


def test_sender_key_from_the_directory_must_match() -> None:
    with pytest.raises(E2EError) as exc:
        open_as(seal_to(), directory=lambda _a: C.dk_pub)
    assert exc.value.reason == "signature"


def test_short_signature_is_rejected() -> None:
    pad_len = 256 - (12 + 12 + 8 + 16 + 2 + 4 + 5 + 4 + 4 + 64)
    assert reason_of(raw_seal(sig_len=63, pad=bytes(pad_len + 1))) == "malformed"


def test_unknown_content_type_is_rejected() -> None:
    assert reason_of(raw_seal(content_type=12)) == "content_type"
    with pytest.raises(ValueError):
        seal_to(content_type=12)


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(E2EError) as exc:
        open_seal(seal_to(), B.addr, lambda *_: None, DIRECTORY.get)
    assert exc.value.reason == "unknown_key"


def test_test_suite_is_refused_by_default() -> None:
    with pytest.raises(ValueError):
        seal(
            ALL_SUITES[1], A.addr, A.dk, B.addr, 1, 1, B.public(ALL_SUITES[1]), NOW, MSG_ID, 1, b""
        )
    with pytest.raises(E2EError) as exc:
        open_as(seal_to(ALL_SUITES[1]), allow_test_suites=False)
    assert exc.value.reason == "suite"


# -- padding ----------------------------------------------------------------------------------


def test_non_zero_padding_is_rejected() -> None:
    good = raw_seal()
    assert open_as(good).content == b"hello"
    pad_len = 256 - (12 + 12 + 8 + 16 + 2 + 4 + 5 + 4 + 4 + 64)
    assert reason_of(raw_seal(pad=bytes(pad_len - 1) + b"\x01")) == "padding"


def test_payload_not_a_multiple_of_256_is_rejected() -> None:
    content = bytes(300)
    pad_len = 512 - (12 + 12 + 8 + 16 + 2 + 4 + 300 + 4 + 4 + 64)
    assert open_as(raw_seal(content=content, pad=bytes(pad_len))).content == content
    assert reason_of(raw_seal(content=content, pad=bytes(pad_len - 1))) == "padding"
    assert reason_of(raw_seal(content=content, pad=bytes(pad_len + 1))) == "padding"
    # Shorter than one bucket cannot even hold a payload.
    assert reason_of(raw_seal(pad=b"")) == "malformed"


def test_larger_zero_padding_is_accepted() -> None:
    pad_len = 256 - (12 + 12 + 8 + 16 + 2 + 4 + 5 + 4 + 4 + 64)
    assert open_as(raw_seal(pad=bytes(pad_len + 256))).content == b"hello"


def test_padded_length_and_padding_for() -> None:
    assert [padding.padded_length(n) for n in (0, 1, 255, 256, 257)] == [0, 256, 256, 256, 512]
    assert padding.padding_for(100) == 156
    assert padding.padding_for(512) == 0
    assert padding.is_zero(bytes(10)) and not padding.is_zero(b"\x00\x01")
    assert padding.is_zero(b"")


def test_padme_known_values() -> None:
    # Hand-computed from PURBs Algorithm 1.
    expected = {0: 0, 1: 1, 7: 7, 8: 8, 9: 10, 100: 104, 1000: 1024, 1025: 1088, 65_537: 67_584}
    assert {n: padding.padme(n) for n in expected} == expected
    assert padding.padme(1_000_000) == 1_015_808


def test_padme_properties() -> None:
    previous = 0
    outputs = set()
    for n in range(1, 70_000):
        p = padding.padme(n)
        assert n <= p <= n * 1.12
        assert p >= previous  # monotonic
        assert padding.padme(p) == p  # padded lengths are fixed points
        previous = p
        outputs.add(p)
    # O(log log n) bits of leakage: far fewer distinct lengths than inputs.
    assert len(outputs) < 1_200


# -- replay -------------------------------------------------------------------------------------


def test_replay_is_rejected_also_after_restart() -> None:
    guard = SealReplayGuard()
    opened = open_as(seal_to())
    guard.accept(opened.sender, opened.msg_id, opened.ts_ms, NOW)
    with pytest.raises(E2EError) as exc:
        guard.accept(opened.sender, opened.msg_id, opened.ts_ms, NOW + 1000)
    assert exc.value.reason == "replay"

    restored = SealReplayGuard.from_bytes(guard.to_bytes())
    with pytest.raises(E2EError) as exc:
        restored.accept(opened.sender, opened.msg_id, opened.ts_ms, NOW + 60_000)
    assert exc.value.reason == "replay"
    # Another sender device may use the same msg_id.
    restored.accept(C.addr, opened.msg_id, opened.ts_ms, NOW)
    assert len(restored) == 2


def test_check_does_not_remember() -> None:
    guard = SealReplayGuard()
    guard.check(A.addr, MSG_ID, NOW, NOW)
    guard.accept(A.addr, MSG_ID, NOW, NOW)


def test_stale_and_future_timestamps_are_rejected() -> None:
    guard = SealReplayGuard()
    for ts, reason in ((NOW - 30 * DAY_MS - 1, "stale"), (NOW + DAY_MS + 1, "future")):
        with pytest.raises(E2EError) as exc:
            guard.accept(A.addr, bytes(16), ts, NOW)
        assert exc.value.reason == reason
    assert len(guard) == 0
    guard.accept(A.addr, b"a" * 16, NOW - 30 * DAY_MS, NOW)
    guard.accept(A.addr, b"b" * 16, NOW + DAY_MS, NOW)


def test_replay_stays_rejected_after_ids_expire() -> None:
    guard = SealReplayGuard()
    ts = NOW + DAY_MS  # the worst case: a timestamp a day in the future
    guard.accept(A.addr, MSG_ID, ts, NOW)
    for later in (NOW + 31 * DAY_MS, NOW + 35 * DAY_MS, NOW + 36 * DAY_MS):
        guard.prune(later)
        with pytest.raises(E2EError) as exc:
            guard.accept(A.addr, MSG_ID, ts, later)
        assert exc.value.reason in {"replay", "stale"}
    assert len(guard) == 0  # forgotten after 35 days, but by then ts is stale


def test_prune_keeps_recent_ids() -> None:
    guard = SealReplayGuard()
    guard.accept(A.addr, b"1" * 16, NOW, NOW)
    guard.accept(A.addr, b"2" * 16, NOW + 10 * DAY_MS, NOW + 10 * DAY_MS)
    guard.prune(NOW + 36 * DAY_MS)
    assert len(guard) == 1


def test_corrupt_guard_state_is_rejected() -> None:
    guard = SealReplayGuard()
    guard.accept(A.addr, MSG_ID, NOW, NOW)
    data = guard.to_bytes()
    for bad in (data[:-1], data + b"\x00", b"\x03" + data[1:], b""):
        with pytest.raises(E2EError) as exc:
            SealReplayGuard.from_bytes(bad)
        assert exc.value.reason == "state"
