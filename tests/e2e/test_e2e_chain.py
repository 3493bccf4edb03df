"""Per-sender chains: round trips, tampering without state change, replay, out-of-order
delivery, forward secrecy, domain separation, rotation and persistence."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from vectors_crypto import OTHER, RECIPIENT, SENDER

from momedod.e2e import chain
from momedod.e2e.chain import (
    MAX_SKIPPED,
    ChainDist,
    ReceivingChain,
    SendingChain,
    chain_step,
    needs_rotation,
    peek_chain,
)
from momedod.e2e.envelope import Addr, ContentType
from momedod.e2e.errors import E2EError
from momedod.e2e.seal import DAY_MS, open_seal, seal
from momedod.e2e.suites import ALL_SUITES, Suite, kem_keypair_from_seed

NOW = 1_767_225_600_000
CONV = bytes(range(16))
EPOCH = 3
KVD = b"k" * 16
SUITE2 = ALL_SUITES[2]
ALL = [pytest.param(ALL_SUITES[i], id=f"suite{i}") for i in (1, 2, 3)]

OWNER_DK = Ed25519PrivateKey.from_private_bytes(b"\xa1" * 32)
OWNER_PUB = OWNER_DK.public_key().public_bytes_raw()
MEMBER_DK = Ed25519PrivateKey.from_private_bytes(b"\xc3" * 32)


def msg_id(i: int) -> bytes:
    return i.to_bytes(16, "big")


def pair(suite: Suite = SUITE2) -> tuple[SendingChain, ReceivingChain]:
    sending = SendingChain.new(suite, SENDER, CONV, EPOCH, NOW, allow_test_suites=True)
    receiving = ReceivingChain.from_dist(
        ChainDist.decode(sending.to_dist().encode()), SENDER, suite.id, allow_test_suites=True
    )
    return sending, receiving


def send(sending: SendingChain, i: int, content: bytes = b"hi", ct: int = 1) -> bytes:
    return sending.encrypt(OWNER_DK, NOW + i, msg_id(i), KVD, ct, content)


def receive(receiving: ReceivingChain, envelope: bytes, now_ms: int = NOW) -> chain.OpenedConv:
    return receiving.decrypt(envelope, OWNER_PUB, now_ms)


def rejected(receiving: ReceivingChain, envelope: bytes, key: bytes = OWNER_PUB) -> str:
    """Assert the envelope is rejected without any change to the chain; return the reason."""
    before = receiving.to_bytes()
    with pytest.raises(E2EError) as exc:
        receiving.decrypt(envelope, key, NOW)
    assert str(exc.value) == "cannot open envelope"
    assert receiving.to_bytes() == before, f"state changed on failure ({exc.value.reason})"
    return exc.value.reason


# -- an independent encoder written from the spec, to build envelopes the library refuses --


def raw_envelope(
    receiving: ReceivingChain,
    n: int,
    *,
    sender: Addr = SENDER,
    signer: Ed25519PrivateKey = OWNER_DK,
    content_type: int = 1,
    content: bytes = b"hi",
    conv_id: bytes = CONV,
    epoch: int = EPOCH,
    pad: bytes | None = None,
    sig: bytes | None = None,
    label: bytes = b"momedo/v1/conv\x00",
) -> bytes:
    """Chain envelope n of ``receiving``'s chain, derived from its serialised CK (test only)."""
    suite = receiving.suite
    state = receiving.to_bytes()
    # state: kind, version, suite(2), Addr(12), conv(16), epoch(8), chain_id(16), n(4), ck(32)
    ck = state[4 + 12 + 16 + 8 + 16 + 4 : 4 + 12 + 16 + 8 + 16 + 4 + 32]
    for _ in range(n - receiving.n):
        ck = hmac.digest(ck, b"\x02", hashlib.sha256)
    mk = hmac.digest(ck, b"\x01", hashlib.sha256)
    chain_id = receiving.chain_id
    okm = HKDF(
        suite.hash, 44, chain_id, b"momedo/v1/chain-msg\x00" + struct.pack(">H", suite.id)
    ).derive(mk)
    aad = struct.pack(">HBBH", 0x4D44, 1, 2, suite.id) + chain_id + struct.pack(">I", n)
    fields = (
        conv_id
        + struct.pack(">Q", epoch)
        + sender.user_id.encode()
        + struct.pack(">IQ", sender.device_id, NOW)
        + msg_id(n)
        + KVD
        + struct.pack(">HI", content_type, len(content))
        + content
    )
    if pad is None:
        pad = bytes(-(len(fields) + 4 + 4 + 64) % 256)
    signed = fields + struct.pack(">I", len(pad)) + pad
    if sig is None:
        sig = signer.sign(label + aad + signed)
    payload = signed + struct.pack(">I", len(sig)) + sig
    ct = suite.aead(okm[:32]).encrypt(okm[32:], payload, aad)
    return aad + struct.pack(">I", len(ct)) + ct


