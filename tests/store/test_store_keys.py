"""The key directory: identity records, device lists, prekeys."""

from __future__ import annotations

import pytest
import trio

from momedod.store import DeviceRevoked, NotFound, RecordStale, Store

T0 = 1_700_000_000_000
DAY = 86_400_000
KEY = b"\x01" * 32
SPK, OTPK = 1, 2
SUITE, OTHER_SUITE = 1, 2


async def make_user(store: Store, devices: int = 1) -> str:
    user, invite = await store.create_user("someone", T0, DAY)
    for _ in range(devices):
        await store.redeem_invite(invite.code, KEY, "device", T0)
        invite = await store.new_invite(user.user_id, T0, DAY)
    return user.user_id


async def test_identity_records_are_appended_and_exact_repeats_refused(store: Store) -> None:
    anna = await make_user(store)
    await store.put_identity(anna, b"identity-1", T0)
    await store.put_identity(anna, b"identity-2", T0)
    with pytest.raises(RecordStale):
        await store.put_identity(anna, b"identity-1", T0)
    assert await store.get_records(anna) == [b"identity-1", b"identity-2"]
    with pytest.raises(NotFound):
        await store.put_identity("NOSUCHID", b"identity", T0)


async def test_device_list_version_must_increase(store: Store) -> None:
    anna = await make_user(store)
    await store.put_device_list(anna, 1, b"list-1", T0)
    await store.put_device_list(anna, 5, b"list-5", T0)
    for version in (5, 4, 0):
        with pytest.raises(RecordStale):
            await store.put_device_list(anna, version, b"stale", T0)
    await store.put_device_list(anna, 6, b"list-6", T0)
    assert await store.get_records(anna) == [b"list-1", b"list-5", b"list-6"]
    with pytest.raises(NotFound):
        await store.put_device_list("NOSUCHID", 1, b"list", T0)


async def test_get_records_order_and_only_current_spks_of_active_devices(store: Store) -> None:
    anna = await make_user(store, devices=3)
    # Upload in a scrambled order; the answer has a fixed order.
    await store.put_prekey(anna, 2, OTHER_SUITE, SPK, 1, b"spk-2-b", T0)
    await store.put_device_list(anna, 1, b"list-1", T0)
    await store.put_prekey(anna, 2, SUITE, SPK, 1, b"spk-2-a-old", T0)
    await store.put_identity(anna, b"identity-1", T0)
    await store.put_prekey(anna, 1, SUITE, SPK, 1, b"spk-1-a", T0)
    await store.put_prekey(anna, 3, SUITE, SPK, 1, b"spk-3-a", T0)
    await store.put_prekey(anna, 1, SUITE, OTPK, 1, b"otpk-1", T0)
    await store.put_device_list(anna, 2, b"list-2", T0)
    await store.put_prekey(anna, 2, SUITE, SPK, 2, b"spk-2-a", T0)  # replaces the old one
    await store.put_identity(anna, b"identity-2", T0)
    await store.revoke_device(anna, 3, T0)

    assert await store.get_records(anna) == [
        b"identity-1",
        b"identity-2",
        b"list-1",
        b"list-2",
        b"spk-1-a",
        b"spk-2-a",
        b"spk-2-b",
    ]
    with pytest.raises(NotFound):
        await store.get_records("NOSUCHID")


async def test_each_one_time_prekey_is_handed_out_once_oldest_first(store: Store) -> None:
    anna = await make_user(store)
    for key_id in (7, 3, 5):
        await store.put_prekey(anna, 1, SUITE, OTPK, key_id, f"otpk-{key_id}".encode(), T0)
    await store.put_prekey(anna, 1, OTHER_SUITE, OTPK, 1, b"other-suite", T0)
    with pytest.raises(RecordStale):
        await store.put_prekey(anna, 1, SUITE, OTPK, 3, b"otpk-3 again", T0)
    assert await store.count_prekeys(anna, 1, SUITE) == 3

    claimed = [await store.claim_prekey(anna, 1, SUITE) for _ in range(4)]
    assert claimed == [b"otpk-7", b"otpk-3", b"otpk-5", None]
    assert await store.count_prekeys(anna, 1, SUITE) == 0
    assert await store.count_prekeys(anna, 1, OTHER_SUITE) == 1
    assert await store.get_records(anna) == []


async def test_concurrent_claims_never_share_a_prekey(store: Store) -> None:
    anna = await make_user(store)
    for key_id in range(10):
        await store.put_prekey(anna, 1, SUITE, OTPK, key_id, f"otpk-{key_id}".encode(), T0)
    results: list[bytes | None] = []

    async def claim() -> None:
        results.append(await store.claim_prekey(anna, 1, SUITE))

    async with trio.open_nursery() as nursery:
        for _ in range(25):
            nursery.start_soon(claim)
    handed_out = [r for r in results if r is not None]
    assert sorted(handed_out) == sorted(f"otpk-{i}".encode() for i in range(10))
    assert results.count(None) == 15


async def test_prekeys_of_unknown_or_revoked_devices(store: Store) -> None:
    anna = await make_user(store, devices=2)
    await store.put_prekey(anna, 2, SUITE, OTPK, 1, b"otpk", T0)
    await store.revoke_device(anna, 2, T0)
    assert await store.claim_prekey(anna, 2, SUITE) is None  # revoking dropped the pool
    with pytest.raises(DeviceRevoked):
        await store.put_prekey(anna, 2, SUITE, OTPK, 2, b"otpk", T0)
    for call in (
        store.put_prekey(anna, 9, SUITE, OTPK, 1, b"otpk", T0),
        store.claim_prekey(anna, 9, SUITE),
        store.count_prekeys(anna, 9, SUITE),
        store.claim_prekey("NOSUCHID", 1, SUITE),
    ):
        with pytest.raises(NotFound):
            await call
    with pytest.raises(ValueError):
        await store.put_prekey(anna, 1, SUITE, 3, 1, b"what", T0)
