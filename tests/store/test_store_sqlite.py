"""The SQLite engine: durability, group commit, failure handling, files, migrations.

Durability, concurrency and close run on every engine (the ``store`` fixture); what is about
SQLite's writer thread, its batches, pages and files is ``sqlite_only``."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from momedod.store import (
    EnqueueResult,
    Recipient,
    StorageFull,
    Store,
    StoreError,
    UnknownRecipient,
    open_store,
)
from momedod.store.migrations import SQLITE_MIGRATIONS, migrate, schema_version
from momedod.store.sqlite import SQLiteStore
from momedod.store.txn import Tx

T0 = 1_700_000_000_000
DAY = 86_400_000
KEY = b"\x01" * 32


@pytest.fixture
def opened(store_opener: Any) -> Any:
    return store_opener


@pytest.fixture
async def store(tmp_path: Path, opened: Any) -> AsyncIterator[Any]:
    async with opened(tmp_path) as s:
        yield s


async def make_user(store: Store, devices: int = 1) -> str:
    user, invite = await store.create_user("someone", T0, DAY)
    for _ in range(devices):
        await store.redeem_invite(invite.code, KEY, "device", T0)
        invite = await store.new_invite(user.user_id, T0, DAY)
    return user.user_id


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


async def test_data_and_seq_counters_survive_close_and_reopen(tmp_path: Path, opened: Any) -> None:
    async with opened(tmp_path) as store:
        anna, ben = await make_user(store), await make_user(store)
        for i in range(3):
            await store.enqueue((anna, 1), mid(i), b"m%d" % i, [Recipient(ben, 1, b"")], T0, 100)
        await store.ack(ben, 1, [1, 2, 3])
        await store.enqueue((anna, 1), mid(3), b"kept", [Recipient(ben, 1, b"p")], T0, 100)
        await store.put_identity(anna, b"identity", T0)
    async with opened(tmp_path) as store:
        assert [u.user_id for u in await store.list_users()] == [anna, ben]
        [entry] = await store.fetch(ben, 1, 0, 10)
        assert (entry.seq, entry.payload, entry.part) == (4, b"kept", b"p")
        again = await store.enqueue((anna, 1), mid(3), b"kept", [Recipient(ben, 1, b"p")], T0, 100)
        assert again.duplicate
        await store.enqueue((anna, 1), mid(4), b"next", [Recipient(ben, 1, b"")], T0, 100)
        assert [e.seq for e in await store.fetch(ben, 1, 0, 10)] == [4, 5]
        assert await store.get_records(anna) == [b"identity"]


async def test_200_concurrent_senders_all_commit_in_seq_order(store: Store) -> None:
    ben = await make_user(store)
    senders = [await make_user(store) for _ in range(4)]
    results: dict[int, EnqueueResult] = {}

    async def send(i: int) -> None:
        sender = (senders[i % 4], 1)
        results[i] = await store.enqueue(
            sender, mid(i), b"msg %d" % i, [Recipient(ben, 1, b"")], T0 + i, 1000
        )

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(send, i)
    assert len(results) == 200 and not any(r.duplicate for r in results.values())
    entries = await store.fetch(ben, 1, 0, 1000)
    assert [e.seq for e in entries] == list(range(1, 201))
    assert sorted(e.payload for e in entries) == sorted(b"msg %d" % i for i in range(200))


@pytest.mark.sqlite_only  # SQLite's group commit batches (one savepoint per op)
async def test_a_failing_op_does_not_affect_the_others_in_its_batch(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    anna, ben = await make_user(store), await make_user(store)
    batches: list[list[bool]] = []  # per batch: did each op fail?
    run_batch = store._run_batch

    def recording_run_batch(conn: Any, tx: Any, batch: list[Any]) -> None:
        run_batch(conn, tx, batch)
        batches.append([op.error is not None for op in batch])

    monkeypatch.setattr(store, "_run_batch", recording_run_batch)
    outcomes: dict[int, object] = {}

    async def send(i: int) -> None:
        to = Recipient("NOSUCHID", 1, b"") if i % 10 == 5 else Recipient(ben, 1, b"")
        try:
            outcomes[i] = await store.enqueue((anna, 1), mid(i), b"m", [to], T0, 1000)
        except UnknownRecipient as exc:
            outcomes[i] = exc

    async with trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(send, i)
    assert any(len(b) > 1 and any(b) and not all(b) for b in batches), batches
    failed = {i for i, o in outcomes.items() if isinstance(o, UnknownRecipient)}
    assert failed == {i for i in range(100) if i % 10 == 5}
    entries = await store.fetch(ben, 1, 0, 1000)
    assert sorted(e.message_id for e in entries) == sorted(
        mid(i) for i in range(100) if i not in failed
    )
    assert [e.seq for e in entries] == list(range(1, 91))


async def test_cancelled_callers_leave_consistent_counts(store: Store) -> None:
    anna, ben = await make_user(store), await make_user(store)

    async def send(i: int) -> None:
        await store.enqueue((anna, 1), mid(i), b"m", [Recipient(ben, 1, b"")], T0, 1000)

    async with trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(send, i)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    await store.touch_device(ben, 1, T0)  # queued behind the cancelled ones
    entries = await store.fetch(ben, 1, 0, 1000)
    device = await store.get_device(ben, 1)
    stats = await store.stats()
    assert device is not None and device.mailbox_count == len(entries) == stats.payloads
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    result = await store.enqueue((anna, 1), mid(500), b"m", [Recipient(ben, 1, b"")], T0, 1000)
    assert not result.duplicate


async def test_close_finishes_queued_writes(tmp_path: Path, opened: Any) -> None:
    sent: list[int] = []
    async with opened(tmp_path) as store:
        anna, ben = await make_user(store), await make_user(store)

        async def send(i: int) -> None:
            await store.enqueue((anna, 1), mid(i), b"m", [Recipient(ben, 1, b"")], T0, 1000)
            sent.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(send, i)
            await trio.testing.wait_all_tasks_blocked()
            await store.close()
        with pytest.raises(StoreError, match="closed"):
            await store.get_user(anna)
        with pytest.raises(StoreError, match="closed"):
            await store.touch_device(anna, 1, T0)
    assert len(sent) == 50
    async with opened(tmp_path) as store:
        assert len(await store.fetch(ben, 1, 0, 100)) == 50


class WriterCrash(BaseException):
    """Something no transaction function may raise: it kills the writer thread."""


@pytest.mark.sqlite_only  # SQLite's writer thread
async def test_dead_writer_makes_calls_fail_instead_of_hanging(store: SQLiteStore) -> None:
    anna = await make_user(store)

    def crash(tx: Tx) -> None:
        raise WriterCrash

    with trio.fail_after(5):
        with pytest.raises(StoreError, match="writer thread failed"):
            await store._write(crash)
        with pytest.raises(StoreError, match="writer thread failed"):
            await store.touch_device(anna, 1, T0)
        with pytest.raises(StoreError, match="writer thread failed"):
            await store.get_user(anna)
        await store.close()


@pytest.mark.sqlite_only  # fills SQLite's file via max_page_count; PostgreSQL's is its server's
async def test_disk_full_fails_with_storage_full_and_the_store_recovers(
    store: SQLiteStore,
) -> None:
    anna, ben = await make_user(store), await make_user(store)
    to_ben = [Recipient(ben, 1, b"")]
    row = await store._write(lambda tx: tx.one("PRAGMA page_count"))
    assert row is not None
    await store._write(lambda tx: tx.one(f"PRAGMA max_page_count = {row[0] + 4}"))

    accepted: list[int] = []

    async def send(i: int, size: int) -> None:
        try:
            await store.enqueue((anna, 1), mid(i), b"x" * size, to_ben, T0, 1000)
        except StorageFull:
            return
        accepted.append(i)

    with pytest.raises(StorageFull, match="storage full: database or disk is full"):
        await store.enqueue((anna, 1), mid(999), b"x" * 200_000, to_ben, T0, 1000)
    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(send, i, 100_000 if i == 25 else 10)
    assert 25 not in accepted
    # Whatever was acknowledged is really stored, and nothing else.
    entries = await store.fetch(ben, 1, 0, 100)
    assert sorted(e.message_id for e in entries) == sorted(mid(i) for i in accepted)

    await store._write(lambda tx: tx.one("PRAGMA max_page_count = 1073741823"))
    await store.enqueue((anna, 1), mid(999), b"x" * 200_000, to_ben, T0, 1000)


@pytest.mark.sqlite_only  # the database files in the state directory
async def test_files_are_private_to_the_daemon(tmp_path: Path, opened: Any) -> None:
    state = tmp_path / "state"
    async with opened(state) as store:
        await make_user(store)
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        files = sorted(p.name for p in state.iterdir())
        assert files == ["momedo.sqlite3", "momedo.sqlite3-shm", "momedo.sqlite3-wal"]
        for name in files:
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name


@pytest.mark.sqlite_only  # the SQLite file (PostgreSQL: test_store_postgres.py)
async def test_database_from_a_newer_momedod_is_refused(tmp_path: Path, opened: Any) -> None:
    async with opened(tmp_path):
        pass
    with sqlite3.connect(tmp_path / "momedo.sqlite3") as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [
            (len(SQLITE_MIGRATIONS),)
        ]
        db.execute("UPDATE schema_version SET version = 99")
    db.close()
    with pytest.raises(StoreError, match="schema version 99 is newer") as info:
        async with opened(tmp_path):
            pass
    assert str(tmp_path / "momedo.sqlite3") in str(info.value)


def test_migrations_run_in_order_each_all_or_nothing(tmp_path: Path) -> None:
    first = ("CREATE TABLE a (x INTEGER)",)
    second = ("CREATE TABLE b (x INTEGER)", "INSERT INTO b VALUES (1)")
    broken = ("CREATE TABLE c (x INTEGER)", "INSERT INTO nowhere VALUES (1)")
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    assert migrate(conn, tmp_path, (first,)) == 1
    with pytest.raises(sqlite3.OperationalError, match="nowhere"):
        migrate(conn, tmp_path, (first, second, broken))
    assert schema_version(conn) == 2
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"a", "b"} <= tables and "c" not in tables
    conn.close()


@pytest.mark.sqlite_only  # a damaged database file
async def test_file_that_is_not_a_database_is_refused(tmp_path: Path, opened: Any) -> None:
    (tmp_path / "momedo.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"cannot open .*momedo\.sqlite3"):
        async with opened(tmp_path):
            pass


async def test_unknown_engine_is_named(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"'mysql'.*known: sqlite, postgres"):
        async with open_store("mysql", tmp_path):
            pass
