"""Conversations: rosters replace the membership, fan-out stores a payload once, events."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import query

from momedod.store import (
    AuditNote,
    Conflict,
    EventMessage,
    Forbidden,
    NotFound,
    Recipient,
    RecordStale,
    RosterChange,
    Store,
    UnknownRecipient,
)

T0 = 1_700_000_000_000
DAY = 86_400_000
KEY = b"\x01" * 32
CONV = b"\xc0" * 16
GROUP, CHANNEL = 1, 2
MEMBER, ADMIN = 0, 1
CHANGED = EventMessage(b"\xe1" * 16, b"event:changed")
REMOVED = EventMessage(b"\xe2" * 16, b"event:removed")


async def make_user(store: Store, name: str, devices: int = 1) -> str:
    user, invite = await store.create_user(name, T0, DAY)
    for _ in range(devices):
        await store.redeem_invite(invite.code, KEY, f"{name}'s device", T0)
        invite = await store.new_invite(user.user_id, T0, DAY)
    return user.user_id


async def newest(store: Store, user_id: str, device_id: int) -> tuple[bytes, bytes]:
    """(payload, part) of the newest entry in a device's mailbox (after the roster events)."""
    entries = await store.fetch(user_id, device_id, 0, 100)
    return entries[-1].payload, entries[-1].part


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def change(epoch: int, members: dict[str, int], kind: int = GROUP) -> RosterChange:
    return RosterChange(
        CONV, epoch, kind, tuple(sorted(members.items())), f"record-{epoch}".encode()
    )


async def create(
    store: Store,
    members: dict[str, int],
    kind: int = GROUP,
    actor: tuple[str, int] | None = None,
    *,
    managed: bool = False,
    name: str | None = None,
) -> None:
    await store.put_roster(
        change(1, members, kind),
        expected_epoch=None,
        managed=managed,
        name=name,
        actor=actor,
        changed=CHANGED,
        removed=REMOVED,
        now_ms=T0,
        max_per_device=100,
    )


async def test_first_roster_creates_the_conversation_with_its_members(store: Store) -> None:
    anna, ben = await make_user(store, "anna"), await make_user(store, "ben")
    await create(store, {anna: ADMIN, ben: MEMBER}, actor=(anna, 1))
    conv = await store.get_conversation(CONV)
    assert conv is not None
    assert (conv.kind, conv.managed, conv.epoch, conv.name, conv.created_by) == (
        GROUP,
        False,
        1,
        None,
        anna,
    )
    assert conv.members == tuple(sorted({anna: ADMIN, ben: MEMBER}.items()))
    assert await store.get_rosters(CONV, 0) == [b"record-1"]
    [summary] = await store.list_conversations(ben)
    assert (summary.conv_id, summary.members) == (CONV, 2)
    assert await store.list_conversations(await make_user(store, "carl")) == []


async def test_roster_change_replaces_membership_and_notifies_old_and_new(store: Store) -> None:
    anna, ben = await make_user(store, "anna", devices=2), await make_user(store, "ben")
    carl = await make_user(store, "carl")
    await create(store, {anna: ADMIN, ben: MEMBER}, actor=(anna, 1))
    applied = await store.put_roster(
        change(2, {anna: ADMIN, carl: MEMBER}),
        expected_epoch=1,
        managed=False,
        name=None,
        actor=(anna, 1),
        changed=CHANGED,
        removed=REMOVED,
        now_ms=T0 + 1,
        max_per_device=100,
    )
    assert applied.conversation.epoch == 2
    assert dict(applied.conversation.members) == {anna: ADMIN, carl: MEMBER}
    changed, removed = applied.events
    # The acting device gets no event; anna's other device does.
    assert {(u, d) for u, d, _ in changed.result.deliveries} == {(anna, 2), (carl, 1)}
    assert {(u, d) for u, d, _ in removed.result.deliveries} == {(ben, 1)}
    # ben got the creation's event, then the removal.
    first, entry = await store.fetch(ben, 1, 0, 10)
    assert first.payload == CHANGED.payload
    assert (entry.message_id, entry.payload) == (REMOVED.message_id, REMOVED.payload)
    [entry] = await store.fetch(carl, 1, 0, 10)
    assert entry.payload == CHANGED.payload
    assert await store.get_rosters(CONV, 1) == [b"record-2"]
    assert await store.list_conversations(ben) == []


