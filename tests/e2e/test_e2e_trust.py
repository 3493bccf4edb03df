"""The contact-pin store: TOFU, verification, key changes that block sending until accepted,
silent device additions, self-monitoring alarms, and the JSON form."""

from __future__ import annotations

import json

import pytest

from momedod.e2e.identity import DeviceKey, UserIdentityKey
from momedod.e2e.records import (
    ZERO_HASH,
    DeviceEntry,
    DeviceList,
    sign_device_list,
    sign_identity_record,
    verify_device_list,
    verify_device_list_chain,
    verify_identity_history,
)
from momedod.e2e.safety import parse_qr, qr_string
from momedod.e2e.trust import (
    DeviceAdded,
    DeviceRemoved,
    DeviceReplaced,
    KeyChange,
    Pinned,
    QrMismatch,
    RogueDevice,
    TrustLevel,
    TrustStore,
    Unchanged,
    Verified,
    check_own_devices,
)

BOB, ME = "B0BB0B0Y", "A1CE0005"
T0 = 1_700_000_000_000
BOB_UIK = UserIdentityKey(bytes(range(32)))
BOB_UIK2 = UserIdentityKey(bytes(range(32, 64)))
DKS = [DeviceKey(bytes([n]) * 32) for n in range(1, 5)]


def entry(device_id: int, key: DeviceKey | None = None) -> DeviceEntry:
    dk = key or DKS[device_id - 1]
    return DeviceEntry(device_id, dk.public_bytes, (2,), 0x01 if device_id == 1 else 0, T0)


def lists(
    uik: UserIdentityKey,
    user_id: str,
    *device_sets: list[DeviceEntry],
    after: DeviceList | None = None,
) -> list[DeviceList]:
    out: list[DeviceList] = []
    prev = after
    for devices in device_sets:
        version = prev.version + 1 if prev else 1
        data = sign_device_list(
            uik, user_id, version, prev.list_hash if prev else ZERO_HASH, T0, devices
        )
        prev = verify_device_list(data, uik.public)
        out.append(prev)
    return out


# -- identity pins ---------------------------------------------------------------------------


def test_first_sight_pins_unverified_and_allows_sending() -> None:
    store = TrustStore()
    assert not store.can_send(BOB)
    assert store.observe_identity(BOB, BOB_UIK.fp) == Pinned(BOB, BOB_UIK.fp)
    assert store.can_send(BOB)
    c = store.contact(BOB)
    assert c is not None and c.level is TrustLevel.UNVERIFIED and c.fp == BOB_UIK.fp
    assert store.observe_identity(BOB, BOB_UIK.fp) == Unchanged(BOB)


def test_changed_key_blocks_sending_until_accepted() -> None:
    store = TrustStore()
    store.observe_identity(BOB, BOB_UIK.fp)
    event = store.observe_identity(BOB, BOB_UIK2.fp)
    assert event == KeyChange(BOB, BOB_UIK.fp, BOB_UIK2.fp, was_verified=False)
    assert not store.can_send(BOB)
    # Seen again (or the server flips back): still blocked, still the hard warning.
    assert isinstance(store.observe_identity(BOB, BOB_UIK2.fp), KeyChange)
    assert isinstance(store.observe_identity(BOB, BOB_UIK.fp), KeyChange)
    assert not store.can_send(BOB)
    with pytest.raises(ValueError):
        store.mark_verified(BOB)
    assert store.accept(BOB) == BOB_UIK2.fp
    assert store.can_send(BOB)
    assert store.observe_identity(BOB, BOB_UIK2.fp) == Unchanged(BOB)
    with pytest.raises(ValueError):
        store.accept(BOB)


def test_verified_contact_drops_to_unverified_on_a_key_change() -> None:
    store = TrustStore()
    store.observe_identity(BOB, BOB_UIK.fp)
    assert store.mark_verified(BOB) == Verified(BOB, BOB_UIK.fp)
    event = store.observe_identity(BOB, BOB_UIK2.fp)
    assert isinstance(event, KeyChange) and event.was_verified
    c = store.contact(BOB)
    assert c is not None and c.level is TrustLevel.UNVERIFIED and c.blocked
    store.accept(BOB)
    c = store.contact(BOB)
    assert c is not None and c.level is TrustLevel.UNVERIFIED and store.can_send(BOB)


