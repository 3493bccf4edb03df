"""Store types and the engine-neutral interface.

Everything above the store (server, admin) talks to a :class:`Store` and catches
:class:`StoreError`. Nothing here knows which database is underneath: the SQLite engine
lives in :mod:`momedod.store.sqlite`, a PostgreSQL engine can implement the same class.
All times are passed in as milliseconds since the Unix epoch; the store never reads a clock.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "AUDIT_FORBIDDEN_KEYS",
    "AUDIT_PERSONAL_KEYS",
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
    external_id: str | None = None  # the ID in the organisation's own records (CSV import)
    bot: bool = False  # an integration account run by ``momedo bridge`` (operator's flag)


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
    skipped_full: int = 0  # conversation fan-out: devices skipped because their mailbox is full


@dataclass(frozen=True, slots=True)
class PushTarget:
    """Where the server sends a device's wake-ups (see :meth:`Store.set_push_target`)."""

    user_id: str
    device_id: int
    kind: int  # 1: UnifiedPush endpoint URL, 2: token for the configured gateway
    device_kind: int  # 0: desktop, 1: mobile
    target: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class MailboxEntry:
    """A stored message waiting in a device's mailbox."""

    seq: int
    message_id: bytes
    server_ts_ms: int
    payload: bytes
    part: bytes
    urgent: bool = False  # sent as urgent (passes quiet hours)


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counts for operators: non-deleted users, active devices, queued entries, payloads."""

    users: int
    devices: int
    mailbox_entries: int
    payloads: int
    oldest_entry_ms: int | None = None  # server_ts_ms of the oldest waiting entry
    blobs: int = 0  # complete attachment blobs
    blob_bytes: int = 0  # bytes of all blobs, unfinished uploads included


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

AUDIT_PERSONAL_KEYS = frozenset({"name", "old_name", "external_id"})
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

    ``search`` matches a case-insensitive substring of the name, or the whole external_id
    (ignoring case); ``id_fragment`` a substring of the canonical user ID. If both are
    given, a user matches if either does.
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
class ImportRow:
    """One row of a bulk import (:meth:`Store.import_users`): a name (already checked) and
    the optional ID of the person in the organisation's own records."""

    name: str
    external_id: str | None = None


@dataclass(frozen=True, slots=True)
class ImportedUser:
    """The outcome of one :class:`ImportRow`: the user it matched or created, whether it was
    ``created`` (then ``invite`` is its first invite, else None), and whether the row's
    external_id was newly stored on a user that was matched by name (``linked``)."""

    user: User
    created: bool
    invite: Invite | None
    linked: bool = False


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


# -- conversations ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Conversation:
    """A group or channel as the server knows it.

    ``kind`` 1 group, 2 channel; ``managed``: organisation-managed (roster signed by the
    organisation key). ``name`` is set for managed conversations only (unique; the roster
    title). ``members`` is the server's membership, ``(user_id, role)`` by user_id (role 1 =
    admin), always the members of the newest roster (``epoch``).
    """

    conv_id: bytes
    kind: int
    managed: bool
    name: str | None
    epoch: int
    created_ms: int
    created_by: str | None  # the creating user; None for managed conversations
    members: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """A conversation in a listing, with its member count instead of the members."""

    conv_id: bytes
    kind: int
    managed: bool
    name: str | None
    epoch: int
    created_ms: int
    members: int


@dataclass(frozen=True, slots=True)
class RosterChange:
    """A new roster of a conversation, as the caller parsed it from the RosterRecord
    (``record``): ``members`` ascending ``(user_id, role)``, ``title`` the roster's title."""

    conv_id: bytes
    epoch: int
    kind: int
    members: tuple[tuple[str, int], ...]
    record: bytes


@dataclass(frozen=True, slots=True)
class EventMessage:
    """A server-made message (a ConvEvent) to enqueue: its random ID and its payload."""

    message_id: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class FanOut:
    """An event message as enqueued: ``result.deliveries`` got ``payload`` (empty parts)."""

    message_id: bytes
    payload: bytes
    result: EnqueueResult


@dataclass(frozen=True, slots=True)
class RosterApplied:
    """Outcome of :meth:`Store.put_roster`: the conversation now, and the events enqueued."""

    conversation: Conversation
    events: tuple[FanOut, ...]


