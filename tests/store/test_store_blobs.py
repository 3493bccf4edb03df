"""Attachment blobs in the store: uploads, quota, access, references and expiry."""

from __future__ import annotations

import pytest

from momedod.store import (
    BlobNotFound,
    BlobTooLarge,
    Conflict,
    QuotaExceeded,
    Recipient,
    Store,
)

T0 = 1_700_000_000_000
HOUR = 3_600_000
DAY = 24 * HOUR
TTL = 30 * DAY
PARTIAL_TTL = 24 * HOUR
KEY = b"\x01" * 32
MAX = 1000
QUOTA = 2500


async def make_user(store: Store, name: str) -> str:
    user, invite = await store.create_user(name, T0, DAY)
    await store.redeem_invite(invite.code, KEY, f"{name}'s device", T0)
    return user.user_id


def bid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def mid(n: int) -> bytes:
    return (1000 + n).to_bytes(16, "big")


async def start(store: Store, user: str, blob: bytes, size: int, now: int = T0):  # type: ignore[no-untyped-def]
    return await store.blob_start(user, blob, size, now, max_bytes=MAX, quota_bytes=QUOTA)


async def upload(store: Store, user: str, blob: bytes, size: int, now: int = T0) -> None:
    await start(store, user, blob, size, now)
    await store.blob_received(user, blob, 0, size, now)
    await store.blob_complete(user, blob, now)


async def collect(store: Store, now: int) -> list[tuple[bytes, bool]]:
    return sorted(await store.collect_blobs(now, TTL, PARTIAL_TTL))


async def test_upload_progress_is_recorded_and_resumed(store: Store) -> None:
    anna = await make_user(store, "anna")
    info = await start(store, anna, bid(1), 600)
    assert (info.owner, info.size, info.received, info.complete) == (anna, 600, 0, False)
    assert (await store.blob_received(anna, bid(1), 0, 200, T0)).received == 200
    again = await start(store, anna, bid(1), 600, T0 + 1)  # a new connection resumes
    assert (again.received, again.complete) == (200, False)
    await store.blob_rewind(anna, bid(1), 150, T0 + 2)  # the file held less
    await store.blob_rewind(anna, bid(1), 180, T0 + 2)  # never raises it again
    assert (await store.get_blob(anna, bid(1))).received == 150  # type: ignore[union-attr]
    await store.blob_received(anna, bid(1), 150, 450, T0)
    done = await store.blob_complete(anna, bid(1), T0)
    assert done.complete and done.received == 600
    assert (await start(store, anna, bid(1), 600)).complete


async def test_chunks_must_continue_exactly_and_fit(store: Store) -> None:
    anna, ben = await make_user(store, "anna"), await make_user(store, "ben")
    await start(store, anna, bid(1), 100)
    with pytest.raises(Conflict, match="continues at 0"):
        await store.blob_received(anna, bid(1), 50, 10, T0)
    with pytest.raises(ValueError, match="runs past"):
        await store.blob_received(anna, bid(1), 0, 101, T0)
    with pytest.raises(BlobNotFound):
        await store.blob_received(ben, bid(1), 0, 10, T0)
    with pytest.raises(ValueError, match="incomplete"):
        await store.blob_complete(anna, bid(1), T0)


async def test_limits_quota_and_conflicts(store: Store) -> None:
    anna, ben = await make_user(store, "anna"), await make_user(store, "ben")
    with pytest.raises(BlobTooLarge):
        await start(store, anna, bid(1), MAX + 1)
    await upload(store, anna, bid(1), 1000)
    await start(store, anna, bid(2), 1000)  # unfinished uploads count too
    with pytest.raises(QuotaExceeded) as info:
        await start(store, anna, bid(3), 501)
    assert (info.value.used, info.value.quota) == (2000, QUOTA)
    await start(store, anna, bid(3), 500)
    await start(store, ben, bid(4), 1000)  # quota per user
    with pytest.raises(Conflict):
        await start(store, anna, bid(2), 999)  # same ID, other size
    with pytest.raises(Conflict):
        await start(store, ben, bid(2), 1000)  # same ID, other owner


