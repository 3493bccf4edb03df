"""Push targets, urgent allow-lists, quiet-hours policies and urgent mailbox entries."""

from __future__ import annotations

import pytest

from momedod.store import NotFound, PushTarget, Recipient, Store

T0 = 1_700_000_000_000
WEEK = 7 * 86_400_000
URL = "https://ntfy.example.org/up1"


async def device(store: Store, name: str, key: bytes) -> tuple[str, int]:
    _user, invite = await store.create_user(name, T0, WEEK)
    d = await store.redeem_invite(invite.code, key, f"{name}'s phone", T0)
    return d.user_id, d.device_id


async def test_one_target_per_device_replaced_cleared_and_deleted_on_revocation(
    store: Store,
) -> None:
    uid, did = await device(store, "Anna", b"\x01" * 32)
    assert await store.get_push_target(uid, did) is None
    await store.set_push_target(uid, did, 1, 1, URL, T0)
    await store.set_push_target(uid, did, 2, 0, "token", T0 + 1)
    assert await store.get_push_target(uid, did) == PushTarget(uid, did, 2, 0, "token", T0 + 1)
    assert await store.clear_push_target(uid, did)
    assert not await store.clear_push_target(uid, did)
    await store.set_push_target(uid, did, 1, 1, URL, T0)
    await store.revoke_device(uid, did, T0 + 2)
    assert await store.list_push_targets() == ([], [])
    with pytest.raises(NotFound):
        await store.set_push_target(uid, did, 1, 1, URL, T0)


async def test_a_dropped_target_is_reported_once_unless_replaced_meanwhile(store: Store) -> None:
    uid, did = await device(store, "Ben", b"\x02" * 32)
    await store.set_push_target(uid, did, 1, 1, URL, T0)
    assert not await store.drop_push_target(uid, did, "https://other/", 410, T0 + 5)
    assert await store.drop_push_target(uid, did, URL, 410, T0 + 5)
    assert await store.get_push_target(uid, did) is None
    assert await store.list_push_targets() == ([], [(uid, did)])
    assert await store.take_push_dropped(uid, did) == (1, 410, T0 + 5)
    assert await store.take_push_dropped(uid, did) is None
    await store.set_push_target(uid, did, 1, 1, URL, T0)
    await store.drop_push_target(uid, did, URL, 404, T0 + 6)
    await store.set_push_target(uid, did, 1, 1, URL + "x", T0 + 7)  # a new one clears the report
    assert await store.take_push_dropped(uid, did) is None


async def test_urgent_flag_is_kept_with_the_payload(store: Store) -> None:
    a = await device(store, "Carla", b"\x03" * 32)
    b = await device(store, "Dora", b"\x04" * 32)
    to_b = [Recipient(b[0], b[1], b"")]
    await store.enqueue(a, b"\x10" * 16, b"normal", to_b, T0, 100)
    await store.enqueue(a, b"\x11" * 16, b"urgent", to_b, T0, 100, urgent=True)
    entries = await store.fetch(*b, 0, 10)
    assert [(e.payload, e.urgent) for e in entries] == [(b"normal", False), (b"urgent", True)]


async def test_urgent_allow_lists_and_quiet_policies(store: Store) -> None:
    uid, _ = await device(store, "Emil", b"\x05" * 32)
    conv = b"\xc0" * 16
    assert not await store.may_send_urgent(uid, conv)
    await store.set_urgent(conv_id=conv, allowed=True)
    assert await store.may_send_urgent(uid, conv) and not await store.may_send_urgent(uid, None)
    await store.set_urgent(user_id=uid, allowed=True)
    await store.set_urgent(user_id=uid, allowed=True)  # idempotent
    assert await store.may_send_urgent(uid, None)
    assert await store.list_urgent() == ([uid], [conv])
    await store.set_urgent(user_id=uid, allowed=False)
    assert await store.list_urgent() == ([], [conv])
    await store.put_quiet_policy("staff", '{"days": "Mon-Fri"}', T0)
    await store.put_quiet_policy("staff", '{"days": "daily"}', T0)
    assert await store.list_quiet_policies() == [("staff", '{"days": "daily"}')]
    assert await store.delete_quiet_policy("staff")
    assert not await store.delete_quiet_policy("staff")
