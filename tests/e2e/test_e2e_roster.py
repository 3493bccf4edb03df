"""Rosters and the organisation key: strict encoding, signatures, the successor rules, the org
key chain and the diff used for notices."""

from __future__ import annotations

import hashlib
import struct

import pytest

from momedod.e2e.envelope import Addr
from momedod.e2e.errors import E2EError
from momedod.e2e.identity import DeviceKey, UserIdentityKey
from momedod.e2e.roster import (
    KIND_CHANNEL,
    KIND_GROUP,
    MODE_CHAINS,
    MODE_MULTI,
    ROLE_ADMIN,
    ROLE_MEMBER,
    SIGNER_DEVICE,
    SIGNER_ORG,
    ZERO_HASH,
    Roster,
    RosterRecord,
    check_roster_successor,
    current_org_key,
    make_org_key_record,
    parse_org_key_record,
    parse_roster_record,
    roster_changes,
    roster_hash,
    sign_roster_device,
    sign_roster_org,
    verify_roster_signature,
)
from momedod.protocol.encoding import Writer, label
from momedod.protocol.userid import generate


def _uid(tag: int) -> str:
    return generate(lambda n: bytes([tag]) * n)


ALICE, BOB, CAROL, DAVE = sorted(_uid(i) for i in range(4))
CONV = bytes(range(16))
ALICE_DEV = Addr(ALICE, 1)
ALICE_DK = DeviceKey(bytes([1]) * 32)
BOB_DEV = Addr(BOB, 3)
BOB_DK = DeviceKey(bytes([2]) * 32)


@pytest.fixture(scope="module")
def org() -> UserIdentityKey:
    return UserIdentityKey(bytes([9]) * 32)


@pytest.fixture(scope="module")
def org2() -> UserIdentityKey:
    return UserIdentityKey(bytes([10]) * 32)


def first() -> Roster:
    return Roster.first(CONV, KIND_GROUP, {ALICE: ROLE_ADMIN, BOB: ROLE_MEMBER}, "Team")


# -- Roster encoding -------------------------------------------------------------------------


def test_roster_round_trip_and_accessors() -> None:
    r = first()
    data = r.encode()
    assert Roster.decode(data) == r
    assert r.epoch == 1 and r.prev_hash == ZERO_HASH and r.mode == MODE_CHAINS
    assert r.min_suite == 2
    assert r.role_of(ALICE) == ROLE_ADMIN and r.role_of(BOB) == ROLE_MEMBER
    assert r.role_of(CAROL) is None
    assert r.user_ids() == {ALICE, BOB} and r.admins() == {ALICE}
    expected = (
        CONV
        + struct.pack(">Q", 1)
        + ZERO_HASH
        + bytes([KIND_GROUP, MODE_CHAINS])
        + b"\x00\x02"
        + struct.pack(">I", 2)
        + ALICE.encode()
        + b"\x01"
        + BOB.encode()
        + b"\x00"
        + struct.pack(">I", 4)
        + b"Team"
    )
    assert data == expected
    assert roster_hash(data) == hashlib.sha256(label("roster-hash") + data).digest()
    assert r.hash == roster_hash(data)


def test_next_increments_and_chains() -> None:
    r = first()
    n = r.next(members=[(CAROL, ROLE_MEMBER), (ALICE, ROLE_ADMIN)], title="T2", mode=MODE_MULTI)
    assert n.epoch == 2 and n.prev_hash == roster_hash(r.encode())
    assert n.members == ((ALICE, ROLE_ADMIN), (CAROL, ROLE_MEMBER))
    assert n.title == "T2" and n.mode == MODE_MULTI and n.kind == r.kind
    same = r.next()
    assert same.members == r.members and same.title == r.title and same.epoch == 2


def test_unicode_title_counts_bytes() -> None:
    title = "ä" * 128  # 256 bytes
    assert Roster.decode(first().next(title=title).encode()).title == title
    with pytest.raises(ValueError):
        first().next(title=title + "a")