# -- round trips and layout -----------------------------------------------------------------


@pytest.mark.parametrize("suite", ALL)
def test_chain_round_trip(suite: Suite) -> None:
    sending, receiving = pair(suite)
    for i in range(5):
        envelope = send(sending, i, f"message {i}".encode())
        assert len(envelope) == 6 + 16 + 4 + 4 + 256 + 16
        opened = receive(receiving, envelope)
        assert (opened.content, opened.n, opened.sender, opened.msg_id) == (
            f"message {i}".encode(),
            i,
            SENDER,
            msg_id(i),
        )
        assert (opened.conv_id, opened.epoch, opened.kvd, opened.ts_ms) == (
            CONV,
            EPOCH,
            KVD,
            NOW + i,
        )
    assert sending.n == receiving.n == 5
    assert receiving.skipped_count == 0


def test_spec_built_envelope_decrypts_so_the_layout_is_as_documented() -> None:
    _, receiving = pair()
    assert receive(receiving, raw_envelope(receiving, 0, content=b"spec")).content == b"spec"


def test_chain_dist_round_trip_and_strict_parsing() -> None:
    sending, _ = pair()
    dist = sending.to_dist()
    data = dist.encode()
    assert len(data) == 96
    assert ChainDist.decode(data) == dist
    for bad in (data[:-1], data + b"\x00", data[:24] + bytes(16) + data[40:]):
        with pytest.raises(E2EError) as exc:
            ChainDist.decode(bad)
        assert exc.value.reason == "chain_dist"


def test_chain_dist_travels_in_a_seal_and_the_seal_names_owner_and_suite() -> None:
    sending, _ = pair()
    kem_private, kem_public = kem_keypair_from_seed(SUITE2, bytes(32))
    sealed = seal(
        SUITE2, SENDER, OWNER_DK, RECIPIENT, 2, 9, kem_public, NOW, msg_id(0),
        ContentType.CHAIN_DIST, sending.to_dist().encode(),
    )  # fmt: skip
    opened = open_seal(sealed, RECIPIENT, lambda *_: kem_private, {SENDER: OWNER_PUB}.get)
    receiving = ReceivingChain.from_dist(
        ChainDist.decode(opened.content), opened.sender, opened.suite
    )
    assert receive(receiving, send(sending, 0, b"via seal")).content == b"via seal"


def test_peek_chain_finds_the_chain() -> None:
    sending, _ = pair()
    assert peek_chain(send(sending, 0)) == (2, sending.chain_id, 0)
    with pytest.raises(E2EError):
        peek_chain(b"MD\x01\x01\x00\x02" + bytes(20))


# -- tampering -------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", ALL)
def test_flipping_any_byte_of_a_chain_envelope_is_rejected_without_state_change(
    suite: Suite,
) -> None:
    sending, receiving = pair(suite)
    receive(receiving, send(sending, 0))
    envelope = send(sending, 1)
    reasons: set[str] = set()
    start = time.perf_counter()
    for i in range(len(envelope)):
        for bit in (0x01, 0x80):
            reasons.add(
                rejected(receiving, envelope[:i] + bytes([envelope[i] ^ bit]) + envelope[i + 1 :])
            )
    elapsed = time.perf_counter() - start
    assert {"header", "suite", "chain_id", "decrypt", "malformed", "replay", "too_far"} <= reasons
    assert receive(receiving, envelope).n == 1  # the original still works afterwards
    assert elapsed < 5