# -- blobs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """An attachment blob's metadata (its bytes are files, see momedod.server.blobstore).

    ``received`` counts the bytes of an unfinished upload the store has recorded; ``complete``
    blobs have ``received == size``.
    """

    blob_id: bytes
    owner: str
    size: int
    received: int
    complete: bool


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


class Forbidden(StoreError):
    """The caller may not do this (e.g. post to a conversation it is not a member of, or to a
    channel it is not an admin of)."""


class Conflict(StoreError):
    """The change does not fit the current state (e.g. a roster whose epoch is not the
    successor of the stored one, or a conversation name that is taken)."""


class BlobNotFound(NotFound):
    """A blob is unknown, unfinished or not accessible to the user (one answer for all)."""


class BlobTooLarge(StoreError):
    """A blob is larger than the configured maximum."""


class QuotaExceeded(StoreError):
    """A new upload would take the user's blobs over their quota; ``used`` bytes so far."""

    def __init__(self, used: int, quota: int) -> None:
        super().__init__(f"blob quota of {quota} bytes exceeded ({used} bytes in use)")
        self.used = used
        self.quota = quota


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
    async def set_user_bot(
        self, user_id: str, bot: bool, *, audit: AuditNote | None = None
    ) -> User:
        """Mark a user as a bot (an integration account) or not. Raises NotFound."""

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
        user_ids: Collection[str] | None = None,
    ) -> list[tuple[User, Invite]]:
        """A new invite for every enabled user (only those without an active device if
        ``without_active_device``; only those in ``user_ids`` if given), in creation order,
        all in one transaction; each user's older unused invites stop working. ``audit`` is
        written once per invited user."""

    @abc.abstractmethod
    async def import_users(
        self,
        rows: Sequence[ImportRow],
        now_ms: int,
        invite_ttl_ms: int,
        *,
        audit: AuditNote | None = None,
    ) -> list[ImportedUser]:
        """Match or create a user for every row, all in one transaction; one result per
        row, in order.

        A row with an ``external_id`` matches the non-deleted user with that external_id.
        Every other row (none, or no user with it) matches by name: the k-th such row with a
        given name, in file order, matches the k-th oldest non-deleted user with exactly that
        name and no external_id (one not matched by another row); a row that carries an
        external_id stores it on the user it matched this way (``linked``). Rows that match
        nobody create a user with its first invite (as :meth:`create_user`). Matched users
        are not changed otherwise (not renamed, not enabled). ``audit`` is written once per
        created user (detail: ``name``, ``external_id``) and once per linked user (action
        ``user.link``); nothing when nothing changes. Raises ValueError if two rows carry the
        same external_id."""

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
        blob_ids: Sequence[bytes] = (),
        *,
        urgent: bool = False,
    ) -> EnqueueResult:
        """Store a message for every recipient device, all or nothing.

        ``urgent`` marks it as sent urgent (MailboxEntry.urgent; the caller checked that the
        sender may).

        The payload is stored once and shared by all recipients; each recipient device gets
        the next value of its own sequence counter. A repeat of the same ``message_id`` by
        the same sender device (within the mailbox TTL) stores nothing and returns
        ``duplicate=True``. ``blob_ids`` are attachments the message references: each must be
        complete and uploaded by or granted to the sender's user; every recipient user is
        granted it, and it stays while the payload does (see :meth:`blob_start`). Raises
        UnknownRecipient, MailboxFull, BlobNotFound, or ValueError for an empty or repeated
        recipient list.
        """

    @abc.abstractmethod
    async def fetch(
        self, user_id: str, device_id: int, after_seq: int, limit: int
    ) -> list[MailboxEntry]:
        """Up to ``limit`` mailbox entries with seq > ``after_seq``, ascending. NotFound."""

    @abc.abstractmethod
    async def ack(
        self, user_id: str, device_id: int, seqs: Sequence[int], now_ms: int | None = None
    ) -> int:
        """Delete the given entries (unknown seqs are ignored); return how many were removed.

        Payloads no longer referenced by any mailbox are freed (and with them their blob
        references, as of ``now_ms``, default: wall clock). Raises NotFound.
        """

    @abc.abstractmethod
    async def expire(self, now_ms: int, ttl_ms: int) -> int:
        """Drop mailbox entries and dedup keys older than ``ttl_ms``; return entries dropped.

        A gap of more than 180 days between ``now_ms`` and the newest stamp in the store is
        taken for a forward clock jump and caught up first (see :meth:`shift_clock`)."""

    @abc.abstractmethod
    async def shift_clock(self, shift_ms: int, before_ms: int) -> None:
        """The wall clock stepped forward by ``shift_ms``: move the stamps older than
        ``before_ms`` that expiry reads (mailbox, dedup keys, unused invites, last seen)
        forward by it, so nothing looks older than it is."""

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
        """Bytes the store takes on disk (SQLite: the database, WAL and SHM files;
        PostgreSQL: ``pg_database_size`` of its database)."""

    # -- conversations -------------------------------------------------------------------

    @abc.abstractmethod
    async def put_roster(
        self,
        change: RosterChange,
        *,
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
        """Create a conversation (``expected_epoch`` None) or change its roster, all at once.

        The roster is stored, the membership replaced by ``change.members`` and the epoch set;
        ``changed`` is enqueued to every active device of the new members and ``removed`` to
        those of the members it drops, except the ``actor`` device (None: an operator).
        Devices whose mailbox is full are skipped. ``name`` (managed conversations only) is
        set as given. Raises Conflict (the conversation exists / its epoch is not
        ``expected_epoch`` / the name is taken), NotFound (unknown conversation, or a member
        that is an unknown or deleted user; the message names it)."""

    @abc.abstractmethod
    async def get_conversation(self, conv_id: bytes) -> Conversation | None:
        """The conversation with its members, or None if unknown."""

    @abc.abstractmethod
    async def get_rosters(self, conv_id: bytes, since_epoch: int) -> list[bytes]:
        """The RosterRecords with epoch > ``since_epoch``, ascending (empty if unknown)."""

    @abc.abstractmethod
    async def list_conversations(self, user_id: str | None = None) -> list[ConversationSummary]:
        """Every conversation (``user_id`` given: those it is a member of), oldest first."""

    @abc.abstractmethod
    async def delete_conversation(
        self,
        conv_id: bytes,
        *,
        deleted: EventMessage,
        now_ms: int,
        max_per_device: int,
        audit: AuditNote | None = None,
    ) -> tuple[Conversation, FanOut]:
        """Delete a conversation with its membership and rosters; ``deleted`` is enqueued to
        every member device first. Raises NotFound."""

    @abc.abstractmethod
    async def enqueue_conv(
        self,
        sender: tuple[str, int],
        message_id: bytes,
        conv_id: bytes,
        payload: bytes,
        parts: Sequence[Recipient],
        blob_ids: Sequence[bytes],
        now_ms: int,
        max_per_device: int,
        *,
        urgent: bool = False,
    ) -> EnqueueResult:
        """Store a conversation message once and fan it out, all or nothing (``urgent``: as
        for :meth:`enqueue`).

        Recipients: every active device of every enabled member plus the sender's other
        active devices; a device named in ``parts`` gets its part, the others an empty one.
        Full mailboxes are skipped (``skipped_full``). Idempotent by message_id like
        :meth:`enqueue`. ``blob_ids`` are referenced by the payload and granted to the
        recipient users. Raises NotFound (unknown conversation, unusable blob), Forbidden
        (the sender's user is not a member; a channel: not an admin), UnknownRecipient (a
        part for a device that is not a recipient)."""

    @abc.abstractmethod
    async def put_org_key(
        self, version: int, fp: bytes, record: bytes, now_ms: int, *, audit: AuditNote | None = None
    ) -> None:
        """Append OrgKeyRecord ``version`` (the caller has verified the chain). RecordStale
        unless ``version`` is one more than the newest stored (1 for the first)."""

    @abc.abstractmethod
    async def list_org_keys(self) -> list[bytes]:
        """All OrgKeyRecords, ascending version."""

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

    # -- blobs ---------------------------------------------------------------------------
    # Theory: a blob's bytes are a file (momedod.server.blobstore); the store keeps who
    # uploaded it, how far the upload got, who may read it, and which payloads reference it.
    # A complete blob with no reference (never attached, or every referencing payload freed)
    # is removed by the collector ``ttl_ms`` after it lost its last reference; an unfinished
    # upload ``partial_ttl_ms`` after its last chunk.

    @abc.abstractmethod
    async def blob_start(
        self,
        user_id: str,
        blob_id: bytes,
        size: int,
        now_ms: int,
        *,
        max_bytes: int,
        quota_bytes: int,
    ) -> BlobInfo:
        """Begin an upload of ``size`` bytes, or return the state of the user's upload with
        this ID and size (resume; complete ones included). Raises BlobTooLarge above
        ``max_bytes``; QuotaExceeded if the user's blobs (complete and unfinished) plus
        ``size`` exceed ``quota_bytes``; Conflict if the ID exists with another owner or
        size."""

    @abc.abstractmethod
    async def get_blob(self, user_id: str, blob_id: bytes) -> BlobInfo | None:
        """The blob if ``user_id`` may see it: its uploader (any state), or a user granted
        it (complete blobs only); None otherwise."""

    @abc.abstractmethod
    async def blob_received(
        self, user_id: str, blob_id: bytes, offset: int, length: int, now_ms: int
    ) -> BlobInfo:
        """Record ``length`` more bytes of the user's unfinished upload at ``offset``.
        Raises BlobNotFound (unknown, not the user's, or complete), Conflict if ``offset``
        is not the recorded ``received`` (the message names it), ValueError if the bytes
        would run past the size."""

    @abc.abstractmethod
    async def blob_rewind(self, user_id: str, blob_id: bytes, received: int, now_ms: int) -> None:
        """Lower the recorded progress of the user's unfinished upload to ``received`` (the
        file holds less than recorded). A no-op if it is already at or below it."""

    @abc.abstractmethod
    async def blob_complete(self, user_id: str, blob_id: bytes, now_ms: int) -> BlobInfo:
        """Mark the user's fully received upload complete (unreferenced as of ``now_ms``).
        Raises BlobNotFound, ValueError if not all bytes were received."""

    @abc.abstractmethod
    async def blob_discard(self, user_id: str, blob_id: bytes) -> None:
        """Forget the user's unfinished upload (its file is the caller's business)."""

    @abc.abstractmethod
    async def collect_blobs(
        self, now_ms: int, ttl_ms: int, partial_ttl_ms: int, limit: int = 1000
    ) -> list[tuple[bytes, bool]]:
        """Delete up to ``limit`` blobs that are due: complete ones unreferenced since more
        than ``ttl_ms``, unfinished ones untouched for more than ``partial_ttl_ms``.
        Returns ``(blob_id, complete)`` of each; the caller removes their files. Call again
        while ``limit`` come back."""

    # -- push targets --------------------------------------------------------------------

    @abc.abstractmethod
    async def set_push_target(
        self,
        user_id: str,
        device_id: int,
        kind: int,
        device_kind: int,
        target: str,
        now_ms: int,
    ) -> None:
        """Set the device's push target, replacing an earlier one or a pending drop report.
        Raises NotFound for an unknown or revoked device."""

    @abc.abstractmethod
    async def clear_push_target(self, user_id: str, device_id: int) -> bool:
        """Remove the device's target; True if there was one. Raises NotFound."""

    @abc.abstractmethod
    async def get_push_target(self, user_id: str, device_id: int) -> PushTarget | None:
        """The device's usable target: None if none, dropped, or the device may not receive."""

    @abc.abstractmethod
    async def list_push_targets(self) -> tuple[list[PushTarget], list[tuple[str, int]]]:
        """All usable targets, and the devices whose dropped target is not yet reported."""

    @abc.abstractmethod
    async def drop_push_target(
        self, user_id: str, device_id: int, target: str, status: int, now_ms: int
    ) -> bool:
        """Give up on ``target`` after permanent failures (HTTP ``status``, 0 if none),
        keeping a report for the device; False if the device has another target by now."""

    @abc.abstractmethod
    async def take_push_dropped(self, user_id: str, device_id: int) -> tuple[int, int, int] | None:
        """The device's pending drop report ``(kind, status, dropped_ms)``, removing it."""

    # -- quiet hours and urgent messages ---------------------------------------------------

    @abc.abstractmethod
    async def set_urgent(
        self, *, user_id: str | None = None, conv_id: bytes | None = None, allowed: bool
    ) -> None:
        """Allow (or stop allowing) a user, or anyone who posts to a conversation, to send
        urgent messages."""

    @abc.abstractmethod
    async def may_send_urgent(self, user_id: str, conv_id: bytes | None) -> bool:
        """True if the user is allowed, or ``conv_id`` is given and allowed."""

    @abc.abstractmethod
    async def list_urgent(self) -> tuple[list[str], list[bytes]]:
        """The allowed users and conversations."""

    @abc.abstractmethod
    async def put_quiet_policy(self, name: str, spec: str, now_ms: int) -> None:
        """Add or replace an operator's quiet-hours policy (``spec`` a JSON object)."""

    @abc.abstractmethod
    async def delete_quiet_policy(self, name: str) -> bool:
        """Remove an operator's policy; False if there was none of that name."""

    @abc.abstractmethod
    async def list_quiet_policies(self) -> list[tuple[str, str]]:
        """``(name, spec)`` of every operator's policy, by name."""
