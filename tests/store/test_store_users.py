"""Users, invites and devices in the store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import query

from momedod.store import (
    InviteExpired,
    InviteInvalid,
    NotFound,
    Recipient,
    Store,
    StoreError,
    UnknownRecipient,
    UserDisabled,
    open_store,
)
from momedod.store.txn import hash_invite_code

T0 = 1_700_000_000_000
HOUR = 3_600_000
WEEK = 7 * 24 * HOUR
KEY = b"\x01" * 32


def scripted(ids: list[str]) -> Callable[[], str]:
    it: Iterator[str] = iter(ids)
    return lambda: next(it)


async def test_created_user_is_listed_and_its_invite_enrolls_device_1(store: Store) -> None:
    user, invite = await store.create_user("Anna Schmidt", T0, WEEK)
    assert (user.name, user.created_ms, user.disabled, user.deleted) == (
        "Anna Schmidt",
        T0,
        False,
        False,
    )
    assert (invite.user_id, invite.created_ms, invite.expires_ms) == (user.user_id, T0, T0 + WEEK)
    assert await store.get_user(user.user_id) == user
    assert await store.list_users() == [user]

    device = await store.redeem_invite(invite.code, KEY, "Anna's phone", T0 + HOUR)
    assert (device.user_id, device.device_id, device.name, device.transport_pub) == (
        user.user_id,
        1,
        "Anna's phone",
        KEY,
    )
    assert device.active and device.created_ms == T0 + HOUR and device.last_seen_ms is None
    assert await store.get_device(user.user_id, 1) == device
    assert await store.list_devices(user.user_id) == [device]


async def test_invite_code_is_stored_only_as_a_hash(store: Store, tmp_path: Path) -> None:
    _, invite = await store.create_user("Anna", T0, WEEK)
    [(stored,)] = await query(store, "SELECT code_hash FROM invites")
    assert stored == hash_invite_code(invite.code) and invite.code.encode() not in stored
    await store.close()
    for f in tmp_path.iterdir():  # SQLite's files; PostgreSQL's rows are checked above
        assert invite.code.encode() not in f.read_bytes(), f


async def test_used_or_unknown_invite_is_invalid(store: Store) -> None:
    _, invite = await store.create_user("Anna", T0, WEEK)
    await store.redeem_invite(invite.code, KEY, "phone", T0)
    with pytest.raises(InviteInvalid):
        await store.redeem_invite(invite.code, KEY, "second phone", T0)
    with pytest.raises(InviteInvalid):
        await store.redeem_invite("NOSUCHCODE", KEY, "phone", T0)
    assert [d.device_id for d in await store.list_devices(invite.user_id)] == [1]


async def test_invite_expires_at_its_expiry_time(store: Store) -> None:
    _, invite = await store.create_user("Anna", T0, WEEK)
    with pytest.raises(InviteExpired):
        await store.redeem_invite(invite.code, KEY, "phone", T0 + WEEK)
    assert (await store.redeem_invite(invite.code, KEY, "phone", T0 + WEEK - 1)).device_id == 1


async def test_new_invite_invalidates_the_older_one(store: Store) -> None:
    user, old = await store.create_user("Anna", T0, WEEK)
    new = await store.new_invite(user.user_id, T0 + HOUR, HOUR)
    assert new.code != old.code and new.expires_ms == T0 + 2 * HOUR
    with pytest.raises(InviteInvalid):
        await store.redeem_invite(old.code, KEY, "phone", T0 + HOUR)
    assert (await store.redeem_invite(new.code, KEY, "phone", T0 + HOUR)).device_id == 1
    with pytest.raises(NotFound):
        await store.new_invite("NOSUCHID", T0, HOUR)


async def test_disabled_user_cannot_redeem_until_enabled(store: Store) -> None:
    user, invite = await store.create_user("Anna", T0, WEEK)
    disabled = await store.set_user_disabled(user.user_id, True)
    assert disabled.disabled and (await store.get_user(user.user_id)) == disabled
    with pytest.raises(UserDisabled):
        await store.redeem_invite(invite.code, KEY, "phone", T0)
    await store.set_user_disabled(user.user_id, False)
    assert (await store.redeem_invite(invite.code, KEY, "phone", T0)).device_id == 1
    with pytest.raises(NotFound):
        await store.set_user_disabled("NOSUCHID", True)


async def test_device_ids_count_up_and_are_not_reused_after_revoke(store: Store) -> None:
    user, invite = await store.create_user("Anna", T0, WEEK)
    await store.redeem_invite(invite.code, KEY, "phone", T0)
    invite = await store.new_invite(user.user_id, T0, WEEK)
    await store.redeem_invite(invite.code, KEY, "tablet", T0)
    await store.revoke_device(user.user_id, 2, T0 + HOUR)
    invite = await store.new_invite(user.user_id, T0, WEEK)
    laptop = await store.redeem_invite(invite.code, KEY, "laptop", T0)
    assert laptop.device_id == 3
    devices = await store.list_devices(user.user_id)
    assert [(d.device_id, d.active) for d in devices] == [(1, True), (2, False), (3, True)]


async def test_list_users_is_in_creation_order_without_deleted(store: Store) -> None:
    a, _ = await store.create_user("A", T0, WEEK)
    b, _ = await store.create_user("B", T0 + 1, WEEK)
    c, _ = await store.create_user("C", T0 + 2, WEEK)
    await store.delete_user(b.user_id, T0 + 3)
    assert [u.name for u in await store.list_users()] == [a.name, c.name]


async def test_deleted_user_is_gone_everywhere(store: Store) -> None:
    user, invite = await store.create_user("Anna", T0, WEEK)
    await store.redeem_invite(invite.code, KEY, "phone", T0)
    pending = await store.new_invite(user.user_id, T0, WEEK)
    friend, finvite = await store.create_user("Ben", T0, WEEK)
    await store.redeem_invite(finvite.code, KEY, "phone", T0)
    await store.enqueue(
        (friend.user_id, 1), b"m" * 16, b"hello", [Recipient(user.user_id, 1, b"")], T0, 100
    )
    await store.put_identity(user.user_id, b"identity", T0)

    await store.delete_user(user.user_id, T0 + HOUR)

    assert await store.get_user(user.user_id) is None
    assert await store.get_device(user.user_id, 1) is None
    for call in (
        store.list_devices(user.user_id),
        store.get_records(user.user_id),
        store.set_user_disabled(user.user_id, False),
        store.delete_user(user.user_id, T0),
        store.fetch(user.user_id, 1, 0, 10),
    ):
        with pytest.raises(NotFound):
            await call
    with pytest.raises(InviteInvalid):
        await store.redeem_invite(pending.code, KEY, "phone", T0)
    with pytest.raises(UnknownRecipient):
        await store.enqueue(
            (friend.user_id, 1), b"n" * 16, b"hi", [Recipient(user.user_id, 1, b"")], T0, 100
        )
    stats = await store.stats()
    assert (stats.users, stats.devices, stats.mailbox_entries, stats.payloads) == (1, 1, 0, 0)


async def test_user_id_collisions_are_retried_and_deleted_ids_never_reused(
    tmp_path: Path, store_opener: Any
) -> None:
    ids = scripted(["AAAAAAAA", "AAAAAAAA", "BBBBBBBB", "AAAAAAAA", "BBBBBBBB", "CCCCCCCC"])
    async with store_opener(tmp_path, new_user_id=ids) as s:
        first, _ = await s.create_user("first", T0, WEEK)
        second, _ = await s.create_user("second", T0, WEEK)
        await s.delete_user(first.user_id, T0)
        third, _ = await s.create_user("third", T0, WEEK)
    assert (first.user_id, second.user_id, third.user_id) == ("AAAAAAAA", "BBBBBBBB", "CCCCCCCC")


async def test_id_generator_that_never_finds_a_free_id_gives_up(
    tmp_path: Path, store_opener: Any
) -> None:
    async with store_opener(tmp_path, new_user_id=lambda: "AAAAAAAA") as s:
        await s.create_user("first", T0, WEEK)
        with pytest.raises(StoreError, match="unused user ID"):
            await s.create_user("second", T0, WEEK)
        assert len(await s.list_users()) == 1


async def test_revoke_device_keeps_first_revocation_time(store: Store) -> None:
    user, invite = await store.create_user("Anna", T0, WEEK)
    await store.redeem_invite(invite.code, KEY, "phone", T0)
    revoked = await store.revoke_device(user.user_id, 1, T0 + HOUR)
    assert not revoked.active and revoked.revoked_ms == T0 + HOUR
    again = await store.revoke_device(user.user_id, 1, T0 + 2 * HOUR)
    assert again.revoked_ms == T0 + HOUR
    assert await store.get_device(user.user_id, 1) == revoked
    with pytest.raises(NotFound):
        await store.revoke_device(user.user_id, 2, T0)
    with pytest.raises(NotFound):
        await store.revoke_device("NOSUCHID", 1, T0)


async def test_touch_device_records_last_seen(store: Store) -> None:
    user, invite = await store.create_user("Anna", T0, WEEK)
    await store.redeem_invite(invite.code, KEY, "phone", T0)
    await store.touch_device(user.user_id, 1, T0 + HOUR)
    device = await store.get_device(user.user_id, 1)
    assert device is not None and device.last_seen_ms == T0 + HOUR
    with pytest.raises(NotFound):
        await store.touch_device(user.user_id, 9, T0)


async def test_unknown_user_and_device_lookups(store: Store) -> None:
    assert await store.get_user("NOSUCHID") is None
    assert await store.get_device("NOSUCHID", 1) is None
    user, _ = await store.create_user("Anna", T0, WEEK)
    assert await store.get_device(user.user_id, 1) is None
    assert await store.list_devices(user.user_id) == []
    with pytest.raises(NotFound, match="no user NOSU-CHID"):
        await store.list_devices("NOSUCHID")


async def test_default_generators_make_valid_ids_and_codes(tmp_path: Path) -> None:
    from momedod.protocol import userid

    async with open_store("sqlite", tmp_path) as s:
        user, invite = await s.create_user("Anna", T0, WEEK)
        assert userid.is_valid(user.user_id)
        assert len(invite.code) == 20
        assert (await s.redeem_invite(invite.code, KEY, "phone", T0)).user_id == user.user_id
