"""The daemon's side of the admin socket: command handler and Unix socket server.

``AdminHandler`` turns one request into one reply using the daemon's ``ServerControl`` (store,
config, live sessions); ``serve_admin`` runs the socket, one task per client connection,
requests on a connection answered in order. Every change is logged as ``admin.action`` with
the caller's uid from SO_PEERCRED; invite codes and user names are never logged. Every change
is also written to the store's audit log, in the same transaction as the change itself.

A ``subscribe`` request turns its connection into an event stream (see
:mod:`momedod.admin.protocol`): :meth:`AdminHandler.stream_events` sends statistics every
interval and new audit entries and logged warnings/errors as they come (polled every
``STREAM_POLL_S``), until the client closes the connection.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import functools
import grp
import json
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog
import trio

import momedod
from momedod.admin.events import LOG_RING, install_log_hook
from momedod.admin.protocol import (
    AUDIT_LIST_LIMIT,
    COMMANDS,
    IMPORT_MAX_ROWS,
    INVITE_SCOPES,
    MAX_EXTERNAL_ID_CHARS,
    MAX_LINE_BYTES,
    OPTIONAL_ARGS,
    USER_LIST_LIMIT,
    AdminError,
    AdminErrorCode,
    AuditInfo,
    DeviceInfo,
    Event,
    InviteInfo,
    Request,
    Response,
    UserInfo,
    decode_request,
    encode_event,
    encode_response,
    format_time,
    name_problem,
    parse_request,
)
from momedod.config import Config
from momedod.e2e.errors import E2EError
from momedod.e2e.event import EVENT_DELETED, EVENT_REMOVED, EVENT_ROSTER_CHANGED
from momedod.e2e.roster import (
    KIND_CHANNEL,
    ROLE_ADMIN,
    SIGNER_ORG,
    RosterRecord,
    check_roster_successor,
    current_org_key,
    parse_org_key_record,
    parse_roster_record,
    verify_roster_signature,
)
from momedod.observability import metrics
from momedod.protocol import userid
from momedod.protocol.errors import ErrorCode
from momedod.protocol.invite import fingerprint_text
from momedod.quiet import parse_window
from momedod.server.conversations import event_message, roster_change
from momedod.server.quiethours import USER_PREFIX, QuietHours, policy_from_spec
from momedod.store import (
    AuditEntry,
    AuditNote,
    Conflict,
    Conversation,
    ConversationSummary,
    Device,
    FanOut,
    ImportRow,
    InvalidCursor,
    Invite,
    NotFound,
    RecordStale,
    Store,
    StoreError,
    User,
    UserQuery,
    UserSummary,
)
from momedod.store import backup as backups

__all__ = ["ADMIN_GROUP", "AdminHandler", "ServerControl", "serve_admin"]

log = structlog.get_logger("momedod.admin")

ADMIN_GROUP = "momedo-admin"
_RECEIVE_BYTES = 65536
MAX_SEARCH_CHARS = 200
MAX_INACTIVE_DAYS = 36_500
SUBSCRIBE_INTERVAL = (1.0, 0.5, 60.0)  # default, minimum, maximum seconds
STREAM_POLL_S = 0.1  # how often a subscription looks for new audit and log entries
STREAM_WRITE_TIMEOUT_S = 30.0  # a subscriber that reads nothing this long is dropped
_AUDIT_BATCH = 500


class ServerControl(Protocol):
    """What the admin handler needs from the running daemon."""

    store: Store
    config: Config

    def invite_link(self, code: str) -> str: ...

    def server_info(self) -> dict[str, Any]: ...  # the non-store parts of server.info

    def server_stats(self) -> dict[str, Any]: ...  # the non-store parts of server.stats

    def disconnect_user(self, user_id: str, code: ErrorCode) -> int: ...

    def disconnect_device(self, user_id: str, device_id: int, code: ErrorCode) -> int: ...

    def publish_events(self, events: Sequence[FanOut]) -> None: ...  # offer to online devices

    def set_org_fp(self, fp: bytes) -> None: ...  # the newest organisation key, for invites

    quiet: QuietHours  # quiet-hours policies in force

    async def quiet_refresh(self) -> None: ...  # after a policy or allow-list change

    def now_ms(self) -> int: ...

    async def cluster_status(self) -> dict[str, Any]: ...  # every node of the cluster


_Command = Callable[[dict[str, Any], "int | None"], Awaitable[dict[str, Any]]]


def _no_user(uid: str) -> AdminError:
    return AdminError(AdminErrorCode.NOT_FOUND, f"no user {userid.display(uid)}")


@contextlib.contextmanager
def _user_must_exist(uid: str) -> Iterator[None]:
    """Within a command about one user, the store's NotFound means that user is unknown."""
    try:
        yield
    except NotFound:
        raise _no_user(uid) from None


def _device_json(device: Device) -> dict[str, Any]:
    return DeviceInfo(
        device_id=device.device_id,
        name=device.name,
        created=format_time(device.created_ms),
        last_seen=None if device.last_seen_ms is None else format_time(device.last_seen_ms),
        revoked=None if device.revoked_ms is None else format_time(device.revoked_ms),
        mailbox=device.mailbox_count,
    ).to_json()


def _user_json(user: User, devices: list[Device]) -> dict[str, Any]:
    seen = [d.last_seen_ms for d in devices if d.last_seen_ms is not None]
    return UserInfo(
        user_id=userid.display(user.user_id),
        name=user.name,
        created=format_time(user.created_ms),
        disabled=user.disabled,
        devices=sum(1 for d in devices if d.active),
        last_seen=format_time(max(seen)) if seen else None,
        mailbox=sum(d.mailbox_count for d in devices),
        external_id=user.external_id,
        bot=user.bot,
    ).to_json()


def _summary_json(summary: UserSummary) -> dict[str, Any]:
    user = summary.user
    return UserInfo(
        user_id=userid.display(user.user_id),
        name=user.name,
        created=format_time(user.created_ms),
        disabled=user.disabled,
        devices=summary.active_devices,
        last_seen=None if summary.last_seen_ms is None else format_time(summary.last_seen_ms),
        mailbox=summary.mailbox,
        external_id=user.external_id,
        bot=user.bot,
    ).to_json()


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    """The audit entry ``A`` of audit.list and of audit events."""
    shown = None
    if entry.user_id is not None:
        try:
            shown = userid.display(entry.user_id)
        except userid.InvalidUserId:
            shown = entry.user_id
    return AuditInfo(
        id=entry.id,
        time=format_time(entry.ts_ms),
        uid=entry.uid,
        action=entry.action,
        target=entry.target,
        user_id=shown,
        detail=dict(entry.detail),
    ).to_json()


