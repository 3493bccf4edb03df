"""The audit log, user search and paging, bulk invites and the schema-2 migration (SQLite)."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import opened

from momedod.store import (
    AuditNote,
    InvalidCursor,
    InviteInvalid,
    NotFound,
    Store,
    UserQuery,
)
from momedod.store.migrations import SQLITE_MIGRATIONS, migrate
from momedod.store.sqlite import DB_FILENAME

NOW = 1_795_978_800_000
DAY = 86_400_000
TTL = 7 * DAY


def note(action: str, uid: int | None = 1000, **detail: object) -> AuditNote:
    return AuditNote(ts_ms=NOW, uid=uid, action=action, detail=detail)


async def test_every_change_writes_its_audit_entry_in_the_same_transaction(store: Store):
    user, _ = await store.create_user("Anna", NOW, TTL, audit=note("user.add", name="Anna"))
    uid = user.user_id
    shown = f"{uid[:4]}-{uid[4:]}"
    await store.rename_user(uid, "Anna Schmidt", audit=note("user.rename"))
    await store.set_user_disabled(uid, True, audit=note("user.disable", uid=0))
    await store.set_user_disabled(uid, False, audit=note("user.enable"))
    invite = await store.new_invite(uid, NOW, TTL, audit=note("user.invite", code="SECRET"))
    await store.redeem_invite(invite.code, bytes(32), "phone", NOW)
    await store.revoke_device(uid, 1, NOW, audit=note("device.revoke"))
    backup_id = await store.add_audit(
        AuditNote(NOW, None, "server.backup", target="/var/backups/x", detail={"files": 2})
    )
    entries = await store.list_audit(limit=100)
    assert [e.id for e in entries] == sorted((e.id for e in entries), reverse=True)
    assert entries[0].id == backup_id
    rows = [(e.action, e.target, e.uid, e.user_id) for e in reversed(entries)]
    assert rows == [
        ("user.add", shown, 1000, uid),
        ("user.rename", shown, 1000, uid),
        ("user.disable", shown, 0, uid),
        ("user.enable", shown, 1000, uid),
        ("user.invite", shown, 1000, uid),
        ("device.revoke", f"{shown}/1", 1000, uid),
        ("server.backup", "/var/backups/x", None, None),
    ]
    by_action = {e.action: e for e in entries}
    assert by_action["user.add"].detail == {"name": "Anna"}
    assert by_action["user.rename"].detail == {"old_name": "Anna", "name": "Anna Schmidt"}
    assert by_action["user.invite"].detail == {}  # "code" is never stored
    assert by_action["server.backup"].detail == {"files": 2}


async def test_a_failed_change_leaves_no_audit_entry(store: Store):
    with pytest.raises(NotFound):
        await store.set_user_disabled("ABCDEFGH", True, audit=note("user.disable"))
    with pytest.raises(NotFound):
        await store.rename_user("ABCDEFGH", "x", audit=note("user.rename"))
    user, _ = await store.create_user("Anna", NOW, TTL)
    with pytest.raises(NotFound):
        await store.revoke_device(user.user_id, 7, NOW, audit=note("device.revoke"))
    assert await store.list_audit() == []


async def test_deleting_a_user_removes_its_name_from_the_audit_log(store: Store):
    anna, _ = await store.create_user("Anna", NOW, TTL, audit=note("user.add", name="Anna"))
    ben, _ = await store.create_user("Ben", NOW, TTL, audit=note("user.add", name="Ben"))
    await store.rename_user(anna.user_id, "Anna S", audit=note("user.rename"))
    await store.delete_user(anna.user_id, NOW, audit=note("user.delete"))
    mine = await store.list_audit(user_id=anna.user_id)
    assert [e.action for e in mine] == ["user.delete", "user.rename", "user.add"]
    assert all("name" not in e.detail and "old_name" not in e.detail for e in mine)
    [other] = await store.list_audit(user_id=ben.user_id)
    assert other.detail == {"name": "Ben"}


async def test_list_audit_pages_and_filters(store: Store):
    users = []
    for i in range(5):
        user, _ = await store.create_user(f"U{i}", NOW + i, TTL, audit=note("user.add"))
        users.append(user)
        await store.set_user_disabled(user.user_id, True, audit=note("user.disable"))
    newest = await store.list_audit(limit=3)
    assert len(newest) == 3
    older = await store.list_audit(limit=100, before_id=newest[-1].id)
    assert len(older) == 7 and older[0].id == newest[-1].id - 1
    assert [e.id for e in await store.list_audit(after_id=8, limit=10)] == [9, 10]
    assert [e.action for e in await store.list_audit(user_id=users[2].user_id)] == [
        "user.disable",
        "user.add",
    ]
    assert len(await store.list_audit(action="user.add")) == 5
    assert len(await store.list_audit(action="user.")) == 10
    assert await store.list_audit(action="user") == []
    assert await store.list_audit(action="device.") == []


async def test_find_users_pages_are_stable_without_duplicates(store: Store):
    for i in range(250):
        # Many share a millisecond: ties go by insertion order.
        await store.create_user(f"User {i:03d}", NOW + i // 7, TTL)
    seen: list[str] = []
    page = await store.find_users(UserQuery(), limit=100)
    pages = 1
    assert len(page.users) == 100 and page.next is not None
    seen.extend(s.user.name for s in page.users)
    # A user created while paging shows up at the end, nothing repeats or goes missing.
    await store.create_user("Late", NOW + 10_000, TTL)
    while page.next is not None:
        page = await store.find_users(UserQuery(), after=page.next, limit=100)
        pages += 1
        seen.extend(s.user.name for s in page.users)
    assert pages == 3
    assert seen == [f"User {i:03d}" for i in range(250)] + ["Late"]
    # The same cursor always gives the same page.
    first = await store.find_users(UserQuery(), limit=100)
    assert first.next is not None
    again = [await store.find_users(UserQuery(), after=first.next, limit=100) for _ in range(2)]
    assert again[0] == again[1]
    all_users = await store.list_users()
    assert [u.name for u in all_users] == seen


async def test_find_users_exact_multiple_of_the_limit_has_no_next(store: Store):
    for i in range(4):
        await store.create_user(f"U{i}", NOW, TTL)
    page = await store.find_users(UserQuery(), limit=2)
    assert page.next is not None
    page = await store.find_users(UserQuery(), after=page.next, limit=2)
    assert len(page.users) == 2 and page.next is None


async def test_find_users_search_by_name_and_id(store: Store):
    names = ["Jürgen Öztürk", "Anna Schmidt", "ANNA-LENA Meyer", "Ben", "straße"]
    users = {n: (await store.create_user(n, NOW, TTL))[0] for n in names}

    async def names_for(query: UserQuery) -> list[str]:
        return [s.user.name for s in (await store.find_users(query, limit=100)).users]

    assert await names_for(UserQuery(search="anna")) == ["Anna Schmidt", "ANNA-LENA Meyer"]
    assert await names_for(UserQuery(search="ÖZTÜRK")) == ["Jürgen Öztürk"]
    assert await names_for(UserQuery(search="STRASSE")) == ["straße"]  # full case folding
    ben = users["Ben"].user_id
    assert await names_for(UserQuery(search="zzz", id_fragment=ben[2:6])) == ["Ben"]
    assert await names_for(UserQuery(search="nobody")) == []
    # A search over more rows than one chunk, with paging.
    for i in range(600):
        await store.create_user(f"Pupil {i}", NOW + 1, TTL)
    page = await store.find_users(UserQuery(search="pupil 1"), limit=50)
    got = [s.user.name for s in page.users]
    while page.next:
        page = await store.find_users(UserQuery(search="pupil 1"), after=page.next, limit=50)
        got.extend(s.user.name for s in page.users)
    expected = [f"Pupil {i}" for i in range(600) if str(i).startswith("1")]
    assert got == expected


async def test_find_users_filters_and_aggregates(store: Store):
    anna, a_inv = await store.create_user("Anna", NOW - 60 * DAY, TTL)
    ben, b_inv = await store.create_user("Ben", NOW - 60 * DAY, TTL)
    cleo, _ = await store.create_user("Cleo", NOW - 60 * DAY, TTL)
    await store.create_user("Dora", NOW - DAY, TTL)
    await store.redeem_invite(a_inv.code, bytes(32), "phone", NOW - 59 * DAY)
    await store.touch_device(anna.user_id, 1, NOW - 2 * DAY)
    await store.redeem_invite(b_inv.code, bytes(32), "phone", NOW - 59 * DAY)
    await store.touch_device(ben.user_id, 1, NOW - 40 * DAY)
    await store.revoke_device(ben.user_id, 1, NOW - 30 * DAY)
    await store.set_user_disabled(cleo.user_id, True)

    async def names_for(query: UserQuery) -> list[str]:
        return [s.user.name for s in (await store.find_users(query)).users]

    assert await names_for(UserQuery(disabled=True)) == ["Cleo"]
    assert await names_for(UserQuery(disabled=False)) == ["Anna", "Ben", "Dora"]
    assert await names_for(UserQuery(without_active_device=True)) == ["Ben", "Cleo", "Dora"]
    # Inactive for 30 days: Ben (last seen 40 days ago), Cleo (never, created 60 days ago);
    # not Dora, created yesterday.
    assert await names_for(UserQuery(inactive_since_ms=NOW - 30 * DAY)) == ["Ben", "Cleo"]
    assert await names_for(
        UserQuery(inactive_since_ms=NOW - 30 * DAY, without_active_device=True, disabled=False)
    ) == ["Ben"]
    [a] = (await store.find_users(UserQuery(search="anna"))).users
    assert (a.active_devices, a.devices, a.last_seen_ms, a.mailbox) == (1, 1, NOW - 2 * DAY, 0)
    [b] = (await store.find_users(UserQuery(search="ben"))).users
    assert (b.active_devices, b.devices, b.last_seen_ms) == (0, 1, NOW - 40 * DAY)


@pytest.mark.parametrize("cursor", ["", "garbage", "u1.2.3", "u99999999999999999999.1", "x1.1"])
async def test_find_users_refuses_foreign_cursors(store: Store, cursor: str):
    with pytest.raises(InvalidCursor):
        await store.find_users(UserQuery(), after=cursor)


async def test_bulk_invites_for_users_without_a_device_and_for_all(store: Store):
    _anna, a_inv = await store.create_user("Anna", NOW, TTL)
    ben, b_inv = await store.create_user("Ben", NOW + 1, TTL)
    cleo, _ = await store.create_user("Cleo", NOW + 2, TTL)
    dora, _ = await store.create_user("Dora", NOW + 3, TTL)
    await store.redeem_invite(a_inv.code, bytes(32), "phone", NOW)
    await store.set_user_disabled(cleo.user_id, True)
    pairs = await store.bulk_invites(True, NOW, TTL, audit=note("user.invite", bulk="x"))
    assert [u.name for u, _ in pairs] == ["Ben", "Dora"]
    with pytest.raises(InviteInvalid):  # the old invite stopped working
        await store.redeem_invite(b_inv.code, bytes(32), "phone", NOW)
    device = await store.redeem_invite(pairs[0][1].code, bytes(32), "phone", NOW)
    assert device.user_id == ben.user_id
    entries = await store.list_audit(action="user.invite")
    assert sorted(e.user_id or "" for e in entries) == sorted([ben.user_id, dora.user_id])
    assert all(e.detail == {"bulk": "x"} for e in entries)
    everyone = await store.bulk_invites(False, NOW, TTL)
    assert [u.name for u, _ in everyone] == ["Anna", "Ben", "Dora"]  # never disabled ones
    assert len({i.code for _, i in everyone}) == 3


@pytest.mark.sqlite_only  # SQLite's files (PostgreSQL: test_store_postgres.py)
async def test_disk_usage_counts_the_database_files(store: Store, tmp_path):
    await store.create_user("Anna", NOW, TTL)
    used = await store.disk_usage()
    assert used >= (tmp_path / DB_FILENAME).stat().st_size > 0


async def test_a_version_1_database_gains_the_audit_table(tmp_path):
    path = tmp_path / DB_FILENAME
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, path, SQLITE_MIGRATIONS[:1]) == 1
    conn.execute("INSERT INTO users (user_id, name, created_ms) VALUES ('ABCDEFGH', 'Old', 1)")
    conn.close()
    async with opened(tmp_path) as store:
        [user] = await store.list_users()
        assert user.name == "Old"
        await store.rename_user("ABCDEFGH", "New", audit=note("user.rename"))
        [entry] = await store.list_audit()
        assert entry.detail == {"old_name": "Old", "name": "New"}
    conn = sqlite3.connect(path)
    newest = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    assert newest == (len(SQLITE_MIGRATIONS),)
    conn.close()
