"""End-to-end envelopes and records under hostile input.

Every opener and parser of momedod.e2e gets arbitrary bytes, mutated valid encodings and --
where a MAC or AEAD would stop random bytes at the door -- *correctly encrypted* hostile
plaintexts, and must raise E2EError (the documented exception) and nothing else. Stateful
openers (ReceivingChain) must be unchanged after a failure.
"""

from __future__ import annotations

import hashlib
from functools import partial

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fuzz_strategies import mutated
from hypothesis import given
from hypothesis import strategies as st

from momedod.e2e import attachment as att
from momedod.e2e import chain, link, multi, records, roster, seal
from momedod.e2e.envelope import Addr, ContentType, EnvelopeType, header
from momedod.e2e.errors import E2EError
from momedod.e2e.event import ConvEvent, parse_conv_event
from momedod.e2e.identity import DeviceKey, HybridPublicKey, UserIdentityKey
from momedod.e2e.padding import padding_for
from momedod.e2e.suites import ALL_SUITES, SUITE_TEST_X25519, SUITE_XWING, kem_keypair_from_seed
from momedod.protocol import records as wire_records
from momedod.protocol.encoding import Writer
from momedod.protocol.errors import ErrorCode, ProtocolError

NOW = 1_767_225_600_000
SUITE = ALL_SUITES[SUITE_TEST_X25519]  # X25519 HPKE: fast, and the parsing is suite-independent
SENDER = Addr("M8N22HTR", 1)
ME = Addr("Q7AWGNX9", 2)
SENDER_DK = Ed25519PrivateKey.from_private_bytes(b"\xa1" * 32)
SENDER_DK_PUB = SENDER_DK.public_key().public_bytes_raw()
MY_KEM, MY_KEM_PUB = kem_keypair_from_seed(SUITE, b"\xb2" * 32)
CONV_ID = b"\xc0" * 16
KVD = b"\x0d" * 16

payload_bytes = st.binary(max_size=700)
content_types = st.sampled_from([int(c) for c in ContentType] + [0, 99])


def my_key(suite_id: int, kind: int, key_id: int):  # type: ignore[no-untyped-def]
    return MY_KEM if (suite_id, key_id) == (SUITE.id, 1) else None


def directory(addr: Addr) -> bytes | None:
    return SENDER_DK_PUB if addr == SENDER else None


