"""The store's business logic, as plain synchronous transaction functions.

Each function takes a :class:`Tx` (a small cursor wrapper) and runs inside a transaction the
engine opened for it; raising any exception rolls back everything the function wrote. The
engine decides how functions are scheduled (the SQLite engine batches writes on one thread).

The SQL is kept portable so a PostgreSQL engine can reuse these functions: ``?``
placeholders (an engine may translate them), ``RETURNING``, ``ON CONFLICT DO NOTHING``,
row-value ``IN``, booleans as 0/1 integers, and one SQLite-ism: ``users.rowid`` (the
PostgreSQL schema has an identity column of that name). Counters
(``devices.next_seq``, ``devices.mailbox_count``, ``payloads.refs``) are changed with
``UPDATE ... RETURNING`` under the row's write lock, so they stay right under concurrent
transactions too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol

from momedod.store.base import (
    AUDIT_FORBIDDEN_KEYS,
    AUDIT_PERSONAL_KEYS,
    AuditEntry,
    AuditNote,
    BlobInfo,
    BlobNotFound,
    BlobTooLarge,
    Conflict,
    Conversation,
    ConversationSummary,
    Device,
    DeviceRevoked,
    EnqueueResult,
    EventMessage,
    FanOut,
    Forbidden,
    ImportedUser,
    ImportRow,
    InvalidCursor,
    Invite,
    InviteExpired,
    InviteInvalid,
    MailboxEntry,
    MailboxFull,
    NotFound,
    QuotaExceeded,
    Recipient,
    RecordStale,
    RosterApplied,
    RosterChange,
    StoreError,
    StoreStats,
    UnknownRecipient,
    User,
    UserDisabled,
    UserPage,
    UserQuery,
    UserSummary,
    display_device,
    display_user,
)

Row = tuple[Any, ...]

MAX_INT64 = 2**63 - 1
"""Largest integer a column can hold; wire u64 values above it cannot name stored rows."""

SPK = 1
OTPK = 2

_ID_ATTEMPTS = 64
_IN_CHUNK = 500  # parameters per IN (...) list, well below every engine's limit
_FIND_CHUNK = 500  # rows per query while find_users filters names in Python


class Tx(Protocol):
    """The cursor wrapper an engine hands to transaction functions."""

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement; return the number of rows it changed."""

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        """Run one statement once per parameter row."""

    def one(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        """Run a query (or a statement with RETURNING); return its first row or None."""

    def all(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Run a query (or a statement with RETURNING); return all rows."""


def hash_invite_code(code: str) -> bytes:
    """The stored form of an invite code: SHA-256 of its normalized text."""
    return hashlib.sha256(code.encode("utf-8")).digest()


def dedup_key(sender: tuple[str, int], message_id: bytes) -> bytes:
    """SHA-256(sender user_id | u32 sender device_id | message_id)."""
    user_id, device_id = sender
    return hashlib.sha256(
        user_id.encode("utf-8") + device_id.to_bytes(4, "big") + message_id
    ).digest()


# -- rows ------------------------------------------------------------------------------------

_USER_COLS = "user_id, name, created_ms, disabled, deleted, external_id, bot"
_NUSER = len(_USER_COLS.split(", "))  # the columns after them in _FIND_USERS start here
_DEVICE_COLS = (
    "user_id, device_id, name, transport_pub, created_ms, revoked_ms, last_seen_ms, mailbox_count"
)


def _user(row: Row) -> User:
    return User(
        str(row[0]),
        str(row[1]),
        int(row[2]),
        bool(row[3]),
        bool(row[4]),
        None if row[5] is None else str(row[5]),
        bool(row[6]),
    )


def _device(row: Row) -> Device:
    return Device(
        user_id=str(row[0]),
        device_id=int(row[1]),
        name=str(row[2]),
        transport_pub=bytes(row[3]),
        created_ms=int(row[4]),
        revoked_ms=None if row[5] is None else int(row[5]),
        last_seen_ms=None if row[6] is None else int(row[6]),
        mailbox_count=int(row[7]),
    )


def _require_user(tx: Tx, user_id: str) -> User:
    row = tx.one(f"SELECT {_USER_COLS} FROM users WHERE user_id = ? AND deleted = 0", (user_id,))
    if row is None:
        raise NotFound(f"no user {display_user(user_id)}")
    return _user(row)


def _device_pk(tx: Tx, user_id: str, device_id: int) -> tuple[int, bool]:
    """(pk, revoked) of a device of a non-deleted user; NotFound otherwise."""
    if not 0 <= device_id <= MAX_INT64:
        raise NotFound(f"no device {display_device(user_id, device_id)}")
    row = tx.one(
        "SELECT d.pk, d.revoked_ms FROM devices d JOIN users u ON u.user_id = d.user_id"
        " WHERE d.user_id = ? AND d.device_id = ? AND u.deleted = 0",
        (user_id, device_id),
    )
    if row is None:
        raise NotFound(f"no device {display_device(user_id, device_id)}")
    return int(row[0]), row[1] is not None


def _get_device_by_pk(tx: Tx, pk: int) -> Device:
    row = tx.one(f"SELECT {_DEVICE_COLS} FROM devices WHERE pk = ?", (pk,))
    assert row is not None
    return _device(row)


def _chunks(values: Sequence[int], size: int = _IN_CHUNK) -> Iterable[Sequence[int]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def _release_payloads(tx: Tx, payload_ids: Iterable[int], now_ms: int) -> None:
    """Drop one reference per occurrence in ``payload_ids``; free unreferenced payloads and
    their blob references (as of ``now_ms``)."""
    counts = Counter(payload_ids)
    if not counts:
        return
    tx.executemany(
        "UPDATE payloads SET refs = refs - ? WHERE id = ?", [(n, pid) for pid, n in counts.items()]
    )
    freed: list[int] = []
    for chunk in _chunks(list(counts)):
        marks = ", ".join("?" * len(chunk))
        rows = tx.all(
            f"DELETE FROM payloads WHERE id IN ({marks}) AND refs <= 0 RETURNING id", chunk
        )
        freed.extend(int(r[0]) for r in rows)
    _release_blob_refs(tx, freed, now_ms)


def _drop_mailbox(tx: Tx, device_pk: int, now_ms: int) -> None:
    rows = tx.all("DELETE FROM mailbox WHERE device_pk = ? RETURNING payload_id", (device_pk,))
    _release_payloads(tx, (int(r[0]) for r in rows), now_ms)
    tx.execute("UPDATE devices SET mailbox_count = 0 WHERE pk = ?", (device_pk,))


def _new_invite(
    tx: Tx, user_id: str, now_ms: int, ttl_ms: int, new_code: Callable[[], str]
) -> Invite:
    tx.execute("DELETE FROM invites WHERE user_id = ? AND used_ms IS NULL", (user_id,))
    expires_ms = now_ms + ttl_ms
    for _ in range(_ID_ATTEMPTS):
        code = new_code()
        inserted = tx.execute(
            "INSERT INTO invites (code_hash, user_id, created_ms, expires_ms) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (hash_invite_code(code), user_id, now_ms, expires_ms),
        )
        if inserted:
            return Invite(user_id, code, now_ms, expires_ms)
    raise StoreError(f"could not generate an unused invite code in {_ID_ATTEMPTS} attempts")


# -- users and invites -----------------------------------------------------------------------


def create_user(
    tx: Tx,
    name: str,
    now_ms: int,
    invite_ttl_ms: int,
    new_user_id: Callable[[], str],
    new_code: Callable[[], str],
    audit: AuditNote | None = None,
) -> tuple[User, Invite]:
    """Insert a user under a fresh ID (never one in use or of a deleted user) + an invite."""
    for _ in range(_ID_ATTEMPTS):
        user_id = new_user_id()
        inserted = tx.execute(
            "INSERT INTO users (user_id, name, created_ms) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (user_id, name, now_ms),
        )
        if inserted:
            break
    else:
        raise StoreError(f"could not generate an unused user ID in {_ID_ATTEMPTS} attempts")
    user = User(user_id, name, now_ms, disabled=False, deleted=False)
    invite = _new_invite(tx, user_id, now_ms, invite_ttl_ms, new_code)
    _write_audit(tx, audit, user_id)
    return user, invite


def get_user(tx: Tx, user_id: str) -> User | None:
    """The user, or None if unknown or deleted."""
    row = tx.one(f"SELECT {_USER_COLS} FROM users WHERE user_id = ? AND deleted = 0", (user_id,))
    return None if row is None else _user(row)


def list_users(tx: Tx) -> list[User]:
    """Non-deleted users in creation order."""
    # Ties (same millisecond) in insertion order: SQLite's rowid. The one SQLite-ism in this
    # module; the PostgreSQL schema gives users an identity column of that name.
    rows = tx.all(f"SELECT {_USER_COLS} FROM users WHERE deleted = 0 ORDER BY created_ms, rowid")
    return [_user(r) for r in rows]


def set_user_disabled(tx: Tx, user_id: str, disabled: bool, audit: AuditNote | None = None) -> User:
    """Set the disabled flag; NotFound for unknown or deleted users."""
    user = _require_user(tx, user_id)
    tx.execute("UPDATE users SET disabled = ? WHERE user_id = ?", (int(disabled), user_id))
    _write_audit(tx, audit, user_id)
    return dataclasses.replace(user, disabled=disabled)


def set_user_bot(tx: Tx, user_id: str, bot: bool, audit: AuditNote | None = None) -> User:
    """Set the bot flag; NotFound for unknown or deleted users."""
    user = _require_user(tx, user_id)
    tx.execute("UPDATE users SET bot = ? WHERE user_id = ?", (int(bot), user_id))
    _write_audit(tx, audit, user_id)
    return dataclasses.replace(user, bot=bot)


def rename_user(tx: Tx, user_id: str, name: str, audit: AuditNote | None = None) -> User:
    """Set a new name; the audit entry records the old and the new one."""
    user = _require_user(tx, user_id)
    tx.execute("UPDATE users SET name = ? WHERE user_id = ?", (name, user_id))
    _write_audit(tx, audit, user_id, extra={"old_name": user.name, "name": name})
    return dataclasses.replace(user, name=name)


def delete_user(tx: Tx, user_id: str, now_ms: int, audit: AuditNote | None = None) -> None:
    """Tombstone a user: revoke devices, drop mailboxes, prekeys, records and invites.

    The name and device names are blanked (nothing can read a deleted user any more); the
    row stays so the ID is never handed out again.
    """
    _require_user(tx, user_id)
    for (pk,) in tx.all("SELECT pk FROM devices WHERE user_id = ?", (user_id,)):
        _drop_mailbox(tx, int(pk), now_ms)
        tx.execute("DELETE FROM prekeys WHERE device_pk = ?", (pk,))
        tx.execute("DELETE FROM push_targets WHERE device_pk = ?", (pk,))
    tx.execute(
        "UPDATE devices SET revoked_ms = coalesce(revoked_ms, ?), name = '' WHERE user_id = ?",
        (now_ms, user_id),
    )
    tx.execute("DELETE FROM invites WHERE user_id = ?", (user_id,))
    tx.execute("DELETE FROM identity_records WHERE user_id = ?", (user_id,))
    tx.execute("DELETE FROM device_lists WHERE user_id = ?", (user_id,))
    _release_user_blobs(tx, user_id)
    tx.execute(
        "UPDATE users SET deleted = 1, name = '', external_id = NULL WHERE user_id = ?", (user_id,)
    )
    _forget_names_in_audit(tx, user_id)
    _write_audit(tx, audit, user_id)


def new_invite(
    tx: Tx,
    user_id: str,
    now_ms: int,
    ttl_ms: int,
    new_code: Callable[[], str],
    audit: AuditNote | None = None,
) -> Invite:
    """A new invite for the user; deletes the user's older unused invites."""
    _require_user(tx, user_id)
    invite = _new_invite(tx, user_id, now_ms, ttl_ms, new_code)
    _write_audit(tx, audit, user_id)
    return invite


def bulk_invites(
    tx: Tx,
    without_active_device: bool,
    now_ms: int,
    ttl_ms: int,
    new_code: Callable[[], str],
    audit: AuditNote | None = None,
    user_ids: Collection[str] | None = None,
) -> list[tuple[User, Invite]]:
    """A new invite for every enabled user (optionally: only those without an active device,
    only those in ``user_ids``), in creation order, with one audit entry per user."""
    condition = (
        " AND NOT EXISTS (SELECT 1 FROM devices d"
        " WHERE d.user_id = users.user_id AND d.revoked_ms IS NULL)"
        if without_active_device
        else ""
    )
    rows = tx.all(
        f"SELECT {_USER_COLS} FROM users WHERE deleted = 0 AND disabled = 0{condition}"
        " ORDER BY created_ms, rowid"
    )
    result: list[tuple[User, Invite]] = []
    wanted = None if user_ids is None else frozenset(user_ids)
    for row in rows:
        user = _user(row)
        if wanted is not None and user.user_id not in wanted:
            continue
        result.append((user, _new_invite(tx, user.user_id, now_ms, ttl_ms, new_code)))
        _write_audit(tx, audit, user.user_id)
    return result


def import_users(
    tx: Tx,
    rows: Sequence[ImportRow],
    now_ms: int,
    invite_ttl_ms: int,
    new_user_id: Callable[[], str],
    new_code: Callable[[], str],
    audit: AuditNote | None = None,
) -> list[ImportedUser]:
    """Match or create a user per row (see Store.import_users)."""
    given = [r.external_id for r in rows if r.external_id is not None]
    if len(set(given)) != len(given):
        twice = next(x for x, n in Counter(given).items() if n > 1)
        raise ValueError(f"external_id {twice!r} is given twice")
    results: list[ImportedUser | None] = [None] * len(rows)
    taken: set[str] = set()
    for i in range(0, len(given), _IN_CHUNK):
        chunk = given[i : i + _IN_CHUNK]
        found = tx.all(
            f"SELECT {_USER_COLS} FROM users WHERE deleted = 0 AND external_id IN"
            f" ({', '.join('?' * len(chunk))})",
            chunk,
        )
        by_external = {str(r[5]): _user(r) for r in found}
        for index, row in enumerate(rows):
            user = by_external.get(row.external_id or "")
            if user is not None:
                results[index] = ImportedUser(user, created=False, invite=None)
                taken.add(user.user_id)
    # The rest match by name: the k-th row with a name, the k-th oldest such user.
    names = sorted({rows[i].name for i, r in enumerate(results) if r is None})
    candidates: dict[str, list[User]] = {}
    for i in range(0, len(names), _IN_CHUNK):
        chunk = names[i : i + _IN_CHUNK]
        found = tx.all(
            f"SELECT {_USER_COLS} FROM users WHERE deleted = 0 AND external_id IS NULL"
            f" AND name IN ({', '.join('?' * len(chunk))}) ORDER BY created_ms, rowid",
            chunk,
        )
        for r in found:
            user = _user(r)
            if user.user_id not in taken:
                candidates.setdefault(user.name, []).append(user)
    queues = {name: iter(users) for name, users in candidates.items()}
    for index, row in enumerate(rows):
        if results[index] is not None:
            continue
        user = next(queues.get(row.name, iter(())), None)
        if user is None:
            continue
        if row.external_id is None:
            results[index] = ImportedUser(user, created=False, invite=None)
            continue
        tx.execute(
            "UPDATE users SET external_id = ? WHERE user_id = ?", (row.external_id, user.user_id)
        )
        if audit is not None:
            link = dataclasses.replace(audit, action="user.link")
            _write_audit(tx, link, user.user_id, extra={"external_id": row.external_id})
        linked = dataclasses.replace(user, external_id=row.external_id)
        results[index] = ImportedUser(linked, created=False, invite=None, linked=True)
    for index, row in enumerate(rows):
        if results[index] is not None:
            continue
        user, invite = create_user(tx, row.name, now_ms, invite_ttl_ms, new_user_id, new_code)
        if row.external_id is not None:
            tx.execute(
                "UPDATE users SET external_id = ? WHERE user_id = ?",
                (row.external_id, user.user_id),
            )
            user = dataclasses.replace(user, external_id=row.external_id)
        extra: dict[str, Any] = {"name": row.name}
        if row.external_id is not None:
            extra["external_id"] = row.external_id
        _write_audit(tx, audit, user.user_id, extra=extra)
        results[index] = ImportedUser(user, created=True, invite=invite)
    return [r for r in results if r is not None]


# -- finding users ---------------------------------------------------------------------------

# Users with their device aggregates. ``u.rowid`` breaks ties of created_ms in insertion
# order, as in list_users (the same SQLite-ism; PostgreSQL's schema has an identity column
# named rowid).
_FIND_USERS = f"""
SELECT {", ".join("u." + c for c in _USER_COLS.split(", "))}, u.rowid,
       coalesce(d.active, 0), coalesce(d.total, 0), d.last_seen, coalesce(d.mailbox, 0)
FROM users u LEFT JOIN (
    SELECT user_id,
           sum(CASE WHEN revoked_ms IS NULL THEN 1 ELSE 0 END) AS active,
           count(*) AS total,
           max(last_seen_ms) AS last_seen,
           sum(mailbox_count) AS mailbox
    FROM devices GROUP BY user_id
) d ON d.user_id = u.user_id
"""

_CURSOR = re.compile(r"u([0-9]{1,19})\.([0-9]{1,19})")


def fold_text(text: str) -> str:
    """The form names are compared in for searches: NFKC, then case-folded."""
    return unicodedata.normalize("NFKC", text).casefold()


def _cursor_text(created_ms: int, pos: int) -> str:
    return f"u{created_ms}.{pos}"


def _parse_cursor(text: str) -> tuple[int, int]:
    match = _CURSOR.fullmatch(text)
    if match is None:
        raise InvalidCursor(f"not a user list cursor: {text[:40]!r}")
    created_ms, pos = int(match[1]), int(match[2])
    if created_ms > MAX_INT64 or pos > MAX_INT64:
        raise InvalidCursor(f"not a user list cursor: {text[:40]!r}")
    return created_ms, pos


def find_users(tx: Tx, query: UserQuery, after: str | None, limit: int) -> UserPage:
    """One page of users matching ``query`` (see Store.find_users)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    position = None if after is None else _parse_cursor(after)
    where = ["u.deleted = 0"]
    params: list[object] = []
    if query.disabled is not None:
        where.append("u.disabled = ?")
        params.append(int(query.disabled))
    if query.without_active_device:
        where.append("coalesce(d.active, 0) = 0")
    if query.inactive_since_ms is not None:
        where.append("coalesce(d.last_seen, u.created_ms) < ?")
        params.append(query.inactive_since_ms)
    needle = None if query.search is None else fold_text(query.search)
    fragment = query.id_fragment
    filtered = needle is not None or fragment is not None
    # Without a text search SQL does all the filtering; with one, rows are read in chunks
    # and names matched here (SQL's lower()/LIKE know only ASCII case).
    chunk = _FIND_CHUNK if filtered else limit + 1
    found: list[tuple[UserSummary, tuple[int, int]]] = []
    while len(found) <= limit:
        conditions, values = list(where), list(params)
        if position is not None:
            conditions.append("(u.created_ms, u.rowid) > (?, ?)")
            values.extend(position)
        rows = tx.all(
            f"{_FIND_USERS} WHERE {' AND '.join(conditions)}"
            " ORDER BY u.created_ms, u.rowid LIMIT ?",
            (*values, chunk),
        )
        for row in rows:
            position = (int(row[2]), int(row[_NUSER]))
            user = _user(row)
            if filtered and not (
                (needle is not None and needle in fold_text(user.name))
                or (fragment is not None and fragment in user.user_id)
                or (needle is not None and needle == fold_text(user.external_id or ""))
            ):
                continue
            summary = UserSummary(
                user=user,
                active_devices=int(row[_NUSER + 1]),
                devices=int(row[_NUSER + 2]),
                last_seen_ms=None if row[_NUSER + 3] is None else int(row[_NUSER + 3]),
                mailbox=int(row[_NUSER + 4]),
            )
            found.append((summary, position))
            if len(found) > limit:
                break
        if len(rows) < chunk:
            break
    page = found[:limit]
    more = len(found) > limit
    next_cursor = _cursor_text(*page[-1][1]) if more and page else None
    return UserPage(tuple(s for s, _ in page), next_cursor)


# -- audit log -------------------------------------------------------------------------------


def _write_audit(
    tx: Tx,
    note: AuditNote | None,
    user_id: str | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
) -> int | None:
    """Insert ``note`` (nothing if None); the user a change is about fills in the blanks."""
    if note is None:
        return None
    about = note.user_id if note.user_id is not None else user_id
    target = note.target
    if target is None:
        target = "" if about is None else display_user(about)
    detail = {**note.detail, **(extra or {})}
    for key in AUDIT_FORBIDDEN_KEYS.intersection(detail):
        del detail[key]
    row = tx.one(
        "INSERT INTO audit (ts_ms, uid, action, target, user_id, detail)"
        " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (
            note.ts_ms,
            note.uid,
            note.action,
            target,
            about,
            json.dumps(detail, ensure_ascii=False, sort_keys=True, separators=(",", ":")),
        ),
    )
    assert row is not None
    return int(row[0])


def _forget_names_in_audit(tx: Tx, user_id: str) -> None:
    """Remove a deleted user's name from the details of its audit entries."""
    rows = tx.all("SELECT id, detail FROM audit WHERE user_id = ?", (user_id,))
    for entry_id, text in rows:
        detail = _detail(text)
        if AUDIT_PERSONAL_KEYS.intersection(detail):
            for key in AUDIT_PERSONAL_KEYS:
                detail.pop(key, None)
            tx.execute(
                "UPDATE audit SET detail = ? WHERE id = ?",
                (json.dumps(detail, ensure_ascii=False, sort_keys=True), entry_id),
            )


def _detail(text: object) -> dict[str, Any]:
    try:
        value = json.loads(str(text))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def add_audit(tx: Tx, note: AuditNote) -> int:
    """Append one audit entry; return its id."""
    entry_id = _write_audit(tx, note)
    assert entry_id is not None
    return entry_id


def list_audit(
    tx: Tx,
    after_id: int | None,
    before_id: int | None,
    limit: int,
    user_id: str | None,
    action: str | None,
) -> list[AuditEntry]:
    """Audit entries (see Store.list_audit)."""
    if limit < 1:
        return []
    where: list[str] = []
    params: list[object] = []
    if user_id is not None:
        where.append("user_id = ?")
        params.append(user_id)
    if action is not None:
        if action.endswith("."):
            where.append("substr(action, 1, ?) = ?")
            params.extend((len(action), action))
        else:
            where.append("action = ?")
            params.append(action)
    if after_id is not None:
        where.append("id > ?")
        params.append(min(max(after_id, -1), MAX_INT64))
        order = "id"
    else:
        order = "id DESC"
        if before_id is not None:
            where.append("id < ?")
            params.append(min(max(before_id, 0), MAX_INT64))
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = tx.all(
        "SELECT id, ts_ms, uid, action, target, user_id, detail FROM audit"
        f"{clause} ORDER BY {order} LIMIT ?",
        (*params, min(limit, MAX_INT64)),
    )
    return [
        AuditEntry(
            id=int(r[0]),
            ts_ms=int(r[1]),
            uid=None if r[2] is None else int(r[2]),
            action=str(r[3]),
            target=str(r[4]),
            user_id=None if r[5] is None else str(r[5]),
            detail=_detail(r[6]),
        )
        for r in rows
    ]


def redeem_invite(tx: Tx, code: str, transport_pub: bytes, device_name: str, now_ms: int) -> Device:
    """Mark the invite used and create the user's next device (max device_id + 1)."""
    row = tx.one(
        "SELECT i.user_id, i.expires_ms, i.used_ms, u.disabled, u.deleted"
        " FROM invites i JOIN users u ON u.user_id = i.user_id WHERE i.code_hash = ?",
        (hash_invite_code(code),),
    )
    if row is None or row[2] is not None or row[4]:
        raise InviteInvalid("unknown or already used invite code")
    user_id = str(row[0])
    expires_ms = int(row[1])
    if now_ms >= expires_ms:
        expires_ms += catch_up_clock(tx, now_ms)
        if now_ms >= expires_ms:
            raise InviteExpired("invite code has expired")
    if row[3]:
        raise UserDisabled(f"user {display_user(user_id)} is disabled")
    tx.execute(
        "UPDATE invites SET used_ms = ? WHERE code_hash = ?", (now_ms, hash_invite_code(code))
    )
    top = tx.one("SELECT max(device_id) FROM devices WHERE user_id = ?", (user_id,))
    device_id = 1 if top is None or top[0] is None else int(top[0]) + 1
    tx.execute(
        "INSERT INTO devices (user_id, device_id, name, transport_pub, created_ms)"
        " VALUES (?, ?, ?, ?, ?)",
        (user_id, device_id, device_name, transport_pub, now_ms),
    )
    return Device(user_id, device_id, device_name, transport_pub, now_ms, None, None, 0)


# -- devices ---------------------------------------------------------------------------------


def get_device(tx: Tx, user_id: str, device_id: int) -> Device | None:
    """The device (also when revoked), or None if it or its user is unknown/deleted."""
    if not 0 <= device_id <= MAX_INT64:
        return None
    row = tx.one(
        f"SELECT {', '.join('d.' + c for c in _DEVICE_COLS.split(', '))}"
        " FROM devices d JOIN users u ON u.user_id = d.user_id"
        " WHERE d.user_id = ? AND d.device_id = ? AND u.deleted = 0",
        (user_id, device_id),
    )
    return None if row is None else _device(row)


def list_devices(tx: Tx, user_id: str) -> list[Device]:
    """All devices of a user by device_id; NotFound for unknown/deleted users."""
    _require_user(tx, user_id)
    rows = tx.all(
        f"SELECT {_DEVICE_COLS} FROM devices WHERE user_id = ? ORDER BY device_id", (user_id,)
    )
    return [_device(r) for r in rows]


def revoke_device(
    tx: Tx, user_id: str, device_id: int, now_ms: int, audit: AuditNote | None = None
) -> Device:
    """Revoke a device (keeping an earlier revocation time) and drop its mailbox/prekeys."""
    pk, _ = _device_pk(tx, user_id, device_id)
    _drop_mailbox(tx, pk, now_ms)
    tx.execute("DELETE FROM prekeys WHERE device_pk = ?", (pk,))
    tx.execute("DELETE FROM push_targets WHERE device_pk = ?", (pk,))
    tx.execute("UPDATE devices SET revoked_ms = coalesce(revoked_ms, ?) WHERE pk = ?", (now_ms, pk))
    if audit is not None and audit.target is None:
        audit = dataclasses.replace(audit, target=display_device(user_id, device_id))
    _write_audit(tx, audit, user_id)
    return _get_device_by_pk(tx, pk)


def touch_device(tx: Tx, user_id: str, device_id: int, now_ms: int) -> None:
    """Set last_seen_ms."""
    pk, _ = _device_pk(tx, user_id, device_id)
    tx.execute("UPDATE devices SET last_seen_ms = ? WHERE pk = ?", (now_ms, pk))


# -- mailboxes -------------------------------------------------------------------------------

# Allocates the next seq and counts the entry in one statement, and only if the device may
# receive: it exists, is not revoked, its user is enabled, and its mailbox has room.
_CLAIM_SLOT = """
UPDATE devices SET next_seq = next_seq + 1, mailbox_count = mailbox_count + 1
WHERE user_id = ? AND device_id = ? AND revoked_ms IS NULL AND mailbox_count < ?
  AND EXISTS (SELECT 1 FROM users u
              WHERE u.user_id = devices.user_id AND u.disabled = 0 AND u.deleted = 0)
RETURNING pk, next_seq - 1
"""


def _refuse_recipient(tx: Tx, r: Recipient, max_per_device: int) -> StoreError:
    """Why _CLAIM_SLOT matched no row for ``r``."""
    row = tx.one(
        "SELECT d.revoked_ms, u.disabled, u.deleted FROM devices d"
        " JOIN users u ON u.user_id = d.user_id WHERE d.user_id = ? AND d.device_id = ?",
        (r.user_id, r.device_id),
    )
    if row is None or row[0] is not None or row[1] or row[2]:
        return UnknownRecipient(r.user_id, r.device_id)
    return MailboxFull(r.user_id, r.device_id, max_per_device)


def enqueue(
    tx: Tx,
    sender: tuple[str, int],
    message_id: bytes,
    payload: bytes,
    recipients: Sequence[Recipient],
    now_ms: int,
    max_per_device: int,
    blob_ids: Sequence[bytes] = (),
    urgent: bool = False,
) -> EnqueueResult:
    """Store one message for all recipients or for none (see Store.enqueue)."""
    if not recipients:
        raise ValueError("enqueue needs at least one recipient")
    if len({(r.user_id, r.device_id) for r in recipients}) != len(recipients):
        raise ValueError("enqueue got the same recipient device twice")
    key = dedup_key(sender, message_id)
    if not tx.execute(
        "INSERT INTO dedup (key, created_ms) VALUES (?, ?) ON CONFLICT DO NOTHING", (key, now_ms)
    ):
        row = tx.one("SELECT created_ms FROM dedup WHERE key = ?", (key,))
        return EnqueueResult(True, now_ms if row is None else int(row[0]), ())
    slots: list[tuple[int, int]] = []
    for r in recipients:
        if not 0 <= r.device_id <= MAX_INT64:
            raise UnknownRecipient(r.user_id, r.device_id)
        slot = tx.one(_CLAIM_SLOT, (r.user_id, r.device_id, max_per_device))
        if slot is None:
            raise _refuse_recipient(tx, r, max_per_device)
        slots.append((int(slot[0]), int(slot[1])))
    row = tx.one(
        "INSERT INTO payloads (data, refs, urgent) VALUES (?, ?, ?) RETURNING id",
        (payload, len(slots), int(urgent)),
    )
    assert row is not None
    payload_id = int(row[0])
    if blob_ids:
        attach_blobs(tx, sender[0], payload_id, {r.user_id for r in recipients}, blob_ids, now_ms)
    tx.executemany(
        "INSERT INTO mailbox (device_pk, seq, payload_id, message_id, part, server_ts_ms)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (pk, seq, payload_id, message_id, r.part, now_ms)
            for (pk, seq), r in zip(slots, recipients, strict=True)
        ],
    )
    return EnqueueResult(
        False,
        now_ms,
        tuple(
            (r.user_id, r.device_id, seq) for (_pk, seq), r in zip(slots, recipients, strict=True)
        ),
    )


def fetch(tx: Tx, user_id: str, device_id: int, after_seq: int, limit: int) -> list[MailboxEntry]:
    """Mailbox entries after ``after_seq`` in seq order."""
    pk, _ = _device_pk(tx, user_id, device_id)
    if limit <= 0 or after_seq >= MAX_INT64:
        return []
    rows = tx.all(
        "SELECT m.seq, m.message_id, m.server_ts_ms, p.data, m.part, p.urgent"
        " FROM mailbox m JOIN payloads p ON p.id = m.payload_id"
        " WHERE m.device_pk = ? AND m.seq > ? ORDER BY m.seq LIMIT ?",
        (pk, max(after_seq, 0), min(limit, MAX_INT64)),
    )
    return [
        MailboxEntry(int(r[0]), bytes(r[1]), int(r[2]), bytes(r[3]), bytes(r[4]), bool(r[5]))
        for r in rows
    ]


def ack(tx: Tx, user_id: str, device_id: int, seqs: Sequence[int], now_ms: int) -> int:
    """Delete the acknowledged entries; return how many existed."""
    pk, _ = _device_pk(tx, user_id, device_id)
    wanted = sorted({s for s in seqs if 0 < s <= MAX_INT64})
    freed: list[int] = []
    for chunk in _chunks(wanted):
        marks = ", ".join("?" * len(chunk))
        rows = tx.all(
            f"DELETE FROM mailbox WHERE device_pk = ? AND seq IN ({marks}) RETURNING payload_id",
            (pk, *chunk),
        )
        freed.extend(int(r[0]) for r in rows)
    if freed:
        _release_payloads(tx, freed, now_ms)
        tx.execute(
            "UPDATE devices SET mailbox_count = mailbox_count - ? WHERE pk = ?", (len(freed), pk)
        )
    return len(freed)


CLOCK_JUMP_MS = 180 * 86_400_000
"""A gap this long between ``now_ms`` and the newest time stamp in the store is a clock jump.

Theory: the store keeps only wall-clock stamps (``now_ms`` of the call that wrote them), so a
forward step of the system clock (a Raspberry Pi without a real-time clock that booted with a
stale time, then NTP) would make everything written before the step look old, and expiry
would delete messages and refuse invites that are minutes old. A running server writes stamps
all the time (messages, logins), so when the newest stamp of all is more than 180 days behind
``now_ms`` the time in between did not really pass: :func:`catch_up_clock` moves every stamp
that expiry reads forward by the gap, which keeps each item's age. A server that really was
off for half a year keeps its messages and invites that much longer: the safe side.
A backward step needs nothing: items then only look younger and are kept longer.
"""


def catch_up_clock(tx: Tx, now_ms: int) -> int:
    """Detect a forward clock jump (see :data:`CLOCK_JUMP_MS`) and shift the stamps expiry and
    invites read by it; return the shift in ms (0: no jump). The newest stamp is taken over
    exactly the stamps that are shifted, so after a shift there is no gap left to find."""
    # The aggregate max() over a UNION (SQLite's scalar max(a, b, ...) is GREATEST elsewhere).
    row = tx.one(
        "SELECT max(t) FROM (SELECT max(server_ts_ms) AS t FROM mailbox"
        " UNION ALL SELECT max(created_ms) FROM dedup"
        " UNION ALL SELECT max(created_ms) FROM invites WHERE used_ms IS NULL"
        " UNION ALL SELECT max(last_seen_ms) FROM devices) AS stamps",
        (),
    )
    newest = int(row[0]) if row is not None and row[0] else 0
    if not newest or now_ms - newest <= CLOCK_JUMP_MS:
        return 0
    shift = now_ms - newest
    shift_clock(tx, shift, now_ms + 1)
    return shift


def shift_clock(tx: Tx, shift_ms: int, before_ms: int) -> None:
    """Move the stamps older than ``before_ms`` that expiry reads forward by ``shift_ms``."""
    tx.execute(
        "UPDATE mailbox SET server_ts_ms = server_ts_ms + ? WHERE server_ts_ms < ?",
        (shift_ms, before_ms),
    )
    tx.execute(
        "UPDATE dedup SET created_ms = created_ms + ? WHERE created_ms < ?", (shift_ms, before_ms)
    )
    tx.execute(
        "UPDATE invites SET created_ms = created_ms + ?, expires_ms = expires_ms + ?"
        " WHERE used_ms IS NULL AND created_ms < ?",
        (shift_ms, shift_ms, before_ms),
    )
    tx.execute(
        "UPDATE devices SET last_seen_ms = last_seen_ms + ? WHERE last_seen_ms < ?",
        (shift_ms, before_ms),
    )


def expire_batch(tx: Tx, cutoff_ms: int, limit: int, now_ms: int) -> tuple[int, int]:
    """Drop up to ``limit`` mailbox entries and ``limit`` dedup keys older than ``cutoff_ms``.

    Returns (entries dropped, dedup keys dropped); call again while either equals ``limit``.
    A forward clock jump is caught up first (:func:`catch_up_clock`).
    """
    catch_up_clock(tx, now_ms)
    rows = tx.all(
        "DELETE FROM mailbox WHERE (device_pk, seq) IN"
        " (SELECT device_pk, seq FROM mailbox WHERE server_ts_ms < ? LIMIT ?)"
        " RETURNING device_pk, payload_id",
        (cutoff_ms, limit),
    )
    per_device = Counter(int(r[0]) for r in rows)
    tx.executemany(
        "UPDATE devices SET mailbox_count = mailbox_count - ? WHERE pk = ?",
        [(n, pk) for pk, n in per_device.items()],
    )
    _release_payloads(tx, (int(r[1]) for r in rows), now_ms)
    keys = tx.execute(
        "DELETE FROM dedup WHERE key IN (SELECT key FROM dedup WHERE created_ms < ? LIMIT ?)",
        (cutoff_ms, limit),
    )
    return len(rows), keys


# -- key directory ---------------------------------------------------------------------------


def put_identity(tx: Tx, user_id: str, record: bytes, now_ms: int) -> None:
    """Append an identity record; RecordStale for identical bytes."""
    _require_user(tx, user_id)
    if not tx.execute(
        "INSERT INTO identity_records (user_id, record_hash, record, created_ms)"
        " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (user_id, hashlib.sha256(record).digest(), record, now_ms),
    ):
        raise RecordStale("this identity record is already stored")


def put_device_list(tx: Tx, user_id: str, version: int, record: bytes, now_ms: int) -> None:
    """Append a device list whose version is above every stored one."""
    _require_user(tx, user_id)
    row = tx.one("SELECT max(version) FROM device_lists WHERE user_id = ?", (user_id,))
    latest = None if row is None or row[0] is None else int(row[0])
    if latest is not None and version <= latest:
        raise RecordStale(f"device list version {version} is not newer than stored {latest}")
    if not 0 <= version <= MAX_INT64:
        raise StoreError(f"device list version {version} is out of the storable range")
    tx.execute(
        "INSERT INTO device_lists (user_id, version, record, created_ms) VALUES (?, ?, ?, ?)",
        (user_id, version, record, now_ms),
    )


def put_prekey(
    tx: Tx,
    user_id: str,
    device_id: int,
    suite: int,
    kind: int,
    key_id: int,
    record: bytes,
    now_ms: int,
) -> None:
    """Replace the SPK of (device, suite) or add an OTPK to its pool."""
    if kind not in (SPK, OTPK):
        raise ValueError(f"unknown prekey kind {kind}")
    pk, revoked = _device_pk(tx, user_id, device_id)
    if revoked:
        raise DeviceRevoked(f"device {display_device(user_id, device_id)} is revoked")
    if kind == SPK:
        tx.execute(
            "DELETE FROM prekeys WHERE device_pk = ? AND suite = ? AND kind = ?", (pk, suite, SPK)
        )
    if not tx.execute(
        "INSERT INTO prekeys (device_pk, suite, kind, key_id, record, created_ms)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (pk, suite, kind, key_id, record, now_ms),
    ):
        raise RecordStale(f"one-time prekey {key_id} is already stored")


def get_records(tx: Tx, user_id: str) -> list[bytes]:
    """The key-directory answer for a user (see Store.get_records)."""
    _require_user(tx, user_id)
    identities = tx.all(
        "SELECT record FROM identity_records WHERE user_id = ? ORDER BY id", (user_id,)
    )
    lists = tx.all("SELECT record FROM device_lists WHERE user_id = ? ORDER BY version", (user_id,))
    spks = tx.all(
        "SELECT p.record FROM prekeys p JOIN devices d ON d.pk = p.device_pk"
        " WHERE d.user_id = ? AND d.revoked_ms IS NULL AND p.kind = ?"
        " ORDER BY d.device_id, p.suite",
        (user_id, SPK),
    )
    return [bytes(r[0]) for r in (*identities, *lists, *spks)]


def claim_prekey(tx: Tx, user_id: str, device_id: int, suite: int) -> bytes | None:
    """Remove and return the oldest OTPK of (device, suite)."""
    pk, _ = _device_pk(tx, user_id, device_id)
    row = tx.one(
        "DELETE FROM prekeys WHERE id = (SELECT id FROM prekeys"
        " WHERE device_pk = ? AND suite = ? AND kind = ? ORDER BY id LIMIT 1) RETURNING record",
        (pk, suite, OTPK),
    )
    return None if row is None else bytes(row[0])


def count_prekeys(tx: Tx, user_id: str, device_id: int, suite: int) -> int:
    """Unclaimed OTPKs of (device, suite)."""
    pk, _ = _device_pk(tx, user_id, device_id)
    row = tx.one(
        "SELECT count(*) FROM prekeys WHERE device_pk = ? AND suite = ? AND kind = ?",
        (pk, suite, OTPK),
    )
    return 0 if row is None else int(row[0])


def stats(tx: Tx) -> StoreStats:
    """Counts for the operator overview (active devices of non-deleted users)."""
    row = tx.one(
        "SELECT (SELECT count(*) FROM users WHERE deleted = 0),"
        " (SELECT count(*) FROM devices WHERE revoked_ms IS NULL),"
        " (SELECT coalesce(sum(mailbox_count), 0) FROM devices),"
        " (SELECT count(*) FROM payloads),"
        " (SELECT min(server_ts_ms) FROM mailbox),"
        " (SELECT count(*) FROM blobs WHERE complete = 1),"
        " (SELECT coalesce(sum(received), 0) FROM blobs)"
    )
    assert row is not None
    oldest = None if row[4] is None else int(row[4])
    return StoreStats(
        int(row[0]), int(row[1]), int(row[2]), int(row[3]), oldest, int(row[5]), int(row[6])
    )


def stored_schema_version(tx: Tx) -> int:
    """The schema version recorded in the database, read-only (0 if none is recorded)."""
    row = tx.one("SELECT max(version) FROM schema_version")
    return 0 if row is None or row[0] is None else int(row[0])


# -- conversations ---------------------------------------------------------------------------

# Theory of operation. ``conv_members`` is the server's membership: it is replaced by the
# members of each new roster in the transaction that stores the roster, so it always equals
# the newest roster. A fan-out claims a mailbox slot on every target device with ONE
# ``UPDATE devices ... RETURNING`` (set-based: 1,000 devices cost one statement, not 1,000),
# stores the payload once and inserts the mailbox rows with one executemany. Devices whose
# mailbox is full are skipped, not an error: one full phone must not block a class's channel.

_CONV_COLS = "conv_id, kind, managed, name, epoch, created_ms, created_by"
_ROLE_ADMIN = 1
_KIND_CHANNEL = 2

# Devices that may receive: active, of an enabled user, not the excluded (sending) device.
# ``{users}`` is a subquery or a list of placeholders giving the target user IDs.
_TARGETS = """
revoked_ms IS NULL AND pk <> ? AND user_id IN ({users})
AND EXISTS (SELECT 1 FROM users u
            WHERE u.user_id = devices.user_id AND u.disabled = 0 AND u.deleted = 0)
"""
_MEMBERS_OF = "SELECT user_id FROM conv_members WHERE conv_id = ?"


def _conversation(tx: Tx, conv_id: bytes) -> Conversation | None:
    row = tx.one(f"SELECT {_CONV_COLS} FROM conversations WHERE conv_id = ?", (conv_id,))
    if row is None:
        return None
    members = tx.all(
        "SELECT user_id, role FROM conv_members WHERE conv_id = ? ORDER BY user_id", (conv_id,)
    )
    return Conversation(
        conv_id=bytes(row[0]),
        kind=int(row[1]),
        managed=bool(row[2]),
        name=None if row[3] is None else str(row[3]),
        epoch=int(row[4]),
        created_ms=int(row[5]),
        created_by=None if row[6] is None else str(row[6]),
        members=tuple((str(u), int(r)) for u, r in members),
    )


def _claim_fanout(
    tx: Tx, users: str, params: Sequence[object], exclude_pk: int, max_per_device: int
) -> tuple[list[Row], list[Row]]:
    """Claim a slot on every target device: (claimed (pk, user_id, device_id, seq), full
    (user_id, device_id)). ``users``/``params`` select the target users."""
    where = _TARGETS.format(users=users)
    full = tx.all(
        f"SELECT user_id, device_id FROM devices WHERE {where} AND mailbox_count >= ?",
        (exclude_pk, *params, max_per_device),
    )
    claimed = tx.all(
        "UPDATE devices SET next_seq = next_seq + 1, mailbox_count = mailbox_count + 1"
        f" WHERE {where} AND mailbox_count < ? RETURNING pk, user_id, device_id, next_seq - 1",
        (exclude_pk, *params, max_per_device),
    )
    return claimed, full


def _store_fanout(
    tx: Tx,
    claimed: Sequence[Row],
    message_id: bytes,
    payload: bytes,
    parts: Mapping[tuple[str, int], bytes],
    now_ms: int,
    urgent: bool = False,
) -> int | None:
    """Store the payload once and a mailbox row per claimed device; the payload's id."""
    if not claimed:
        return None
    row = tx.one(
        "INSERT INTO payloads (data, refs, urgent) VALUES (?, ?, ?) RETURNING id",
        (payload, len(claimed), int(urgent)),
    )
    assert row is not None
    payload_id = int(row[0])
    tx.executemany(
        "INSERT INTO mailbox (device_pk, seq, payload_id, message_id, part, server_ts_ms)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (pk, seq, payload_id, message_id, parts.get((str(uid), int(did)), b""), now_ms)
            for pk, uid, did, seq in claimed
        ],
    )
    return payload_id


