"""SQLite schema, as an ordered list of migrations.

Migration ``n`` (1-based) brings the database from schema version ``n - 1`` to ``n``. Each
is applied in its own transaction together with the update of ``schema_version``, so a crash
leaves the database at a whole version. Never edit a released migration: append a new one.

Conventions the transaction functions in :mod:`momedod.store.txn` rely on (a PostgreSQL
schema must keep them): booleans are 0/1 integers; ``payloads.refs`` counts the mailbox rows
that reference a payload and ``devices.mailbox_count`` the rows of a device's mailbox, both
maintained in the same transaction as the rows; no table stores the sender of a message.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from momedod.store.base import StoreError

__all__ = ["SQLITE_MIGRATIONS", "migrate", "schema_version"]

# mailbox.payload_id deliberately has no FOREIGN KEY: freeing a payload would then need an
# index on mailbox(payload_id) only for the constraint check; refs is the integrity mechanism.
_V1 = (
    """CREATE TABLE users (
        user_id     TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        created_ms  INTEGER NOT NULL,
        disabled    INTEGER NOT NULL DEFAULT 0,
        deleted     INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE invites (
        code_hash   BLOB PRIMARY KEY,
        user_id     TEXT NOT NULL REFERENCES users (user_id),
        created_ms  INTEGER NOT NULL,
        expires_ms  INTEGER NOT NULL,
        used_ms     INTEGER
    )""",
    "CREATE INDEX invites_user ON invites (user_id)",
    """CREATE TABLE devices (
        pk            INTEGER PRIMARY KEY,
        user_id       TEXT NOT NULL REFERENCES users (user_id),
        device_id     INTEGER NOT NULL,
        name          TEXT NOT NULL,
        transport_pub BLOB NOT NULL,
        created_ms    INTEGER NOT NULL,
        revoked_ms    INTEGER,
        last_seen_ms  INTEGER,
        next_seq      INTEGER NOT NULL DEFAULT 1,
        mailbox_count INTEGER NOT NULL DEFAULT 0,
        UNIQUE (user_id, device_id)
    )""",
    """CREATE TABLE payloads (
        id    INTEGER PRIMARY KEY,
        data  BLOB NOT NULL,
        refs  INTEGER NOT NULL
    )""",
    """CREATE TABLE mailbox (
        device_pk    INTEGER NOT NULL REFERENCES devices (pk),
        seq          INTEGER NOT NULL,
        payload_id   INTEGER NOT NULL,
        message_id   BLOB NOT NULL,
        part         BLOB NOT NULL,
        server_ts_ms INTEGER NOT NULL,
        PRIMARY KEY (device_pk, seq)
    ) WITHOUT ROWID""",
    "CREATE INDEX mailbox_server_ts ON mailbox (server_ts_ms)",
    """CREATE TABLE dedup (
        key         BLOB PRIMARY KEY,
        created_ms  INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX dedup_created ON dedup (created_ms)",
    """CREATE TABLE identity_records (
        id           INTEGER PRIMARY KEY,
        user_id      TEXT NOT NULL REFERENCES users (user_id),
        record_hash  BLOB NOT NULL,
        record       BLOB NOT NULL,
        created_ms   INTEGER NOT NULL,
        UNIQUE (user_id, record_hash)
    )""",
    """CREATE TABLE device_lists (
        user_id     TEXT NOT NULL REFERENCES users (user_id),
        version     INTEGER NOT NULL,
        record      BLOB NOT NULL,
        created_ms  INTEGER NOT NULL,
        PRIMARY KEY (user_id, version)
    ) WITHOUT ROWID""",
    """CREATE TABLE prekeys (
        id          INTEGER PRIMARY KEY,
        device_pk   INTEGER NOT NULL REFERENCES devices (pk),
        suite       INTEGER NOT NULL,
        kind        INTEGER NOT NULL,
        key_id      INTEGER NOT NULL,
        record      BLOB NOT NULL,
        created_ms  INTEGER NOT NULL,
        UNIQUE (device_pk, suite, kind, key_id)
    )""",
)

# Version 2: the audit log of admin changes (who, when, what, to whom; no secrets).
# ``user_id`` is the canonical ID of the user a change is about (NULL for server-wide
# actions such as a backup), ``target`` what an operator reads (``Q7AW-GNX9/1``), ``detail``
# a JSON object.
_V2 = (
    """CREATE TABLE audit (
        id       INTEGER PRIMARY KEY,
        ts_ms    INTEGER NOT NULL,
        uid      INTEGER,
        action   TEXT NOT NULL,
        target   TEXT NOT NULL,
        user_id  TEXT,
        detail   TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX audit_user ON audit (user_id, id)",
    "CREATE INDEX audit_action ON audit (action, id)",
)

# Version 3: conversations (groups and channels) with their signed rosters, the organisation
# key records, and attachment blobs. ``conv_members`` is the server's membership used for
# access control and fan-out; normally it equals the members of the newest roster (the only
# way to change it is a new roster), but clients never trust it alone. Blob data lives in
# files under STATE/blobs; the table holds their metadata. ``blob_refs`` ties a blob to the
# payloads that reference it (freed with the payload); ``blob_grants`` lists the users who
# may fetch it besides the uploader. ``refs`` counts the blob's ``blob_refs`` rows;
# ``unref_ms`` is when a complete blob last lost (or never had) its references (NULL while
# referenced): the collector removes it ``[attachments] ttl_days`` later. ``touched_ms`` is
# the last chunk of an unfinished upload (removed ``partial_ttl_hours`` later).
_V3 = (
    """CREATE TABLE conversations (
        conv_id     BLOB PRIMARY KEY,
        kind        INTEGER NOT NULL,
        managed     INTEGER NOT NULL,
        name        TEXT,
        epoch       INTEGER NOT NULL,
        created_ms  INTEGER NOT NULL,
        created_by  TEXT
    ) WITHOUT ROWID""",
    "CREATE UNIQUE INDEX conversations_name ON conversations (name) WHERE name IS NOT NULL",
    """CREATE TABLE conv_members (
        conv_id  BLOB NOT NULL REFERENCES conversations (conv_id),
        user_id  TEXT NOT NULL REFERENCES users (user_id),
        role     INTEGER NOT NULL,
        PRIMARY KEY (conv_id, user_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX conv_members_user ON conv_members (user_id)",
    """CREATE TABLE conv_rosters (
        conv_id     BLOB NOT NULL REFERENCES conversations (conv_id),
        epoch       INTEGER NOT NULL,
        record      BLOB NOT NULL,
        created_ms  INTEGER NOT NULL,
        PRIMARY KEY (conv_id, epoch)
    ) WITHOUT ROWID""",
    """CREATE TABLE org_keys (
        version     INTEGER PRIMARY KEY,
        fp          BLOB NOT NULL,
        record      BLOB NOT NULL,
        created_ms  INTEGER NOT NULL
    )""",
    """CREATE TABLE blobs (
        blob_id      BLOB PRIMARY KEY,
        owner        TEXT NOT NULL REFERENCES users (user_id),
        size         INTEGER NOT NULL,
        received     INTEGER NOT NULL DEFAULT 0,
        complete     INTEGER NOT NULL DEFAULT 0,
        created_ms   INTEGER NOT NULL,
        touched_ms   INTEGER NOT NULL,
        refs         INTEGER NOT NULL DEFAULT 0,
        unref_ms     INTEGER
    ) WITHOUT ROWID""",
    "CREATE INDEX blobs_owner ON blobs (owner)",
    "CREATE INDEX blobs_unref ON blobs (unref_ms) WHERE unref_ms IS NOT NULL",
    "CREATE INDEX blobs_touched ON blobs (touched_ms) WHERE complete = 0",
    """CREATE TABLE blob_grants (
        blob_id  BLOB NOT NULL REFERENCES blobs (blob_id),
        user_id  TEXT NOT NULL,
        PRIMARY KEY (blob_id, user_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE blob_refs (
        payload_id  INTEGER NOT NULL,
        blob_id     BLOB NOT NULL REFERENCES blobs (blob_id),
        PRIMARY KEY (payload_id, blob_id)
    ) WITHOUT ROWID""",
)

# Version 4: the ID a school's or city's own records give a user (CSV import,
# ``momedoctl user import``); unique among the users that have one. Deleted users lose it.
_V4 = (
    "ALTER TABLE users ADD COLUMN external_id TEXT",
    "CREATE UNIQUE INDEX users_external_id ON users (external_id) WHERE external_id IS NOT NULL",
)

# Version 5: push targets, one per device (docs/PROTOCOL.md "Push wake-ups"). ``kind`` is 1
# for a UnifiedPush endpoint URL, 2 for a gateway token; ``device_kind`` 0 desktop, 1 mobile.
# A target the server gave up on keeps its row with ``target`` NULL and ``dropped_ms`` /
# ``drop_status`` set until the device is told at its next connection.
_V5 = (
    """CREATE TABLE push_targets (
        device_pk    INTEGER PRIMARY KEY REFERENCES devices (pk),
        kind         INTEGER NOT NULL,
        device_kind  INTEGER NOT NULL,
        target       TEXT,
        created_ms   INTEGER NOT NULL,
        dropped_ms   INTEGER,
        drop_status  INTEGER
    )""",
    # Quiet hours and urgent messages (docs/ADMIN.md "Quiet hours"): ``payloads.urgent`` marks
    # a message sent as urgent (it passes quiet hours); the operator's allow-lists of who may
    # send urgent messages (a user anywhere, or anyone who may post in a conversation); the
    # quiet-hours policies added with momedoctl (``spec`` a JSON object). No foreign keys on
    # the allow-lists: deleting a user or conversation must not depend on them.
    "ALTER TABLE payloads ADD COLUMN urgent INTEGER NOT NULL DEFAULT 0",
    "CREATE TABLE urgent_users (user_id TEXT PRIMARY KEY) WITHOUT ROWID",
    "CREATE TABLE urgent_convs (conv_id BLOB PRIMARY KEY) WITHOUT ROWID",
    """CREATE TABLE quiet_policies (
        name        TEXT PRIMARY KEY,
        spec        TEXT NOT NULL,
        created_ms  INTEGER NOT NULL
    ) WITHOUT ROWID""",
)

# Version 6: the operator's bot flag (``momedoctl user add NAME --bot``, ``user bot``): the
# account is an integration run by ``momedo bridge`` (docs/INTEGRATIONS.md); shown, not enforced.
_V6 = ("ALTER TABLE users ADD COLUMN bot INTEGER NOT NULL DEFAULT 0",)

SQLITE_MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3, _V4, _V5, _V6)
"""Migration scripts, oldest first; each is a tuple of SQL statements."""


def schema_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the database (0 for a new database)."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def migrate(
    conn: sqlite3.Connection,
    path: Path,
    migrations: tuple[tuple[str, ...], ...] = SQLITE_MIGRATIONS,
) -> int:
    """Bring the database to the newest schema; return the resulting version.

    ``conn`` must be in autocommit mode (``isolation_level=None``). Raises StoreError if the
    database was written by a newer momedod.
    """
    known = len(migrations)
    while True:
        # Re-read the version inside each transaction: another process may have migrated.
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = schema_version(conn)
            if current > known:
                raise StoreError(
                    f"{path}: database schema version {current} is newer than this momedod "
                    f"supports (up to {known}); install the newer momedod again or restore "
                    "a backup"
                )
            if current == known:
                conn.execute("COMMIT")
                return current
            for statement in migrations[current]:
                conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (current + 1,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