def _raw_roster(
    *,
    epoch: int = 1,
    kind: int = 1,
    mode: int = 1,
    suite: int = 2,
    members: list[tuple[bytes, int]] | None = None,
    title: bytes = b"x",
    count: int | None = None,
) -> bytes:
    ms = [(ALICE.encode(), 1)] if members is None else members
    w = Writer().fixed(CONV, 16).u64(epoch).fixed(ZERO_HASH, 32).u8(kind).u8(mode).u16(suite)
    w.u32(len(ms) if count is None else count)
    for uid, role in ms:
        w.raw(uid).u8(role)
    return w.bytes_(title).getvalue()


def test_raw_helper_is_valid() -> None:
    assert Roster.decode(_raw_roster()).members == ((ALICE, ROLE_ADMIN),)


@pytest.mark.parametrize(
    "data",
    [
        _raw_roster(epoch=0),
        _raw_roster(kind=0),
        _raw_roster(kind=3),
        _raw_roster(mode=0),
        _raw_roster(mode=3),
        _raw_roster(suite=0),
        _raw_roster(suite=4),
        _raw_roster(members=[(ALICE.encode(), 2)]),
        _raw_roster(members=[(BOB.encode(), 0), (ALICE.encode(), 1)]),  # not ascending
        _raw_roster(members=[(ALICE.encode(), 0), (ALICE.encode(), 1)]),  # duplicate
        _raw_roster(members=[(b"alice123", 0)]),  # not canonical (lower case)
        _raw_roster(members=[(b"ILOU0000", 0)]),  # letters outside the alphabet
        _raw_roster(title=b"a" * 257),
        _raw_roster(title=b"\xff"),
        _raw_roster(count=3),
        _raw_roster(count=70000),
        _raw_roster() + b"\x00",
        _raw_roster()[:-1],
        b"",
    ],
)
def test_roster_decode_is_strict(data: bytes) -> None:
    with pytest.raises(E2EError) as exc:
        Roster.decode(data)
    assert exc.value.reason == "roster"


def test_roster_constructor_rejects_bad_fields() -> None:
    with pytest.raises(ValueError):
        Roster(CONV, 1, ZERO_HASH, 1, 1, 2, ((BOB, 0), (ALICE, 0)), "")
    with pytest.raises(ValueError):
        Roster(CONV[:15], 1, ZERO_HASH, 1, 1, 2, (), "")
    with pytest.raises(ValueError):
        Roster(CONV, 0, ZERO_HASH, 1, 1, 2, (), "")


# -- records and signatures ------------------------------------------------------------------


def test_device_record_round_trip_and_signature() -> None:
    r = first()
    data = sign_roster_device(r, ALICE_DEV, ALICE_DK)
    rec = parse_roster_record(data)
    assert rec.roster == r and rec.roster_bytes == r.encode()
    assert rec.signer_kind == SIGNER_DEVICE and rec.signer == ALICE_DEV and rec.suite == 2
    assert rec.encode() == data
    assert data[:6] == b"MD\x01\x12\x00\x02"
    assert verify_roster_signature(rec, device_dk_public=ALICE_DK.public_bytes)
    assert not verify_roster_signature(rec, device_dk_public=BOB_DK.public_bytes)
    assert not verify_roster_signature(rec)
    # the signature covers Label("roster") | everything before the sig
    assert ALICE_DK.sign("roster", data[: -(4 + 64)]) == rec.sig


def test_org_record_round_trip_and_signature(org: UserIdentityKey, org2: UserIdentityKey) -> None:
    r = first()
    data = sign_roster_org(r, org)
    rec = parse_roster_record(data)
    assert rec.signer_kind == SIGNER_ORG and rec.signer is None and rec.suite == org.suite
    assert rec.encode() == data
    assert verify_roster_signature(rec, org_key=org.public)
    assert not verify_roster_signature(rec, org_key=org2.public)
    assert not verify_roster_signature(rec, device_dk_public=ALICE_DK.public_bytes)
    assert not verify_roster_signature(rec)