def _deliveries(claimed: Sequence[Row]) -> tuple[tuple[str, int, int], ...]:
    return tuple((str(uid), int(did), int(seq)) for _pk, uid, did, seq in claimed)


def _enqueue_event(
    tx: Tx,
    user_ids: Sequence[str],
    exclude_pk: int,
    event: EventMessage,
    now_ms: int,
    max_per_device: int,
) -> FanOut:
    """Enqueue a server event to every receiving device of ``user_ids``."""
    claimed: list[Row] = []
    skipped = 0
    for i in range(0, len(user_ids), _IN_CHUNK):
        chunk = user_ids[i : i + _IN_CHUNK]
        got, full = _claim_fanout(
            tx, ", ".join("?" * len(chunk)), chunk, exclude_pk, max_per_device
        )
        claimed.extend(got)
        skipped += len(full)
    _store_fanout(tx, claimed, event.message_id, event.payload, {}, now_ms)
    result = EnqueueResult(False, now_ms, _deliveries(claimed), skipped)
    return FanOut(event.message_id, event.payload, result)


def _actor_pk(tx: Tx, actor: tuple[str, int] | None) -> int:
    return 0 if actor is None else _device_pk(tx, *actor)[0]  # pk 0 never exists


def _conv_target(conv_id: bytes) -> str:
    return conv_id.hex()


