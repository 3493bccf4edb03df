"""momedod.store.migrate: what it refuses, and that a failed copy commits nothing.

The whole path with real processes (daemon, momedoctl, clients) is
tests/integration/test_migrate_store.py; here the store-level refusals and edge cases.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from pathlib import Path

import psycopg
import pytest
from pg import PgServer

from momedod.admin import ctl
from momedod.store import migrate as mig
from momedod.store.migrations import SQLITE_MIGRATIONS, migrate
from momedod.store.postgres import BLOB_CHUNK_BYTES
from momedod.store.sqlite import DB_FILENAME


def make_state(tmp_path: Path, *, blob: bytes = b"", partial: bytes = b"") -> Path:
    """A state directory with an SQLite store: two users, one queued message, and a complete
    blob (``blob``) and an unfinished upload (``partial``, 3 of its bytes not yet recorded)."""
    state = tmp_path / "state"
    state.mkdir()
    conn = sqlite3.connect(state / DB_FILENAME, isolation_level=None)
    migrate(conn, state)
    conn.execute("INSERT INTO users (user_id, name, created_ms) VALUES ('AAAA', 'Anna', 1)")
    conn.execute("INSERT INTO users (user_id, name, created_ms) VALUES ('BBBB', 'Bruno', 1)")
    conn.execute(
        "INSERT INTO devices (pk, user_id, device_id, name, transport_pub, created_ms)"
        " VALUES (7, 'BBBB', 1, 'phone', x'01', 1)"
    )
    conn.execute("INSERT INTO payloads (id, data, refs) VALUES (41, x'abcd', 1)")
    conn.execute("INSERT INTO mailbox VALUES (7, 1, 41, x'00', x'', 1)")
    for blob_id, data, complete in ((b"\x01" * 16, blob, 1), (b"\x02" * 16, partial, 0)):
        if not data:
            continue
        received = len(data) if complete else len(data) - 3
        conn.execute(
            "INSERT INTO blobs (blob_id, owner, size, received, complete, created_ms, touched_ms)"
            " VALUES (?, 'AAAA', ?, ?, ?, 1, 1)",
            (blob_id, len(data) + (0 if complete else 1000), received, complete),
        )
        name = blob_id.hex()
        path = state / "blobs" / (name[:2] if complete else "partial") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    conn.close()
    return state


def run(state: Path, dsn: str) -> mig.MigrationResult:
    return mig.migrate_to_postgres(state, dsn, admin_socket=state / "admin.sock")


def rows(dsn: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def test_copies_rows_blobs_and_continues_the_ids(tmp_path: Path, pg_server: PgServer) -> None:
    blob = os.urandom(2 * BLOB_CHUNK_BYTES + 5)
    partial = os.urandom(BLOB_CHUNK_BYTES + 10)
    state = make_state(tmp_path, blob=blob, partial=partial)
    dsn = pg_server.new_dsn()
    result = run(state, dsn)
    assert result.counts["users"] == 2 and result.counts["mailbox"] == 1
    assert result.counts["blobs"] == 2 and result.warnings == []
    chunks = rows(dsn, "SELECT blob_id, idx, data FROM blob_chunks ORDER BY blob_id, idx")
    assert [(bytes(b), i, len(d)) for b, i, d in chunks] == [  # type: ignore[arg-type]
        (b"\x01" * 16, 0, BLOB_CHUNK_BYTES),
        (b"\x01" * 16, 1, BLOB_CHUNK_BYTES),
        (b"\x01" * 16, 2, 5),
        (b"\x02" * 16, 0, BLOB_CHUNK_BYTES),
        (b"\x02" * 16, 1, 7),  # only what the store recorded as received
    ]
    assert b"".join(bytes(d) for b, _i, d in chunks if b == b"\x01" * 16) == blob  # type: ignore[misc,arg-type]
    # New rows get IDs after the copied ones (identity sequences were moved on).
    with psycopg.connect(dsn) as conn:
        new = conn.execute("INSERT INTO payloads (data, refs) VALUES ('\\x00', 1) RETURNING id")
        assert new.fetchone() == (42,)
        row = conn.execute(
            "INSERT INTO users (user_id, name, created_ms) VALUES ('CCCC', 'C', 1) RETURNING rowid"
        ).fetchone()
        assert row is not None and row[0] == 3


def test_a_failure_half_way_commits_nothing_and_a_rerun_works(
    tmp_path: Path, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = make_state(tmp_path, blob=b"x" * 100)
    dsn = pg_server.new_dsn()

    def broken(*args: object) -> tuple[int, int]:
        raise psycopg.errors.DiskFull("could not extend file")

    with monkeypatch.context() as patch:
        patch.setattr(mig, "_copy_blob_bytes", broken)
        with pytest.raises(mig.MigrateError, match="nothing was committed: could not extend"):
            run(state, dsn)
    assert rows(dsn, "SELECT count(*) FROM users") == [(0,)]  # the tables were copied first
    assert run(state, dsn).counts["users"] == 2


def test_refuses_a_database_with_rows_and_leaves_it_alone(
    tmp_path: Path, pg_server: PgServer
) -> None:
    state = make_state(tmp_path)
    dsn = pg_server.new_dsn()
    run(state, dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM mailbox")
    with pytest.raises(mig.MigrateError, match=r"not empty \(rows in users, devices, payloads\)"):
        run(state, dsn)
    assert rows(dsn, "SELECT count(*) FROM mailbox") == [(0,)]


def test_refuses_an_old_sqlite_schema_a_missing_database_and_a_running_daemon(
    tmp_path: Path, pg_server: PgServer
) -> None:
    dsn = pg_server.new_dsn()
    with pytest.raises(mig.MigrateError, match="no SQLite database at"):
        run(tmp_path, dsn)
    old = tmp_path / "old"
    old.mkdir()
    conn = sqlite3.connect(old / DB_FILENAME, isolation_level=None)
    migrate(conn, old, SQLITE_MIGRATIONS[:4])
    conn.close()
    with pytest.raises(mig.MigrateError, match="schema version 4, this momedoctl copies version"):
        run(old, dsn)
    state = make_state(tmp_path)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(state / "admin.sock"))
        listener.listen()
        with pytest.raises(mig.MigrateError, match="momedod is running"):
            run(state, dsn)
    assert rows(
        dsn, "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
    ) == [(0,)]


def test_refuses_a_database_of_a_newer_momedod_or_one_in_use(
    tmp_path: Path, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mig, "LOCK_TIMEOUT_S", 0.5)
    state = make_state(tmp_path)
    dsn = pg_server.new_dsn()
    run(state, dsn)
    with psycopg.connect(dsn) as conn:  # emptied again, but held by a writer
        for table in reversed(mig.TABLES):
            conn.execute(f"DELETE FROM {table}")  # type: ignore[arg-type]
        conn.commit()
        conn.execute("INSERT INTO dedup VALUES ('\\x00', 1)")  # an open write transaction
        with pytest.raises(mig.MigrateError, match="is in use"):
            run(state, dsn)
        conn.rollback()
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(mig.MigrateError, match="schema version 99 is newer"):
        run(state, dsn)


def test_a_missing_blob_file_is_a_warning(tmp_path: Path, pg_server: PgServer) -> None:
    state = make_state(tmp_path, blob=b"y" * 10)
    name = (b"\x01" * 16).hex()
    (state / "blobs" / name[:2] / name).unlink()
    result = run(state, pg_server.new_dsn())
    assert result.blob_files == 0 and result.counts["blobs"] == 1
    assert result.warnings == [f"attachment {name}: its file {state}/blobs/01/{name} is missing"]


def test_config_snippet_masks_a_password() -> None:
    assert mig.config_snippet("host=db dbname=momedo") == (
        '[storage]\nengine = "postgres"\ndsn = "host=db dbname=momedo"'
    )
    shown = mig.config_snippet("postgresql://momedo:geheim@db.example.org/momedo")
    assert "geheim" not in shown and "password=********" in shown
    assert "host=db.example.org" in shown and "dbname=momedo" in shown


def test_momedoctl_migrate_store_json_and_a_config_already_on_postgres(
    tmp_path: Path, pg_server: PgServer, capsys: pytest.CaptureFixture[str]
) -> None:
    state = make_state(tmp_path, blob=b"z" * 10)
    dsn = pg_server.new_dsn()
    cfg = tmp_path / "momedod.toml"
    cfg.write_text(f'[server]\nstate_dir = "{state}"\n[admin]\nsocket = "{state}/admin.sock"\n')
    # -c and --json after the command work too.
    assert (
        ctl.main(["migrate-store", "--to", "postgres", "--dsn", dsn, "-c", str(cfg), "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["tables"]["users"] == 2 and out["blob_files"] == 1 and out["blob_bytes"] == 10
    assert out["config"] == f'[storage]\nengine = "postgres"\ndsn = {json.dumps(dsn)}'
    cfg.write_text(cfg.read_text() + out["config"] + "\n")
    assert ctl.main(["-c", str(cfg), "migrate-store", "--to", "postgres", "--dsn", dsn]) == 1
    err = capsys.readouterr().err
    assert 'the config file says engine = "postgres"' in err
