"""``momedoctl migrate-store --to postgres``: copy a stopped SQLite installation into PostgreSQL.

Theory of operation
-------------------
The SQLite database (``STATE/momedo.sqlite3``) is opened read-only (``mode=ro``) and read in
one snapshot; nothing in the state directory is changed, so the operator can go back by
switching the configuration back to ``engine = "sqlite"``. The daemon must be stopped (its
admin socket must not answer): a running daemon would keep accepting messages that the copy
does not hold.

The target database is first brought to the newest PostgreSQL schema
(:func:`momedod.store.pg_migrations.migrate_pg`; its own committed transaction, harmless if
the copy fails later). Then ONE transaction locks every table, checks that they are all empty
(a database that already holds data is refused), copies the tables in foreign-key order with
``COPY``, copies the bytes of every blob from its file into ``blob_chunks`` rows (chunks of
the upload size; an unfinished upload up to what its file holds), moves the identity
sequences past the copied IDs, counts the rows of every table on both sides and commits only
if every count matches. Any failure rolls the whole copy back.

Columns are taken from the PostgreSQL schema and must exist in SQLite, and every SQLite table
must be known here: a schema that drifted apart is refused rather than copied partly.
``users.rowid`` (an identity column in PostgreSQL) gets SQLite's implicit rowid, so the
ordering of users created in the same millisecond survives.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from momedod.store.backup import RestoreRefused, daemon_running
from momedod.store.base import StoreError
from momedod.store.migrations import SQLITE_MIGRATIONS
from momedod.store.pg_migrations import migrate_pg
from momedod.store.postgres import BLOB_CHUNK_BYTES, describe_dsn
from momedod.store.sqlite import DB_FILENAME

__all__ = ["TABLES", "MigrateError", "MigrationResult", "config_snippet", "migrate_to_postgres"]

TABLES: tuple[str, ...] = (
    "users",
    "invites",
    "devices",
    "payloads",
    "mailbox",
    "dedup",
    "identity_records",
    "device_lists",
    "prekeys",
    "audit",
    "conversations",
    "conv_members",
    "conv_rosters",
    "org_keys",
    "blobs",
    "blob_grants",
    "blob_refs",
    "push_targets",
    "urgent_users",
    "urgent_convs",
    "quiet_policies",
)
"""Every table of the store, parents before children (foreign keys)."""

IDENTITIES: tuple[tuple[str, str], ...] = (
    ("users", "rowid"),
    ("devices", "pk"),
    ("payloads", "id"),
    ("identity_records", "id"),
    ("prekeys", "id"),
    ("audit", "id"),
)
"""Identity columns whose sequences must continue after the copied maximum."""

BLOB_TABLE = "blob_chunks"
LOCK_TIMEOUT_S = 10.0
"""How long to wait for the tables while somebody else uses them before refusing."""
_SQLITE_OWN = {"schema_version"}


class MigrateError(StoreError):
    """The migration was refused or failed; nothing was committed. One line for the operator."""


@dataclass
class MigrationResult:
    """What was copied: rows per table (equal on both sides), blob bytes, and warnings."""

    counts: dict[str, int] = field(default_factory=dict)
    blob_files: int = 0
    blob_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    target: str = ""


def migrate_to_postgres(
    state_dir: Path,
    dsn: str,
    *,
    admin_socket: Path,
    progress: Callable[[str], None] | None = None,
) -> MigrationResult:
    """Copy the SQLite store of ``state_dir`` (daemon stopped) into the empty database ``dsn``.

    Raises MigrateError (nothing committed) if the daemon is running, the SQLite database is
    missing or not at the newest schema, the target is not empty, or anything fails.
    """
    started = time.monotonic()
    say = progress or (lambda _text: None)
    where = describe_dsn(dsn)
    try:
        running = daemon_running(admin_socket)
    except RestoreRefused as exc:
        raise MigrateError(str(exc).replace("the restore", "the migration")) from exc
    if running:
        raise MigrateError(
            f"momedod is running (its admin socket {admin_socket} answers); stop it first "
            "(systemctl stop momedod), then migrate"
        )
    db_path = state_dir / DB_FILENAME
    if not db_path.is_file():
        raise MigrateError(f"no SQLite database at {db_path}: nothing to migrate")
    src = _open_sqlite(db_path)
    try:
        src.execute("BEGIN")  # one snapshot of everything (a read transaction)
        _check_sqlite(src, db_path)
        try:
            dst = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise MigrateError(f"cannot connect to {where}: {_first_line(exc)}") from exc
        with dst:
            try:
                migrate_pg(dst, where)
                result = _copy(src, dst, state_dir, say)
            except psycopg.errors.LockNotAvailable as exc:
                raise MigrateError(
                    f"{where} is in use (a momedod node connected to it?): stop every node "
                    "using this database, then migrate; nothing was committed"
                ) from exc
            except psycopg.Error as exc:
                raise MigrateError(
                    f"copying into {where} failed, nothing was committed: {_first_line(exc)}"
                ) from exc
            except MigrateError:
                raise
            except StoreError as exc:  # e.g. a schema from a newer momedod
                raise MigrateError(str(exc)) from exc
    except sqlite3.Error as exc:
        raise MigrateError(f"cannot read {db_path}: {exc}") from exc
    finally:
        src.close()
    result.seconds = time.monotonic() - started
    result.target = where
    return result


def _open_sqlite(db_path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(
            f"{db_path.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None
        )
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise MigrateError(f"cannot open {db_path} read-only: {exc}") from exc
    return conn


def _check_sqlite(src: sqlite3.Connection, db_path: Path) -> None:
    row = src.execute("SELECT max(version) FROM schema_version").fetchone()
    version = 0 if row is None or row[0] is None else int(row[0])
    newest = len(SQLITE_MIGRATIONS)
    if version != newest:
        raise MigrateError(
            f"{db_path} has schema version {version}, this momedoctl copies version {newest}: "
            "start this version of momedod on it once (it upgrades the schema), stop it, "
            "then migrate"
        )
    tables = {
        r[0]
        for r in src.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    unknown = sorted(tables - set(TABLES) - _SQLITE_OWN)
    if unknown:
        raise MigrateError(f"{db_path} has tables this momedoctl does not know: {unknown}")


def _pg_columns(cur: psycopg.Cursor[Any], table: str) -> list[str]:
    rows = cur.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def _sqlite_columns(src: sqlite3.Connection, table: str) -> set[str]:
    return {str(r[1]) for r in src.execute(f"PRAGMA table_info({table})")}


def _copy(
    src: sqlite3.Connection,
    dst: psycopg.Connection[Any],
    state_dir: Path,
    say: Callable[[str], None],
) -> MigrationResult:
    result = MigrationResult()
    with dst.transaction(), dst.cursor() as cur:
        every = (*TABLES, BLOB_TABLE)
        # Nobody else may write while we copy (e.g. a node started too early).
        cur.execute(f"SET LOCAL lock_timeout = {int(LOCK_TIMEOUT_S * 1000)}")
        cur.execute(f"LOCK TABLE {', '.join(every)} IN EXCLUSIVE MODE")
        occupied = [t for t in every if _scalar(cur, f"SELECT EXISTS (SELECT 1 FROM {t})")]
        if occupied:
            raise MigrateError(
                f"the target database is not empty (rows in {', '.join(occupied)}): migrate "
                "into a new, empty database (CREATE DATABASE momedo OWNER momedo)"
            )
        for table in TABLES:
            columns = _pg_columns(cur, table)
            if not columns:
                raise MigrateError(f"the target database has no table {table}")
            have = _sqlite_columns(src, table)
            missing = [c for c in columns if c not in have and (table, c) != ("users", "rowid")]
            extra = sorted(have - set(columns))
            if missing or extra:
                raise MigrateError(
                    f"the schemas differ in table {table}: only in PostgreSQL {missing}, "
                    f"only in SQLite {extra}"
                )
            names = ", ".join(columns)
            with cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in src.execute(f"SELECT {names} FROM {table}"):
                    copy.write_row(row)
            say(f"copied {table}")
        files, nbytes = _copy_blob_bytes(src, cur, state_dir, result.warnings)
        result.blob_files, result.blob_bytes = files, nbytes
        say(f"copied {files} attachment file(s), {nbytes} bytes")
        for table, column in IDENTITIES:
            cur.execute(
                f"SELECT setval(pg_get_serial_sequence(%s, %s), max_id)"
                f" FROM (SELECT max({column}) AS max_id FROM {table}) m WHERE max_id IS NOT NULL",
                (table, column),
            )
        for table in TABLES:
            want = int(src.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            got = int(_scalar(cur, f"SELECT count(*) FROM {table}"))
            if got != want:
                raise MigrateError(
                    f"table {table}: {want} rows in SQLite but {got} in PostgreSQL; "
                    "nothing was committed"
                )
            result.counts[table] = got
        row = cur.execute(
            "SELECT count(DISTINCT blob_id), coalesce(sum(octet_length(data)), 0) FROM blob_chunks"
        ).fetchone()
        if row is None or (int(row[0]), int(row[1])) != (files, nbytes):
            raise MigrateError("the attachment bytes in PostgreSQL differ from the files read")
    return result


def _copy_blob_bytes(
    src: sqlite3.Connection, cur: psycopg.Cursor[Any], state_dir: Path, warnings: list[str]
) -> tuple[int, int]:
    """Copy each blob's file into blob_chunks rows; return (files copied, bytes)."""
    root = state_dir / "blobs"
    files = total = 0
    rows = src.execute("SELECT blob_id, size, received, complete FROM blobs ORDER BY blob_id")
    with cur.copy("COPY blob_chunks (blob_id, idx, data) FROM STDIN") as copy:
        for blob_id, size, received, complete in rows:
            name = bytes(blob_id).hex()
            final, partial = root / name[:2] / name, root / "partial" / name
            if complete:
                path, limit = final, int(size)
            else:  # an unfinished upload resumes at what its rows hold
                path, limit = (partial if partial.exists() else final), int(received)
            copied = 0
            try:
                for idx, chunk in enumerate(_chunks(path, limit)):
                    copy.write_row((bytes(blob_id), idx, chunk))
                    copied += len(chunk)
            except FileNotFoundError:
                if complete:
                    warnings.append(f"attachment {name}: its file {path} is missing")
                continue
            if complete and copied != size:
                warnings.append(
                    f"attachment {name}: its file holds {copied} of {size} bytes (damaged)"
                )
            if copied:
                files += 1
                total += copied
    return files, total


def _chunks(path: Path, limit: int) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        left = limit
        while left > 0:
            chunk = fh.read(min(BLOB_CHUNK_BYTES, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


def config_snippet(dsn: str) -> str:
    """The ``[storage]`` section that runs momedod on the migrated database (a password in
    the DSN is replaced by ``********``: put it in yourself, or use a ~/.pgpass file)."""
    shown = dsn
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        params = {}
    if params.get("password"):
        shown = make_conninfo("", **{**params, "password": "********"})
    return f'[storage]\nengine = "postgres"\ndsn = {json.dumps(shown)}'


def _scalar(cur: psycopg.Cursor[Any], sql: str) -> Any:
    row = cur.execute(sql).fetchone()
    return None if row is None else row[0]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
