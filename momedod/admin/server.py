"""The daemon's side of the admin socket: command handler and Unix socket server.

``AdminHandler`` turns one request into one reply using the daemon's ``ServerControl`` (store,
config, live sessions); ``serve_admin`` runs the socket, one task per client connection,
requests on a connection answered in order. Every change is logged as ``admin.action`` with
the caller's uid from SO_PEERCRED; invite codes and user names are never logged.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import os
import socket
import stat
import struct
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog
import trio

import momedod
from momedod.admin.protocol import (
    COMMANDS,
    MAX_LINE_BYTES,
    AdminError,
    AdminErrorCode,
    DeviceInfo,
    InviteInfo,
    Request,
    Response,
    UserInfo,
    decode_request,
    encode_response,
    format_time,
    parse_request,
)
from momedod.config import Config
from momedod.observability import metrics
from momedod.protocol import userid
from momedod.protocol.errors import ErrorCode
from momedod.store import Device, Invite, NotFound, Store, StoreError, User
from momedod.store import backup as backups

__all__ = ["ADMIN_GROUP", "AdminHandler", "ServerControl", "serve_admin"]

log = structlog.get_logger("momedod.admin")

ADMIN_GROUP = "momedo-admin"
MAX_NAME_CHARS = 100
# Control characters, line/paragraph separators and lone surrogates have no place in a name.
_BAD_NAME_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_RECEIVE_BYTES = 65536


class ServerControl(Protocol):
    """What the admin handler needs from the running daemon."""

    store: Store
    config: Config

    def invite_link(self, code: str) -> str: ...

    def server_info(self) -> dict[str, Any]: ...  # the non-store parts of server.info

    def disconnect_user(self, user_id: str, code: ErrorCode) -> int: ...

    def disconnect_device(self, user_id: str, device_id: int, code: ErrorCode) -> int: ...

    def now_ms(self) -> int: ...


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
    return UserInfo(
        user_id=userid.display(user.user_id),
        name=user.name,
        created=format_time(user.created_ms),
        disabled=user.disabled,
        devices=sum(1 for d in devices if d.active),
    ).to_json()


class AdminHandler:
    """Executes admin requests against the daemon; one instance serves every connection."""

    def __init__(self, control: ServerControl) -> None:
        self.control = control
        self._commands: dict[str, _Command] = {
            "server.info": self._server_info,
            "server.backup": self._server_backup,
            "user.add": self._user_add,
            "user.list": self._user_list,
            "user.show": self._user_show,
            "user.disable": self._user_disable,
            "user.enable": self._user_enable,
            "user.delete": self._user_delete,
            "user.invite": self._user_invite,
            "device.list": self._device_list,
            "device.revoke": self._device_revoke,
        }
        assert self._commands.keys() == COMMANDS.keys()
        self._backup_running = False

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

    async def _server_backup(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        dest = _backup_dir_arg(args)
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
        user, invite = await self._store.create_user(
            name, self.control.now_ms(), self._invite_ttl_ms()
        )
        _log_action("user.add", userid.display(user.user_id), peer)
        return {"user": _user_json(user, []), "invite": self._invite_json(invite)}

    async def _user_list(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        users = await self._store.list_users()
        return {"users": [await self._user_summary(u) for u in users]}

    async def _user_show(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        user = await self._get_user(_user_id_arg(args))
        with _user_must_exist(user.user_id):
            devices = await self._store.list_devices(user.user_id)
        return {"user": _user_json(user, devices), "devices": [_device_json(d) for d in devices]}

    async def _set_disabled(
        self, args: dict[str, Any], peer: int | None, disabled: bool
    ) -> dict[str, Any]:
        uid = _user_id_arg(args)
        with _user_must_exist(uid):
            user = await self._store.set_user_disabled(uid, disabled)
        action = "user.disable" if disabled else "user.enable"
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

    async def _user_delete(self, args: dict[str, Any], peer: int | None) -> dict[str, Any]:
        uid = _user_id_arg(args)
        with _user_must_exist(uid):
            await self._store.delete_user(uid, self.control.now_ms())
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
        with _user_must_exist(user.user_id):
            invite = await self._store.new_invite(
                user.user_id, self.control.now_ms(), self._invite_ttl_ms()
            )
        _log_action("user.invite", shown, peer)
        return {"invite": self._invite_json(invite)}

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
            device = await self._store.revoke_device(uid, device_id, self.control.now_ms())
        except NotFound:
            raise AdminError(
                AdminErrorCode.NOT_FOUND, f"no device {device_id} of user {shown}"
            ) from None
        closed = self.control.disconnect_device(uid, device_id, ErrorCode.DEVICE_REVOKED)
        _log_action("device.revoke", f"{shown}/{device_id}", peer, sessions_closed=closed)
        return {"device": _device_json(device)}


def _log_action(action: str, target: str, peer: int | None, **extra: Any) -> None:
    log.info("admin.action", action=action, target=target, uid=peer, **extra)


def _check_arg_names(cmd: str, args: dict[str, Any]) -> None:
    wanted = COMMANDS[cmd]
    missing = [a for a in wanted if a not in args]
    if missing:
        raise AdminError(
            AdminErrorCode.BAD_REQUEST, f"{cmd} needs argument(s): {', '.join(missing)}"
        )
    extra = sorted(set(args) - set(wanted))
    if extra:
        raise AdminError(
            AdminErrorCode.BAD_REQUEST, f"{cmd} does not take argument(s): {', '.join(extra)}"
        )


def _user_id_arg(args: dict[str, Any]) -> str:
    value = args["user_id"]
    if not isinstance(value, str):
        raise AdminError(AdminErrorCode.BAD_REQUEST, "user_id must be a string")
    try:
        return userid.normalize(value)
    except userid.InvalidUserId as e:
        raise AdminError(AdminErrorCode.INVALID_ARGUMENT, str(e)) from None


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
    if not name:
        raise AdminError(AdminErrorCode.INVALID_ARGUMENT, "name must not be empty")
    if len(name) > MAX_NAME_CHARS:
        raise AdminError(
            AdminErrorCode.INVALID_ARGUMENT,
            f"name is {len(name)} characters long; at most {MAX_NAME_CHARS} are allowed",
        )
    for c in name:
        if unicodedata.category(c) in _BAD_NAME_CATEGORIES:
            raise AdminError(
                AdminErrorCode.INVALID_ARGUMENT,
                f"name must not contain control characters (found U+{ord(c):04X})",
            )
    return name


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


async def _answer(handler: AdminHandler, line: bytes, peer_uid: int | None) -> bytes:
    try:
        request = decode_request(line)
    except AdminError as e:
        return encode_response(Response(id=e.request_id, error=e))
    response = await handler.handle_request(request, peer_uid=peer_uid)
    try:
        return encode_response(response)
    except (TypeError, ValueError):  # a result that is not JSON: a bug, not the client's fault
        log.exception("admin.reply_failed", cmd=request.cmd)
        error = AdminError(AdminErrorCode.INTERNAL, "internal error; see the momedod log")
        return encode_response(Response(id=response.id, error=error))


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
                        await stream.send_all(await _answer(handler, bytes(buffer), peer_uid))
                    return
                buffer += data
                continue
            if newline > MAX_LINE_BYTES:
                break
            line = bytes(buffer[:newline])
            del buffer[: newline + 1]
            scanned = 0
            if line.strip():
                await stream.send_all(await _answer(handler, line, peer_uid))
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