def only_e2e_error(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Call ``fn``; E2EError is fine, any other exception fails the test."""
    try:
        return fn(*args, **kwargs)
    except E2EError as exc:
        assert exc.reason and str(exc)
        return None


# -- Seal ------------------------------------------------------------------------------------


def make_seal(content_type: int, content: bytes) -> bytes:
    return seal.seal(
        SUITE, SENDER, SENDER_DK, ME, 1, 1, MY_KEM_PUB, NOW, b"\x01" * 16, content_type, content,
        allow_test_suites=True,
    )  # fmt: skip


def seal_plaintext(content_type: int, content: bytes) -> bytes:
    """A correctly signed SealPayload, as :func:`seal.seal` builds it."""
    prefix = Writer().u8(1).u32(1).getvalue(header(EnvelopeType.SEAL, SUITE.id))
    w = Writer()
    SENDER.write(w)
    ME.write(w)
    w.u64(NOW).fixed(b"\x01" * 16, 16).u16(content_type).bytes_(content)
    w.bytes_(bytes(padding_for(len(w) + 4 + 68)))
    signed = w.getvalue()
    return Writer().bytes_(SENDER_DK.sign(seal.SEAL_LABEL + prefix + signed)).getvalue(signed)


def seal_around(plaintext: bytes) -> bytes:
    """A Seal whose HPKE layer is valid for us, around any plaintext."""
    prefix = Writer().u8(1).u32(1).getvalue(header(EnvelopeType.SEAL, SUITE.id))
    info = seal.SEAL_LABEL + prefix + ME.encode()
    ct = SUITE.hpke.encrypt(plaintext, MY_KEM.public_key(), info)  # type: ignore[union-attr]
    return Writer().bytes_(ct).getvalue(prefix)


def open_my_seal(data: bytes) -> seal.OpenedSeal | None:
    return only_e2e_error(seal.open_seal, data, ME, my_key, directory, allow_test_suites=True)


def test_seal_helpers_build_openable_seals() -> None:
    assert open_my_seal(make_seal(ContentType.TEXT, b"hi")) is not None
    assert open_my_seal(seal_around(seal_plaintext(ContentType.TEXT, b"hi"))) is not None


@given(st.binary(max_size=300))
def test_open_seal_arbitrary_bytes(data: bytes) -> None:
    assert open_my_seal(data) is None


@given(st.data(), content_types.filter(lambda c: 1 <= c <= 10), payload_bytes)
def test_open_seal_mutated(data: st.DataObject, content_type: int, content: bytes) -> None:
    open_my_seal(data.draw(mutated(make_seal(content_type, content))))


@given(st.data(), content_types, payload_bytes)
def test_open_seal_hostile_plaintext(
    data: st.DataObject, content_type: int, content: bytes
) -> None:
    plain = seal_plaintext(content_type, content)
    if data.draw(st.booleans()):
        plain = data.draw(mutated(plain))
    opened = open_my_seal(seal_around(plain))
    if opened is not None:
        assert (opened.sender, opened.recipient, opened.content) == (SENDER, ME, content)


# -- Chain -----------------------------------------------------------------------------------


def new_chains() -> tuple[chain.SendingChain, chain.ReceivingChain]:
    sending = chain.SendingChain.new(SUITE, SENDER, CONV_ID, 3, NOW, allow_test_suites=True)
    receiving = chain.ReceivingChain.from_dist(
        sending.to_dist(), SENDER, SUITE.id, allow_test_suites=True
    )
    return sending, receiving


def chain_around(sending: chain.SendingChain, n: int, plaintext: bytes) -> bytes:
    """A Chain envelope with index ``n`` of ``sending`` whose AEAD is valid, around anything."""
    ck = chain.ChainDist.decode(sending.to_dist().encode()).ck
    for _ in range(n - sending.n + 1):
        mk, ck = chain.chain_step(ck)
    aad = Writer().fixed(sending.chain_id, 16).u32(n).getvalue(header(EnvelopeType.CHAIN, SUITE.id))
    key, nonce = chain.message_key_nonce(SUITE, mk, sending.chain_id)
    return Writer().bytes_(SUITE.aead_cipher(key).encrypt(nonce, plaintext, aad)).getvalue(aad)


def conv_plaintext(sending: chain.SendingChain, n: int, content_type: int, content: bytes) -> bytes:
    aad = Writer().fixed(sending.chain_id, 16).u32(n).getvalue(header(EnvelopeType.CHAIN, SUITE.id))
    signed = chain.conv_payload_body(
        CONV_ID, 3, SENDER, NOW, b"\x02" * 16, KVD, content_type, content
    )
    sig = SENDER_DK.sign(chain.CONV_LABEL + aad + signed)
    return Writer().bytes_(sig).getvalue(signed)


def decrypt_keeps_state_on_failure(receiving: chain.ReceivingChain, envelope: bytes) -> None:
    before = receiving.to_bytes()
    opened = only_e2e_error(receiving.decrypt, envelope, SENDER_DK_PUB, NOW)
    if opened is None:
        assert receiving.to_bytes() == before


def test_chain_helpers_build_decryptable_envelopes() -> None:
    sending, receiving = new_chains()
    plain = conv_plaintext(sending, 2, ContentType.TEXT, b"x")
    assert receiving.decrypt(chain_around(sending, 2, plain), SENDER_DK_PUB, NOW).content == b"x"
    assert receiving.skipped_indices() == [0, 1]


@given(st.binary(max_size=400))
def test_chain_decrypt_arbitrary_bytes(data: bytes) -> None:
    _, receiving = new_chains()
    decrypt_keeps_state_on_failure(receiving, data)


@given(st.data(), payload_bytes)
def test_chain_decrypt_mutated(data: st.DataObject, content: bytes) -> None:
    sending, receiving = new_chains()
    envelopes = [sending.encrypt(SENDER_DK, NOW, b"\x03" * 16, KVD, 1, content) for _ in range(3)]
    decrypt_keeps_state_on_failure(receiving, envelopes[2])  # leaves 0 and 1 skipped
    decrypt_keeps_state_on_failure(receiving, data.draw(mutated(envelopes[0])))
    decrypt_keeps_state_on_failure(receiving, data.draw(mutated(envelopes[2])))


@given(st.data(), st.integers(0, 5), content_types, payload_bytes)
def test_chain_decrypt_hostile_plaintext(
    data: st.DataObject, n: int, content_type: int, content: bytes
) -> None:
    sending, receiving = new_chains()
    plain = conv_plaintext(sending, n, content_type, content)
    if data.draw(st.booleans()):
        plain = data.draw(mutated(plain))
    decrypt_keeps_state_on_failure(receiving, chain_around(sending, n, plain))


@given(st.binary(max_size=200))
def test_chain_state_and_dist_parsers(data: bytes) -> None:
    only_e2e_error(chain.ChainDist.decode, data)
    only_e2e_error(chain.ReceivingChain.from_bytes, data, allow_test_suites=True)
    only_e2e_error(chain.SendingChain.from_bytes, data, allow_test_suites=True)
    only_e2e_error(chain.peek_chain, data)
    only_e2e_error(chain.parse_conv_payload, data)
    only_e2e_error(seal.SealReplayGuard.from_bytes, data)


@given(st.data())
def test_chain_state_parsers_mutated(data: st.DataObject) -> None:
    sending, receiving = new_chains()
    receiving.decrypt(sending_envelope_at(sending, 4), SENDER_DK_PUB, NOW)  # 4 keys skipped
    guard = seal.SealReplayGuard()
    guard.accept(SENDER, b"\x04" * 16, NOW, NOW)
    for state, parse in (
        (receiving.to_bytes(), partial(chain.ReceivingChain.from_bytes, allow_test_suites=True)),
        (sending.to_bytes(), partial(chain.SendingChain.from_bytes, allow_test_suites=True)),
        (sending.to_dist().encode(), chain.ChainDist.decode),
    ):
        only_e2e_error(parse, data.draw(mutated(state)))
    only_e2e_error(seal.SealReplayGuard.from_bytes, data.draw(mutated(guard.to_bytes())))


def sending_envelope_at(sending: chain.SendingChain, n: int) -> bytes:
    envelope = b""
    while sending.n <= n:
        envelope = sending.encrypt(SENDER_DK, NOW, b"\x05" * 16, KVD, 1, b"m")
    return envelope


# -- Multi -----------------------------------------------------------------------------------


def make_multi(content: bytes) -> tuple[bytes, bytes]:
    payload, wraps = multi.multi_encrypt(
        SUITE, SENDER, SENDER_DK, CONV_ID, 3, NOW, b"\x06" * 16, KVD, ContentType.TEXT, content,
        [(ME, 1, 1, MY_KEM_PUB)], allow_test_suites=True,
    )  # fmt: skip
    return payload, wraps[ME]


def open_multi(payload: bytes, wrap: bytes) -> chain.OpenedConv | None:
    return only_e2e_error(
        multi.multi_open, payload, wrap, ME, my_key, directory, allow_test_suites=True
    )


@given(st.data(), payload_bytes)
def test_multi_open_mutated(data: st.DataObject, content: bytes) -> None:
    payload, wrap = make_multi(content)
    assert open_multi(payload, wrap) is not None
    open_multi(data.draw(mutated(payload)), wrap)
    open_multi(payload, data.draw(mutated(wrap)))


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_multi_open_arbitrary(payload: bytes, wrap: bytes) -> None:
    assert open_multi(payload, wrap) is None


@given(st.data(), content_types, payload_bytes)
def test_multi_open_hostile_body(data: st.DataObject, content_type: int, content: bytes) -> None:
    """A correctly committed and wrapped CEK around a hostile ConvPayload."""
    cek = b"\x07" * 32
    commit = multi.cek_commit(cek)
    aad = header(EnvelopeType.MULTI, SUITE.id) + commit
    signed = chain.conv_payload_body(
        CONV_ID, 3, SENDER, NOW, b"\x08" * 16, KVD, content_type, content
    )
    body = Writer().bytes_(SENDER_DK.sign(chain.CONV_LABEL + aad + signed)).getvalue(signed)
    if data.draw(st.booleans()):
        body = data.draw(mutated(body))
    body_ct = SUITE.aead_cipher(multi.multi_body_key(SUITE, cek)).encrypt(
        bytes(SUITE.nonce_size), body, aad
    )
    payload = Writer().bytes_(body_ct).getvalue(aad)
    prefix = Writer().u8(1).u32(1).getvalue(ME.encode())
    hpke_ct = SUITE.hpke.encrypt(cek, MY_KEM.public_key(), multi.WRAP_LABEL + aad + prefix)  # type: ignore[union-attr]
    open_multi(payload, Writer().bytes_(hpke_ct).getvalue(prefix))


# -- rosters, org keys, events ---------------------------------------------------------------

ORG = UserIdentityKey(b"\x09" * 32, SUITE_TEST_X25519)
ROSTER = roster.Roster.first(CONV_ID, roster.KIND_GROUP, [("M8N22HTR", 1), ("Q7AWGNX9", 0)], "t")
ROSTER_RECORDS = (
    roster.sign_roster_org(ROSTER, ORG),
    roster.sign_roster_device(ROSTER, SENDER, DeviceKey(b"\xa1" * 32)),
)
ORG_KEY_RECORDS = (
    roster.make_org_key_record(1, ORG, None),
    roster.make_org_key_record(2, UserIdentityKey(b"\x0a" * 32, SUITE_TEST_X25519), ORG),
)


def test_roster_and_org_key_fixtures_parse() -> None:
    for rec in ROSTER_RECORDS:
        assert roster.parse_roster_record(rec, allow_test_suites=True).roster == ROSTER
    for rec in ORG_KEY_RECORDS:
        assert roster.parse_org_key_record(rec, allow_test_suites=True).encode() == rec


@given(st.binary(max_size=300), st.booleans())
def test_roster_and_org_key_parsers_arbitrary(data: bytes, allow_test: bool) -> None:
    only_e2e_error(roster.parse_roster_record, data, allow_test_suites=allow_test)
    only_e2e_error(roster.parse_org_key_record, data, allow_test_suites=allow_test)
    only_e2e_error(roster.Roster.decode, data)


@given(st.data())
def test_roster_and_org_key_parsers_mutated(data: st.DataObject) -> None:
    for rec in ROSTER_RECORDS:
        parsed = only_e2e_error(
            roster.parse_roster_record, data.draw(mutated(rec)), allow_test_suites=True
        )
        if parsed is not None:  # what parses re-encodes to what was parsed
            assert roster.parse_roster_record(parsed.encode(), allow_test_suites=True) == parsed
    only_e2e_error(roster.Roster.decode, data.draw(mutated(ROSTER.encode())))
    for rec in ORG_KEY_RECORDS:
        only_e2e_error(roster.parse_org_key_record, data.draw(mutated(rec)), allow_test_suites=True)


@given(st.binary(max_size=60))
def test_conv_event_parser(data: bytes) -> None:
    event = only_e2e_error(parse_conv_event, data)
    if event is not None:
        assert event.encode() == data


@given(st.data(), st.sampled_from((1, 2, 3)), st.integers(0, 2**64 - 1))
def test_conv_event_round_trip_and_mutations(data: st.DataObject, what: int, epoch: int) -> None:
    encoded = ConvEvent(what, CONV_ID, epoch).encode()
    assert parse_conv_event(encoded) == ConvEvent(what, CONV_ID, epoch)
    only_e2e_error(parse_conv_event, data.draw(mutated(encoded)))


# -- attachments -----------------------------------------------------------------------------

pointers = st.builds(
    att.AttachmentPointer,
    blob_id=st.binary(min_size=16, max_size=16),
    key=st.binary(min_size=32, max_size=32),
    sha256=st.binary(min_size=32, max_size=32),
    size=st.integers(0, 2**64 - 1),
    mime=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40),
    name=st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=20).filter(
        lambda n: n not in (".", "..") and "/" not in n and "\\" not in n
    ),
    caption=st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
    width=st.integers(0, 2**32 - 1),
    height=st.integers(0, 2**32 - 1),
    taken_ms=st.integers(0, 2**64 - 1),
)


@given(pointers, st.one_of(st.none(), st.tuples(st.floats(-90, 90), st.floats(-180, 180))))
def test_attachment_pointer_round_trips(pointer: att.AttachmentPointer, where) -> None:  # type: ignore[no-untyped-def]
    if where is not None:
        pointer = att.AttachmentPointer(**{**pointer.__dict__, "lat": where[0], "lon": where[1]})
    encoded = pointer.encode()
    assert att.AttachmentPointer.decode(encoded).encode() == encoded


@given(st.data(), pointers)
def test_attachment_pointer_decode_hostile(
    data: st.DataObject, pointer: att.AttachmentPointer
) -> None:
    decoded = only_e2e_error(att.AttachmentPointer.decode, data.draw(mutated(pointer.encode())))
    if decoded is not None:
        att.AttachmentPointer.decode(decoded.encode())
    only_e2e_error(att.AttachmentPointer.decode, data.draw(st.binary(max_size=200)))


@given(st.data(), st.binary(max_size=3000), st.integers(0, 4000))
def test_decrypt_attachment_hostile(data: st.DataObject, plain: bytes, size: int) -> None:
    """Mutated ciphertexts *with a matching hash* (so decryption itself is attacked) and a
    wrong announced size fail with E2EError only."""
    ciphertext, key, _ = att.encrypt_attachment(plain, b"\x0b" * 32)
    bad = data.draw(mutated(ciphertext))
    got = only_e2e_error(att.decrypt_attachment, bad, key, hashlib.sha256(bad).digest(), size)
    if got is not None:
        assert bad == ciphertext and got == plain and size == len(plain)
    decryptor = only_e2e_error(att.AttachmentDecryptor, key, size)
    if decryptor is not None:
        only_e2e_error(lambda: (decryptor.update(bad), decryptor.finish()))


# -- key-directory records -------------------------------------------------------------------

UIK = UserIdentityKey(b"\x0c" * 32, SUITE_TEST_X25519)
DK = DeviceKey(b"\xa1" * 32)
IDENTITY = records.sign_identity_record(UIK, "M8N22HTR", NOW, records.ZERO_HASH)
DEVICE_LIST = records.sign_device_list(
    UIK, "M8N22HTR", 1, records.ZERO_HASH, NOW,
    [records.DeviceEntry(1, DK.public_bytes, (SUITE_TEST_X25519,), 1, NOW)],
)  # fmt: skip
PREKEY = records.sign_prekey(
    DK, "M8N22HTR", 1, SUITE_TEST_X25519, records.PREKEY_SPK, 7, MY_KEM_PUB, NOW + 10**9
)
VERIFIED_LIST = records.verify_device_list(DEVICE_LIST, UIK.public, allow_test_suites=True)


def verify_all(data: bytes) -> None:
    only_e2e_error(records.verify_identity_record, data, allow_test_suites=True)
    only_e2e_error(records.verify_device_list, data, UIK.public, allow_test_suites=True)
    only_e2e_error(records.verify_prekey, data, VERIFIED_LIST, NOW, allow_test_suites=True)
    only_e2e_error(records.device_list_hash, data)
    try:
        wire_records.parse_record(data)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.RECORD_INVALID


def test_record_fixtures_verify() -> None:
    records.verify_identity_record(IDENTITY, allow_test_suites=True)
    records.verify_prekey(PREKEY, VERIFIED_LIST, NOW, allow_test_suites=True)


@given(st.binary(max_size=300))
def test_record_parsers_arbitrary(data: bytes) -> None:
    verify_all(data)


@given(st.data())
def test_record_parsers_mutated(data: st.DataObject) -> None:
    for rec in (IDENTITY, DEVICE_LIST, PREKEY):
        verify_all(data.draw(mutated(rec)))


@given(st.binary(max_size=300))
def test_link_and_key_parsers_arbitrary(data: bytes) -> None:
    only_e2e_error(link.LinkRequest.decode, data, b"\x0e" * 16)
    only_e2e_error(link.LinkProvision.decode, data, ME, b"\x0e" * 16)
    only_e2e_error(HybridPublicKey.parse, data, allow_test_suites=True)


XWING_UIK = UserIdentityKey(b"\x0c" * 32, SUITE_XWING)  # link messages refuse the test suite
XWING_PUB = kem_keypair_from_seed(ALL_SUITES[SUITE_XWING], b"\xb3" * 32)[1]
SECRET = b"\x0e" * 16
LINK_REQUEST = link.LinkRequest(SUITE_XWING, ME, DK.public_bytes, XWING_PUB).encode(SECRET)
LINK_PROVISION = link.LinkProvision(
    XWING_UIK.public, (link.PinnedContact("M8N22HTR", b"\x0f" * 32, True),)
).encode(ME, SECRET)


def test_link_fixtures_decode() -> None:
    assert link.LinkRequest.decode(LINK_REQUEST, SECRET).new_device == ME
    assert link.LinkProvision.decode(LINK_PROVISION, ME, SECRET).uik == XWING_UIK.public


@given(st.data())
def test_link_messages_mutated(data: st.DataObject) -> None:
    only_e2e_error(link.LinkRequest.decode, data.draw(mutated(LINK_REQUEST)), SECRET)
    only_e2e_error(link.LinkProvision.decode, data.draw(mutated(LINK_PROVISION)), ME, SECRET)
