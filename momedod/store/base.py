"""Store types and the engine-neutral interface.

Everything above the store (server, admin) talks to a :class:`Store` and catches
:class:`StoreError`. Nothing here knows which database is underneath: the SQLite engine
lives in :mod:`momedod.store.sqlite`, a PostgreSQL engine can implement the same class.
All times are passed in as milliseconds since the Unix epoch; the store never reads a clock.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "AUDIT_FORBIDDEN_KEYS",
    "AUDIT_PERSONAL_KEYS",
    "AuditEntry",
    "AuditNote",
    "BackupInfo",
    "Device",
    "DeviceRevoked",
    "EnqueueResult",
    "InvalidCursor",
    "Invite",
    "InviteExpired",
    "InviteInvalid",
    "MailboxEntry",
    "MailboxFull",
    "NotFound",
    "Recipient",
    "RecordStale",
    "StorageFull",
    "Store",
    "StoreError",
    "StoreStats",
    "UnknownRecipient",
    "User",
    "UserDisabled",
    "UserPage",
    "UserQuery",
    "UserSummary",
    "display_device",
    "display_user",
]


@dataclass(frozen=True, slots=True)
class User:
    """A user account. ``deleted`` users are tombstones that keep their ID reserved."""

    user_id: str
    name: str
    created_ms: int
    disabled: bool
    deleted: bool


@dataclass(frozen=True, slots=True)
class Device:
    """One device of a user; ``device_id`` counts from 1 per user and is never reused."""

    user_id: str
    device_id: int
    name: str
    transport_pub: bytes
    created_ms: int
    revoked_ms: int | None
    last_seen_ms: int | None
    mailbox_count: int

    @property
    def active(self) -> bool:
        """True unless the device has been revoked."""
        return self.revoked_ms is None


@dataclass(frozen=True, slots=True)
class Invite:
    """A one-time enrollment code for a user. ``code`` is only known when it is created."""

    user_id: str
    code: str
    created_ms: int
    expires_ms: int


@dataclass(frozen=True, slots=True)
class Recipient:
    """One recipient device of a message and its per-device ``part`` (e.g. a wrapped key)."""

    user_id: str
    device_id: int
    part: bytes


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """Outcome of :meth:`Store.enqueue`.

    ``deliveries`` names, in the order of the recipients given, each recipient device and the
    seq its new mailbox entry got: ``(user_id, device_id, seq)``. It is empty for a duplicate,
    and ``server_ts_ms`` is then the timestamp of the original submission.
    """

    duplicate: bool
    server_ts_ms: int
    deliveries: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class MailboxEntry:
    """A stored message waiting in a device's mailbox."""

    seq: int
    message_id: bytes
    server_ts_ms: int
    payload: bytes
    part: bytes


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counts for operators: non-deleted users, active devices, queued entries, payloads."""

    users: int
    devices: int
    mailbox_entries: int
    payloads: int
    oldest_entry_ms: int | None = None  # server_ts_ms of the oldest waiting entry


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """What :meth:`Store.backup` wrote, with counts read back from the copy itself.

    ``files`` are the paths written, relative to the backup directory and ``/``-separated
    (SQLite: just ``momedo.sqlite3``); ``bytes`` is their total size. ``users``, ``devices``
    and ``mailbox_entries`` count as :class:`StoreStats` does.
    """

    engine: str
    schema_version: int
    files: tuple[str, ...]
    bytes: int
    users: int
    devices: int
    mailbox_entries: int


@dataclass(frozen=True, slots=True)
class AuditNote:
    """An audit-log entry to write in the same transaction as the change it records.

    ``uid`` is the Unix user that asked for the change (None if unknown). ``target`` and
    ``user_id`` may be left None for a change about one user: the store fills them in (the
    user's display ID and canonical ID). ``detail`` must be JSON-serialisable and hold no
    secrets; keys in :data:`AUDIT_FORBIDDEN_KEYS` are dropped by the store whatever happens.
    """

    ts_ms: int
    uid: int | None
    action: str
    target: str | None = None
    user_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


AUDIT_FORBIDDEN_KEYS = frozenset(
    {"code", "invite_code", "link", "invite", "key", "private_key", "seed", "transport_pub"}
)
"""Detail keys never stored in the audit log (invite codes, links and keys are secrets)."""

AUDIT_PERSONAL_KEYS = frozenset({"name", "old_name"})
"""Detail keys that hold a user's name: removed from the user's entries when it is deleted."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of the audit log; ``id`` grows with every entry (newer entries, larger ids)."""

    id: int
    ts_ms: int
    uid: int | None
    action: str
    target: str
    user_id: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UserQuery:
    """Filters for :meth:`Store.find_users`; all given conditions must hold.

    ``search`` matches a case-insensitive substring of the name; ``id_fragment`` a substring
    of the canonical user ID. If both are given, a user matches if either does.
    ``without_active_device``: no device that is not revoked (never enrolled, or every device
    revoked). ``inactive_since_ms``: no device seen at or after that time, counting the
    user's creation as activity (a new user is not inactive).
    """

    search: str | None = None
    id_fragment: str | None = None
    disabled: bool | None = None
    without_active_device: bool = False
    inactive_since_ms: int | None = None


@dataclass(frozen=True, slots=True)
class UserSummary:
    """A user with device aggregates: active and all devices, last seen, queued messages."""

    user: User
    active_devices: int
    devices: int
    last_seen_ms: int | None
    mailbox: int


@dataclass(frozen=True, slots=True)
class UserPage:
    """One page of :meth:`Store.find_users`; ``next`` continues after it (None: the last)."""

    users: tuple[UserSummary, ...]
    next: str | None


def display_user(user_id: str) -> str:
    """Operator-readable user ID, e.g. ``M8N2-2HTR`` for the canonical ``M8N22HTR``."""
    return f"{user_id[:4]}-{user_id[4:]}" if len(user_id) == 8 else user_id


def display_device(user_id: str, device_id: int) -> str:
    """Operator-readable device address, e.g. ``M8N2-2HTR/3``."""
    return f"{display_user(user_id)}/{device_id}"


class StoreError(Exception):
    """Base class of every store failure; the message is meant for an operator."""


class InvalidCursor(StoreError):
    """A pagination cursor that this store did not hand out (or that is malformed)."""


class NotFound(StoreError):
    """Unknown user or device (deleted users count as unknown)."""


class InviteInvalid(StoreError):
    """The invite code is unknown or was already used."""


class InviteExpired(StoreError):
    """The invite code is past its expiry time."""


class UserDisabled(StoreError):
    """The user has been disabled by an operator."""


class DeviceRevoked(StoreError):
    """The device has been revoked."""


class UnknownRecipient(StoreError):
    """A recipient device does not exist, is revoked, or its user is disabled or deleted."""

    def __init__(self, user_id: str, device_id: int) -> None:
        super().__init__(f"unknown recipient device {display_device(user_id, device_id)}")
        self.user_id = user_id
        self.device_id = device_id


class MailboxFull(StoreError):
    """A recipient device's mailbox already holds the maximum number of entries."""

    def __init__(self, user_id: str, device_id: int, limit: int) -> None:
        super().__init__(
            f"mailbox of device {display_device(user_id, device_id)} is full ({limit} entries)"
        )
        self.user_id = user_id
        self.device_id = device_id
        self.limit = limit


class RecordStale(StoreError):
    """A key record is a duplicate or not newer than the stored one."""


class StorageFull(StoreError):
    """The storage medium is full (e.g. SQLITE_FULL); the operation was not stored."""


class StoreObserver(Protocol):
    """Receives timings for metrics; called from the event loop and the writer thread."""

    def operation(self, name: str, seconds: float) -> None:
        """A store call named ``name`` took ``seconds`` as its caller saw it."""

    def batch(self, size: int) -> None:
        """One write transaction committed ``size`` operations (group commit)."""


class Store(abc.ABC):
    """The storage interface of momedod.

    Every method is a coroutine. A write returns only after it is durably committed; if the
    calling task is cancelled while waiting, the write may still commit (its result is lost).
    """

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish queued writes and release the database. Idempotent."""

    # -- users and invites ---------------------------------------------------------------

    @abc.abstractmethod
    async def create_user(
        self, name: str, now_ms: int, invite_ttl_ms: int, *, audit: AuditNote | None = None
    ) -> tuple[User, Invite]:
        """Create a user with a fresh, never-used ID and its first invite.

        ``audit`` (here and in the other changes) is written in the same transaction."""

    @abc.abstractmethod
    async def get_user(self, user_id: str) -> User | None:
        """Return the user, or None if unknown or deleted."""

    @abc.abstractmethod
    async def list_users(self) -> list[User]:
        """All users that are not deleted, in creation order."""

    @abc.abstractmethod
    async def set_user_disabled(
        self, user_id: str, disabled: bool, *, audit: AuditNote | None = None
    ) -> User:
        """Disable or enable a user. Raises NotFound."""

    @abc.abstractmethod
    async def rename_user(self, user_id: str, name: str, *, audit: AuditNote | None = None) -> User:
        """Give a user a new name. Raises NotFound."""

    @abc.abstractmethod
    async def delete_user(
        self, user_id: str, now_ms: int | None = None, *, audit: AuditNote | None = None
    ) -> None:
        """Delete a user: revoke its devices, drop their mailboxes, prekeys, the user's key
        records and invites, and keep a tombstone so the ID is never reused. Raises NotFound.
        ``now_ms`` is the revocation time recorded on the devices (default: wall clock).
        The user's name is also removed from its audit-log entries."""

    @abc.abstractmethod
    async def new_invite(
        self, user_id: str, now_ms: int, ttl_ms: int, *, audit: AuditNote | None = None
    ) -> Invite:
        """Create a new invite for the user; older unused invites stop working. NotFound."""

    @abc.abstractmethod
    async def bulk_invites(
        self,
        without_active_device: bool,
        now_ms: int,
        ttl_ms: int,
        *,
        audit: AuditNote | None = None,
    ) -> list[tuple[User, Invite]]:
        """A new invite for every enabled user (only those without an active device if
        ``without_active_device``), in creation order, all in one transaction; each user's
        older unused invites stop working. ``audit`` is written once per invited user."""

    @abc.abstractmethod
    async def find_users(
        self, query: UserQuery, *, after: str | None = None, limit: int = 100
    ) -> UserPage:
        """Up to ``limit`` non-deleted users matching ``query`` in creation order, with
        device aggregates. ``after`` is the ``next`` of the previous page; a cursor stays
        valid while users are added or deleted. Raises InvalidCursor."""

    @abc.abstractmethod
    async def redeem_invite(
        self, code: str, transport_pub: bytes, device_name: str, now_ms: int
    ) -> Device:
        """Use an invite: mark it used and create the user's next device.

        Raises InviteInvalid (unknown or used), InviteExpired or UserDisabled.
        """

    # -- devices -------------------------------------------------------------------------

    @abc.abstractmethod
    async def get_device(self, user_id: str, device_id: int) -> Device | None:
        """Return the device (revoked ones included), or None if it or its user is unknown."""

    @abc.abstractmethod
    async def list_devices(self, user_id: str) -> list[Device]:
        """All devices of the user, revoked ones included, by device_id. Raises NotFound."""

    @abc.abstractmethod
    async def revoke_device(
        self, user_id: str, device_id: int, now_ms: int, *, audit: AuditNote | None = None
    ) -> Device:
        """Revoke a device and delete its mailbox and prekeys. Raises NotFound.

        Revoking an already revoked device keeps its original revocation time.
        """

    @abc.abstractmethod
    async def touch_device(self, user_id: str, device_id: int, now_ms: int) -> None:
        """Record that the device was seen now. Raises NotFound."""

    # -- mailboxes -----------------------------------------------------------------------

    @abc.abstractmethod
    async def enqueue(
        self,
        sender: tuple[str, int],
        message_id: bytes,
        payload: bytes,
        recipients: Sequence[Recipient],
        now_ms: int,
        max_per_device: int,
    ) -> EnqueueResult:
        """Store a message for every recipient device, all or nothing.

        The payload is stored once and shared by all recipients; each recipient device gets
        the next value of its own sequence counter. A repeat of the same ``message_id`` by
        the same sender device (within the mailbox TTL) stores nothing and returns
        ``duplicate=True``. Raises UnknownRecipient, MailboxFull, or ValueError for an empty
        or repeated recipient list.
        """

    @abc.abstractmethod
    async def fetch(
        self, user_id: str, device_id: int, after_seq: int, limit: int
    ) -> list[MailboxEntry]:
        """Up to ``limit`` mailbox entries with seq > ``after_seq``, ascending. NotFound."""

    @abc.abstractmethod
    async def ack(self, user_id: str, device_id: int, seqs: Sequence[int]) -> int:
        """Delete the given entries (unknown seqs are ignored); return how many were removed.

        Payloads no longer referenced by any mailbox are freed. Raises NotFound.
        """

    @abc.abstractmethod
    async def expire(self, now_ms: int, ttl_ms: int) -> int:
        """Drop mailbox entries and dedup keys older than ``ttl_ms``; return entries dropped."""

    # -- key directory -------------------------------------------------------------------

    @abc.abstractmethod
    async def put_identity(self, user_id: str, record: bytes, now_ms: int) -> None:
        """Append an identity record. RecordStale if identical bytes are stored; NotFound."""

    @abc.abstractmethod
    async def put_device_list(self, user_id: str, version: int, record: bytes, now_ms: int) -> None:
        """Append a device list. RecordStale unless ``version`` is above the latest; NotFound."""

    @abc.abstractmethod
    async def put_prekey(
        self,
        user_id: str,
        device_id: int,
        suite: int,
        kind: int,
        key_id: int,
        record: bytes,
        now_ms: int,
    ) -> None:
        """Store a prekey record: kind 1 (SPK) replaces the current SPK of (device, suite);
        kind 2 (OTPK) joins the pool (the same key_id again: RecordStale).
        Raises NotFound, DeviceRevoked, or ValueError for another kind."""

    @abc.abstractmethod
    async def get_records(self, user_id: str) -> list[bytes]:
        """Identity records in upload order, device lists by version, then the current SPK
        of every active device (by device_id, suite). Never OTPKs. Raises NotFound."""

    @abc.abstractmethod
    async def claim_prekey(self, user_id: str, device_id: int, suite: int) -> bytes | None:
        """Remove and return the oldest OTPK of (device, suite), or None. Raises NotFound."""

    @abc.abstractmethod
    async def count_prekeys(self, user_id: str, device_id: int, suite: int) -> int:
        """Number of unclaimed OTPKs of (device, suite). Raises NotFound."""

    @abc.abstractmethod
    async def stats(self) -> StoreStats:
        """Counts for the operator's server overview."""

    @abc.abstractmethod
    async def disk_usage(self) -> int:
        """Bytes the store's files take on disk (for SQLite: the database, WAL and SHM)."""

    # -- audit log -----------------------------------------------------------------------

    @abc.abstractmethod
    async def add_audit(self, note: AuditNote) -> int:
        """Append an audit entry on its own (for actions that change nothing in the store,
        such as a backup); return its id. Changes pass ``audit=`` to their method instead."""

    @abc.abstractmethod
    async def list_audit(
        self,
        *,
        after_id: int | None = None,
        before_id: int | None = None,
        limit: int = 100,
        user_id: str | None = None,
        action: str | None = None,
    ) -> list[AuditEntry]:
        """Up to ``limit`` audit entries: with ``after_id`` those with a larger id, oldest
        first; otherwise the newest ones (below ``before_id`` if given), newest first.
        ``user_id`` (canonical) keeps only entries about that user; ``action`` only that
        action, or every action starting with it if it ends in ``.`` (``user.``)."""

    # -- backup --------------------------------------------------------------------------

    @abc.abstractmethod
    async def backup(self, dest_dir: Path) -> BackupInfo:
        """Write a consistent snapshot of everything in the store into ``dest_dir``.

        The snapshot holds every write that had committed when the call began and none that
        was half done: restored, it is the store as of one instant. The store keeps serving
        reads and writes meanwhile. ``dest_dir`` must exist; the engine creates its files in
        it (mode 0600, durably on disk when this returns) and never overwrites one. Files
        outside the database (TLS material, blobs) and the manifest are the caller's business.
        Raises StoreError (nothing usable is left behind). If the caller is cancelled the
        copy is abandoned and removed, possibly shortly after the cancellation.
        """
