"""momedod's storage: the :class:`Store` interface, its types and errors, and ``open_store``.

Code above the store uses only what this package exports; it never assumes SQLite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from momedod.store.base import (
    AuditEntry,
    AuditNote,
    BackupInfo,
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
    PushTarget,
    QuotaExceeded,
    Recipient,
    RecordStale,
    RosterApplied,
    RosterChange,
    StorageFull,
    Store,
    StoreError,
    StoreObserver,
    StoreStats,
    UnknownRecipient,
    User,
    UserDisabled,
    UserPage,
    UserQuery,
    UserSummary,
)

if TYPE_CHECKING:
    from momedod.store.postgres import PostgresStore
    from momedod.store.sqlite import SQLiteStore

__all__ = [
    "ENGINES",
    "AuditEntry",
    "AuditNote",
    "BackupInfo",
    "BlobInfo",
    "BlobNotFound",
    "BlobTooLarge",
    "Conflict",
    "Conversation",
    "ConversationSummary",
    "Device",
    "DeviceRevoked",
    "EnqueueResult",
    "EventMessage",
    "FanOut",
    "Forbidden",
    "ImportRow",
    "ImportedUser",
    "InvalidCursor",
    "Invite",
    "InviteExpired",
    "InviteInvalid",
    "MailboxEntry",
    "MailboxFull",
    "NotFound",
    "PushTarget",
    "QuotaExceeded",
    "Recipient",
    "RecordStale",
    "RosterApplied",
    "RosterChange",
    "StorageFull",
    "Store",
    "StoreError",
    "StoreObserver",
    "StoreStats",
    "UnknownRecipient",
    "User",
    "UserDisabled",
    "UserPage",
    "UserQuery",
    "UserSummary",
    "open_store",
]

ENGINES = ("sqlite", "postgres")
"""Storage engines this build knows (``[storage] engine`` in the config)."""


@asynccontextmanager
async def open_store(
    engine: str,
    path: Path,
    *,
    dsn: str | None = None,
    pool_size: int = 10,
    new_user_id: Callable[[], str] | None = None,
    new_invite_code: Callable[[], str] | None = None,
    observer: StoreObserver | None = None,
) -> AsyncIterator[Store]:
    """Open the store of the state directory ``path`` (must run inside trio).

    ``async with open_store("sqlite", state_dir) as store: ...`` -- the store is closed
    (queued writes finished) when the block exits. ``engine="postgres"`` keeps the data in
    the database ``dsn`` (a libpq connection string) over ``pool_size`` connections; the
    state directory still holds blobs and TLS material. ``new_user_id``/``new_invite_code``
    replace the ID and invite-code generators (tests). Raises StoreError for an unknown
    engine or a database that cannot be opened.
    """
    store: SQLiteStore | PostgresStore
    if engine == "sqlite":
        from momedod.store.sqlite import SQLiteStore

        store = SQLiteStore(
            path, new_user_id=new_user_id, new_invite_code=new_invite_code, observer=observer
        )
    elif engine == "postgres":
        if not dsn:
            raise StoreError('the postgres storage engine needs a dsn ([storage] dsn = "...")')
        from momedod.store.postgres import PostgresStore

        store = PostgresStore(
            path,
            dsn,
            pool_size=pool_size,
            new_user_id=new_user_id,
            new_invite_code=new_invite_code,
            observer=observer,
        )
    else:
        raise StoreError(f"unknown storage engine {engine!r} (known: {', '.join(ENGINES)})")
    await store.open()
    try:
        yield store
    finally:
        await store.close()
