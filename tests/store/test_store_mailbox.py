"""Mailboxes: enqueue, fetch, ack, expire."""

from __future__ import annotations

import pytest
import trio

from momedod.store import (
    MailboxFull,
    NotFound,
    Recipient,
    Store,
    UnknownRecipient,
)

T0 = 1_700_000_000_000
DAY = 86_400_000
TTL = 30 * DAY
KEY = b"\x01" * 32


async def make_user(store: Store, name: str, devices: int = 1) -> str:
    user, invite = await store.create_user(name, T0, DAY)
    for _ in range(devices):
        await store.redeem_invite(invite.code, KEY, f"{name}'s device", T0)
        invite = await store.new_invite(user.user_id, T0, DAY)
    return user.user_id


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


async def test_enqueued_message_is_fetched_with_payload_and_part(store: Store) -> None:
    anna, ben = await make_user(store, "anna"), await make_user(store, "ben")
    result = await store.enqueue(
        (anna, 1), mid(1), b"envelope", [Recipient(ben, 1, b"wrapped key")], T0, 100
    )
    assert (result.duplicate, result.server_ts_ms, result.deliveries) == (False, T0, ((ben, 1, 1),))
    [entry] = await store.fetch(ben, 1, 0, 10)
    assert (entry.seq, entry.message_id, entry.server_ts_ms, entry.payload, entry.part) == (
        1,
        mid(1),
        T0,
        b"envelope",
        b"wrapped key",
    )
    device = await store.get_device(ben, 1)
    assert device is not None and device.mailbox_count == 1


async def test_retry_from_same_sender_is_a_duplicate(store: Store) -> None:
    anna, ben = await make_user(store, "anna"), await make_user(store, "ben")
    to_ben = [Recipient(ben, 1, b"")]
    await store.enqueue((anna, 1), mid(1), b"hello", to_ben, T0, 100)
    again = await store.enqueue((anna, 1), mid(1), b"hello", to_ben, T0 + 5000, 100)
    assert (again.duplicate, again.server_ts_ms, again.deliveries) == (True, T0, ())
    assert len(await store.fetch(ben, 1, 0, 10)) == 1


async def test_same_message_id_from_another_sender_is_stored(store: Store) -> None:
    anna, ben = await make_user(store, "anna", devices=2), await make_user(store, "ben")
    carl = await make_user(store, "carl")
    to_ben = [Recipient(ben, 1, b"")]
    await store.enqueue((anna, 1), mid(1), b"from anna/1", to_ben, T0, 100)
    other_device = await store.enqueue((anna, 2), mid(1), b"from anna/2", to_ben, T0, 100)
    other_user = await store.enqueue((carl, 1), mid(1), b"from carl", to_ben, T0, 100)
    assert not other_device.duplicate and not other_user.duplicate
    payloads = [e.payload for e in await store.fetch(ben, 1, 0, 10)]
    assert payloads == [b"from anna/1", b"from anna/2", b"from carl"]


async def test_payload_is_stored_once_and_freed_after_all_acks(store: Store) -> None:
    anna = await make_user(store, "anna")
    ben = await make_user(store, "ben", devices=3)
    carl = await make_user(store, "carl", devices=2)
    recipients = [Recipient(ben, d, f"ben{d}".encode()) for d in (1, 2, 3)]
    recipients += [Recipient(carl, d, f"carl{d}".encode()) for d in (1, 2)]
    result = await store.enqueue((anna, 1), mid(1), b"x" * 5000, recipients, T0, 100)
    assert result.deliveries == tuple((r.user_id, r.device_id, 1) for r in recipients)
    stats = await store.stats()
    assert (stats.payloads, stats.mailbox_entries) == (1, 5)

    for r in recipients:
        [entry] = await store.fetch(r.user_id, r.device_id, 0, 10)
        assert entry.part == r.part and entry.payload == b"x" * 5000
    for r in recipients[:-1]:
        assert await store.ack(r.user_id, r.device_id, [1]) == 1
    assert (await store.stats()).payloads == 1
    assert await store.ack(carl, 2, [1]) == 1
    stats = await store.stats()
    assert (stats.payloads, stats.mailbox_entries) == (0, 0)


async def test_full_mailbox_rejects_the_whole_message(store: Store) -> None:
    anna, ben, carl = [await make_user(store, n) for n in ("anna", "ben", "carl")]
    for i in range(3):
        await store.enqueue((anna, 1), mid(i), b"fill", [Recipient(carl, 1, b"")], T0, 3)
    before = await store.stats()
    both = [Recipient(ben, 1, b""), Recipient(carl, 1, b"")]
    with pytest.raises(MailboxFull) as info:
        await store.enqueue((anna, 1), mid(99), b"to both", both, T0, 3)
    assert (info.value.user_id, info.value.device_id) == (carl, 1)
    assert f"{carl[:4]}-{carl[4:]}/1" in str(info.value)
    assert await store.fetch(ben, 1, 0, 10) == []
    assert await store.stats() == before

    # Nothing was remembered either: once carl has room, the same message goes through.
    await store.ack(carl, 1, [1])
    result = await store.enqueue((anna, 1), mid(99), b"to both", both, T0, 3)
    assert not result.duplicate
    assert [e.seq for e in await store.fetch(ben, 1, 0, 10)] == [1]
    assert [e.seq for e in await store.fetch(carl, 1, 0, 10)] == [2, 3, 4]