def test_truncation_and_trailing_bytes_are_rejected() -> None:
    sending, receiving = pair()
    envelope = send(sending, 0)
    for n in range(len(envelope)):
        rejected(receiving, envelope[:n])
    assert rejected(receiving, envelope + b"\x00") == "malformed"
    assert receive(receiving, envelope).n == 0


def test_suite_rewritten_in_the_header_is_rejected() -> None:
    sending, receiving = pair()
    envelope = send(sending, 0)
    for suite_id in (1, 3):
        assert (
            rejected(receiving, envelope[:4] + struct.pack(">H", suite_id) + envelope[6:])
            == "suite"
        )


def test_wrong_chain_id_is_rejected() -> None:
    _, receiving = pair()
    other, _ = pair()
    assert rejected(receiving, send(other, 0)) == "chain_id"


# -- domain separation and sender binding ---------------------------------------------------


@pytest.mark.parametrize(
    "ct", [ContentType.CHAIN_DIST, ContentType.SYNC, ContentType.LINK_PROVISION]
)
def test_seal_only_content_is_rejected_inside_a_chain(ct: ContentType) -> None:
    sending, receiving = pair()
    with pytest.raises(ValueError):
        send(sending, 0, ct=ct)
    assert sending.n == 0  # the refused message did not use up an index
    assert rejected(receiving, raw_envelope(receiving, 0, content_type=ct)) == "content_type"


def test_unknown_content_type_is_rejected() -> None:
    sending, receiving = pair()
    with pytest.raises(ValueError):
        send(sending, 0, ct=0)
    assert rejected(receiving, raw_envelope(receiving, 0, content_type=12)) == "content_type"


def test_member_cannot_send_as_the_chain_owner() -> None:
    # Every member holds CK, so a member can encrypt; only the DK signature stops it.
    _, receiving = pair()
    forged_sender = raw_envelope(receiving, 0, sender=OTHER, signer=MEMBER_DK)
    assert rejected(receiving, forged_sender) == "sender"
    forged_sig = raw_envelope(receiving, 0, sender=SENDER, signer=MEMBER_DK)
    assert rejected(receiving, forged_sig) == "signature"
    assert (
        rejected(
            receiving, raw_envelope(receiving, 0), key=MEMBER_DK.public_key().public_bytes_raw()
        )
        == "signature"
    )


def test_seal_signature_does_not_verify_as_a_chain_signature() -> None:
    # The owner's signature over exactly the bytes a Chain signs, but under the Seal label
    # (i.e. a Seal signature), is rejected: the labels separate the two domains.
    _, receiving = pair()
    as_seal = raw_envelope(receiving, 0, label=b"momedo/v1/seal\x00")
    assert rejected(receiving, as_seal) == "signature"
    assert rejected(receiving, raw_envelope(receiving, 0, sig=bytes(64))) == "signature"
    assert receive(receiving, raw_envelope(receiving, 0)).n == 0  # the Chain label works


def test_wrong_conversation_or_epoch_is_rejected() -> None:
    _, receiving = pair()
    assert rejected(receiving, raw_envelope(receiving, 0, conv_id=b"x" * 16)) == "conv_id"
    assert rejected(receiving, raw_envelope(receiving, 0, epoch=EPOCH + 1)) == "epoch"


def test_chain_distributed_for_another_epoch_rejects_this_epoch() -> None:
    sending, _ = pair()
    dist = dataclasses.replace(sending.to_dist(), epoch=EPOCH + 1)
    receiving = ReceivingChain.from_dist(dist, SENDER, SUITE2.id)
    assert rejected(receiving, send(sending, 0)) == "epoch"


def test_chain_dist_from_another_device_does_not_make_it_the_owner() -> None:
    sending, _ = pair()
    receiving = ReceivingChain.from_dist(sending.to_dist(), OTHER, SUITE2.id)
    assert rejected(receiving, send(sending, 0)) == "sender"


# -- padding ----------------------------------------------------------------------------------


