"""SQLite writer batches run without savepoints and fall back to one savepoint per op when an
op fails: whatever a failing op wrote is gone, everything else in its batch commits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from momedod.store import StoreError, open_store
from momedod.store.sqlite import SQLiteStore
from momedod.store.txn import Tx


class Boom(Exception):
    pass


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with open_store("sqlite", tmp_path) as s:
        assert isinstance(s, SQLiteStore)
        await s._write(lambda tx: tx.execute("CREATE TABLE scratch (x INTEGER PRIMARY KEY)"))
        yield s


def insert(tx: Tx, x: int, fail: bool) -> int:
    tx.execute("INSERT INTO scratch (x) VALUES (?)", (x,))
    if fail:
        raise Boom(x)
    return x


async def rows(store: SQLiteStore) -> list[int]:
    return [int(r[0]) for r in await store._read(lambda tx: tx.all("SELECT x FROM scratch"))]


async def test_a_lone_failing_op_leaves_nothing_behind(store: SQLiteStore) -> None:
    with pytest.raises(Boom):
        await store._write(insert, 1, True)
    assert await store._write(insert, 2, False) == 2
    assert await rows(store) == [2]


async def test_an_op_failing_after_writing_is_undone_alone_in_a_shared_batch(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    run_batch = store._run_batch

    def recording_run_batch(conn: Any, tx: Any, batch: list[Any]) -> None:
        sizes.append(len(batch))
        run_batch(conn, tx, batch)

    monkeypatch.setattr(store, "_run_batch", recording_run_batch)
    outcomes: dict[int, object] = {}

    async def call(x: int) -> None:
        try:
            outcomes[x] = await store._write(insert, x, x % 7 == 3)
        except Boom as exc:
            outcomes[x] = exc

    async with trio.open_nursery() as nursery:
        for x in range(60):
            nursery.start_soon(call, x)
    assert max(sizes) > 1, sizes  # some failing ops really shared a batch with others
    failed = {x for x, o in outcomes.items() if isinstance(o, Boom)}
    assert failed == {x for x in range(60) if x % 7 == 3}
    assert all(outcomes[x] == x for x in range(60) if x not in failed)
    assert sorted(await rows(store)) == [x for x in range(60) if x not in failed]


async def test_a_cancelled_caller_stops_waiting_and_its_op_still_commits(
    store: SQLiteStore,
) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await store._write(insert, 5, False)
    assert scope.cancelled_caught
    assert await store._write(insert, 6, False) == 6  # queued behind it: 5 is done too
    assert sorted(await rows(store)) == [5, 6]


async def test_more_concurrent_reads_than_reader_threads_all_answer(store: SQLiteStore) -> None:
    await store._write(insert, 1, False)
    answers: list[list[int]] = []

    async def read() -> None:
        answers.append(await rows(store))

    async with trio.open_nursery() as nursery:
        for _ in range(50):  # 4 reader threads
            nursery.start_soon(read)
    assert answers == [[1]] * 50


async def test_a_read_error_reaches_its_caller_and_the_readers_carry_on(
    store: SQLiteStore,
) -> None:
    def failing(tx: Tx) -> None:
        tx.all("SELECT x FROM scratch")
        raise Boom("read")

    for _ in range(8):  # more than the reader threads: each one survives its error
        with pytest.raises(Boom):
            await store._read(failing)
        with pytest.raises(StoreError, match="readonly"):  # reads run read-only
            await store._read(lambda tx: insert(tx, 1, False))
    await store._write(insert, 2, False)
    assert await rows(store) == [2]


async def test_cancelled_reads_and_reads_after_close(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    await store.open()
    with trio.CancelScope() as scope:
        scope.cancel()
        await store._read(lambda tx: tx.all("SELECT 1"))
    assert scope.cancelled_caught
    assert [tuple(r) for r in await store._read(lambda tx: tx.all("SELECT 1"))] == [(1,)]
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store._read(lambda tx: tx.all("SELECT 1"))