def put_roster(
    tx: Tx,
    change: RosterChange,
    expected_epoch: int | None,
    managed: bool,
    name: str | None,
    actor: tuple[str, int] | None,
    changed: EventMessage,
    removed: EventMessage,
    now_ms: int,
    max_per_device: int,
    audit: AuditNote | None = None,
) -> RosterApplied:
    """Create a conversation or apply its next roster (see Store.put_roster)."""
    conv_id = change.conv_id
    if not 1 <= change.epoch <= MAX_INT64:
        raise Conflict(f"roster epoch {change.epoch} is out of the storable range")
    current = _conversation(tx, conv_id)
    if expected_epoch is None:
        if current is not None:
            raise Conflict(f"conversation {conv_id.hex()} already exists")
    elif current is None:
        raise NotFound(f"no conversation {conv_id.hex()}")
    elif current.managed != managed:
        raise Conflict(f"conversation {conv_id.hex()} is managed by someone else")
    elif current.epoch != expected_epoch:
        raise Conflict(
            f"conversation {conv_id.hex()} is at epoch {current.epoch}, not {expected_epoch}"
        )
    new_ids = [uid for uid, _role in change.members]
    for i in range(0, len(new_ids), _IN_CHUNK):
        chunk = new_ids[i : i + _IN_CHUNK]
        rows = tx.all(
            f"SELECT user_id FROM users WHERE deleted = 0 AND user_id IN"
            f" ({', '.join('?' * len(chunk))})",
            chunk,
        )
        if len(rows) != len(chunk):
            known = {str(r[0]) for r in rows}
            missing = next(u for u in chunk if u not in known)
            raise NotFound(f"no user {display_user(missing)}")
    if name is not None:
        taken = tx.one(
            "SELECT conv_id FROM conversations WHERE name = ? AND conv_id <> ?", (name, conv_id)
        )
        if taken is not None:
            raise Conflict(f"a conversation named {name!r} exists already")
    if current is None:
        tx.execute(
            f"INSERT INTO conversations ({_CONV_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                conv_id,
                change.kind,
                int(managed),
                name,
                change.epoch,
                now_ms,
                None if actor is None or managed else actor[0],
            ),
        )
    else:
        tx.execute(
            "UPDATE conversations SET epoch = ?, name = ? WHERE conv_id = ?",
            (change.epoch, name, conv_id),
        )
    if not tx.execute(
        "INSERT INTO conv_rosters (conv_id, epoch, record, created_ms) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        (conv_id, change.epoch, change.record, now_ms),
    ):
        raise Conflict(f"conversation {conv_id.hex()} already has a roster {change.epoch}")
    old_roles = dict(current.members) if current is not None else {}
    new_roles = dict(change.members)
    gone = sorted(old_roles.keys() - new_roles.keys())
    tx.executemany(
        "DELETE FROM conv_members WHERE conv_id = ? AND user_id = ?", [(conv_id, u) for u in gone]
    )
    tx.executemany(
        "INSERT INTO conv_members (conv_id, user_id, role) VALUES (?, ?, ?)"
        " ON CONFLICT (conv_id, user_id) DO UPDATE SET role = excluded.role",
        [(conv_id, u, r) for u, r in change.members if old_roles.get(u) != r],
    )
    exclude = _actor_pk(tx, actor)
    events = (
        _enqueue_event(tx, new_ids, exclude, changed, now_ms, max_per_device),
        _enqueue_event(tx, gone, exclude, removed, now_ms, max_per_device),
    )
    if audit is not None:
        added = sorted(new_roles.keys() - old_roles.keys())
        extra: dict[str, Any] = {
            "kind": change.kind,
            "epoch": change.epoch,
            "members": len(new_ids),
            "added": [display_user(u) for u in added],
            "removed": [display_user(u) for u in gone],
            "admins": [display_user(u) for u, r in change.members if r == _ROLE_ADMIN],
        }
        if audit.target is None:
            audit = dataclasses.replace(audit, target=name or _conv_target(conv_id))
        _write_audit(tx, audit, extra={"conv_id": conv_id.hex(), **extra})
    conv = _conversation(tx, conv_id)
    assert conv is not None
    return RosterApplied(conv, events)