def test_every_flipped_byte_breaks_a_device_record() -> None:
    data = sign_roster_device(first(), ALICE_DEV, ALICE_DK)
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        try:
            rec = parse_roster_record(bytes(bad))
        except E2EError as exc:
            assert exc.reason == "roster"
            continue
        assert not verify_roster_signature(rec, device_dk_public=ALICE_DK.public_bytes), i


def test_signature_binds_signer_and_suite(org: UserIdentityKey) -> None:
    data = sign_roster_device(first(), ALICE_DEV, ALICE_DK)
    rec = parse_roster_record(data)
    moved = RosterRecord(rec.suite, rec.roster, rec.roster_bytes, 2, Addr(ALICE, 2), rec.sig)
    assert not verify_roster_signature(
        parse_roster_record(moved.encode()), device_dk_public=ALICE_DK.public_bytes
    )
    resuited = RosterRecord(3, rec.roster, rec.roster_bytes, 2, ALICE_DEV, rec.sig)
    assert not verify_roster_signature(
        parse_roster_record(resuited.encode()), device_dk_public=ALICE_DK.public_bytes
    )
    # an org signature is not accepted under another org key of a different suite
    org3 = UserIdentityKey(bytes([9]) * 32, 3)
    rec3 = parse_roster_record(sign_roster_org(first(), org3))
    assert verify_roster_signature(rec3, org_key=org3.public)
    assert not verify_roster_signature(rec3, org_key=org.public)


def _record(suite: int, roster: bytes, kind: int, signer: bytes, sig: bytes) -> bytes:
    w = Writer().u16(0x4D44).u8(1).u8(0x12).u16(suite).bytes_(roster).u8(kind).raw(signer)
    return w.bytes_(sig).getvalue()


def test_parse_roster_record_is_strict(org: UserIdentityKey) -> None:
    good = sign_roster_device(first(), ALICE_DEV, ALICE_DK)
    rb = first().encode()
    dev = ALICE_DEV.encode()
    org_sig = parse_roster_record(sign_roster_org(first(), org)).sig
    cases = [
        good + b"\x00",
        good[:-1],
        b"MD\x01\x13" + good[4:],  # wrong type
        b"MD\x02\x12" + good[4:],  # wrong version
        _record(1, rb, 2, dev, bytes(64)),  # test suite not allowed
        _record(9, rb, 2, dev, bytes(64)),  # unknown suite
        _record(2, rb, 3, dev, bytes(64)),  # unknown signer kind
        _record(2, rb, 2, bytes(12), bytes(64)),  # device signer all zero
        _record(2, rb, 2, dev, bytes(63)),  # short Ed25519 sig
        _record(2, rb, 1, dev, org_sig),  # ORG with a signer address
        _record(2, rb, 1, bytes(12), bytes(64)),  # ORG with an Ed25519-shaped sig
        _record(3, rb, 1, bytes(12), org_sig),  # HybridSig of another suite's shape
        _record(2, rb + b"\x00", 2, dev, bytes(64)),  # bad roster inside
    ]
    for data in cases:
        with pytest.raises(E2EError) as exc:
            parse_roster_record(data)
        assert exc.value.reason == "roster"
    assert parse_roster_record(_record(1, rb, 2, dev, bytes(64)), allow_test_suites=True)


# -- successor rules -------------------------------------------------------------------------


def _dev(r: Roster, who: Addr = ALICE_DEV, dk: DeviceKey = ALICE_DK) -> RosterRecord:
    return parse_roster_record(sign_roster_device(r, who, dk))


def _reason(prev: Roster | None, rec: RosterRecord) -> str:
    with pytest.raises(E2EError) as exc:
        check_roster_successor(prev, rec)
    return exc.value.reason