class AdminHandler:
    """Executes admin requests against the daemon; one instance serves every connection."""

    def __init__(self, control: ServerControl) -> None:
        self.control = control
        self._commands: dict[str, _Command] = {
            "server.info": self._server_info,
            "server.stats": self._server_stats,
            "server.backup": self._server_backup,
            "cluster.status": self._cluster_status,
            "user.add": self._user_add,
            "user.list": self._user_list,
            "user.show": self._user_show,
            "user.rename": self._user_rename,
            "user.disable": self._user_disable,
            "user.enable": self._user_enable,
            "user.bot": self._user_bot,
            "user.delete": self._user_delete,
            "user.invite": self._user_invite,
            "user.import": self._user_import,
            "invite.bulk": self._invite_bulk,
            "device.list": self._device_list,
            "device.revoke": self._device_revoke,
            "audit.list": self._audit_list,
            "subscribe": self._subscribe,
            "org.key.get": self._org_key_get,
            "org.key.put": self._org_key_put,
            "group.add": self._group_add,
            "group.list": self._group_list,
            "group.show": self._group_show,
            "group.update": self._group_update,
            "group.delete": self._group_delete,
            "quiet.list": self._quiet_list,
            "quiet.set": self._quiet_set,
            "quiet.delete": self._quiet_delete,
            "urgent.set": self._urgent_set,
        }
        assert self._commands.keys() == COMMANDS.keys()
        self._backup_running = False
        # Bumped after every audited change, so subscriptions know when to look.
        self.audit_version = 0

    async def handle(
        self, request: dict[str, Any], *, peer_uid: int | None = None
    ) -> dict[str, Any]:
        """Answer one decoded request object with a reply object (never raises AdminError)."""
        try:
            parsed = parse_request(request)
        except AdminError as e:
            return Response(id=e.request_id, error=e).to_json()
        return (await self.handle_request(parsed, peer_uid=peer_uid)).to_json()

    async def handle_request(self, request: Request, *, peer_uid: int | None = None) -> Response:
        """Answer one parsed request."""
        try:
            command = self._commands.get(request.cmd)
            if command is None:
                raise AdminError(
                    AdminErrorCode.UNKNOWN_COMMAND,
                    f"unknown command {request.cmd!r} (known: {', '.join(COMMANDS)})",
                )
            _check_arg_names(request.cmd, request.args)
            metrics.ADMIN_REQUESTS.labels(request.cmd).inc()
            result = await command(request.args, peer_uid)
        except AdminError as e:
            return Response(id=request.id, error=e)
        except StoreError as e:
            log.error("admin.store_error", cmd=request.cmd, error=str(e))
            return Response(id=request.id, error=AdminError(AdminErrorCode.INTERNAL, str(e)))
        except Exception:
            log.exception("admin.failed", cmd=request.cmd)
            error = AdminError(AdminErrorCode.INTERNAL, "internal error; see the momedod log")
            return Response(id=request.id, error=error)
        return Response(id=request.id, result=result)

    # --- helpers ---

    @property
    def _store(self) -> Store:
        return self.control.store

    def _invite_ttl_ms(self) -> int:
        return self.control.config.limits.invite_ttl_hours * 3_600_000

    def _invite_json(self, invite: Invite) -> dict[str, Any]:
        return InviteInfo(
            code=invite.code,
            link=self.control.invite_link(invite.code),
            expires=format_time(invite.expires_ms),
        ).to_json()

    def _note(self, action: str, peer: int | None, **detail: Any) -> AuditNote:
        return AuditNote(ts_ms=self.control.now_ms(), uid=peer, action=action, detail=detail)

    def _changed(self) -> None:
        self.audit_version += 1

    async def _user_summary(self, user: User) -> dict[str, Any]:
        with _user_must_exist(user.user_id):
            devices = await self._store.list_devices(user.user_id)
        return _user_json(user, devices)

    async def _get_user(self, uid: str) -> User:
        user = await self._store.get_user(uid)
        if user is None:
            raise _no_user(uid)
        return user

    # --- commands ---

    async def _server_info(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        stats = await self._store.stats()
        info = dict(self.control.server_info())
        info.update(users=stats.users, devices=stats.devices, mailbox_entries=stats.mailbox_entries)
        return info

    async def stats(self) -> dict[str, Any]:
        """The ``server.stats`` result (also the data of subscribe's stats events)."""
        stats = await self._store.stats()
        size = await self._store.disk_usage()
        now = self.control.now_ms()
        result = dict(self.control.server_stats())
        oldest = stats.oldest_entry_ms
        result.update(
            time=format_time(now),
            users=stats.users,
            devices=stats.devices,
            mailbox_entries=stats.mailbox_entries,
            mailbox_oldest_age_s=None if oldest is None else round(max(0, now - oldest) / 1000, 1),
            store_bytes=size,
            blobs=stats.blobs,
            blob_bytes=stats.blob_bytes,
        )
        return result

    async def _server_stats(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        return await self.stats()

    async def _cluster_status(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        return await self.control.cluster_status()

    async def _server_backup(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        dest = _backup_dir_arg(args)
        engine = self.control.config.storage.engine
        if engine != "sqlite":
            raise AdminError(
                AdminErrorCode.INVALID_ARGUMENT,
                f"momedoctl backup copies the SQLite store only; with [storage] engine ="
                f' "{engine}" back up the database with pg_dump (or your PostgreSQL base'
                " backups) and the state directory (blobs, TLS) with your file backup"
                " (docs/ADMIN.md)",
            )
        if self._backup_running:
            raise AdminError(
                AdminErrorCode.CONFLICT, "a backup is already running; try again when it is done"
            )
        self._backup_running = True
        try:
            return await self._backup(dest, peer)
        finally:
            self._backup_running = False

    async def _backup(self, dest: Path, peer: int | None) -> dict[str, Any]:
        started = time.monotonic()
        try:
            created_dir = await trio.to_thread.run_sync(backups.prepare_backup_dir, dest)
        except backups.BackupRefused as e:
            raise AdminError(AdminErrorCode.INVALID_ARGUMENT, str(e)) from None
        except backups.BackupError as e:
            log.error("admin.backup_failed", dir=str(dest), error=str(e))
            raise AdminError(AdminErrorCode.INTERNAL, str(e)) from None
        fingerprint = self.control.server_info().get("fingerprint")
        created = datetime.fromtimestamp(self.control.now_ms() / 1000, UTC)
        try:
            info = await self._store.backup(dest)
            summary = await trio.to_thread.run_sync(
                functools.partial(
                    backups.finish_backup,
                    dest,
                    self.control.config.server.state_dir,
                    info,
                    fingerprint=fingerprint if isinstance(fingerprint, str) else None,
                    created=created,
                    momedo_version=momedod.__version__,
                )
            )
        except BaseException as e:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(
                    functools.partial(backups.discard_backup, dest, remove_dir=created_dir)
                )
            if isinstance(e, StoreError | backups.BackupError):
                log.error("admin.backup_failed", dir=str(dest), error=str(e))
                raise AdminError(AdminErrorCode.INTERNAL, str(e)) from None
            raise
        seconds = round(time.monotonic() - started, 3)
        _log_action(
            "server.backup",
            str(dest),
            peer,
            files=summary.files,
            bytes=summary.bytes,
            seconds=seconds,
        )
        note = AuditNote(
            ts_ms=self.control.now_ms(),
            uid=peer,
            action="server.backup",
            target=str(dest),
            detail={"files": summary.files, "bytes": summary.bytes, "seconds": seconds},
        )
        try:
            await self._store.add_audit(note)
        except StoreError as e:  # the backup itself is fine: say so, but log the gap
            log.error("admin.audit_failed", action="server.backup", error=str(e))
        else:
            self._changed()
        return {
            "dir": str(summary.dir),
            "files": summary.files,
            "bytes": summary.bytes,
            "users": summary.users,
            "devices": summary.devices,
            "mailbox_entries": summary.mailbox_entries,
            "seconds": seconds,
        }

    async def _user_add(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        name = _name_arg(args)
        bot = _bool_arg(args, "bot", False)
        user, invite = await self._store.create_user(
            name,
            self.control.now_ms(),
            self._invite_ttl_ms(),
            audit=self._note("user.add", peer, name=name),
        )
        if bot:
            user = await self._store.set_user_bot(
                user.user_id, True, audit=self._note("user.bot", peer, bot=True)
            )
        self._changed()
        _log_action("user.add", userid.display(user.user_id), peer)
        return {"user": _user_json(user, []), "invite": self._invite_json(invite)}

    async def _user_list(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        limit = _int_arg(args, "limit", *USER_LIST_LIMIT)
        cursor = args.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise AdminError(AdminErrorCode.BAD_REQUEST, "cursor must be a string or null")
        query = _user_query(args, self.control.now_ms())
        try:
            page = await self._store.find_users(query, after=cursor, limit=limit)
        except InvalidCursor:
            raise AdminError(
                AdminErrorCode.INVALID_ARGUMENT,
                "cursor is not one that user.list handed out; start again without a cursor",
            ) from None
        return {"users": [_summary_json(u) for u in page.users], "next": page.next}

    async def _user_show(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        user = await self._get_user(_user_id_arg(args))
        with _user_must_exist(user.user_id):
            devices = await self._store.list_devices(user.user_id)
        groups = []
        for summary in await self._store.list_conversations(user.user_id):
            conv = await self._store.get_conversation(summary.conv_id)
            role = None if conv is None else dict(conv.members).get(user.user_id)
            if role is None:  # left the group meanwhile
                continue
            groups.append(
                {
                    "conv_id": summary.conv_id.hex(),
                    "name": summary.name,
                    "kind": "channel" if summary.kind == KIND_CHANNEL else "group",
                    "managed": summary.managed,
                    "role": "admin" if role == ROLE_ADMIN else "member",
                }
            )
        groups.sort(key=lambda g: (g["name"] is None, g["name"] or "", g["conv_id"]))
        return {
            "user": _user_json(user, devices),
            "devices": [_device_json(d) for d in devices],
            "groups": groups,
        }

    async def _user_rename(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        uid = _user_id_arg(args)
        name = _name_arg(args)
        before = await self._get_user(uid)
        with _user_must_exist(uid):
            user = await self._store.rename_user(uid, name, audit=self._note("user.rename", peer))
        self._changed()
        _log_action("user.rename", userid.display(uid), peer)
        return {"user": await self._user_summary(user), "old_name": before.name}

    async def _set_disabled(
        self, args: dict[str, Any], peer: int | None, disabled: bool
    ) -> dict[str, Any]:
        uid = _user_id_arg(args)
        action = "user.disable" if disabled else "user.enable"
        with _user_must_exist(uid):
            user = await self._store.set_user_disabled(
                uid, disabled, audit=self._note(action, peer)
            )
        self._changed()
        if disabled:
            # Disable first, then disconnect: a reconnecting device is refused.
            closed = self.control.disconnect_user(uid, ErrorCode.USER_DISABLED)
            _log_action(action, userid.display(uid), peer, sessions_closed=closed)
        else:
            _log_action(action, userid.display(uid), peer)
        return {"user": await self._user_summary(user)}

    async def _user_disable(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        return await self._set_disabled(args, peer, True)

    async def _user_enable(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        return await self._set_disabled(args, peer, False)

    async def _user_bot(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        uid = _user_id_arg(args)
        bot = _bool_arg(args, "bot", False)
        with _user_must_exist(uid):
            user = await self._store.set_user_bot(
                uid, bot, audit=self._note("user.bot", peer, bot=bot)
            )
        self._changed()
        _log_action("user.bot", userid.display(uid), peer, bot=bot)
        return {"user": await self._user_summary(user)}

    async def _user_delete(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        uid = _user_id_arg(args)
        with _user_must_exist(uid):
            await self._store.delete_user(
                uid, self.control.now_ms(), audit=self._note("user.delete", peer)
            )
        self._changed()
        closed = self.control.disconnect_user(uid, ErrorCode.USER_DISABLED)
        _log_action("user.delete", userid.display(uid), peer, sessions_closed=closed)
        return {}

    async def _user_invite(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        user = await self._get_user(_user_id_arg(args))
        shown = userid.display(user.user_id)
        if user.disabled:
            raise AdminError(
                AdminErrorCode.CONFLICT,
                f"user {shown} is disabled; enable it first (momedoctl user enable {shown})",
            )
        now, ttl = self.control.now_ms(), self._invite_ttl_ms()
        note = self._note("user.invite", peer, expires=format_time(now + ttl))
        with _user_must_exist(user.user_id):
            invite = await self._store.new_invite(user.user_id, now, ttl, audit=note)
        self._changed()
        _log_action("user.invite", shown, peer)
        return {"invite": self._invite_json(invite)}

    async def _invite_bulk(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        scope = args["scope"]
        if not isinstance(scope, str):
            raise AdminError(AdminErrorCode.BAD_REQUEST, "scope must be a string")
        if scope not in INVITE_SCOPES:
            raise AdminError(
                AdminErrorCode.INVALID_ARGUMENT,
                f"scope must be one of {', '.join(INVITE_SCOPES)}, got {scope!r}",
            )
        group: dict[str, Any] | None = None
        members: list[str] | None = None
        if args.get("group") is not None:
            conv = await self._group(args)
            group = _group_json(_summary(conv))
            members = [uid for uid, _role in conv.members]
        now, ttl = self.control.now_ms(), self._invite_ttl_ms()
        detail: dict[str, Any] = {"bulk": scope, "expires": format_time(now + ttl)}
        if group is not None:
            detail["group"] = group["name"] or group["conv_id"]
        note = self._note("user.invite", peer, **detail)
        never_enrolled = scope == "never_enrolled"
        if members is None:
            pairs = await self._store.bulk_invites(never_enrolled, now, ttl, audit=note)
        else:
            pairs = await self._store.bulk_invites(
                never_enrolled, now, ttl, audit=note, user_ids=members
            )
        if pairs:
            self._changed()
        _log_action("invite.bulk", scope, peer, invites=len(pairs))
        result: dict[str, Any] = {
            "scope": scope,
            "invites": [
                {
                    "user_id": userid.display(user.user_id),
                    "name": user.name,
                    "external_id": user.external_id,
                    "invite": self._invite_json(invite),
                }
                for user, invite in pairs
            ],
        }
        if group is not None:
            result["group"] = group
        return result

    async def _user_import(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        rows = _import_rows(args)
        now, ttl = self.control.now_ms(), self._invite_ttl_ms()
        note = self._note("user.add", peer, bulk="import")
        try:
            imported = await self._store.import_users(rows, now, ttl, audit=note)
        except ValueError as e:
            raise AdminError(AdminErrorCode.INVALID_ARGUMENT, str(e)) from None
        created = sum(1 for r in imported if r.created)
        linked = sum(1 for r in imported if r.linked)
        if created or linked:
            self._changed()
        _log_action("user.import", f"{len(rows)} rows", peer, created=created, linked=linked)
        return {
            "users": [
                {
                    "user_id": userid.display(r.user.user_id),
                    "name": r.user.name,
                    "external_id": r.user.external_id,
                    "disabled": r.user.disabled,
                    "created": r.created,
                    "linked": r.linked,
                    "invite": None if r.invite is None else self._invite_json(r.invite),
                }
                for r in imported
            ],
            "created": created,
            "matched": len(imported) - created,
            "linked": linked,
        }

    async def _device_list(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        uid = _user_id_arg(args)
        with _user_must_exist(uid):
            devices = await self._store.list_devices(uid)
        return {"devices": [_device_json(d) for d in devices]}

    async def _device_revoke(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        uid = _user_id_arg(args)
        device_id = _device_id_arg(args)
        shown = userid.display(uid)
        await self._get_user(uid)
        device = await self._store.get_device(uid, device_id)
        if device is None:
            raise AdminError(AdminErrorCode.NOT_FOUND, f"no device {device_id} of user {shown}")
        if device.revoked_ms is not None:
            raise AdminError(
                AdminErrorCode.CONFLICT,
                f"device {device_id} of user {shown} was already revoked on "
                f"{format_time(device.revoked_ms)[:16].replace('T', ' ')} UTC",
            )
        try:
            device = await self._store.revoke_device(
                uid, device_id, self.control.now_ms(), audit=self._note("device.revoke", peer)
            )
        except NotFound:
            raise AdminError(
                AdminErrorCode.NOT_FOUND, f"no device {device_id} of user {shown}"
            ) from None
        self._changed()
        closed = self.control.disconnect_device(uid, device_id, ErrorCode.DEVICE_REVOKED)
        _log_action("device.revoke", f"{shown}/{device_id}", peer, sessions_closed=closed)
        return {"device": _device_json(device)}

    async def _audit_list(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        limit = _int_arg(args, "limit", *AUDIT_LIST_LIMIT)
        before = args.get("before")
        if before is not None and (type(before) is not int or before < 1):
            raise AdminError(
                AdminErrorCode.BAD_REQUEST, "before must be a positive integer (an entry id)"
            )
        uid = _user_id_arg(args) if args.get("user_id") is not None else None
        action = args.get("action")
        if action is not None and (not isinstance(action, str) or not 0 < len(action) <= 100):
            raise AdminError(AdminErrorCode.BAD_REQUEST, "action must be a non-empty string")
        entries = await self._store.list_audit(
            before_id=before, limit=limit + 1, user_id=uid, action=action
        )
        more = len(entries) > limit
        entries = entries[:limit]
        return {
            "entries": [audit_json(e) for e in entries],
            "next": entries[-1].id if more and entries else None,
        }

    async def _subscribe(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        default, low, high = SUBSCRIBE_INTERVAL
        interval = args.get("interval", default)
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            raise AdminError(AdminErrorCode.BAD_REQUEST, "interval must be a number of seconds")
        if not low <= interval <= high:
            raise AdminError(
                AdminErrorCode.INVALID_ARGUMENT,
                f"interval must be {low:g} to {high:g} seconds, got {interval}",
            )
        return {"subscribed": True, "interval": float(interval)}

    # --- groups and the organisation key ---

    async def _org_key_get(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        records = await self._store.list_org_keys()
        fp = current_org_key(records, None).fp if records else None
        return {
            "records": [_b64(r) for r in records],
            "version": len(records),
            "fingerprint": None if fp is None else fingerprint_text(fp),
        }

    async def _org_key_put(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        record = _bytes_arg(args, "record")
        stored = await self._store.list_org_keys()
        try:
            key = current_org_key([*stored, record], None)
            version = parse_org_key_record(record).version
        except E2EError as e:
            raise AdminError(
                AdminErrorCode.INVALID_ARGUMENT,
                f"organisation key record {len(stored) + 1} does not continue the stored "
                f"chain ({e})",
            ) from None
        shown = fingerprint_text(key.fp)
        try:
            await self._store.put_org_key(
                version,
                key.fp,
                record,
                self.control.now_ms(),
                audit=AuditNote(
                    ts_ms=self.control.now_ms(),
                    uid=peer,
                    action="org.key.put",
                    target=shown,
                ),
            )
        except RecordStale as e:
            raise AdminError(AdminErrorCode.CONFLICT, str(e)) from None
        self._changed()
        self.control.set_org_fp(key.fp)
        _log_action("org.key.put", shown, peer, version=version)
        return {"version": version, "fingerprint": shown}

    async def _org_roster(self, args: dict[str, Any]) -> RosterRecord:
        """The ``roster`` argument: parsed, signed by the current organisation key, and not
        larger than max_group_size."""
        data = _bytes_arg(args, "roster")
        try:
            rec = parse_roster_record(data)
        except E2EError as e:
            raise AdminError(AdminErrorCode.INVALID_ARGUMENT, str(e)) from None
        records = await self._store.list_org_keys()
        if not records:
            raise AdminError(
                AdminErrorCode.CONFLICT,
                "no organisation key yet; publish one first (momedoctl org key)",
            )
        org_key = current_org_key(records, None)
        if rec.signer_kind != SIGNER_ORG or not verify_roster_signature(rec, org_key=org_key):
            raise AdminError(
                AdminErrorCode.INVALID_ARGUMENT,
                "the roster is not signed by the current organisation key "
                f"{fingerprint_text(org_key.fp)} (rotated meanwhile? check momedoctl org key)",
            )
        limit = self.control.config.policy.max_group_size
        if len(rec.roster.members) > limit:
            raise AdminError(
                AdminErrorCode.INVALID_ARGUMENT,
                f"{len(rec.roster.members)} members; at most {limit} are allowed "
                "([policy] max_group_size)",
            )
        return rec

    async def _group(self, args: dict[str, Any]) -> Conversation:
        text = args["group"]
        if not isinstance(text, str):
            raise AdminError(AdminErrorCode.BAD_REQUEST, "group must be a string")
        conv_id = _find_group(await self._store.list_conversations(), text.strip())
        conv = await self._store.get_conversation(conv_id)
        if conv is None:
            raise AdminError(AdminErrorCode.NOT_FOUND, f"no group {text}")
        return conv

    async def _apply_roster(
        self,
        rec: RosterRecord,
        record: bytes,
        conv: Conversation | None,
        action: str,
        peer: int | None,
    ) -> Conversation:
        roster = rec.roster
        try:
            applied = await self._store.put_roster(
                roster_change(rec, record),
                expected_epoch=None if conv is None else conv.epoch,
                managed=True,
                name=roster.title,
                actor=None,
                changed=event_message(EVENT_ROSTER_CHANGED, roster.conv_id, roster.epoch),
                removed=event_message(EVENT_REMOVED, roster.conv_id, roster.epoch),
                now_ms=self.control.now_ms(),
                max_per_device=self.control.config.limits.mailbox_max_messages,
                audit=self._note(action, peer),
            )
        except Conflict as e:
            raise AdminError(AdminErrorCode.CONFLICT, str(e)) from None
        except NotFound as e:
            raise AdminError(AdminErrorCode.NOT_FOUND, str(e)) from None
        self._changed()
        metrics.CONV_CHANGES.labels("operator").inc()
        self.control.publish_events(applied.events)
        _log_action(
            action, roster.conv_id.hex(), peer, epoch=roster.epoch, members=len(roster.members)
        )
        return applied.conversation

    async def _group_add(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        name = _name_arg(args)
        rec = await self._org_roster(args)
        roster = rec.roster
        if roster.title != name:
            raise AdminError(
                AdminErrorCode.INVALID_ARGUMENT, "the roster's title is not the group's name"
            )
        for key, value in (("kind", roster.kind), ("mode", roster.mode)):
            if key in args and args[key] != value:
                raise AdminError(
                    AdminErrorCode.INVALID_ARGUMENT, f"{key} {args[key]!r} differs from the roster"
                )
        try:
            check_roster_successor(None, rec)
        except E2EError as e:
            raise AdminError(AdminErrorCode.INVALID_ARGUMENT, str(e)) from None
        conv = await self._apply_roster(rec, _bytes_arg(args, "roster"), None, "group.add", peer)
        return {"group": _group_json(_summary(conv))}

    async def _group_list(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        convs = await self._store.list_conversations()
        return {"groups": [_group_json(c) for c in convs]}

    async def _group_show(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        conv = await self._group(args)
        names = {u.user_id: u.name for u in await self._store.list_users()}
        rosters = await self._store.get_rosters(conv.conv_id, conv.epoch - 1)
        return {
            "group": _group_json(_summary(conv)),
            "members": [
                {
                    "user_id": userid.display(uid),
                    "name": names.get(uid),
                    "role": "admin" if role == ROLE_ADMIN else "member",
                }
                for uid, role in conv.members
            ],
            "roster": _b64(rosters[-1]) if rosters else None,
        }

    async def _group_update(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        conv = await self._group(args)
        if not conv.managed:
            raise AdminError(
                AdminErrorCode.CONFLICT,
                "this group was created by a user; its admins change it in the app "
                "(an operator may only delete it)",
            )
        rec = await self._org_roster(args)
        stored = await self._store.get_rosters(conv.conv_id, conv.epoch - 1)
        prev = parse_roster_record(stored[-1]).roster if stored else None
        try:
            check_roster_successor(prev, rec)
        except E2EError as e:
            code = (
                AdminErrorCode.CONFLICT
                if e.reason in ("epoch", "prev_hash")
                else AdminErrorCode.INVALID_ARGUMENT
            )
            raise AdminError(code, str(e)) from None
        conv = await self._apply_roster(rec, _bytes_arg(args, "roster"), conv, "group.update", peer)
        return {"group": _group_json(_summary(conv))}

    async def _group_delete(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        conv = await self._group(args)
        try:
            _gone, event = await self._store.delete_conversation(
                conv.conv_id,
                deleted=event_message(EVENT_DELETED, conv.conv_id, conv.epoch),
                now_ms=self.control.now_ms(),
                max_per_device=self.control.config.limits.mailbox_max_messages,
                audit=self._note("group.delete", peer),
            )
        except NotFound:
            raise AdminError(AdminErrorCode.NOT_FOUND, f"no group {args['group']}") from None
        self._changed()
        self.control.publish_events([event])
        _log_action("group.delete", conv.conv_id.hex(), peer, members=len(conv.members))
        return {"group": _group_json(_summary(conv))}

    # --- quiet hours and urgent messages ------------------------------------------------

    async def _quiet_list(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        quiet = self.control.quiet
        now = quiet.clock()
        users, conv_ids = await self._store.list_urgent()
        names = {c.conv_id: c.name for c in await self._store.list_conversations()}
        return {
            "policies": [
                {
                    **p.to_json(),
                    "users": [userid.display(u) for u in p.users],
                    "open_now": p.is_open(now),
                }
                for p in quiet.policies
            ],
            "urgent": {
                "users": [userid.display(u) for u in users],
                "groups": [names.get(c) or c.hex() for c in conv_ids if c in names],
            },
        }

    async def _quiet_set(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        name = _name_arg(args)
        quiet = self.control.quiet
        if name.startswith(USER_PREFIX):
            raise AdminError(
                AdminErrorCode.INVALID_ARGUMENT,
                f"names starting with {USER_PREFIX!r} are users' own settings (from their app)",
            )
        if any(p.name == name for p in quiet.from_config):
            raise AdminError(
                AdminErrorCode.CONFLICT,
                f"policy {name!r} is set in the configuration file; change it there",
            )
        window = args["window"]
        defer = args.get("defer_delivery", False)
        users, groups = args.get("users", []), args.get("groups", [])
        if not isinstance(window, str) or not isinstance(defer, bool):
            raise AdminError(
                AdminErrorCode.BAD_REQUEST, "window must be a string, defer_delivery a boolean"
            )
        for what, items in (("users", users), ("groups", groups)):
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise AdminError(AdminErrorCode.BAD_REQUEST, f"{what} must be a list of strings")
        try:
            spec: dict[str, Any] = parse_window(window)
            spec["users"] = [userid.normalize(u) for u in users]
        except ValueError as e:
            raise AdminError(AdminErrorCode.INVALID_ARGUMENT, str(e)) from None
        for uid in spec["users"]:
            await self._get_user(uid)
        convs = await self._store.list_conversations()
        names = {c.conv_id: c.name for c in convs}
        spec["groups"] = []
        for g in groups:
            group_name = names[_find_group(convs, g)]
            if not group_name:
                raise AdminError(
                    AdminErrorCode.INVALID_ARGUMENT,
                    f"group {g!r} has no name; quiet-hours policies name organisation groups",
                )
            spec["groups"].append(group_name)
        spec["defer_delivery"] = defer
        text = json.dumps(spec, sort_keys=True)
        try:
            policy = policy_from_spec(name, text)
        except ValueError as e:
            raise AdminError(AdminErrorCode.INVALID_ARGUMENT, str(e)) from None
        await self._store.put_quiet_policy(name, text, self.control.now_ms())
        await self._audited("quiet.set", name, peer, window=policy.window, defer=defer)
        await self.control.quiet_refresh()
        return {"policy": policy.to_json()}

    async def _quiet_delete(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        name = _name_arg(args)
        if not await self._store.delete_quiet_policy(name):
            configured = any(p.name == name for p in self.control.quiet.from_config)
            raise AdminError(
                AdminErrorCode.CONFLICT if configured else AdminErrorCode.NOT_FOUND,
                f"policy {name!r} is set in the configuration file; remove it there"
                if configured
                else f"no policy {name!r} (see momedoctl quiet list)",
            )
        await self._audited("quiet.delete", name, peer)
        await self.control.quiet_refresh()
        return {"deleted": name}

    async def _urgent_set(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        allowed = args["allowed"]
        if not isinstance(allowed, bool):
            raise AdminError(AdminErrorCode.BAD_REQUEST, "allowed must be true or false")
        if ("user_id" in args) == ("group" in args):
            raise AdminError(AdminErrorCode.BAD_REQUEST, "give exactly one of user_id, group")
        if "user_id" in args:
            uid = _user_id_arg(args)
            await self._get_user(uid)
            await self._store.set_urgent(user_id=uid, allowed=allowed)
            target = userid.display(uid)
        else:
            conv = await self._group(args)
            await self._store.set_urgent(conv_id=conv.conv_id, allowed=allowed)
            target = conv.name or conv.conv_id.hex()
        await self._audited("urgent.set", target, peer, allowed=allowed)
        return {"target": target, "allowed": allowed}

    async def _audited(self, action: str, target: str, peer: int | None, **detail: Any) -> None:
        note = self._note(action, peer, **detail)
        await self._store.add_audit(dataclasses.replace(note, target=target))
        self._changed()
        _log_action(action, target, peer, **detail)

    async def stream_events(
        self, send: Callable[[bytes], Awaitable[None]], interval: float
    ) -> None:
        """Run one subscription until cancelled: stats every ``interval``, audit and log
        entries made after the start as they appear. ``send`` writes one line."""
        newest = await self._store.list_audit(limit=1)
        last_audit = newest[0].id if newest else 0
        seen_version = self.audit_version
        log_seq = LOG_RING.seq
        next_stats = trio.current_time()
        while True:
            now = trio.current_time()
            stats_due = now >= next_stats
            if stats_due:
                next_stats = max(next_stats + interval, now + interval / 2)
                try:
                    data = await self.stats()
                except StoreError as e:
                    log.warning("admin.stats_failed", error=str(e))
                else:
                    await send(encode_event(Event("stats", data)))
            if stats_due or self.audit_version != seen_version:
                seen_version = self.audit_version
                while True:
                    entries = await self._store.list_audit(after_id=last_audit, limit=_AUDIT_BATCH)
                    for entry in entries:
                        await send(encode_event(Event("audit", audit_json(entry))))
                        last_audit = entry.id
                    if len(entries) < _AUDIT_BATCH:
                        break
            for seq, record in LOG_RING.since(log_seq):
                await send(encode_event(Event("log", record)))
                log_seq = seq
            await trio.sleep(max(0.0, min(STREAM_POLL_S, next_stats - trio.current_time())))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _bytes_arg(args: dict[str, Any], name: str) -> bytes:
    value = args[name]
    if not isinstance(value, str):
        raise AdminError(AdminErrorCode.BAD_REQUEST, f"{name} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise AdminError(AdminErrorCode.BAD_REQUEST, f"{name} is not valid base64") from None


def _summary(conv: Conversation) -> ConversationSummary:
    return ConversationSummary(
        conv.conv_id,
        conv.kind,
        conv.managed,
        conv.name,
        conv.epoch,
        conv.created_ms,
        len(conv.members),
    )


def _group_json(conv: ConversationSummary) -> dict[str, Any]:
    return {
        "conv_id": conv.conv_id.hex(),
        "name": conv.name,
        "kind": "channel" if conv.kind == KIND_CHANNEL else "group",
        "managed": conv.managed,
        "epoch": conv.epoch,
        "members": conv.members,
        "created": format_time(conv.created_ms),
    }


MIN_GROUP_PREFIX = 6


def _find_group(convs: Sequence[ConversationSummary], text: str) -> bytes:
    """The conversation ``text`` names: its ID, a unique ID prefix of >= 6 hex digits, or
    its unique name."""
    lowered = text.lower()
    if len(lowered) >= MIN_GROUP_PREFIX and all(c in "0123456789abcdef" for c in lowered):
        hits = [c for c in convs if c.conv_id.hex().startswith(lowered)]
        if len(hits) == 1:
            return hits[0].conv_id
        if len(hits) > 1:
            raise AdminError(
                AdminErrorCode.INVALID_ARGUMENT,
                f"{text!r} matches {len(hits)} groups; give more of the ID",
            )
    named = [c for c in convs if c.name == text]
    if len(named) == 1:
        return named[0].conv_id
    raise AdminError(AdminErrorCode.NOT_FOUND, f"no group {text!r} (see momedoctl group list)")


def _log_action(action: str, target: str, peer: int | None, **extra: Any) -> None:
    log.info("admin.action", action=action, target=target, uid=peer, **extra)


def _check_arg_names(cmd: str, args: dict[str, Any]) -> None:
    wanted = COMMANDS[cmd]
    missing = [a for a in wanted if a not in args]
    if missing:
        raise AdminError(
            AdminErrorCode.BAD_REQUEST, f"{cmd} needs argument(s): {', '.join(missing)}"
        )
    extra = sorted(set(args) - set(wanted) - set(OPTIONAL_ARGS.get(cmd, ())))
    if extra:
        raise AdminError(
            AdminErrorCode.BAD_REQUEST, f"{cmd} does not take argument(s): {', '.join(extra)}"
        )


def _bool_arg(args: dict[str, Any], name: str, default: bool) -> bool:
    value = args.get(name, default)
    if not isinstance(value, bool):
        raise AdminError(AdminErrorCode.BAD_REQUEST, f"{name} must be true or false")
    return value


def _user_id_arg(args: dict[str, Any]) -> str:
    value = args["user_id"]
    if not isinstance(value, str):
        raise AdminError(AdminErrorCode.BAD_REQUEST, "user_id must be a string")
    try:
        return userid.normalize(value)
    except userid.InvalidUserId as e:
        raise AdminError(AdminErrorCode.INVALID_ARGUMENT, str(e)) from None


def _int_arg(args: dict[str, Any], name: str, default: int, high: int, low: int = 1) -> int:
    value = args.get(name)
    if value is None:
        return default
    if type(value) is not int:
        raise AdminError(AdminErrorCode.BAD_REQUEST, f"{name} must be an integer")
    if not low <= value <= high:
        raise AdminError(
            AdminErrorCode.INVALID_ARGUMENT, f"{name} must be {low} to {high}, got {value}"
        )
    return value


_USER_FILTERS = ("disabled", "never_enrolled", "inactive_days")


def _user_query(args: dict[str, Any], now_ms: int) -> UserQuery:
    """The UserQuery for user.list's ``search`` and ``filter`` arguments."""
    search = args.get("search")
    if search is not None and not isinstance(search, str):
        raise AdminError(AdminErrorCode.BAD_REQUEST, "search must be a string")
    search = (search or "").strip()
    if len(search) > MAX_SEARCH_CHARS:
        raise AdminError(
            AdminErrorCode.INVALID_ARGUMENT, f"search is longer than {MAX_SEARCH_CHARS} characters"
        )
    fragment = userid.crockford_clean(search)
    if not fragment or any(c not in userid.ALPHABET for c in fragment):
        fragment = ""
    raw = args.get("filter")
    if raw is None:
        raw = {}
    elif isinstance(raw, str):
        if raw not in ("disabled", "never_enrolled"):
            raise AdminError(
                AdminErrorCode.INVALID_ARGUMENT,
                f'filter must be "disabled", "never_enrolled" or an object, got {raw!r}',
            )
        raw = {raw: True}
    elif not isinstance(raw, dict):
        raise AdminError(AdminErrorCode.BAD_REQUEST, "filter must be a string or an object")
    unknown = sorted(set(raw) - set(_USER_FILTERS))
    if unknown:
        raise AdminError(
            AdminErrorCode.BAD_REQUEST,
            f"unknown filter(s): {', '.join(unknown)} (known: {', '.join(_USER_FILTERS)})",
        )
    disabled = raw.get("disabled")
    never_enrolled = raw.get("never_enrolled", False)
    for name, value in (("disabled", disabled), ("never_enrolled", never_enrolled)):
        if value is not None and not isinstance(value, bool):
            raise AdminError(AdminErrorCode.BAD_REQUEST, f"filter {name} must be true or false")
    days = raw.get("inactive_days")
    if days is not None:
        if type(days) is not int:
            raise AdminError(AdminErrorCode.BAD_REQUEST, "filter inactive_days must be an integer")
        if not 1 <= days <= MAX_INACTIVE_DAYS:
            raise AdminError(
                AdminErrorCode.INVALID_ARGUMENT,
                f"inactive_days must be 1 to {MAX_INACTIVE_DAYS}, got {days}",
            )
    return UserQuery(
        search=search or None,
        id_fragment=fragment or None,
        disabled=disabled,
        without_active_device=bool(never_enrolled),
        inactive_since_ms=None if days is None else now_ms - days * 86_400_000,
    )


def _device_id_arg(args: dict[str, Any]) -> int:
    value = args["device_id"]
    if type(value) is not int:
        raise AdminError(AdminErrorCode.BAD_REQUEST, "device_id must be an integer")
    if not 1 <= value <= 0xFFFFFFFF:
        raise AdminError(AdminErrorCode.INVALID_ARGUMENT, f"device IDs are 1 or more, got {value}")
    return value


def _backup_dir_arg(args: dict[str, Any]) -> Path:
    value = args["dir"]
    if not isinstance(value, str):
        raise AdminError(AdminErrorCode.BAD_REQUEST, "dir must be a string")
    if not value or "\0" in value or not os.path.isabs(value):
        raise AdminError(
            AdminErrorCode.INVALID_ARGUMENT,
            f"backup directory must be an absolute path on the server's machine, got {value!r}",
        )
    return Path(os.path.normpath(value))


def _name_arg(args: dict[str, Any]) -> str:
    value = args["name"]
    if not isinstance(value, str):
        raise AdminError(AdminErrorCode.BAD_REQUEST, "name must be a string")
    name = value.strip()
    problem = name_problem(name)
    if problem is not None:
        raise AdminError(AdminErrorCode.INVALID_ARGUMENT, problem)
    return name


def _import_rows(args: dict[str, Any]) -> list[ImportRow]:
    """user.import's ``rows``: names and external_ids checked like user.add's name."""
    raw = args["rows"]
    if not isinstance(raw, list):
        raise AdminError(AdminErrorCode.BAD_REQUEST, "rows must be a list")
    if len(raw) > IMPORT_MAX_ROWS:
        raise AdminError(
            AdminErrorCode.INVALID_ARGUMENT,
            f"{len(raw)} rows; at most {IMPORT_MAX_ROWS} per import (split the file)",
        )
    rows: list[ImportRow] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not set(item) <= {"name", "external_id"}:
            raise AdminError(
                AdminErrorCode.BAD_REQUEST,
                f"rows[{i}] must be an object with name and optional external_id",
            )
        name, external = item.get("name"), item.get("external_id")
        if not isinstance(name, str) or not isinstance(external, str | None):
            raise AdminError(
                AdminErrorCode.BAD_REQUEST, f"rows[{i}]: name and external_id must be strings"
            )
        name = name.strip()
        external = (external or "").strip() or None
        problem = name_problem(name)
        if problem is None and external is not None:
            problem = name_problem(external, "external_id", MAX_EXTERNAL_ID_CHARS)
        if problem is not None:
            raise AdminError(AdminErrorCode.INVALID_ARGUMENT, f"rows[{i}]: {problem}")
        if external is not None:
            if external in seen:
                raise AdminError(
                    AdminErrorCode.INVALID_ARGUMENT,
                    f"rows[{i}]: external_id {external!r} was given in rows[{seen[external]}] "
                    "already",
                )
            seen[external] = i
        rows.append(ImportRow(name, external))
    return rows


# --- the socket ----------------------------------------------------------------------------


async def serve_admin(
    path: Path,
    handler: AdminHandler,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin socket at ``path`` until cancelled; the socket file is removed on exit.

    Raises OSError if the socket cannot be created, including when another running process
    already serves it (EADDRINUSE) and when ``path`` is something other than a socket.
    """
    sock = _bind(path)
    identity = os.stat(path)
    install_log_hook()  # subscribers see the daemon's warnings and errors
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    log.info("admin.listening", socket=str(path))
    try:
        await trio.serve_listeners(
            functools.partial(_serve_client, handler), [listener], task_status=task_status
        )
    finally:
        with contextlib.suppress(OSError):
            now = os.stat(path)
            # Leave the file alone if a newer daemon has replaced it meanwhile.
            if (now.st_dev, now.st_ino) == (identity.st_dev, identity.st_ino):
                os.unlink(path)


def _bind(path: Path) -> socket.socket:
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o117)  # mode 0660 from the start: no chmod race
        try:
            sock.bind(os.fspath(path))
        finally:
            os.umask(old_umask)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    _set_admin_group(path)
    return sock


def _remove_stale_socket(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, "exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        os.unlink(path)  # left behind by a daemon that did not exit cleanly
        return
    except TimeoutError:
        pass  # a full backlog: someone is listening
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "in use by another running momedod")


def _set_admin_group(path: Path) -> None:
    try:
        gid = grp.getgrnam(ADMIN_GROUP).gr_gid
    except KeyError:
        return  # no such group here (dev checkout): the socket keeps the daemon's group
    try:
        os.chown(path, -1, gid)
    except OSError as e:
        log.warning("admin.socket_group_failed", group=ADMIN_GROUP, error=e.strerror)


def _peer_uid(sock: trio.socket.SocketType) -> int | None:
    try:
        size = struct.calcsize("iII")
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
    except (AttributeError, OSError):  # not Linux
        return None
    _pid, uid, _gid = struct.unpack("iII", creds)
    return int(uid)


async def _answer(
    handler: AdminHandler, line: bytes, peer_uid: int | None
) -> tuple[bytes, float | None]:
    """The reply line, and the interval if the request started a subscription."""
    try:
        request = decode_request(line)
    except AdminError as e:
        return encode_response(Response(id=e.request_id, error=e)), None
    response = await handler.handle_request(request, peer_uid=peer_uid)
    try:
        reply = encode_response(response)
    except (TypeError, ValueError):  # a result that is not JSON: a bug, not the client's fault
        log.exception("admin.reply_failed", cmd=request.cmd)
        error = AdminError(AdminErrorCode.INTERNAL, "internal error; see the momedod log")
        return encode_response(Response(id=response.id, error=error)), None
    if request.cmd == "subscribe" and response.result is not None:
        return reply, float(response.result["interval"])
    return reply, None


async def _stream(
    handler: AdminHandler, stream: trio.SocketStream, interval: float, peer_uid: int | None
) -> None:
    """Serve a subscription until the client closes the connection (or stops reading)."""
    log.debug("admin.subscribed", uid=peer_uid, interval=interval)

    async def send(data: bytes) -> None:
        with trio.fail_after(STREAM_WRITE_TIMEOUT_S):
            await stream.send_all(data)

    async with trio.open_nursery() as nursery:

        async def until_closed() -> None:
            # Whatever the client sends now is ignored; EOF (or an error) ends the stream.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while await stream.receive_some(_RECEIVE_BYTES):
                    pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(until_closed)
        try:
            await handler.stream_events(send, interval)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except trio.TooSlowError:
            log.info("admin.subscriber_too_slow", uid=peer_uid)
        except StoreError as e:
            log.warning("admin.subscription_failed", uid=peer_uid, error=str(e))
        nursery.cancel_scope.cancel()


async def _serve_client(handler: AdminHandler, stream: trio.SocketStream) -> None:
    peer_uid = _peer_uid(stream.socket)
    log.debug("admin.connected", uid=peer_uid)
    buffer = bytearray()
    scanned = 0  # bytes of buffer already known to hold no newline
    try:
        while True:
            newline = buffer.find(b"\n", scanned)
            if newline < 0:
                scanned = len(buffer)
                if len(buffer) > MAX_LINE_BYTES:
                    break
                data = await stream.receive_some(_RECEIVE_BYTES)
                if not data:  # EOF; answer a last line that lacks its newline
                    if buffer.strip():
                        reply, _ = await _answer(handler, bytes(buffer), peer_uid)
                        await stream.send_all(reply)
                    return
                buffer += data
                continue
            if newline > MAX_LINE_BYTES:
                break
            line = bytes(buffer[:newline])
            del buffer[: newline + 1]
            scanned = 0
            if line.strip():
                reply, interval = await _answer(handler, line, peer_uid)
                await stream.send_all(reply)
                if interval is not None:
                    await _stream(handler, stream, interval, peer_uid)
                    return
        too_long = AdminError(
            AdminErrorCode.BAD_REQUEST,
            f"request line longer than {MAX_LINE_BYTES} bytes; closing the connection",
        )
        await stream.send_all(encode_response(Response(id=None, error=too_long)))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    except Exception:
        # One connection's failure must not take the admin socket (and the daemon) down.
        log.exception("admin.connection_failed", uid=peer_uid)
    finally:
        log.debug("admin.disconnected", uid=peer_uid)