def get_conversation(tx: Tx, conv_id: bytes) -> Conversation | None:
    """The conversation with its members, or None."""
    return _conversation(tx, conv_id)


def get_rosters(tx: Tx, conv_id: bytes, since_epoch: int) -> list[bytes]:
    """RosterRecords after ``since_epoch``, ascending."""
    rows = tx.all(
        "SELECT record FROM conv_rosters WHERE conv_id = ? AND epoch > ? ORDER BY epoch",
        (conv_id, min(max(since_epoch, 0), MAX_INT64)),
    )
    return [bytes(r[0]) for r in rows]


def list_conversations(tx: Tx, user_id: str | None) -> list[ConversationSummary]:
    """Conversations with member counts, oldest first (of one user if given)."""
    where = ""
    params: tuple[str, ...] = ()
    if user_id is not None:
        where = " WHERE c.conv_id IN (SELECT conv_id FROM conv_members WHERE user_id = ?)"
        params = (user_id,)
    rows = tx.all(
        f"SELECT {', '.join('c.' + c for c in _CONV_COLS.split(', '))},"
        " (SELECT count(*) FROM conv_members m WHERE m.conv_id = c.conv_id)"
        f" FROM conversations c{where} ORDER BY c.created_ms, c.conv_id",
        params,
    )
    return [
        ConversationSummary(
            conv_id=bytes(r[0]),
            kind=int(r[1]),
            managed=bool(r[2]),
            name=None if r[3] is None else str(r[3]),
            epoch=int(r[4]),
            created_ms=int(r[5]),
            members=int(r[7]),
        )
        for r in rows
    ]