def test_successor_accepts_a_valid_chain(org: UserIdentityKey) -> None:
    r1 = first()
    check_roster_successor(None, _dev(r1))
    r2 = r1.next(members={ALICE: ROLE_ADMIN, BOB: ROLE_ADMIN, CAROL: ROLE_MEMBER})
    check_roster_successor(r1, _dev(r2))
    # BOB became admin in r2, so he may sign r3; ALICE demoted herself in r3, still fine
    r3 = r2.next(members={ALICE: ROLE_MEMBER, BOB: ROLE_ADMIN})
    check_roster_successor(r2, _dev(r3, BOB_DEV, BOB_DK))
    check_roster_successor(r2, _dev(r3))
    # an org signature needs no admin (the org manages it), even with no members
    empty = Roster.first(CONV, KIND_CHANNEL, {}, "News")
    check_roster_successor(None, parse_roster_record(sign_roster_org(empty, org)))


def test_successor_rejections() -> None:
    r1 = first()
    r2 = r1.next(members={ALICE: ROLE_ADMIN, CAROL: ROLE_MEMBER})
    assert _reason(None, _dev(r2)) == "epoch"
    bad_first = Roster(CONV, 1, b"\x01" * 32, 1, 1, 2, ((ALICE, 1),), "")
    assert _reason(None, _dev(bad_first)) == "prev_hash"
    other = Roster(bytes(16), 2, r1.hash, 1, 1, 2, ((ALICE, 1),), "")
    assert _reason(r1, _dev(other)) == "conv_id"
    assert _reason(r1, _dev(r1)) == "epoch"
    assert _reason(r1, _dev(r2.next())) == "epoch"
    wrong_hash = Roster(CONV, 2, ZERO_HASH, 1, 1, 2, r1.members, "")
    assert _reason(r1, _dev(wrong_hash)) == "prev_hash"
    rekind = Roster(CONV, 2, r1.hash, KIND_CHANNEL, 1, 2, r1.members, "")
    assert _reason(r1, _dev(rekind)) == "kind"
    # BOB is a member, not an admin, of r1: he may not sign r2, even if r2 makes him admin
    promoted = r1.next(members={ALICE: ROLE_ADMIN, BOB: ROLE_ADMIN})
    assert _reason(r1, _dev(promoted, BOB_DEV, BOB_DK)) == "signer"
    # epoch 1 signed by a non-admin
    assert _reason(None, _dev(r1, BOB_DEV, BOB_DK)) == "signer"
    # ... or by someone who is not in it at all
    assert _reason(None, _dev(r1, Addr(DAVE, 1))) == "signer"


# -- diff ------------------------------------------------------------------------------------


def test_roster_changes() -> None:
    r1 = first()
    assert roster_changes(None, r1) == [
        ("added", ALICE),
        ("admin", ALICE),
        ("added", BOB),
        ("title", "Team"),
    ]
    r2 = r1.next(members={ALICE: ROLE_MEMBER, CAROL: ROLE_ADMIN, DAVE: ROLE_MEMBER})
    assert roster_changes(r1, r2) == [
        ("unadmin", ALICE),
        ("removed", BOB),
        ("added", CAROL),
        ("admin", CAROL),
        ("added", DAVE),
    ]
    r3 = r2.next(members={ALICE: ROLE_ADMIN, CAROL: ROLE_ADMIN, DAVE: ROLE_MEMBER}, title="X")
    assert roster_changes(r2, r3) == [("admin", ALICE), ("title", "X")]
    assert roster_changes(r3, r3.next()) == []


# -- organisation key chain ------------------------------------------------------------------


def test_org_key_record_round_trip(org: UserIdentityKey, org2: UserIdentityKey) -> None:
    v1 = make_org_key_record(1, org, None)
    rec = parse_org_key_record(v1)
    assert rec.version == 1 and rec.org_pub == org.public and rec.prev_fp == ZERO_HASH
    assert rec.sig_prev == b"" and rec.fp == org.fp and rec.encode() == v1
    assert v1[:6] == b"MD\x01\x13\x00\x02"
    v2 = make_org_key_record(2, org2, org)
    rec2 = parse_org_key_record(v2)
    assert rec2.prev_fp == org.fp and rec2.encode() == v2
    assert org.public.verify("org-key", rec2.signed_part(), rec2.sig_prev)
    with pytest.raises(ValueError):
        make_org_key_record(2, org2, None)
    with pytest.raises(ValueError):
        make_org_key_record(1, org2, org)