async def test_stale_epoch_is_a_conflict_and_changes_nothing(store: Store) -> None:
    anna, ben = await make_user(store, "anna"), await make_user(store, "ben")
    await create(store, {anna: ADMIN})
    with pytest.raises(Conflict):
        await store.put_roster(
            change(2, {anna: ADMIN, ben: MEMBER}),
            expected_epoch=0,
            managed=False,
            name=None,
            actor=None,
            changed=CHANGED,
            removed=REMOVED,
            now_ms=T0,
            max_per_device=100,
        )
    with pytest.raises(Conflict):
        await create(store, {anna: ADMIN})  # the conversation exists
    conv = await store.get_conversation(CONV)
    assert conv is not None and conv.epoch == 1 and conv.members == ((anna, ADMIN),)


async def test_unknown_or_deleted_member_is_named(store: Store) -> None:
    anna, gone = await make_user(store, "anna"), await make_user(store, "gone")
    await store.delete_user(gone, T0)
    with pytest.raises(NotFound, match=gone[:4]):
        await create(store, {anna: ADMIN, gone: MEMBER})
    assert await store.get_conversation(CONV) is None


async def test_managed_names_are_unique(store: Store) -> None:
    anna = await make_user(store, "anna")
    await create(store, {anna: MEMBER}, managed=True, name="Klasse 7b")
    other = RosterChange(b"\xc1" * 16, 1, GROUP, ((anna, MEMBER),), b"r")
    with pytest.raises(Conflict, match="Klasse 7b"):
        await store.put_roster(
            other,
            expected_epoch=None,
            managed=True,
            name="Klasse 7b",
            actor=None,
            changed=CHANGED,
            removed=REMOVED,
            now_ms=T0,
            max_per_device=100,
        )


async def test_channel_post_fans_out_once_to_every_member_device(
    store: Store, tmp_path: Path
) -> None:
    teacher = await make_user(store, "teacher", devices=2)
    pupils = [await make_user(store, f"pupil{i}", devices=2) for i in range(20)]
    members = {teacher: ADMIN, **{p: MEMBER for p in pupils}}
    await create(store, members, CHANNEL)
    part = Recipient(pupils[0], 2, b"chain-dist")
    result = await store.enqueue_conv((teacher, 1), mid(1), CONV, b"post", [part], [], T0, 100)
    got = {(u, d) for u, d, _ in result.deliveries}
    assert got == {(teacher, 2)} | {(p, d) for p in pupils for d in (1, 2)}
    assert result.skipped_full == 0 and not result.duplicate
    assert await newest(store, pupils[0], 2) == (b"post", b"chain-dist")
    assert await newest(store, pupils[0], 1) == (b"post", b"")
    rows = await query(store, "SELECT refs FROM payloads WHERE data = ?", (b"post",))
    assert rows == [(41,)]
    again = await store.enqueue_conv((teacher, 1), mid(1), CONV, b"post", [], [], T0, 100)
    assert again.duplicate and again.deliveries == ()


async def test_channel_refuses_members_and_strangers(store: Store) -> None:
    teacher, pupil = await make_user(store, "teacher"), await make_user(store, "pupil")
    stranger = await make_user(store, "stranger")
    await create(store, {teacher: ADMIN, pupil: MEMBER}, CHANNEL)
    with pytest.raises(Forbidden, match="admins"):
        await store.enqueue_conv((pupil, 1), mid(1), CONV, b"x", [], [], T0, 100)
    with pytest.raises(Forbidden, match="not a member"):
        await store.enqueue_conv((stranger, 1), mid(2), CONV, b"x", [], [], T0, 100)
    with pytest.raises(NotFound):
        await store.enqueue_conv((teacher, 1), mid(3), b"\x00" * 16, b"x", [], [], T0, 100)
    assert (await store.stats()).payloads == 1  # the creation's event only