def delete_conversation(
    tx: Tx,
    conv_id: bytes,
    deleted: EventMessage,
    now_ms: int,
    max_per_device: int,
    audit: AuditNote | None = None,
) -> tuple[Conversation, FanOut]:
    """Tell the members, then forget the conversation, its membership and its rosters."""
    conv = _conversation(tx, conv_id)
    if conv is None:
        raise NotFound(f"no conversation {conv_id.hex()}")
    users, params = _MEMBERS_OF, (conv_id,)
    claimed, full = _claim_fanout(tx, users, params, 0, max_per_device)
    _store_fanout(tx, claimed, deleted.message_id, deleted.payload, {}, now_ms)
    event = FanOut(
        deleted.message_id,
        deleted.payload,
        EnqueueResult(False, now_ms, _deliveries(claimed), len(full)),
    )
    tx.execute("DELETE FROM conv_members WHERE conv_id = ?", (conv_id,))
    tx.execute("DELETE FROM conv_rosters WHERE conv_id = ?", (conv_id,))
    tx.execute("DELETE FROM conversations WHERE conv_id = ?", (conv_id,))
    if audit is not None:
        if audit.target is None:
            audit = dataclasses.replace(audit, target=conv.name or _conv_target(conv_id))
        _write_audit(
            tx,
            audit,
            extra={"conv_id": conv_id.hex(), "epoch": conv.epoch, "members": len(conv.members)},
        )
    return conv, event