def test_qr_scan_verifies_the_pinned_key() -> None:
    store = TrustStore()
    store.observe_identity(BOB, BOB_UIK.fp)
    uid, fp = parse_qr(qr_string(BOB, BOB_UIK.fp))
    assert store.verify_qr(uid, fp) == Verified(BOB, BOB_UIK.fp)
    c = store.contact(BOB)
    assert c is not None and c.level is TrustLevel.VERIFIED


def test_qr_scan_with_another_key_changes_nothing() -> None:
    store = TrustStore()
    store.observe_identity(BOB, BOB_UIK.fp)
    assert store.verify_qr(BOB, BOB_UIK2.fp) == QrMismatch(BOB, BOB_UIK2.fp, BOB_UIK.fp)
    c = store.contact(BOB)
    assert c is not None and c.level is TrustLevel.UNVERIFIED and c.fp == BOB_UIK.fp


def test_qr_scan_of_the_new_key_accepts_a_pending_change() -> None:
    store = TrustStore()
    store.observe_identity(BOB, BOB_UIK.fp)
    store.observe_identity(BOB, BOB_UIK2.fp)
    assert store.verify_qr(BOB, BOB_UIK2.fp) == Verified(BOB, BOB_UIK2.fp)
    assert store.can_send(BOB)
    c = store.contact(BOB)
    assert c is not None and c.fp == BOB_UIK2.fp and c.level is TrustLevel.VERIFIED


def test_qr_scan_of_the_old_key_keeps_a_pending_change_blocked() -> None:
    store = TrustStore()
    store.observe_identity(BOB, BOB_UIK.fp)
    store.observe_identity(BOB, BOB_UIK2.fp)
    assert store.verify_qr(BOB, BOB_UIK.fp) == Verified(BOB, BOB_UIK.fp)
    assert not store.can_send(BOB)


def test_qr_scan_pins_an_unknown_contact_as_verified() -> None:
    store = TrustStore()
    assert store.verify_qr(BOB, BOB_UIK.fp) == Verified(BOB, BOB_UIK.fp)
    assert store.observe_identity(BOB, BOB_UIK.fp) == Unchanged(BOB)
    c = store.contact(BOB)
    assert c is not None and c.level is TrustLevel.VERIFIED


def test_server_key_substitution_is_caught_end_to_end() -> None:
    """Bob re-enrolls (or the server claims he did) with a new identity key."""
    store = TrustStore()
    first = sign_identity_record(BOB_UIK, BOB, T0)
    (rec,) = verify_identity_history([first], user_id=BOB)
    store.observe_identity(BOB, rec.fp)
    second = sign_identity_record(BOB_UIK2, BOB, T0 + 1, prev_fp=rec.fp)
    newest = verify_identity_history([first, second], user_id=BOB)[-1]
    assert isinstance(store.observe_identity(BOB, newest.fp), KeyChange)
    assert not store.can_send(BOB)


# -- device lists ----------------------------------------------------------------------------


def test_new_device_signed_by_pinned_key_is_accepted_with_info() -> None:
    store = TrustStore()
    store.observe_identity(BOB, BOB_UIK.fp)
    v1, v2, v3 = lists(BOB_UIK, BOB, [entry(1)], [entry(1), entry(2)], [entry(2)])
    assert store.observe_device_list(v1) == [DeviceAdded(BOB, 1)]
    assert store.observe_device_list(v2) == [DeviceAdded(BOB, 2)]
    assert store.can_send(BOB)
    assert store.observe_device_list(v3) == [DeviceRemoved(BOB, 1)]
    assert store.device_list_pin(BOB) == v3.pin
    (v4,) = lists(BOB_UIK, BOB, [entry(2, DKS[3])], after=v3)
    assert store.observe_device_list(v4) == [DeviceReplaced(BOB, 2)]