@pytest.mark.parametrize("case", ["unknown device", "revoked", "disabled", "deleted", "no user"])
async def test_unreachable_recipient_is_unknown_and_nothing_is_stored(
    store: Store, case: str
) -> None:
    anna, ben, carl = [await make_user(store, n) for n in ("anna", "ben", "carl")]
    bad = Recipient(carl, 1, b"")
    if case == "unknown device":
        bad = Recipient(carl, 2, b"")
    elif case == "revoked":
        await store.revoke_device(carl, 1, T0)
    elif case == "disabled":
        await store.set_user_disabled(carl, True)
    elif case == "deleted":
        await store.delete_user(carl, T0)
    else:
        bad = Recipient("NOSUCHID", 1, b"")
    with pytest.raises(UnknownRecipient) as info:
        await store.enqueue((anna, 1), mid(1), b"m", [Recipient(ben, 1, b""), bad], T0, 100)
    assert (info.value.user_id, info.value.device_id) == (bad.user_id, bad.device_id)
    assert await store.fetch(ben, 1, 0, 10) == []
    assert (await store.stats()).payloads == 0


async def test_enqueue_refuses_empty_or_repeated_recipients(store: Store) -> None:
    anna = await make_user(store, "anna")
    with pytest.raises(ValueError):
        await store.enqueue((anna, 1), mid(1), b"m", [], T0, 100)
    with pytest.raises(ValueError):
        twice = [Recipient(anna, 1, b"a"), Recipient(anna, 1, b"b")]
        await store.enqueue((anna, 1), mid(1), b"m", twice, T0, 100)


async def test_seqs_increase_and_are_never_reused_after_ack(store: Store) -> None:
    anna, ben = await make_user(store, "anna"), await make_user(store, "ben", devices=2)
    for i in range(3):
        await store.enqueue((anna, 1), mid(i), b"m", [Recipient(ben, 1, b"")], T0, 100)
    assert await store.ack(ben, 1, [1, 2, 3]) == 3
    await store.enqueue(
        (anna, 1), mid(3), b"m", [Recipient(ben, 1, b""), Recipient(ben, 2, b"")], T0, 100
    )
    assert [e.seq for e in await store.fetch(ben, 1, 0, 10)] == [4]
    assert [e.seq for e in await store.fetch(ben, 2, 0, 10)] == [1]  # own counter per device


async def test_fetch_pages_by_after_seq_and_limit(store: Store) -> None:
    anna, ben = await make_user(store, "anna"), await make_user(store, "ben")
    for i in range(5):
        await store.enqueue((anna, 1), mid(i), bytes([i]), [Recipient(ben, 1, b"")], T0, 100)
    assert [e.seq for e in await store.fetch(ben, 1, 0, 2)] == [1, 2]
    assert [e.seq for e in await store.fetch(ben, 1, 2, 2)] == [3, 4]
    assert [e.payload for e in await store.fetch(ben, 1, 4, 100)] == [b"\x04"]
    assert await store.fetch(ben, 1, 2**64 - 1, 10) == []
    with pytest.raises(NotFound):
        await store.fetch(ben, 2, 0, 10)


async def test_ack_counts_only_existing_entries(store: Store) -> None:
    anna, ben = await make_user(store, "anna"), await make_user(store, "ben")
    for i in range(3):
        await store.enqueue((anna, 1), mid(i), b"m", [Recipient(ben, 1, b"")], T0, 100)
    assert await store.ack(ben, 1, [2, 2, 7, 2**64 - 1]) == 1
    assert await store.ack(ben, 1, [2]) == 0
    assert await store.ack(ben, 1, []) == 0
    assert [e.seq for e in await store.fetch(ben, 1, 0, 10)] == [1, 3]
    device = await store.get_device(ben, 1)
    assert device is not None and device.mailbox_count == 2
    with pytest.raises(NotFound):
        await store.ack(ben, 5, [1])


async def test_expire_drops_old_entries_and_forgets_old_message_ids(store: Store) -> None:
    anna, ben = await make_user(store, "anna"), await make_user(store, "ben")
    to_ben = [Recipient(ben, 1, b"")]
    await store.enqueue((anna, 1), mid(1), b"old", to_ben, T0, 100)
    await store.enqueue((anna, 1), mid(2), b"new", to_ben, T0 + 2 * DAY, 100)

    assert await store.expire(T0 + TTL, TTL) == 0  # exactly TTL old: kept
    assert await store.expire(T0 + DAY + TTL, TTL) == 1
    assert [e.payload for e in await store.fetch(ben, 1, 0, 10)] == [b"new"]
    stats = await store.stats()
    assert (stats.mailbox_entries, stats.payloads) == (1, 1)
    device = await store.get_device(ben, 1)
    assert device is not None and device.mailbox_count == 1

    # The expired message's ID is forgotten, the recent one is still a duplicate.
    now = T0 + DAY + TTL
    assert not (await store.enqueue((anna, 1), mid(1), b"old", to_ben, now, 100)).duplicate
    assert (await store.enqueue((anna, 1), mid(2), b"new", to_ben, now, 100)).duplicate


async def test_expire_handles_more_entries_than_one_slice(store: Store) -> None:
    anna, ben = await make_user(store, "anna"), await make_user(store, "ben")
    count = 2100  # more than one expire slice (1000)

    async def send(i: int) -> None:
        await store.enqueue((anna, 1), mid(i), b"m", [Recipient(ben, 1, b"")], T0, 10_000)

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(send, i)
    assert await store.expire(T0 + TTL + 1, TTL) == count
    stats = await store.stats()
    assert (stats.mailbox_entries, stats.payloads) == (0, 0)