def enqueue_conv(
    tx: Tx,
    sender: tuple[str, int],
    message_id: bytes,
    conv_id: bytes,
    payload: bytes,
    parts: Sequence[Recipient],
    blob_ids: Sequence[bytes],
    now_ms: int,
    max_per_device: int,
    urgent: bool = False,
) -> EnqueueResult:
    """Store one conversation message and fan it out (see Store.enqueue_conv)."""
    uid, _did = sender
    row = tx.one("SELECT kind FROM conversations WHERE conv_id = ?", (conv_id,))
    if row is None:
        raise NotFound(f"no conversation {conv_id.hex()}")
    member = tx.one(
        "SELECT role FROM conv_members WHERE conv_id = ? AND user_id = ?", (conv_id, uid)
    )
    if member is None:
        raise Forbidden("you are not a member of this conversation")
    if int(row[0]) == _KIND_CHANNEL and int(member[0]) != _ROLE_ADMIN:
        raise Forbidden("only the admins of a channel post to it")
    by_device = {(r.user_id, r.device_id): r.part for r in parts}
    if len(by_device) != len(parts):
        raise ValueError("enqueue_conv got the same part device twice")
    key = dedup_key(sender, message_id)
    if not tx.execute(
        "INSERT INTO dedup (key, created_ms) VALUES (?, ?) ON CONFLICT DO NOTHING", (key, now_ms)
    ):
        dup = tx.one("SELECT created_ms FROM dedup WHERE key = ?", (key,))
        return EnqueueResult(True, now_ms if dup is None else int(dup[0]), ())
    sender_pk, _ = _device_pk(tx, *sender)
    users = (
        "SELECT m.user_id FROM conv_members m JOIN users u ON u.user_id = m.user_id"
        " WHERE m.conv_id = ? AND u.disabled = 0 AND u.deleted = 0"
    )
    claimed, full = _claim_fanout(tx, users, (conv_id,), sender_pk, max_per_device)
    if by_device:
        targets = {(str(r[1]), int(r[2])) for r in claimed}
        targets.update((str(r[0]), int(r[1])) for r in full)
        for r in parts:
            if (r.user_id, r.device_id) not in targets:
                raise UnknownRecipient(r.user_id, r.device_id)
    payload_id = _store_fanout(tx, claimed, message_id, payload, by_device, now_ms, urgent)
    if blob_ids and payload_id is not None:
        readers = sorted({str(r[1]) for r in claimed})
        attach_blobs(tx, uid, payload_id, readers, blob_ids, now_ms)
    return EnqueueResult(False, now_ms, _deliveries(claimed), len(full))


