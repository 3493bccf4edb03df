"""Wall-clock jumps and what the store expires: mailboxes, duplicate detection, invites.

Where time comes from: the store never reads a clock; every call takes ``now_ms``. The daemon
passes the wall clock (``time.time_ns()`` in server/session.py, server/daemon.py,
server/conversations.py, server/blobs.py and the admin handler); the protocol core
(momedod.protocol) has no notion of time, and the session's timeouts use trio's monotonic
clock. So a jump of the system clock reaches the store as a jump of ``now_ms``, which these
tests simulate with explicit values.

What holds: a backward jump never expires anything early (mailbox entries, dedup keys and
invites are kept at least as long as their real age allows), and expiry is exact at the TTL.

A *forward* jump: the realistic case is a Raspberry Pi without a real-time clock that boots
with a stale time (fake-hwclock: the last shutdown, or 1970) and accepts messages and creates
invites before NTP steps the clock forward. The store takes a gap of more than
``CLOCK_JUMP_MS`` (180 days) between ``now_ms`` and the newest stamp it holds for such a jump
and moves its stamps forward by the gap (store/txn.py ``catch_up_clock``), so the next
housekeeping run keeps those messages and the invites stay valid for their real age. A
forward step shorter than that is taken for elapsed time (documented limit).
"""

from __future__ import annotations

import pytest

from momedod.store import InviteExpired, Recipient, Store

T0 = 1_767_225_600_000  # 2026-01-01
DAY = 86_400_000
TTL = 30 * DAY
INVITE_TTL = 7 * DAY
KEY = b"\x01" * 32


async def two_users(store: Store, now_ms: int = T0) -> tuple[str, str]:
    ids = []
    for name in ("anna", "ben"):
        user, invite = await store.create_user(name, now_ms, INVITE_TTL)
        await store.redeem_invite(invite.code, KEY, "phone", now_ms)
        ids.append(user.user_id)
    return ids[0], ids[1]


async def send(store: Store, anna: str, ben: str, n: int, now_ms: int) -> bool:
    result = await store.enqueue(
        (anna, 1), n.to_bytes(16, "big"), b"x", [Recipient(ben, 1, b"")], now_ms, 100
    )
    return result.duplicate


async def queued(store: Store, ben: str) -> list[int]:
    return [int.from_bytes(e.message_id, "big") for e in await store.fetch(ben, 1, 0, 100)]


@pytest.mark.parametrize("jump_days", [1, 29, 31, 365])
async def test_backward_jump_expires_nothing_early(store: Store, jump_days: int) -> None:
    anna, ben = await two_users(store)
    back = T0 - jump_days * DAY
    await send(store, anna, ben, 1, T0)
    assert await store.expire(back, TTL) == 0  # the clock went back: nothing is due
    await send(store, anna, ben, 2, back)  # stamped with the earlier time
    # While the clock stays behind, message 2 is due after a TTL of that clock, message 1
    # only later: each is kept at least its real age.
    assert await store.expire(back + TTL - 1, TTL) == 0
    assert await store.expire(back + TTL + 1, TTL) == 1
    assert await queued(store, ben) == [1]
    assert await store.expire(T0 + TTL - 1, TTL) == 0
    assert await store.expire(T0 + TTL + 1, TTL) == 1
    assert await queued(store, ben) == []


@pytest.mark.parametrize("jump_days", [1, 31])
async def test_retry_after_a_backward_jump_is_still_a_duplicate(
    store: Store, jump_days: int
) -> None:
    anna, ben = await two_users(store)
    assert not await send(store, anna, ben, 1, T0)
    back = T0 - jump_days * DAY
    await store.expire(back, TTL)
    assert await send(store, anna, ben, 1, back)  # not stored twice
    assert await queued(store, ben) == [1]


@pytest.mark.parametrize("jump_days", [1, 6, 30, 365])
async def test_invite_survives_a_backward_jump(store: Store, jump_days: int) -> None:
    user, invite = await store.create_user("carla", T0, INVITE_TTL)
    device = await store.redeem_invite(invite.code, KEY, "phone", T0 - jump_days * DAY)
    assert device.user_id == user.user_id


async def test_invite_expires_exactly_at_its_ttl(store: Store) -> None:
    _, invite = await store.create_user("dora", T0, INVITE_TTL)
    with pytest.raises(InviteExpired):
        await store.redeem_invite(invite.code, KEY, "phone", T0 + INVITE_TTL)
    _, invite = await store.create_user("emil", T0, INVITE_TTL)
    await store.redeem_invite(invite.code, KEY, "phone", T0 + INVITE_TTL - 1)


STALE_BOOT = T0 - 365 * DAY  # a Pi that booted with last year's time; NTP then steps forward


async def test_forward_jump_after_stale_boot_keeps_just_accepted_messages(store: Store) -> None:
    anna, ben = await two_users(store, STALE_BOOT)
    await send(store, anna, ben, 1, STALE_BOOT)  # accepted with the stale clock
    await store.expire(T0, TTL)  # minutes later (real time) NTP has stepped the clock
    assert await queued(store, ben) == [1]


async def test_forward_jump_after_stale_boot_keeps_fresh_invites(store: Store) -> None:
    _, invite = await store.create_user("fritz", STALE_BOOT, INVITE_TTL)
    await store.redeem_invite(invite.code, KEY, "phone", T0)


async def test_catch_up_happens_once_and_real_age_still_counts(store: Store) -> None:
    anna, ben = await two_users(store, STALE_BOOT)
    await send(store, anna, ben, 1, STALE_BOOT)
    assert await store.expire(T0, TTL) == 0  # the jump is caught up ...
    assert await store.expire(T0 + 1, TTL) == 0  # ... once: no second shift
    assert await store.expire(T0 + TTL - 1, TTL) == 0
    assert await store.expire(T0 + TTL + 1, TTL) == 1  # then it ages from the jump on
    assert await queued(store, ben) == []


async def test_invite_expires_after_its_real_age_despite_a_jump(store: Store) -> None:
    _, invite = await store.create_user("gerd", STALE_BOOT, INVITE_TTL)
    await store.expire(T0, TTL)  # housekeeping after the jump shifts the invite too
    with pytest.raises(InviteExpired):
        await store.redeem_invite(invite.code, KEY, "phone", T0 + INVITE_TTL + 1)


async def test_shift_clock_moves_only_what_was_written_before_the_step(store: Store) -> None:
    # The daemon saw the wall clock step 2 days forward (ClockWatch) while it ran.
    anna, ben = await two_users(store, T0)
    step = 2 * DAY
    await send(store, anna, ben, 1, T0)  # before the step
    await send(store, anna, ben, 2, T0 + 10_000 + step)  # after it
    await store.shift_clock(step, T0 + 10_001)
    assert await store.expire(T0 + step + TTL - 1, TTL) == 0  # 1 is not older than it is
    assert await store.expire(T0 + step + TTL + 1, TTL) == 1
    assert await queued(store, ben) == [2]
    assert await store.expire(T0 + 10_000 + step + TTL + 1, TTL) == 1  # 2 was not shifted