async def test_only_owner_and_granted_readers_see_a_blob(store: Store) -> None:
    anna, ben, cleo = [await make_user(store, n) for n in ("anna", "ben", "cleo")]
    await start(store, anna, bid(1), 10)
    assert await store.get_blob(anna, bid(1)) is not None
    assert await store.get_blob(ben, bid(1)) is None
    await store.blob_received(anna, bid(1), 0, 10, T0)
    with pytest.raises(BlobNotFound):  # unfinished blobs cannot be sent
        await store.enqueue((anna, 1), mid(1), b"p", [Recipient(ben, 1, b"")], T0, 100, [bid(1)])
    await store.blob_complete(anna, bid(1), T0)
    await store.enqueue((anna, 1), mid(1), b"p", [Recipient(ben, 1, b"")], T0, 100, [bid(1)])
    assert await store.get_blob(ben, bid(1)) is not None
    assert await store.get_blob(cleo, bid(1)) is None
    # A grantee may forward it; the one who may not is refused, and nothing is stored.
    await store.enqueue((ben, 1), mid(2), b"p", [Recipient(cleo, 1, b"")], T0, 100, [bid(1)])
    assert await store.get_blob(cleo, bid(1)) is not None
    dave = await make_user(store, "dave")
    with pytest.raises(BlobNotFound, match="not accessible"):
        await store.enqueue((dave, 1), mid(3), b"p", [Recipient(ben, 1, b"")], T0, 100, [bid(1)])
    assert len(await store.fetch(ben, 1, 0, 10)) == 1


async def test_a_bad_upload_is_discarded(store: Store) -> None:
    anna = await make_user(store, "anna")
    await start(store, anna, bid(1), 10)
    await store.blob_received(anna, bid(1), 0, 10, T0)
    await store.blob_discard(anna, bid(1))
    assert await store.get_blob(anna, bid(1)) is None
    assert (await start(store, anna, bid(1), 10)).received == 0


async def test_unsent_blob_expires_ttl_after_upload(store: Store) -> None:
    anna = await make_user(store, "anna")
    await upload(store, anna, bid(1), 100)
    assert await collect(store, T0 + TTL) == []
    assert await collect(store, T0 + TTL + 1) == [(bid(1), True)]
    assert await store.get_blob(anna, bid(1)) is None


async def test_referenced_blob_stays_until_the_last_payload_is_acked_then_ttl(
    store: Store,
) -> None:
    anna, ben, cleo = [await make_user(store, n) for n in ("anna", "ben", "cleo")]
    await upload(store, anna, bid(1), 100)
    to_both = [Recipient(ben, 1, b""), Recipient(cleo, 1, b"")]
    await store.enqueue((anna, 1), mid(1), b"p", to_both, T0, 100, [bid(1), bid(1)])
    await store.enqueue((anna, 1), mid(2), b"q", [Recipient(ben, 1, b"")], T0, 100, [bid(1)])
    late = T0 + 10 * TTL
    assert await collect(store, late) == []
    [first, second] = await store.fetch(ben, 1, 0, 10)
    await store.ack(ben, 1, [first.seq, second.seq], T0 + DAY)
    assert await collect(store, late) == []  # cleo has not read the first message yet
    [entry] = await store.fetch(cleo, 1, 0, 10)
    await store.ack(cleo, 1, [entry.seq], T0 + 2 * DAY)
    assert await collect(store, T0 + 2 * DAY + TTL) == []
    assert await collect(store, T0 + 2 * DAY + TTL + 1) == [(bid(1), True)]
    assert (await store.stats()).blobs == 0