def put_org_key(
    tx: Tx, version: int, fp: bytes, record: bytes, now_ms: int, audit: AuditNote | None = None
) -> None:
    """Append the next OrgKeyRecord."""
    row = tx.one("SELECT max(version) FROM org_keys")
    newest = 0 if row is None or row[0] is None else int(row[0])
    if version != newest + 1:
        raise RecordStale(
            f"organisation key version {version} does not follow the stored version {newest}"
        )
    tx.execute(
        "INSERT INTO org_keys (version, fp, record, created_ms) VALUES (?, ?, ?, ?)",
        (version, fp, record, now_ms),
    )
    if audit is not None:
        _write_audit(tx, audit, extra={"version": version})


def list_org_keys(tx: Tx) -> list[bytes]:
    """Every OrgKeyRecord by version."""
    return [bytes(r[0]) for r in tx.all("SELECT record FROM org_keys ORDER BY version")]


# -- blobs -----------------------------------------------------------------------------------
# Attachment metadata (see Store.blob_start); the bytes are files the server layer manages.
# Invariant: ``refs`` = the blob's blob_refs rows; ``unref_ms`` is NULL exactly while refs > 0
# or the upload is unfinished. Rows go first, files after (the collector): a message can
# never reference a blob whose file is already gone.

_BLOB_COLS = "blob_id, owner, size, received, complete"


def _blob(row: Row) -> BlobInfo:
    return BlobInfo(bytes(row[0]), str(row[1]), int(row[2]), int(row[3]), bool(row[4]))


