"""What every engine shares: the Store methods as thin wrappers around :mod:`momedod.store.txn`.

An engine subclasses :class:`TxStore` and supplies how a transaction function runs:
``_write`` (a read-write transaction, durably committed before it returns) and ``_read``
(a read-only transaction that sees one committed snapshot), plus the few methods that are
about the engine itself (``close``, ``disk_usage``, ``backup``). The business logic stays in
the transaction functions, the same for every engine.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Collection, Sequence
from typing import Concatenate, ParamSpec, TypeVar

from momedod.store import push, txn
from momedod.store.base import (
    AuditEntry,
    AuditNote,
    BlobInfo,
    Conversation,
    ConversationSummary,
    Device,
    EnqueueResult,
    EventMessage,
    FanOut,
    ImportedUser,
    ImportRow,
    Invite,
    MailboxEntry,
    PushTarget,
    Recipient,
    RosterApplied,
    RosterChange,
    Store,
    StoreStats,
    User,
    UserPage,
    UserQuery,
)
from momedod.store.txn import Tx

__all__ = ["EXPIRE_BATCH", "TxStore", "default_invite_code", "default_user_id"]

EXPIRE_BATCH = 1000  # rows per expire transaction, so sends interleave with a big purge

P = ParamSpec("P")
T = TypeVar("T")


def default_user_id() -> str:
    """A fresh user ID from :mod:`momedod.protocol.userid`."""
    from momedod.protocol.userid import generate

    return generate()


def default_invite_code() -> str:
    """A fresh invite code from :mod:`momedod.protocol.invite`."""
    from momedod.protocol.invite import generate_invite_code

    return generate_invite_code()


class TxStore(Store):
    """A :class:`Store` whose methods run :mod:`momedod.store.txn` functions.

    ``new_user_id`` / ``new_invite_code`` generate IDs and invite codes (default: the
    generators of :mod:`momedod.protocol`).
    """

    def __init__(
        self,
        *,
        new_user_id: Callable[[], str] | None = None,
        new_invite_code: Callable[[], str] | None = None,
    ) -> None:
        self._new_user_id = new_user_id or default_user_id
        self._new_invite_code = new_invite_code or default_invite_code

    @abc.abstractmethod
    async def _write(
        self, fn: Callable[Concatenate[Tx, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn(tx, *args, **kwargs)`` in a write transaction; return once committed."""

    @abc.abstractmethod
    async def _read(
        self, fn: Callable[Concatenate[Tx, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn(tx, *args, **kwargs)`` in a read-only transaction (one snapshot)."""

    # -- the Store interface: thin wrappers around the transaction functions --------------

    async def create_user(
        self, name: str, now_ms: int, invite_ttl_ms: int, *, audit: AuditNote | None = None
    ) -> tuple[User, Invite]:
        """See :meth:`Store.create_user`."""
        return await self._write(
            txn.create_user,
            name,
            now_ms,
            invite_ttl_ms,
            self._new_user_id,
            self._new_invite_code,
            audit,
        )

    async def get_user(self, user_id: str) -> User | None:
        """See :meth:`Store.get_user`."""
        return await self._read(txn.get_user, user_id)

    async def list_users(self) -> list[User]:
        """See :meth:`Store.list_users`."""
        return await self._read(txn.list_users)

    async def set_user_bot(
        self, user_id: str, bot: bool, *, audit: AuditNote | None = None
    ) -> User:
        """See :meth:`Store.set_user_bot`."""
        return await self._write(txn.set_user_bot, user_id, bot, audit)

    async def set_user_disabled(
        self, user_id: str, disabled: bool, *, audit: AuditNote | None = None
    ) -> User:
        """See :meth:`Store.set_user_disabled`."""
        return await self._write(txn.set_user_disabled, user_id, disabled, audit)

    async def rename_user(self, user_id: str, name: str, *, audit: AuditNote | None = None) -> User:
        """See :meth:`Store.rename_user`."""
        return await self._write(txn.rename_user, user_id, name, audit)

    async def delete_user(
        self, user_id: str, now_ms: int | None = None, *, audit: AuditNote | None = None
    ) -> None:
        """See :meth:`Store.delete_user`."""
        when = int(time.time() * 1000) if now_ms is None else now_ms
        await self._write(txn.delete_user, user_id, when, audit)

    async def new_invite(
        self, user_id: str, now_ms: int, ttl_ms: int, *, audit: AuditNote | None = None
    ) -> Invite:
        """See :meth:`Store.new_invite`."""
        return await self._write(
            txn.new_invite, user_id, now_ms, ttl_ms, self._new_invite_code, audit
        )

    async def bulk_invites(
        self,
        without_active_device: bool,
        now_ms: int,
        ttl_ms: int,
        *,
        audit: AuditNote | None = None,
        user_ids: Collection[str] | None = None,
    ) -> list[tuple[User, Invite]]:
        """See :meth:`Store.bulk_invites`."""
        return await self._write(
            txn.bulk_invites,
            without_active_device,
            now_ms,
            ttl_ms,
            self._new_invite_code,
            audit,
            None if user_ids is None else frozenset(user_ids),
        )

    async def import_users(
        self,
        rows: Sequence[ImportRow],
        now_ms: int,
        invite_ttl_ms: int,
        *,
        audit: AuditNote | None = None,
    ) -> list[ImportedUser]:
        """See :meth:`Store.import_users`."""
        return await self._write(
            txn.import_users,
            tuple(rows),
            now_ms,
            invite_ttl_ms,
            self._new_user_id,
            self._new_invite_code,
            audit,
        )

    async def find_users(
        self, query: UserQuery, *, after: str | None = None, limit: int = 100
    ) -> UserPage:
        """See :meth:`Store.find_users`."""
        return await self._read(txn.find_users, query, after, limit)

    async def redeem_invite(
        self, code: str, transport_pub: bytes, device_name: str, now_ms: int
    ) -> Device:
        """See :meth:`Store.redeem_invite`."""
        return await self._write(txn.redeem_invite, code, transport_pub, device_name, now_ms)

    async def get_device(self, user_id: str, device_id: int) -> Device | None:
        """See :meth:`Store.get_device`."""
        return await self._read(txn.get_device, user_id, device_id)

    async def list_devices(self, user_id: str) -> list[Device]:
        """See :meth:`Store.list_devices`."""
        return await self._read(txn.list_devices, user_id)

    async def revoke_device(
        self, user_id: str, device_id: int, now_ms: int, *, audit: AuditNote | None = None
    ) -> Device:
        """See :meth:`Store.revoke_device`."""
        return await self._write(txn.revoke_device, user_id, device_id, now_ms, audit)

    async def touch_device(self, user_id: str, device_id: int, now_ms: int) -> None:
        """See :meth:`Store.touch_device`."""
        await self._write(txn.touch_device, user_id, device_id, now_ms)

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
        """See :meth:`Store.enqueue`."""
        return await self._write(
            txn.enqueue,
            sender,
            message_id,
            payload,
            tuple(recipients),
            now_ms,
            max_per_device,
            tuple(blob_ids),
            urgent,
        )

    async def fetch(
        self, user_id: str, device_id: int, after_seq: int, limit: int
    ) -> list[MailboxEntry]:
        """See :meth:`Store.fetch`."""
        return await self._read(txn.fetch, user_id, device_id, after_seq, limit)

    async def ack(
        self, user_id: str, device_id: int, seqs: Sequence[int], now_ms: int | None = None
    ) -> int:
        """See :meth:`Store.ack`."""
        when = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        return await self._write(txn.ack, user_id, device_id, tuple(seqs), when)

    async def expire(self, now_ms: int, ttl_ms: int) -> int:
        """See :meth:`Store.expire`. Works in slices so sends interleave with a big purge."""
        cutoff = now_ms - ttl_ms
        dropped = 0
        while True:
            entries, keys = await self._write(txn.expire_batch, cutoff, EXPIRE_BATCH, now_ms)
            dropped += entries
            if entries < EXPIRE_BATCH and keys < EXPIRE_BATCH:
                return dropped

    async def shift_clock(self, shift_ms: int, before_ms: int) -> None:
        """See :meth:`Store.shift_clock`."""
        await self._write(txn.shift_clock, shift_ms, before_ms)

    async def put_identity(self, user_id: str, record: bytes, now_ms: int) -> None:
        """See :meth:`Store.put_identity`."""
        await self._write(txn.put_identity, user_id, record, now_ms)

    async def put_device_list(self, user_id: str, version: int, record: bytes, now_ms: int) -> None:
        """See :meth:`Store.put_device_list`."""
        await self._write(txn.put_device_list, user_id, version, record, now_ms)

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
        """See :meth:`Store.put_prekey`."""
        await self._write(txn.put_prekey, user_id, device_id, suite, kind, key_id, record, now_ms)

    async def get_records(self, user_id: str) -> list[bytes]:
        """See :meth:`Store.get_records`."""
        return await self._read(txn.get_records, user_id)

    async def claim_prekey(self, user_id: str, device_id: int, suite: int) -> bytes | None:
        """See :meth:`Store.claim_prekey`."""
        return await self._write(txn.claim_prekey, user_id, device_id, suite)

    async def count_prekeys(self, user_id: str, device_id: int, suite: int) -> int:
        """See :meth:`Store.count_prekeys`."""
        return await self._read(txn.count_prekeys, user_id, device_id, suite)

    async def stats(self) -> StoreStats:
        """See :meth:`Store.stats`."""
        return await self._read(txn.stats)

    async def add_audit(self, note: AuditNote) -> int:
        """See :meth:`Store.add_audit`."""
        return await self._write(txn.add_audit, note)

    async def list_audit(
        self,
        *,
        after_id: int | None = None,
        before_id: int | None = None,
        limit: int = 100,
        user_id: str | None = None,
        action: str | None = None,
    ) -> list[AuditEntry]:
        """See :meth:`Store.list_audit`."""
        return await self._read(txn.list_audit, after_id, before_id, limit, user_id, action)

    # -- conversations ---------------------------------------------------------------------

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
        """See :meth:`Store.put_roster`."""
        return await self._write(
            txn.put_roster,
            change,
            expected_epoch,
            managed,
            name,
            actor,
            changed,
            removed,
            now_ms,
            max_per_device,
            audit,
        )

    async def get_conversation(self, conv_id: bytes) -> Conversation | None:
        """See :meth:`Store.get_conversation`."""
        return await self._read(txn.get_conversation, conv_id)

    async def get_rosters(self, conv_id: bytes, since_epoch: int) -> list[bytes]:
        """See :meth:`Store.get_rosters`."""
        return await self._read(txn.get_rosters, conv_id, since_epoch)

    async def list_conversations(self, user_id: str | None = None) -> list[ConversationSummary]:
        """See :meth:`Store.list_conversations`."""
        return await self._read(txn.list_conversations, user_id)

    async def delete_conversation(
        self,
        conv_id: bytes,
        *,
        deleted: EventMessage,
        now_ms: int,
        max_per_device: int,
        audit: AuditNote | None = None,
    ) -> tuple[Conversation, FanOut]:
        """See :meth:`Store.delete_conversation`."""
        return await self._write(
            txn.delete_conversation, conv_id, deleted, now_ms, max_per_device, audit
        )

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
        """See :meth:`Store.enqueue_conv`."""
        return await self._write(
            txn.enqueue_conv,
            sender,
            message_id,
            conv_id,
            payload,
            tuple(parts),
            tuple(blob_ids),
            now_ms,
            max_per_device,
            urgent,
        )

    async def put_org_key(
        self, version: int, fp: bytes, record: bytes, now_ms: int, *, audit: AuditNote | None = None
    ) -> None:
        """See :meth:`Store.put_org_key`."""
        await self._write(txn.put_org_key, version, fp, record, now_ms, audit)

    async def list_org_keys(self) -> list[bytes]:
        """See :meth:`Store.list_org_keys`."""
        return await self._read(txn.list_org_keys)

    # -- blobs -----------------------------------------------------------------------------

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
        """See :meth:`Store.blob_start`."""
        return await self._write(
            txn.blob_start, user_id, blob_id, size, now_ms, max_bytes, quota_bytes
        )

    async def get_blob(self, user_id: str, blob_id: bytes) -> BlobInfo | None:
        """See :meth:`Store.get_blob`."""
        return await self._read(txn.get_blob, user_id, blob_id)

    async def blob_received(
        self, user_id: str, blob_id: bytes, offset: int, length: int, now_ms: int
    ) -> BlobInfo:
        """See :meth:`Store.blob_received`."""
        return await self._write(txn.blob_received, user_id, blob_id, offset, length, now_ms)

    async def blob_rewind(self, user_id: str, blob_id: bytes, received: int, now_ms: int) -> None:
        """See :meth:`Store.blob_rewind`."""
        await self._write(txn.blob_rewind, user_id, blob_id, received, now_ms)

    async def blob_complete(self, user_id: str, blob_id: bytes, now_ms: int) -> BlobInfo:
        """See :meth:`Store.blob_complete`."""
        return await self._write(txn.blob_complete, user_id, blob_id, now_ms)

    async def blob_discard(self, user_id: str, blob_id: bytes) -> None:
        """See :meth:`Store.blob_discard`."""
        await self._write(txn.blob_discard, user_id, blob_id)

    async def collect_blobs(
        self, now_ms: int, ttl_ms: int, partial_ttl_ms: int, limit: int = 1000
    ) -> list[tuple[bytes, bool]]:
        """See :meth:`Store.collect_blobs`."""
        return await self._write(txn.collect_blobs, now_ms, ttl_ms, partial_ttl_ms, limit)

    async def set_push_target(
        self,
        user_id: str,
        device_id: int,
        kind: int,
        device_kind: int,
        target: str,
        now_ms: int,
    ) -> None:
        """See :meth:`Store.set_push_target`."""
        await self._write(
            push.set_push_target, user_id, device_id, kind, device_kind, target, now_ms
        )

    async def clear_push_target(self, user_id: str, device_id: int) -> bool:
        """See :meth:`Store.clear_push_target`."""
        return await self._write(push.clear_push_target, user_id, device_id)

    async def get_push_target(self, user_id: str, device_id: int) -> PushTarget | None:
        """See :meth:`Store.get_push_target`."""
        return await self._read(push.get_push_target, user_id, device_id)

    async def list_push_targets(self) -> tuple[list[PushTarget], list[tuple[str, int]]]:
        """See :meth:`Store.list_push_targets`."""
        return await self._read(push.list_push_targets)

    async def drop_push_target(
        self, user_id: str, device_id: int, target: str, status: int, now_ms: int
    ) -> bool:
        """See :meth:`Store.drop_push_target`."""
        return await self._write(push.drop_push_target, user_id, device_id, target, status, now_ms)

    async def take_push_dropped(self, user_id: str, device_id: int) -> tuple[int, int, int] | None:
        """See :meth:`Store.take_push_dropped`."""
        return await self._write(push.take_push_dropped, user_id, device_id)

    async def set_urgent(
        self, *, user_id: str | None = None, conv_id: bytes | None = None, allowed: bool
    ) -> None:
        """See :meth:`Store.set_urgent`."""
        await self._write(push.set_urgent, user_id, conv_id, allowed)

    async def may_send_urgent(self, user_id: str, conv_id: bytes | None) -> bool:
        """See :meth:`Store.may_send_urgent`."""
        return await self._read(push.may_send_urgent, user_id, conv_id)

    async def list_urgent(self) -> tuple[list[str], list[bytes]]:
        """See :meth:`Store.list_urgent`."""
        return await self._read(push.list_urgent)

    async def put_quiet_policy(self, name: str, spec: str, now_ms: int) -> None:
        """See :meth:`Store.put_quiet_policy`."""
        await self._write(push.put_quiet_policy, name, spec, now_ms)

    async def delete_quiet_policy(self, name: str) -> bool:
        """See :meth:`Store.delete_quiet_policy`."""
        return await self._write(push.delete_quiet_policy, name)

    async def list_quiet_policies(self) -> list[tuple[str, str]]:
        """See :meth:`Store.list_quiet_policies`."""
        return await self._read(push.list_quiet_policies)