def test_non_zero_padding_and_bad_lengths_are_rejected() -> None:
    _, receiving = pair()
    fixed = 16 + 8 + 12 + 8 + 16 + 16 + 2 + 4 + 2 + 4 + 4 + 64
    good_pad = 256 - fixed
    assert (
        rejected(receiving, raw_envelope(receiving, 0, pad=bytes(good_pad - 1) + b"\x01"))
        == "padding"
    )
    assert rejected(receiving, raw_envelope(receiving, 0, pad=bytes(good_pad + 1))) == "padding"
    assert rejected(receiving, raw_envelope(receiving, 0, pad=bytes(good_pad - 1))) == "malformed"
    short_sig = raw_envelope(receiving, 0, pad=bytes(good_pad + 1), sig=bytes(63))
    assert rejected(receiving, short_sig) == "malformed"
    assert receive(receiving, raw_envelope(receiving, 0, pad=bytes(good_pad + 256))).n == 0


# -- replay, out of order, window ------------------------------------------------------------


def test_replay_of_an_index_is_rejected() -> None:
    sending, receiving = pair()
    first = send(sending, 0)
    receive(receiving, first)
    assert rejected(receiving, first) == "replay"
    second = send(sending, 1)
    receive(receiving, second)
    assert rejected(receiving, second) == "replay"


def test_out_of_order_delivery_within_the_window() -> None:
    sending, receiving = pair()
    envelopes = [send(sending, i, bytes([i])) for i in range(10)]
    for i in (5, 2, 9, 0, 1, 3, 4, 6, 7, 8):
        assert receive(receiving, envelopes[i]).content == bytes([i])
    assert receiving.skipped_count == 0
    for envelope in envelopes:
        assert rejected(receiving, envelope) == "replay"


def test_skipping_exactly_the_window_works_and_one_more_is_rejected() -> None:
    sending, receiving = pair()
    envelopes = [send(sending, i) for i in range(MAX_SKIPPED + 2)]
    assert rejected(receiving, envelopes[MAX_SKIPPED + 1]) == "too_far"
    assert receive(receiving, envelopes[MAX_SKIPPED]).n == MAX_SKIPPED
    assert receiving.skipped_count == MAX_SKIPPED
    assert receive(receiving, envelopes[0]).n == 0
    assert receive(receiving, envelopes[MAX_SKIPPED + 1]).n == MAX_SKIPPED + 1


def test_oldest_skipped_keys_are_dropped_beyond_the_limit() -> None:
    sending, receiving = pair()
    envelopes = [send(sending, i) for i in range(MAX_SKIPPED + 12)]
    receive(receiving, envelopes[MAX_SKIPPED])  # skips 0..999
    receive(receiving, envelopes[MAX_SKIPPED + 11])  # skips 1001..1010: 10 more
    assert receiving.skipped_count == MAX_SKIPPED
    assert receiving.skipped_indices()[0] == 10
    for i in range(10):
        assert rejected(receiving, envelopes[i]) == "replay"
    assert receive(receiving, envelopes[10]).n == 10


def test_skipped_keys_expire_after_14_days() -> None:
    sending, receiving = pair()
    envelopes = [send(sending, i) for i in range(4)]
    receive(receiving, envelopes[2], now_ms=NOW)  # skips 0 and 1
    receive(receiving, envelopes[3], now_ms=NOW + 10 * DAY_MS)
    assert receiving.expire_skipped(NOW + 14 * DAY_MS) == 0
    assert receiving.expire_skipped(NOW + 14 * DAY_MS + 1) == 2
    assert rejected(receiving, envelopes[0]) == "replay"


def test_newcomer_reads_only_from_the_current_index() -> None:
    sending, _ = pair()
    old = [send(sending, i) for i in range(3)]
    newcomer = ReceivingChain.from_dist(sending.to_dist(), SENDER, SUITE2.id)
    assert newcomer.n == 3
    for envelope in old:
        assert rejected(newcomer, envelope) == "replay"
    assert receive(newcomer, send(sending, 3)).n == 3


# -- forward secrecy ------------------------------------------------------------------------