async def test_mailbox_expiry_and_revocation_release_references(store: Store) -> None:
    anna, ben, cleo = [await make_user(store, n) for n in ("anna", "ben", "cleo")]
    await upload(store, anna, bid(1), 100)
    await upload(store, anna, bid(2), 100)
    await store.enqueue((anna, 1), mid(1), b"p", [Recipient(ben, 1, b"")], T0, 100, [bid(1)])
    await store.enqueue((anna, 1), mid(2), b"p", [Recipient(cleo, 1, b"")], T0, 100, [bid(2)])
    await store.expire(T0 + 5 * DAY, 4 * DAY)  # both entries are older than the mailbox TTL
    assert await collect(store, T0 + 5 * DAY + TTL + 1) == [(bid(1), True), (bid(2), True)]
    await upload(store, anna, bid(3), 100)
    await store.enqueue((anna, 1), mid(3), b"p", [Recipient(ben, 1, b"")], T0, 100, [bid(3)])
    await store.revoke_device(ben, 1, T0 + DAY)
    assert await collect(store, T0 + DAY + TTL + 1) == [(bid(3), True)]


async def test_abandoned_uploads_are_collected_after_the_partial_ttl(store: Store) -> None:
    anna = await make_user(store, "anna")
    await start(store, anna, bid(1), 100)
    await store.blob_received(anna, bid(1), 0, 10, T0 + HOUR)  # progress keeps it alive
    assert await collect(store, T0 + HOUR + PARTIAL_TTL) == []
    assert await collect(store, T0 + HOUR + PARTIAL_TTL + 1) == [(bid(1), False)]
    stats = await store.stats()
    assert (stats.blobs, stats.blob_bytes) == (0, 0)


async def test_collection_works_in_batches(store: Store) -> None:
    anna = await make_user(store, "anna")
    for n in range(5):
        await start(store, anna, bid(n), 1)
    got = await store.collect_blobs(T0 + PARTIAL_TTL + 1, TTL, PARTIAL_TTL, limit=3)
    assert len(got) == 3
    assert len(await store.collect_blobs(T0 + PARTIAL_TTL + 1, TTL, PARTIAL_TTL, limit=3)) == 2


async def test_deleting_a_user_releases_its_blobs_and_grants(store: Store) -> None:
    anna, ben = await make_user(store, "anna"), await make_user(store, "ben")
    await upload(store, anna, bid(1), 100)  # unsent
    await upload(store, anna, bid(2), 100)  # sent to ben
    await start(store, anna, bid(3), 100)  # unfinished
    await upload(store, ben, bid(4), 100)
    await store.enqueue((anna, 1), mid(1), b"p", [Recipient(ben, 1, b"")], T0, 100, [bid(2)])
    await store.enqueue((ben, 1), mid(2), b"p", [Recipient(anna, 1, b"")], T0, 100, [bid(4)])
    await store.delete_user(anna, T0 + HOUR)
    got = await collect(store, T0 + 2 * HOUR)
    # Anna's unsent and unfinished blobs go at once; the one in ben's mailbox stays; ben's
    # blob lost its reference from anna's (dropped) mailbox and starts its TTL.
    assert got == [(bid(1), True), (bid(3), False)]
    assert await store.get_blob(ben, bid(2)) is not None
    assert await collect(store, T0 + HOUR + TTL + 1) == [(bid(4), True)]


async def test_stats_count_blob_bytes(store: Store) -> None:
    anna = await make_user(store, "anna")
    await upload(store, anna, bid(1), 700)
    await start(store, anna, bid(2), 500)
    await store.blob_received(anna, bid(2), 0, 100, T0)
    stats = await store.stats()
    assert (stats.blobs, stats.blob_bytes) == (1, 800)


async def test_a_retried_send_does_not_reference_the_blob_twice(store: Store) -> None:
    anna, ben = await make_user(store, "anna"), await make_user(store, "ben")
    await upload(store, anna, bid(1), 100)
    to_ben = [Recipient(ben, 1, b"")]
    await store.enqueue((anna, 1), mid(1), b"p", to_ben, T0, 100, [bid(1)])
    again = await store.enqueue((anna, 1), mid(1), b"p", to_ben, T0 + 1, 100, [bid(1)])
    assert again.duplicate
    [entry] = await store.fetch(ben, 1, 0, 10)
    await store.ack(ben, 1, [entry.seq], T0 + DAY)
    assert await collect(store, T0 + DAY + TTL + 1) == [(bid(1), True)]
