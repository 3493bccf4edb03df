"""Key records: signer rules, tampering at every byte, device-list chains, prekeys and the
choice of devices to encrypt to."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from vectors_identity import split_record

from momedod.e2e.errors import E2EError
from momedod.e2e.identity import DeviceKey, UserIdentityKey
from momedod.e2e.records import (
    PREKEY_OTPK,
    PREKEY_SPK,
    ZERO_HASH,
    DeviceEntry,
    DeviceList,
    countersign,
    device_list_hash,
    select_devices,
    sign_device_list,
    sign_identity_record,
    sign_prekey,
    verify_device_list,
    verify_device_list_chain,
    verify_identity_history,
    verify_identity_record,
    verify_prekey,
)
from momedod.e2e.suites import ALL_SUITES, kem_keypair_from_seed
from momedod.protocol import records as wire
from momedod.protocol.encoding import label

ALICE = "A1CE0005"
BOB = "B0BB0B0Y"
T0 = 1_700_000_000_000
DAY = 86_400_000

UIK = UserIdentityKey(bytes(range(32)))
UIK2 = UserIdentityKey(bytes(range(32, 64)))
SERVER = UserIdentityKey(bytes(range(64, 96)))
ORG = UserIdentityKey(bytes(range(96, 128)))
DK1, DK2, DK3 = (DeviceKey(bytes([n]) * 32) for n in (1, 2, 3))
XWING_PUB = kem_keypair_from_seed(ALL_SUITES[2], bytes([9]) * 32)[1]
P384_PUB = kem_keypair_from_seed(ALL_SUITES[3], bytes([9]) * 32)[1]


def entry(dk: DeviceKey, device_id: int, suites: tuple[int, ...] = (2, 3)) -> DeviceEntry:
    return DeviceEntry(device_id, dk.public_bytes, suites, 0x01 if device_id == 1 else 0, T0)


split = split_record


def with_sigs(record: bytes, sigs: list[tuple[int, bytes, bytes]]) -> bytes:
    suite, rtype, body, _ = split(record)
    return wire.build_record(suite, rtype, body, sigs)


def reason(exc: pytest.ExceptionInfo[E2EError]) -> str:
    return exc.value.reason


def chain(n: int, uik: UserIdentityKey = UIK, start: DeviceList | None = None) -> list[bytes]:
    """n consecutive device lists (continuing ``start`` if given), one more device each."""
    out: list[bytes] = []
    prev = start
    for i in range(n):
        version = prev.version + 1 if prev else 1
        devices = [entry(DK1, 1)] + [
            DeviceEntry(10 + j, DK2.public_bytes, (2,), 0, T0) for j in range(version - 1)
        ]
        data = sign_device_list(
            uik, ALICE, version, prev.list_hash if prev else ZERO_HASH, T0 + i, devices
        )
        prev = verify_device_list(data, [UIK.public, UIK2.public])
        out.append(data)
    return out


@pytest.fixture(scope="module")
def identity() -> bytes:
    return sign_identity_record(UIK, ALICE, T0)


@pytest.fixture(scope="module")
def lists() -> list[bytes]:
    return chain(5)


@pytest.fixture(scope="module")
def dlist() -> DeviceList:
    data = sign_device_list(UIK, ALICE, 1, ZERO_HASH, T0, [entry(DK1, 1), entry(DK2, 2, (2,))])
    return verify_device_list(data, UIK.public)


# -- IdentityRec -----------------------------------------------------------------------------


def test_identity_record_round_trip(identity: bytes) -> None:
    rec = verify_identity_record(identity, user_id=ALICE)
    assert rec.user_id == ALICE and rec.uik == UIK.public and rec.fp == UIK.fp
    assert rec.created_ms == T0 and rec.prev_fp == ZERO_HASH
    assert rec.verified_signers == {wire.SIGNER_UIK}
    assert rec.raw == identity


@pytest.mark.parametrize("suite", [1, 3])
def test_identity_record_in_other_suites(suite: int) -> None:
    uik = UserIdentityKey(bytes(32), suite)
    data = sign_identity_record(uik, ALICE, T0)
    assert verify_identity_record(data, allow_test_suites=True).fp == uik.fp
    if suite == 1:
        with pytest.raises(E2EError) as exc:
            verify_identity_record(data)
        assert reason(exc) == "suite"


def test_identity_record_for_another_user_is_rejected(identity: bytes) -> None:
    with pytest.raises(E2EError) as exc:
        verify_identity_record(identity, user_id=BOB)
    assert reason(exc) == "user"


def test_identity_record_signed_by_another_uik_is_rejected(identity: bytes) -> None:
    _, _, body, _ = split(identity)
    forged = wire.build_record(
        2,
        1,
        body,
        [(1, UIK.fp, UIK2.sign_labelled(wire.record_sign_message(2, 1, 1, body)))],
    )
    with pytest.raises(E2EError) as exc:
        verify_identity_record(forged)
    assert reason(exc) == "signature"
    other_fp = with_sigs(identity, [(1, UIK2.fp, split(identity)[3][0][2])])
    with pytest.raises(E2EError) as exc:
        verify_identity_record(other_fp)
    assert reason(exc) == "signer"


def test_identity_record_signer_rules(identity: bytes) -> None:
    (uik_sig,) = split(identity)[3]
    dk = (wire.SIGNER_DK, DK1.fp, bytes(64))
    for sigs in ([dk], [uik_sig, dk], [uik_sig, uik_sig], [(wire.SIGNER_SERVER, *uik_sig[1:])]):
        with pytest.raises(E2EError) as exc:
            verify_identity_record(with_sigs(identity, sigs))
        assert reason(exc) == "signer"


def test_server_and_org_signatures_are_checked_only_against_pinned_keys(identity: bytes) -> None:
    both = countersign(countersign(identity, wire.SIGNER_SERVER, SERVER), wire.SIGNER_ORG, ORG)
    assert verify_identity_record(both).verified_signers == {wire.SIGNER_UIK}
    rec = verify_identity_record(both, server_key=SERVER.public, org_key=ORG.public)
    assert rec.verified_signers == {wire.SIGNER_UIK, wire.SIGNER_SERVER, wire.SIGNER_ORG}
    # A pinned key that does not match, or a bad signature, is rejected.
    with pytest.raises(E2EError) as exc:
        verify_identity_record(both, org_key=SERVER.public)
    assert reason(exc) == "signer"
    uik_sig, server_sig, org_sig = split(both)[3]
    bad_org = (org_sig[0], org_sig[1], server_sig[2])
    with pytest.raises(E2EError) as exc:
        verify_identity_record(with_sigs(both, [uik_sig, server_sig, bad_org]), org_key=ORG.public)
    assert reason(exc) == "signature"
    # Accepted with only the UIK signature even when keys are pinned.
    assert verify_identity_record(identity, server_key=SERVER.public, org_key=ORG.public)


def tamper_offsets(record: bytes) -> range:
    """Every byte offset of the record (E2E.md §14.1), the ML-DSA signature included."""
    return range(len(record))


def flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


def test_every_flipped_byte_of_an_identity_record_is_rejected(identity: bytes) -> None:
    for i in tamper_offsets(identity):
        with pytest.raises(E2EError):
            verify_identity_record(flip(identity, i), user_id=ALICE)


def test_truncated_and_extended_identity_records_are_rejected(identity: bytes) -> None:
    for n in range(len(identity)):
        with pytest.raises(E2EError):
            verify_identity_record(identity[:n])
    with pytest.raises(E2EError) as exc:
        verify_identity_record(identity + b"\x00")
    assert reason(exc) == "format"


def test_record_types_are_not_interchangeable(identity: bytes, lists: list[bytes]) -> None:
    with pytest.raises(E2EError) as exc:
        verify_identity_record(lists[0])
    assert reason(exc) == "record_type"
    with pytest.raises(E2EError) as exc:
        verify_device_list(identity, UIK.public)
    assert reason(exc) == "record_type"


def test_identity_history_links_by_fingerprint(identity: bytes) -> None:
    second = sign_identity_record(UIK2, ALICE, T0 + DAY, prev_fp=UIK.fp)
    history = verify_identity_history([identity, second], user_id=ALICE)
    assert [r.fp for r in history] == [UIK.fp, UIK2.fp]
    unlinked = sign_identity_record(UIK2, ALICE, T0 + DAY)
    back = sign_identity_record(UIK, ALICE, T0 + 2 * DAY, prev_fp=UIK2.fp)
    bob = sign_identity_record(UIK2, BOB, T0 + DAY, prev_fp=UIK.fp)
    for records, why in (
        ([identity, unlinked], "identity_link"),
        ([identity, second, back], "identity_repeat"),
        ([identity, bob], "user"),
        ([], "identity_empty"),
    ):
        with pytest.raises(E2EError) as exc:
            verify_identity_history(records)
        assert reason(exc) == why
    # A history the server shortened (first prev_fp not zero) is accepted.
    assert verify_identity_history([second])[0].prev_fp == UIK.fp


# -- DeviceList ------------------------------------------------------------------------------


def test_device_list_round_trip(lists: list[bytes]) -> None:
    dl = verify_device_list(lists[1], UIK.public, user_id=ALICE)
    assert (dl.version, dl.user_id, dl.signer_fp) == (2, ALICE, UIK.fp)
    assert dl.device(1) == entry(DK1, 1) and dl.device(99) is None
    suite, rtype, body, _ = split(lists[1])
    prefix = wire.record_header(suite) + rtype.to_bytes(2, "big") + len(body).to_bytes(4, "big")
    expected = hashlib.sha256(label("devlist") + prefix + body).digest()
    assert dl.list_hash == device_list_hash(lists[1]) == expected
    assert dl.prev_hash == verify_device_list(lists[0], UIK.public).list_hash


def test_device_list_hash_ignores_signatures(lists: list[bytes]) -> None:
    resigned = sign_device_list(UIK, ALICE, 1, ZERO_HASH, T0, [entry(DK1, 1)])
    assert resigned != lists[0]  # the ML-DSA half is randomised ...
    assert device_list_hash(resigned) == device_list_hash(lists[0])  # ... the chain is not


def test_device_list_signer_rules(lists: list[bytes]) -> None:
    (uik_sig,) = split(lists[0])[3]
    dk = (wire.SIGNER_DK, DK1.fp, DK1.sign_labelled(wire.record_sign_message(2, 2, 2, b"")))
    for sigs in (
        [dk],
        [uik_sig, dk],
        [uik_sig, uik_sig],
        [(wire.SIGNER_SERVER, *uik_sig[1:])],
        [(wire.SIGNER_ORG, *uik_sig[1:])],
    ):
        with pytest.raises(E2EError) as exc:
            verify_device_list(with_sigs(lists[0], sigs), UIK.public)
        assert reason(exc) == "signer"
    with pytest.raises(E2EError) as exc:
        verify_device_list(lists[0], UIK2.public)
    assert reason(exc) == "signer"


def test_device_list_suite_must_be_the_uik_suite() -> None:
    uik3 = UserIdentityKey(bytes(range(32)), 3)
    data = sign_device_list(uik3, ALICE, 1, ZERO_HASH, T0, [entry(DK1, 1)])
    _, _, body, sigs = split(data)
    relabelled = wire.build_record(2, 2, body, sigs)
    with pytest.raises(E2EError):
        verify_device_list(relabelled, uik3.public)


def test_every_flipped_byte_of_a_device_list_is_rejected(lists: list[bytes]) -> None:
    data = lists[2]
    for i in tamper_offsets(data):
        with pytest.raises(E2EError):
            verify_device_list(flip(data, i), UIK.public, user_id=ALICE)


def test_version_one_and_only_version_one_has_a_zero_prev_hash() -> None:
    bad_first = sign_device_list(UIK, ALICE, 1, bytes([1]) * 32, T0, [entry(DK1, 1)])
    bad_later = sign_device_list(UIK, ALICE, 2, ZERO_HASH, T0, [entry(DK1, 1)])
    version0 = sign_device_list(UIK, ALICE, 0, ZERO_HASH, T0, [entry(DK1, 1)])
    for data in (bad_first, bad_later, version0):
        with pytest.raises(E2EError):
            verify_device_list(data, UIK.public)


# -- device-list chain -----------------------------------------------------------------------


def test_chain_verifies_from_scratch_and_from_a_pin(lists: list[bytes]) -> None:
    out = verify_device_list_chain(lists, [UIK.public], user_id=ALICE)
    assert [dl.version for dl in out] == [1, 2, 3, 4, 5]
    for pinned in out:
        assert verify_device_list_chain(lists, [UIK.public], pinned.pin)[-1] == out[-1]
    # the server sent only the lists after the pin: links to the pin
    assert verify_device_list_chain(lists[2:], [UIK.public], out[1].pin)[-1] == out[-1]
    # without a pin a shortened history is accepted (trust on first use)
    assert verify_device_list_chain(lists[3:], [UIK.public])[0].version == 4


@pytest.mark.parametrize(
    ("order", "why"),
    [
        ([0, 1, 3, 4], "chain_gap"),
        ([0, 2, 1, 3, 4], "chain_gap"),  # v3 right after v1
        ([0, 1, 1, 2], "chain_fork"),
        ([1, 0], "chain_order"),
    ],
)
def test_chain_rejects_gaps_reordering_and_duplicates(
    lists: list[bytes], order: list[int], why: str
) -> None:
    with pytest.raises(E2EError) as exc:
        verify_device_list_chain([lists[i] for i in order], [UIK.public])
    assert reason(exc) == why


def test_chain_rejects_a_fork(lists: list[bytes]) -> None:
    v2 = verify_device_list(lists[1], UIK.public)
    fork = chain(1, start=v2)[0]  # another version 3 after the same version 2
    with pytest.raises(E2EError) as exc:
        verify_device_list_chain([*lists[:3], fork], [UIK.public])
    assert reason(exc) == "chain_fork"
    # The server shows a forked version 3 to a client that pinned the real one.
    real3 = verify_device_list(lists[2], UIK.public)
    with pytest.raises(E2EError) as exc:
        verify_device_list_chain([*lists[:2], fork], [UIK.public], real3.pin)
    assert reason(exc) == "chain_fork"
    fork4 = chain(1, start=verify_device_list(fork, UIK.public))[0]
    with pytest.raises(E2EError) as exc:
        verify_device_list_chain([fork, fork4], [UIK.public], real3.pin)
    assert reason(exc) == "chain_fork"


def test_chain_rejects_rollback_and_history_that_misses_the_pin(lists: list[bytes]) -> None:
    pin4 = verify_device_list(lists[3], UIK.public).pin
    with pytest.raises(E2EError) as exc:
        verify_device_list_chain(lists[:3], [UIK.public], pin4)
    assert reason(exc) == "chain_rollback"
    pin1 = verify_device_list(lists[0], UIK.public).pin
    with pytest.raises(E2EError) as exc:
        verify_device_list_chain(lists[3:], [UIK.public], pin1)
    assert reason(exc) == "chain_gap"
    with pytest.raises(E2EError) as exc:
        verify_device_list_chain(lists, [UIK.public], replace(pin4, list_hash=bytes(32)))
    assert reason(exc) == "chain_fork"


def test_chain_continues_across_an_identity_change(lists: list[bytes]) -> None:
    last = verify_device_list(lists[-1], UIK.public)
    after = chain(2, uik=UIK2, start=last)
    out = verify_device_list_chain([*lists, *after], [UIK.public, UIK2.public], last.pin)
    assert out[-1].version == 7 and out[-1].signer_fp == UIK2.fp
    # the newest list must be signed by the newest identity key
    with pytest.raises(E2EError) as exc:
        verify_device_list_chain(lists, [UIK.public, UIK2.public])
    assert reason(exc) == "chain_signer"
    # the replaced key may not sign again after the new one did
    v6 = verify_device_list(after[0], UIK2.public)
    old_again = chain(1, uik=UIK, start=v6)
    with pytest.raises(E2EError) as exc:
        verify_device_list_chain([*lists, after[0], *old_again], [UIK.public, UIK2.public])
    assert reason(exc) == "chain_signer"
    # lists signed by an identity key not in the history
    with pytest.raises(E2EError) as exc:
        verify_device_list_chain(after, [UIK.public])
    assert reason(exc) == "signer"


def test_chain_rejects_another_users_list(lists: list[bytes]) -> None:
    with pytest.raises(E2EError) as exc:
        verify_device_list_chain(lists, [UIK.public], user_id=BOB)
    assert reason(exc) == "user"
    with pytest.raises(E2EError) as exc:
        verify_device_list_chain([], [UIK.public])
    assert reason(exc) == "chain_empty"


# -- prekeys ---------------------------------------------------------------------------------


def spk(
    dk: DeviceKey = DK1,
    device_id: int = 1,
    *,
    user_id: str = ALICE,
    suite: int = 2,
    kind: int = PREKEY_SPK,
    key_id: int = 1,
    pub: bytes = XWING_PUB,
    not_after_ms: int = T0 + 35 * DAY,
) -> bytes:
    return sign_prekey(dk, user_id, device_id, suite, kind, key_id, pub, not_after_ms)


def test_prekey_round_trip(dlist: DeviceList) -> None:
    rec = verify_prekey(spk(), dlist, T0, kind=PREKEY_SPK)
    assert (rec.device_id, rec.suite, rec.kind, rec.key_id, rec.pub) == (1, 2, 1, 1, XWING_PUB)
    otpk = spk(suite=3, kind=PREKEY_OTPK, key_id=1001, pub=P384_PUB)
    assert verify_prekey(otpk, dlist, T0).kind == PREKEY_OTPK


def test_prekey_expiry(dlist: DeviceList) -> None:
    data = spk(not_after_ms=T0)
    assert verify_prekey(data, dlist, T0)  # valid up to and including not_after_ms
    with pytest.raises(E2EError) as exc:
        verify_prekey(data, dlist, T0 + 1)
    assert reason(exc) == "expired"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (lambda: spk(DK2, device_id=1), "signer"),  # device 1's record signed by device 2
        (lambda: spk(DK3, device_id=3), "device"),  # a device not on the list
        (lambda: spk(DK2, device_id=2, suite=3, pub=P384_PUB), "suite"),  # 2 lists only 0x0002
        (lambda: spk(pub=XWING_PUB[:-1]), "kem_public"),
        (lambda: spk(user_id=BOB), "user"),
    ],
)
def test_prekey_rejections(dlist: DeviceList, data: object, why: str) -> None:
    assert callable(data)
    with pytest.raises(E2EError) as exc:
        verify_prekey(data(), dlist, T0)
    assert reason(exc) == why


def test_prekey_signer_rules_and_kind(dlist: DeviceList) -> None:
    data = spk()
    (dk_sig,) = split(data)[3]
    for sigs in ([(wire.SIGNER_UIK, *dk_sig[1:])], [dk_sig, dk_sig]):
        with pytest.raises(E2EError) as exc:
            verify_prekey(with_sigs(data, sigs), dlist, T0)
        assert reason(exc) == "signer"
    with pytest.raises(E2EError) as exc:
        verify_prekey(data, dlist, T0, kind=PREKEY_OTPK)
    assert reason(exc) == "prekey_kind"
    for i in range(len(data)):
        with pytest.raises(E2EError):
            verify_prekey(flip(data, i), dlist, T0)


# -- selecting devices -----------------------------------------------------------------------


def test_select_devices_uses_only_listed_devices_with_valid_spks(dlist: DeviceList) -> None:
    records = [
        spk(),  # device 1, suite 2
        spk(suite=3, pub=P384_PUB, key_id=2),  # device 1, suite 3
        spk(DK2, device_id=2, not_after_ms=T0 - 1),  # device 2: expired
        spk(DK3, device_id=3),  # device 3: injected, not on the list
        spk(DK2, device_id=1, key_id=9),  # forged for device 1
    ]
    sel = select_devices(dlist, records, T0, [3, 2])
    assert [(t.device.device_id, t.suite, t.prekey.key_id) for t in sel.targets] == [(1, 3, 2)]
    assert sel.unreachable == ((2, "no valid signed prekey"),)
    sel = select_devices(dlist, records, T0, [2])
    assert [(t.device.device_id, t.suite) for t in sel.targets] == [(1, 2)]
    assert select_devices(dlist, records, T0, [2], exclude={1}).targets == ()


def test_select_devices_prefers_the_newest_spk_and_reports_no_common_suite(
    dlist: DeviceList,
) -> None:
    old, new = spk(key_id=1), spk(key_id=2, not_after_ms=T0 + 40 * DAY)
    sel = select_devices(dlist, [new, old], T0, [2])
    assert sel.targets[0].prekey.key_id == 2
    sel = select_devices(dlist, [new, spk(DK2, device_id=2)], T0, [3])
    assert sel.unreachable == ((1, "no valid signed prekey"), (2, "no common suite"))
