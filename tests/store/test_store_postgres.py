"""The PostgreSQL engine's own behaviour: schema versions, connections, what it refuses.

Everything the store does is tested on both engines by the other test_store_* files; this
file covers what only PostgreSQL has (its migrations, the pool and lost connections, the SQL
dialect hook) and the clear answers where it cannot act like the SQLite engine.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import trio
from conftest import fake_invite_code, fake_user_id
from pg import PgServer

from momedod.store import Recipient, StoreError, open_store
from momedod.store.pg_migrations import PG_MIGRATIONS, migrate_pg
from momedod.store.postgres import describe_dsn, pg_sql

T0 = 1_700_000_000_000
DAY = 86_400_000


def opened_pg(path: Path, dsn: str, **kwargs: object):  # type: ignore[no-untyped-def]
    return open_store(
        "postgres",
        path,
        dsn=dsn,
        pool_size=2,
        new_user_id=fake_user_id,
        new_invite_code=fake_invite_code,
        **kwargs,  # type: ignore[arg-type]
    )


def schema_version(dsn: str) -> list[tuple[int]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT version FROM schema_version").fetchall()


def test_placeholders_are_translated_and_percent_signs_kept() -> None:
    assert pg_sql("SELECT a FROM t WHERE b = ? AND c LIKE 'x%'") == (
        "SELECT a FROM t WHERE b = %s AND c LIKE 'x%%'"
    )


def test_dsn_is_described_without_its_password() -> None:
    shown = describe_dsn("host=db.example.org dbname=momedo user=m password=s3cret")
    assert shown == "postgres host=db.example.org dbname=momedo user=m"
    assert "s3cret" not in describe_dsn("postgresql://m:s3cret@db.example.org/momedo")


async def test_new_database_is_migrated_once_even_by_concurrent_nodes(
    tmp_path: Path, pg_server: PgServer
) -> None:
    dsn = pg_server.new_dsn()
    async with trio.open_nursery() as nursery:
        for i in range(3):  # three nodes starting at once

            async def node(i: int = i) -> None:
                async with opened_pg(tmp_path / str(i), dsn) as store:
                    await store.create_user(f"user{i}", T0, DAY)

            nursery.start_soon(node)
    assert schema_version(dsn) == [(len(PG_MIGRATIONS),)]
    async with opened_pg(tmp_path, dsn) as store:
        assert sorted(u.name for u in await store.list_users()) == ["user0", "user1", "user2"]


def test_migrations_run_in_order_each_all_or_nothing(pg_server: PgServer) -> None:
    first = ("CREATE TABLE a (x BIGINT)",)
    second = ("CREATE TABLE b (x BIGINT)", "INSERT INTO b VALUES (1)")
    broken = ("CREATE TABLE c (x BIGINT)", "INSERT INTO nowhere VALUES (1)")
    with psycopg.connect(pg_server.new_dsn(), autocommit=True) as conn:
        assert migrate_pg(conn, "test", (first,)) == 1
        with pytest.raises(psycopg.errors.UndefinedTable, match="nowhere"):
            migrate_pg(conn, "test", (first, second, broken))
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema()"
            )
        }
    assert {"a", "b"} <= tables and "c" not in tables


async def test_database_from_a_newer_momedod_is_refused(
    tmp_path: Path, pg_server: PgServer
) -> None:
    dsn = pg_server.new_dsn()
    async with opened_pg(tmp_path, dsn):
        pass
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="schema version 99 is newer") as info:
        async with opened_pg(tmp_path, dsn):
            pass
    assert "dbname=momedo_test" in str(info.value)


async def test_unreachable_server_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    dsn = f"host={tmp_path} port=1 dbname=momedo user=momedo password=s3cret connect_timeout=2"
    with pytest.raises(StoreError, match=r"cannot connect to postgres host=\S+ port=1") as info:
        async with opened_pg(tmp_path, dsn):
            pass
    assert "s3cret" not in str(info.value)


async def test_postgres_engine_needs_a_dsn(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="needs a dsn"):
        async with open_store("postgres", tmp_path):
            pass


async def test_backup_is_refused_with_what_to_use_instead(
    tmp_path: Path, pg_server: PgServer
) -> None:
    async with opened_pg(tmp_path, pg_server.new_dsn()) as store:
        (tmp_path / "backup").mkdir()
        with pytest.raises(StoreError, match="pg_dump"):
            await store.backup(tmp_path / "backup")
        assert list((tmp_path / "backup").iterdir()) == []


async def test_disk_usage_is_the_database_size(tmp_path: Path, pg_server: PgServer) -> None:
    async with opened_pg(tmp_path, pg_server.new_dsn()) as store:
        with psycopg.connect(pg_server.dsn()) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        assert row is not None
        assert await store.disk_usage() == row[0] > 0


async def test_connections_lost_while_idle_are_replaced(
    tmp_path: Path, pg_server: PgServer
) -> None:
    """A server restart or failover kills every pooled connection; the next calls get new
    ones instead of failing (nothing had run on the dead ones)."""
    dsn = pg_server.new_dsn()
    async with opened_pg(tmp_path, dsn) as store:
        user, _ = await store.create_user("Anna", T0, DAY)
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend'"
            ).fetchone()
        assert killed is not None and killed[0] >= 2
        await trio.sleep(0.1)
        assert await store.get_user(user.user_id) == user
        renamed = await store.rename_user(user.user_id, "Anna B.")
        assert renamed.name == "Anna B."


async def test_concurrent_sends_to_one_mailbox_stay_gap_free_across_two_nodes(
    tmp_path: Path, pg_server: PgServer
) -> None:
    """Two stores on one database (two nodes) enqueue to the same device at once: every
    send gets its own seq, without gaps, in commit order (serialization failures retried)."""
    dsn = pg_server.new_dsn()
    async with opened_pg(tmp_path / "a", dsn) as a, opened_pg(tmp_path / "b", dsn) as b:
        anna, invite = await a.create_user("anna", T0, DAY)
        await a.redeem_invite(invite.code, b"\x01" * 32, "phone", T0)
        ben, invite = await a.create_user("ben", T0, DAY)
        await a.redeem_invite(invite.code, b"\x02" * 32, "phone", T0)
        seqs: list[int] = []

        async def send(store, i: int) -> None:  # type: ignore[no-untyped-def]
            result = await store.enqueue(
                (anna.user_id, 1),
                i.to_bytes(16, "big"),
                b"m%d" % i,
                [Recipient(ben.user_id, 1, b"")],
                T0,
                1000,
            )
            seqs.extend(seq for _, _, seq in result.deliveries)

        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(send, a if i % 2 else b, i)
        assert sorted(seqs) == list(range(1, 101))
        entries = await b.fetch(ben.user_id, 1, 0, 1000)
        assert [e.seq for e in entries] == list(range(1, 101))
        device = await a.get_device(ben.user_id, 1)
        assert device is not None and device.mailbox_count == 100


async def test_connection_lost_during_a_call_is_a_clear_error_and_the_store_goes_on(
    tmp_path: Path, pg_server: PgServer
) -> None:
    async with opened_pg(tmp_path, pg_server.new_dsn()) as store:
        user, _ = await store.create_user("Anna", T0, DAY)

        def dies(tx):  # type: ignore[no-untyped-def]
            tx.execute("UPDATE users SET name = 'changed'")
            tx.one("SELECT pg_terminate_backend(pg_backend_pid())")

        with pytest.raises(StoreError, match=r"lost the connection to postgres .*dbname="):
            await store._write(dies)
        assert await store.get_user(user.user_id) == user  # not committed; the store works