def test_current_org_key(org: UserIdentityKey, org2: UserIdentityKey) -> None:
    org3 = UserIdentityKey(bytes([11]) * 32, 3)
    v1 = make_org_key_record(1, org, None)
    v2 = make_org_key_record(2, org2, org)
    v3 = make_org_key_record(3, org3, org2)
    assert current_org_key([v1], None) == org.public
    assert current_org_key([v1], org.fp) == org.public
    assert current_org_key([v1, v2], org.fp) == org2.public
    assert current_org_key([v1, v2, v3], org.fp) == org3.public
    assert current_org_key([v1, v2, v3], org2.fp) == org3.public
    assert current_org_key([v1, v2, v3], None) == org3.public


def _org_reason(records: list[bytes], pinned: bytes | None) -> str:
    with pytest.raises(E2EError) as exc:
        current_org_key(records, pinned)
    return exc.value.reason


def test_current_org_key_rejects_broken_chains(org: UserIdentityKey, org2: UserIdentityKey) -> None:
    org3 = UserIdentityKey(bytes([11]) * 32)
    v1 = make_org_key_record(1, org, None)
    v2 = make_org_key_record(2, org2, org)
    assert _org_reason([], None) == "org_key"
    assert _org_reason([v1, v2], org3.fp) == "org_key"  # pin not in the chain
    assert _org_reason([v2], None) == "org_key"  # does not start at 1
    assert _org_reason([v2, v1], None) == "org_key"  # order
    # a version-2 record signed by a key that is not version 1
    forged = make_org_key_record(2, org2, org3)
    assert _org_reason([v1, forged], org.fp) == "org_key"
    # right prev_fp but signed by the wrong key
    rec = parse_org_key_record(make_org_key_record(2, org2, org3))
    bad_sig = type(rec)(2, org2.public, org.fp, rec.sig_prev).encode()
    assert _org_reason([v1, bad_sig], org.fp) == "org_key"
    # skipping a version
    v3 = make_org_key_record(3, org3, org2)
    assert _org_reason([v1, v3], org.fp) == "org_key"
    # a key that comes back
    back = make_org_key_record(3, org, org2)
    assert _org_reason([v1, v2, back], org.fp) == "org_key"
    # flipped bytes
    for i in range(0, len(v2), 97):
        bad = bytearray(v2)
        bad[i] ^= 0x01
        assert _org_reason([v1, bytes(bad)], org.fp) == "org_key"


def test_parse_org_key_record_is_strict(org: UserIdentityKey, org2: UserIdentityKey) -> None:
    v1 = make_org_key_record(1, org, None)
    v2 = make_org_key_record(2, org2, org)
    pub = org.public.encode()

    def raw(suite: int, version: int, prev_fp: bytes, sig: bytes, key: bytes = pub) -> bytes:
        w = Writer().u16(0x4D44).u8(1).u8(0x13).u16(suite).u32(version).bytes_(key)
        return w.fixed(prev_fp, 32).bytes_(sig).getvalue()

    assert parse_org_key_record(raw(2, 1, ZERO_HASH, b"")).encode() == v1
    for data in [
        v1 + b"\x00",
        v1[:-1],
        v2[:-1],
        raw(2, 0, ZERO_HASH, b""),
        raw(2, 1, org2.fp, b""),
        raw(2, 1, ZERO_HASH, b"x"),
        raw(2, 2, ZERO_HASH, b"x"),
        raw(2, 2, org2.fp, b""),
        raw(3, 1, ZERO_HASH, b""),  # header suite is not the key's
        raw(2, 1, ZERO_HASH, b"", pub[:-1]),
        b"MD\x01\x12" + v1[4:],
    ]:
        with pytest.raises(E2EError) as exc:
            parse_org_key_record(data)
        assert exc.value.reason == "org_key"
