"""Store.import_users: one transaction, matching by external_id and by name (k-th row, k-th
oldest user), linking, audit, and the schema v4 migration that added users.external_id."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from momedod.store import AuditNote, ImportRow, Store, open_store
from momedod.store.migrations import SQLITE_MIGRATIONS, migrate

T0 = 1_700_000_000_000
WEEK = 7 * 24 * 3_600_000


def note() -> AuditNote:
    return AuditNote(ts_ms=T0, uid=7, action="user.add", detail={"bulk": "import"})


async def test_import_creates_then_matches_the_same_users(store: Store) -> None:
    rows = [ImportRow("Anna", "S1"), ImportRow("Ben"), ImportRow("Ben")]
    first = await store.import_users(rows, T0, WEEK, audit=note())
    assert [(r.created, r.user.name, r.user.external_id) for r in first] == [
        (True, "Anna", "S1"),
        (True, "Ben", None),
        (True, "Ben", None),
    ]
    assert all(r.invite is not None and r.invite.user_id == r.user.user_id for r in first)
    entries = await store.list_audit(action="user.add")
    assert len(entries) == 3 and entries[-1].detail == {
        "bulk": "import",
        "external_id": "S1",
        "name": "Anna",
    }
    again = await store.import_users(rows, T0 + 1, WEEK, audit=note())
    assert [r.user.user_id for r in again] == [r.user.user_id for r in first]
    assert not any(r.created or r.linked or r.invite for r in again)
    assert len(await store.list_audit()) == 3  # nothing changed, nothing written


async def test_rows_without_external_id_match_the_kth_oldest_namesake(store: Store) -> None:
    older, _ = await store.create_user("Anna", T0, WEEK)
    newer, _ = await store.create_user("Anna", T0 + 5, WEEK)
    tagged, _ = await store.create_user("Anna", T0 + 1, WEEK)
    [linked] = await store.import_users([ImportRow("Anna", "X")], T0 + 9, WEEK)
    # The row's external_id is unknown, so it matched the oldest Anna by name and tagged her.
    assert (linked.user.user_id, linked.linked, linked.user.external_id) == (
        older.user_id,
        True,
        "X",
    )
    result = await store.import_users(
        [ImportRow("Anna"), ImportRow("Anna", "X"), ImportRow("Anna"), ImportRow("Anna")],
        T0 + 10,
        WEEK,
    )
    assert [r.user.user_id for r in result[:3]] == [tagged.user_id, older.user_id, newer.user_id]
    assert [r.created for r in result] == [False, False, False, True]


async def test_a_repeated_external_id_is_refused_and_nothing_is_created(store: Store) -> None:
    with pytest.raises(ValueError, match="'S1' is given twice"):
        await store.import_users([ImportRow("A", "S1"), ImportRow("B", "S1")], T0, WEEK)
    assert await store.list_users() == []


async def test_a_deleted_user_gives_up_its_external_id(store: Store) -> None:
    [first] = await store.import_users([ImportRow("Anna", "S1")], T0, WEEK)
    await store.delete_user(first.user.user_id, T0)
    [again] = await store.import_users([ImportRow("Anna", "S1")], T0 + 1, WEEK)
    assert again.created and again.user.user_id != first.user.user_id


async def test_bulk_invites_for_some_users_only(store: Store) -> None:
    a, _ = await store.create_user("A", T0, WEEK)
    await store.create_user("B", T0, WEEK)
    pairs = await store.bulk_invites(True, T0, WEEK, user_ids={a.user_id})
    assert [u.user_id for u, _invite in pairs] == [a.user_id]


async def test_migration_4_adds_external_id_to_existing_users(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "momedo.sqlite3", isolation_level=None)
    migrate(conn, tmp_path, SQLITE_MIGRATIONS[:3])
    conn.execute("INSERT INTO users (user_id, name, created_ms) VALUES ('AAAAAAAA', 'Old', 1)")
    conn.close()
    async with open_store("sqlite", tmp_path) as store:
        [user] = await store.list_users()
        assert (user.name, user.external_id) == ("Old", None)
        [matched] = await store.import_users([ImportRow("Old", "E1")], T0, WEEK)
        assert matched.linked and matched.user.user_id == "AAAAAAAA"
        assert (await store.get_user("AAAAAAAA")) == matched.user