async def test_part_for_a_non_recipient_refuses_the_whole_send(store: Store) -> None:
    anna, ben = await make_user(store, "anna"), await make_user(store, "ben")
    outsider = await make_user(store, "outsider")
    await create(store, {anna: ADMIN, ben: MEMBER})
    for bad in (Recipient(outsider, 1, b"p"), Recipient(anna, 1, b"p"), Recipient(ben, 9, b"p")):
        with pytest.raises(UnknownRecipient):
            await store.enqueue_conv((anna, 1), mid(1), CONV, b"x", [bad], [], T0, 100)
    assert await newest(store, ben, 1) == (CHANGED.payload, b"")


async def test_full_mailbox_is_skipped_not_fatal(store: Store) -> None:
    anna, ben, carl = [await make_user(store, n) for n in ("anna", "ben", "carl")]
    await create(store, {anna: MEMBER, ben: MEMBER, carl: MEMBER})
    await store.enqueue((anna, 1), mid(1), b"filler", [Recipient(ben, 1, b"")], T0, 100)
    # Every mailbox holds the creation's event; ben's also the filler.
    result = await store.enqueue_conv((anna, 1), mid(2), CONV, b"x", [], [], T0, 2)
    assert result.skipped_full == 1
    assert {u for u, _, _ in result.deliveries} == {carl}


async def test_disabled_members_and_revoked_devices_get_nothing(store: Store) -> None:
    anna, ben = await make_user(store, "anna"), await make_user(store, "ben", devices=2)
    carl = await make_user(store, "carl")
    await create(store, {anna: MEMBER, ben: MEMBER, carl: MEMBER})
    await store.revoke_device(ben, 1, T0)
    await store.set_user_disabled(carl, True)
    result = await store.enqueue_conv((anna, 1), mid(1), CONV, b"x", [], [], T0, 100)
    assert [(u, d) for u, d, _ in result.deliveries] == [(ben, 2)]


async def test_delete_tells_members_and_forgets_the_conversation(store: Store) -> None:
    anna, ben = await make_user(store, "anna"), await make_user(store, "ben")
    await create(store, {anna: ADMIN, ben: MEMBER}, managed=True, name="Team")
    gone = EventMessage(b"\xe3" * 16, b"event:deleted")
    note = AuditNote(ts_ms=T0, uid=1000, action="group.delete")
    conv, event = await store.delete_conversation(
        CONV, deleted=gone, now_ms=T0, max_per_device=100, audit=note
    )
    assert conv.name == "Team"
    assert {u for u, _, _ in event.result.deliveries} == {anna, ben}
    assert await store.get_conversation(CONV) is None
    assert await store.get_rosters(CONV, 0) == []
    assert await store.list_conversations() == []
    [entry] = await store.list_audit(action="group.delete")
    assert entry.target == "Team" and entry.detail["members"] == 2
    with pytest.raises(NotFound):
        await store.delete_conversation(CONV, deleted=gone, now_ms=T0, max_per_device=100)


async def test_admin_roster_change_is_audited_with_the_diff(store: Store) -> None:
    anna, ben = await make_user(store, "anna"), await make_user(store, "ben")
    await store.put_roster(
        change(1, {anna: ADMIN, ben: MEMBER}),
        expected_epoch=None,
        managed=True,
        name="Team",
        actor=None,
        changed=CHANGED,
        removed=REMOVED,
        now_ms=T0,
        max_per_device=100,
        audit=AuditNote(ts_ms=T0, uid=0, action="group.add"),
    )
    [entry] = await store.list_audit(action="group.add")
    assert entry.target == "Team"
    assert entry.detail["conv_id"] == CONV.hex() and entry.detail["members"] == 2
    assert len(entry.detail["added"]) == 2 and len(entry.detail["admins"]) == 1


async def test_org_keys_append_in_version_order(store: Store) -> None:
    assert await store.list_org_keys() == []
    with pytest.raises(RecordStale):
        await store.put_org_key(2, b"f" * 32, b"v2", T0)
    await store.put_org_key(1, b"f" * 32, b"v1", T0)
    with pytest.raises(RecordStale):
        await store.put_org_key(1, b"g" * 32, b"v1 again", T0)
    await store.put_org_key(2, b"g" * 32, b"v2", T0)
    assert await store.list_org_keys() == [b"v1", b"v2"]