def test_device_list_pin_feeds_the_chain_check() -> None:
    store = TrustStore()
    store.observe_identity(BOB, BOB_UIK.fp)
    chain = lists(BOB_UIK, BOB, [entry(1)], [entry(1), entry(2)])
    store.observe_device_list(chain[0])
    raw = [dl.raw for dl in chain]
    out = verify_device_list_chain(raw, [BOB_UIK.public], store.device_list_pin(BOB))
    assert store.observe_device_list(out[-1]) == [DeviceAdded(BOB, 2)]
    with pytest.raises(ValueError):
        store.observe_device_list(chain[0])  # older than the pin


def test_device_list_of_an_unaccepted_key_is_not_reported_until_accepted() -> None:
    store = TrustStore()
    store.observe_identity(BOB, BOB_UIK.fp)
    (v1,) = lists(BOB_UIK, BOB, [entry(1)])
    store.observe_device_list(v1)
    store.observe_identity(BOB, BOB_UIK2.fp)
    (v2,) = lists(BOB_UIK2, BOB, [entry(3)], after=v1)
    assert store.observe_device_list(v2) == []
    store.accept(BOB)
    assert store.observe_device_list(v2) == [DeviceRemoved(BOB, 1), DeviceAdded(BOB, 3)]


def test_device_list_signed_by_an_unknown_key_is_refused() -> None:
    store = TrustStore()
    store.observe_identity(BOB, BOB_UIK.fp)
    (v1,) = lists(BOB_UIK2, BOB, [entry(1)])
    with pytest.raises(ValueError):
        store.observe_device_list(v1)
    (other,) = lists(BOB_UIK, ME, [entry(1)])
    with pytest.raises(KeyError):
        store.observe_device_list(other)


# -- self-monitoring -------------------------------------------------------------------------


def test_self_monitoring_raises_an_alarm_for_a_device_nobody_of_mine_added() -> None:
    store = TrustStore()
    store.note_own_device_added(1)
    store.note_own_device_added(2)
    history = lists(BOB_UIK, ME, [entry(1)], [entry(1), entry(2)], [entry(1), entry(2), entry(3)])
    assert store.check_own_devices(history[:2]) == []
    assert store.check_own_devices(history) == [
        RogueDevice(3, 3, DKS[2].public_bytes, "not added by me")
    ]
    store.note_own_device_added(3)
    assert store.check_own_devices(history) == []


def test_self_monitoring_reports_a_device_whose_key_changed() -> None:
    history = lists(BOB_UIK, ME, [entry(1)], [entry(1, DKS[3])])
    assert check_own_devices(history, {1}) == [
        RogueDevice(1, 2, DKS[3].public_bytes, "key changed")
    ]


# -- JSON ------------------------------------------------------------------------------------


def test_json_round_trip_keeps_every_pin() -> None:
    store = TrustStore()
    store.observe_identity(BOB, BOB_UIK.fp)
    (v1,) = lists(BOB_UIK, BOB, [entry(1), entry(2)])
    store.observe_device_list(v1)
    store.mark_verified(BOB)
    store.observe_identity(ME, BOB_UIK2.fp)
    store.observe_identity(ME, BOB_UIK.fp)  # pending change
    store.note_own_device_added(7)
    loaded = TrustStore.from_json(store.to_json())
    assert loaded.contacts == store.contacts
    assert loaded.own_added == {7}
    assert not loaded.can_send(ME) and loaded.can_send(BOB)
    assert loaded.to_json() == store.to_json()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(format=2),
        lambda d: d["contacts"]["B0BB0B0Y"].update(fp="00"),
        lambda d: d["contacts"]["B0BB0B0Y"].update(level="trusted"),
        lambda d: d["contacts"]["B0BB0B0Y"].pop("devices"),
        lambda d: d.update(own_added=["1"]),
        lambda d: d.update(own_added=[0]),
        lambda d: d["contacts"].update({"bob": d["contacts"]["B0BB0B0Y"]}),
    ],
)
def test_json_loading_is_strict(mutate: object) -> None:
    store = TrustStore()
    store.observe_identity(BOB, BOB_UIK.fp)
    doc = json.loads(store.to_json())
    assert callable(mutate)
    mutate(doc)
    with pytest.raises(ValueError):
        TrustStore.from_json(json.dumps(doc))
    with pytest.raises(ValueError):
        TrustStore.from_json("not json")