def _own_blob(tx: Tx, user_id: str, blob_id: bytes) -> BlobInfo:
    row = tx.one(
        f"SELECT {_BLOB_COLS} FROM blobs WHERE blob_id = ? AND owner = ?", (blob_id, user_id)
    )
    if row is None:
        raise BlobNotFound("no such upload")
    return _blob(row)


def blob_start(
    tx: Tx,
    user_id: str,
    blob_id: bytes,
    size: int,
    now_ms: int,
    max_bytes: int,
    quota_bytes: int,
) -> BlobInfo:
    """Begin or resume an upload (see Store.blob_start)."""
    if size > max_bytes:
        raise BlobTooLarge(f"blob of {size} bytes exceeds the limit of {max_bytes} bytes")
    if size < 1:
        raise ValueError("a blob has at least one byte")
    row = tx.one(f"SELECT {_BLOB_COLS} FROM blobs WHERE blob_id = ?", (blob_id,))
    if row is not None:
        info = _blob(row)
        if info.owner != user_id or info.size != size:
            raise Conflict("this blob ID is taken (another size or another user); pick a new one")
        return info
    used_row = tx.one("SELECT coalesce(sum(size), 0) FROM blobs WHERE owner = ?", (user_id,))
    used = 0 if used_row is None else int(used_row[0])
    if used + size > quota_bytes:
        raise QuotaExceeded(used, quota_bytes)
    tx.execute(
        "INSERT INTO blobs (blob_id, owner, size, created_ms, touched_ms) VALUES (?, ?, ?, ?, ?)",
        (blob_id, user_id, size, now_ms, now_ms),
    )
    return BlobInfo(blob_id, user_id, size, 0, False)


def get_blob(tx: Tx, user_id: str, blob_id: bytes) -> BlobInfo | None:
    """The blob if the user uploaded it or was granted it (complete only)."""
    row = tx.one(
        f"SELECT {_BLOB_COLS} FROM blobs b WHERE blob_id = ? AND (owner = ? OR (complete = 1"
        " AND EXISTS (SELECT 1 FROM blob_grants g WHERE g.blob_id = b.blob_id AND g.user_id = ?)))",
        (blob_id, user_id, user_id),
    )
    return None if row is None else _blob(row)


def blob_received(
    tx: Tx, user_id: str, blob_id: bytes, offset: int, length: int, now_ms: int
) -> BlobInfo:
    """Record a chunk of an unfinished upload (see Store.blob_received)."""
    row = tx.one(
        "UPDATE blobs SET received = received + ?, touched_ms = ? WHERE blob_id = ?"
        " AND owner = ? AND complete = 0 AND received = ? AND received + ? <= size"
        f" RETURNING {_BLOB_COLS}",
        (length, now_ms, blob_id, user_id, min(offset, MAX_INT64), length),
    )
    if row is not None:
        return _blob(row)
    info = _own_blob(tx, user_id, blob_id)
    if info.complete:
        raise BlobNotFound("the upload is already complete")
    if info.received != offset:
        raise Conflict(f"chunk at offset {offset}, but the upload continues at {info.received}")
    raise ValueError(
        f"chunk of {length} bytes at offset {offset} runs past the blob's {info.size} bytes"
    )


def blob_rewind(tx: Tx, user_id: str, blob_id: bytes, received: int, now_ms: int) -> None:
    """Lower an unfinished upload's progress (see Store.blob_rewind)."""
    tx.execute(
        "UPDATE blobs SET received = ?, touched_ms = ?"
        " WHERE blob_id = ? AND owner = ? AND complete = 0 AND received > ?",
        (received, now_ms, blob_id, user_id, received),
    )


def blob_complete(tx: Tx, user_id: str, blob_id: bytes, now_ms: int) -> BlobInfo:
    """Mark a fully received upload complete and unreferenced (see Store.blob_complete)."""
    row = tx.one(
        "UPDATE blobs SET complete = 1, touched_ms = ?, unref_ms = ?"
        " WHERE blob_id = ? AND owner = ? AND complete = 0 AND received = size"
        f" RETURNING {_BLOB_COLS}",
        (now_ms, now_ms, blob_id, user_id),
    )
    if row is not None:
        return _blob(row)
    info = _own_blob(tx, user_id, blob_id)
    if not info.complete:
        raise ValueError(f"upload incomplete: {info.received} of {info.size} bytes received")
    return info


def blob_discard(tx: Tx, user_id: str, blob_id: bytes) -> None:
    """Forget an unfinished upload."""
    tx.execute(
        "DELETE FROM blobs WHERE blob_id = ? AND owner = ? AND complete = 0", (blob_id, user_id)
    )


def attach_blobs(
    tx: Tx,
    sender_user_id: str,
    payload_id: int,
    reader_user_ids: Iterable[str],
    blob_ids: Iterable[bytes],
    now_ms: int,
) -> None:
    """Reference blobs from a new payload and grant them to its readers.

    Each blob must be complete and uploaded by or granted to the sender, else BlobNotFound
    (the same answer whether it is unknown, unfinished or someone else's). Runs inside the
    transaction that stores the payload (SEND_BLOBS, CONV_SEND); ``now_ms`` is unused so far.
    """
    readers = sorted(set(reader_user_ids))
    for blob_id in dict.fromkeys(blob_ids):
        row = tx.one(
            "SELECT owner FROM blobs b WHERE blob_id = ? AND complete = 1 AND (owner = ? OR"
            " EXISTS (SELECT 1 FROM blob_grants g WHERE g.blob_id = b.blob_id AND g.user_id = ?))",
            (blob_id, sender_user_id, sender_user_id),
        )
        if row is None:
            raise BlobNotFound(
                f"attachment {blob_id.hex()} is unknown, unfinished or not accessible"
            )
        tx.executemany(
            "INSERT INTO blob_grants (blob_id, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(blob_id, user) for user in readers if user != row[0]],
        )
        tx.execute(
            "INSERT INTO blob_refs (payload_id, blob_id) VALUES (?, ?)", (payload_id, blob_id)
        )
        tx.execute(
            "UPDATE blobs SET refs = refs + 1, unref_ms = NULL WHERE blob_id = ?", (blob_id,)
        )


def _release_blob_refs(tx: Tx, payload_ids: Sequence[int], now_ms: int) -> None:
    """The freed payloads no longer reference their blobs; those left without a reference
    start their expiry at ``now_ms``."""
    for chunk in _chunks(payload_ids):
        marks = ", ".join("?" * len(chunk))
        rows = tx.all(
            f"DELETE FROM blob_refs WHERE payload_id IN ({marks}) RETURNING blob_id", chunk
        )
        if rows:
            counts = Counter(bytes(r[0]) for r in rows)
            tx.executemany(
                "UPDATE blobs SET refs = refs - ?,"
                " unref_ms = CASE WHEN refs <= ? THEN ? ELSE unref_ms END WHERE blob_id = ?",
                [(n, n, now_ms, blob_id) for blob_id, n in counts.items()],
            )


def _release_user_blobs(tx: Tx, user_id: str) -> None:
    """A deleted user: drop its grants; its unfinished uploads and unreferenced blobs are
    due for the collector at once (referenced ones stay while the messages do)."""
    tx.execute("DELETE FROM blob_grants WHERE user_id = ?", (user_id,))
    tx.execute("UPDATE blobs SET touched_ms = 0 WHERE owner = ? AND complete = 0", (user_id,))
    tx.execute(
        "UPDATE blobs SET unref_ms = 0 WHERE owner = ? AND complete = 1 AND refs = 0", (user_id,)
    )


def collect_blobs(
    tx: Tx, now_ms: int, ttl_ms: int, partial_ttl_ms: int, limit: int
) -> list[tuple[bytes, bool]]:
    """Delete due blobs (see Store.collect_blobs); return (blob_id, complete) of each."""
    due = [
        (bytes(r[0]), True)
        for r in tx.all(
            "SELECT blob_id FROM blobs WHERE unref_ms < ? AND refs = 0 LIMIT ?",
            (now_ms - ttl_ms, limit),
        )
    ]
    due += [
        (bytes(r[0]), False)
        for r in tx.all(
            "SELECT blob_id FROM blobs WHERE complete = 0 AND touched_ms < ? LIMIT ?",
            (now_ms - partial_ttl_ms, limit - len(due)),
        )
    ]
    for table in ("blob_grants", "blobs"):
        tx.executemany(f"DELETE FROM {table} WHERE blob_id = ?", [(b,) for b, _ in due])
    return due
