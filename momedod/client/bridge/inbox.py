"""The bridge's on-disk inbox: received messages, their decrypted attachments, and the
webhook's delivery pointer (``PROFILE/bridge/inbox.sqlite``, ``PROFILE/bridge/attachments/``).

A message is committed here (WAL, ``synchronous=FULL``) before its delivery is acked to the
server, so nothing acked is lost. ``cursor`` is the message's position (strictly increasing);
``GET /v1/messages?after=CURSOR`` and the webhook read in cursor order. A redelivery of a
message already stored is ignored (``msg_id`` is unique). The webhook pointer is the cursor
of the last message the receiver answered with a 2xx.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from momedod.client.files import write_private

BRIDGE_DIR = "bridge"
DB_NAME = "inbox.sqlite"
ATTACHMENT_DIR = "attachments"

IDEMPOTENCY_MS = 24 * 3600 * 1000
"""How long the answer to a send with an ``Idempotency-Key`` is kept for a retry."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT NOT NULL UNIQUE,
    received_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attachments (
    id TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL,
    name TEXT NOT NULL,
    mime TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sent (
    msg_id TEXT PRIMARY KEY,
    sent_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    delivered INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class StoredAttachment:
    """A decrypted attachment on disk."""

    ident: str
    name: str
    mime: str
    size: int
    path: Path


@dataclass(frozen=True)
class NewAttachment:
    """An attachment to store with its message."""

    ident: str
    name: str
    mime: str
    data: bytes


class Inbox:
    """The SQLite inbox; every method is blocking (call it from a worker thread)."""

    def __init__(self, profile_dir: Path) -> None:
        self.dir = profile_dir / BRIDGE_DIR
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.att_dir = self.dir / ATTACHMENT_DIR
        self.att_dir.mkdir(mode=0o700, exist_ok=True)
        path = self.dir / DB_NAME
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(
        self, msg_id: str, received_ms: int, body: dict[str, Any], atts: list[NewAttachment]
    ) -> int | None:
        """Store a message and its attachments (files fsynced first); None if ``msg_id`` is
        already stored (a redelivery). Returns the new cursor."""
        for att in atts:
            write_private(self.att_dir / att.ident, att.data)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute(
                    "SELECT 1 FROM messages WHERE msg_id = ?", (msg_id,)
                ).fetchone():
                    self._db.execute("ROLLBACK")
                    return None
                cur = self._db.execute(
                    "INSERT INTO messages (msg_id, received_ms, body) VALUES (?, ?, ?)",
                    (msg_id, received_ms, json.dumps(body, ensure_ascii=False)),
                )
                cursor = cur.lastrowid
                assert cursor is not None
                self._db.executemany(
                    "INSERT OR REPLACE INTO attachments (id, cursor, name, mime, size) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(a.ident, cursor, a.name, a.mime, len(a.data)) for a in atts],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return cursor

    def after(self, cursor: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` messages with a cursor above ``cursor``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT cursor, body FROM messages WHERE cursor > ? ORDER BY cursor LIMIT ?",
                (cursor, limit),
            ).fetchall()
        return [{**json.loads(body), "cursor": c} for c, body in rows]

    def add_sent(self, msg_id: str, sent_ms: int, body: dict[str, Any]) -> None:
        """Remember a message the bridge sent (to resolve replies to it)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO sent (msg_id, sent_ms, body) VALUES (?, ?, ?)",
                (msg_id, sent_ms, json.dumps(body, ensure_ascii=False)),
            )

    def sent(self, msg_id: str) -> dict[str, Any] | None:
        """What the bridge sent as ``msg_id`` (None if unknown or pruned)."""
        with self._lock:
            row = self._db.execute("SELECT body FROM sent WHERE msg_id = ?", (msg_id,)).fetchone()
        return None if row is None else {"id": msg_id, **json.loads(row[0])}

    def idempotent(self, key: str) -> tuple[str, dict[str, Any]] | None:
        """The request fingerprint and the answer of the send made with ``key``, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT request, response FROM idempotency WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else (str(row[0]), json.loads(row[1]))

    def remember(self, key: str, request: str, response: dict[str, Any], now_ms: int) -> None:
        """Keep the answer of a send made with ``key`` for IDEMPOTENCY_MS (older keys go)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "DELETE FROM idempotency WHERE created_ms < ?", (now_ms - IDEMPOTENCY_MS,)
            )
            self._db.execute(
                "INSERT OR REPLACE INTO idempotency (key, created_ms, request, response)"
                " VALUES (?, ?, ?, ?)",
                (key, now_ms, request, json.dumps(response, ensure_ascii=False)),
            )
            self._db.execute("COMMIT")

    def last_cursor(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(cursor) FROM messages").fetchone()
        return int(row[0] or 0)

    def attachment(self, ident: str) -> StoredAttachment | None:
        with self._lock:
            row = self._db.execute(
                "SELECT name, mime, size FROM attachments WHERE id = ?", (ident,)
            ).fetchone()
        if row is None:
            return None
        path = self.att_dir / ident
        return StoredAttachment(ident, row[0], row[1], row[2], path) if path.exists() else None

    def delivered(self) -> int:
        """The webhook pointer: the cursor of the last message acknowledged with a 2xx."""
        with self._lock:
            row = self._db.execute("SELECT delivered FROM webhook WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def set_delivered(self, cursor: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO webhook (id, delivered) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET delivered = excluded.delivered",
                (cursor,),
            )

    def prune(self, before_ms: int, keep_after: int) -> int:
        """Delete messages received before ``before_ms`` whose cursor is at most
        ``keep_after`` (already delivered), with their attachment files. Returns the count."""
        with self._lock:
            rows = self._db.execute(
                "SELECT cursor FROM messages WHERE received_ms < ? AND cursor <= ?",
                (before_ms, keep_after),
            ).fetchall()
            if not rows:
                return 0
            cursors = [r[0] for r in rows]
            idents = [
                r[0]
                for c in cursors
                for r in self._db.execute("SELECT id FROM attachments WHERE cursor = ?", (c,))
            ]
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "DELETE FROM attachments WHERE cursor = ?", [(c,) for c in cursors]
            )
            self._db.executemany("DELETE FROM messages WHERE cursor = ?", [(c,) for c in cursors])
            self._db.execute("DELETE FROM sent WHERE sent_ms < ?", (before_ms,))
            self._db.execute("COMMIT")
        for ident in idents:
            (self.att_dir / ident).unlink(missing_ok=True)
        return len(cursors)