def test_used_keys_are_gone_from_receiving_state() -> None:
    sending, receiving = pair()
    ck0 = sending.to_dist().ck
    mk0, ck1 = chain_step(ck0)
    mk1, ck2 = chain_step(ck1)
    envelopes = [send(sending, i) for i in range(3)]
    receive(receiving, envelopes[1])  # keeps MK_0 for the skipped index 0
    state = receiving.to_bytes()
    assert mk0 in state and ck2 in state
    assert mk1 not in state and ck1 not in state and ck0 not in state
    snapshot = receiving.to_bytes()
    receive(receiving, envelopes[0])
    state = receiving.to_bytes()
    assert mk0 not in state and mk1 not in state
    # A snapshot taken after a message was read cannot read it again.
    later = ReceivingChain.from_bytes(receiving.to_bytes())
    for envelope in envelopes[:2]:
        assert rejected(later, envelope) == "replay"
    # (The earlier snapshot still holds MK_0: snapshots must be replaced, not kept.)
    assert receive(ReceivingChain.from_bytes(snapshot), envelopes[0]).n == 0


def test_used_keys_are_gone_from_sending_state() -> None:
    sending, _ = pair()
    ck0 = sending.to_dist().ck
    mk0, ck1 = chain_step(ck0)
    send(sending, 0)
    state = sending.to_bytes()
    assert ck0 not in state and mk0 not in state and ck1 in state


# -- rotation and persistence ---------------------------------------------------------------


def test_rotation_after_7_days_or_1000_messages() -> None:
    sending, _ = pair()
    assert not needs_rotation(sending, NOW + 7 * DAY_MS - 1)
    assert needs_rotation(sending, NOW + 7 * DAY_MS)
    for i in range(999):
        send(sending, i)
    assert not needs_rotation(sending, NOW)
    send(sending, 999)
    assert needs_rotation(sending, NOW)
    successor = SendingChain.new(SUITE2, SENDER, CONV, EPOCH + 1, NOW, previous=sending)
    dist = successor.to_dist()
    assert (dist.prev_chain_id, dist.prev_final_n, dist.n) == (sending.chain_id, 1000, 0)
    assert dist.chain_id != sending.chain_id and dist.ck != sending.to_dist().ck
    assert not needs_rotation(successor, NOW)


def test_state_round_trips_through_bytes() -> None:
    sending, receiving = pair()
    envelopes = [send(sending, i) for i in range(4)]
    receive(receiving, envelopes[3])
    sending2 = SendingChain.from_bytes(sending.to_bytes())
    receiving2 = ReceivingChain.from_bytes(receiving.to_bytes())
    assert sending2.to_bytes() == sending.to_bytes()
    assert receiving2.to_bytes() == receiving.to_bytes()
    assert receive(receiving2, envelopes[1]).n == 1
    assert receive(receiving2, send(sending2, 4)).n == 4


def test_corrupt_state_is_rejected() -> None:
    sending, receiving = pair()
    receive(receiving, send(sending, 2))
    for data, cls in ((sending.to_bytes(), SendingChain), (receiving.to_bytes(), ReceivingChain)):
        for bad in (data[:-1], data + b"\x00", b"\x09" + data[1:], data[:1] + b"\x07" + data[2:]):
            with pytest.raises(E2EError) as exc:
                cls.from_bytes(bad)
            assert exc.value.reason == "state"
    with pytest.raises(E2EError):  # a receiving state is not a sending state
        SendingChain.from_bytes(receiving.to_bytes())


def test_test_suite_chains_are_refused_by_default() -> None:
    sending, receiving = pair(ALL_SUITES[1])
    with pytest.raises(ValueError):
        SendingChain.new(ALL_SUITES[1], SENDER, CONV, EPOCH, NOW)
    with pytest.raises(E2EError):
        ReceivingChain.from_dist(sending.to_dist(), SENDER, 1)
    with pytest.raises(E2EError):
        ReceivingChain.from_bytes(receiving.to_bytes())
    assert ReceivingChain.from_bytes(receiving.to_bytes(), allow_test_suites=True).n == 0


def test_message_keys_follow_the_suite_hash() -> None:
    mk = b"m" * 32
    cid = b"c" * 16
    k2, n2 = chain.message_key_nonce(ALL_SUITES[2], mk, cid)
    k3, n3 = chain.message_key_nonce(ALL_SUITES[3], mk, cid)
    assert len(k2) == len(k3) == 32 and len(n2) == len(n3) == 12
    assert k2 != k3
    expected = HKDF(ALL_SUITES[3].hash, 44, cid, b"momedo/v1/chain-msg\x00\x00\x03").derive(mk)
    assert k3 + n3 == expected
