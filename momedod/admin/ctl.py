"""momedoctl: manage users and devices of a running momedod over its admin socket, back it up.

A plain blocking client (no event loop) so that it starts fast: connect, send one request
line, read one reply line, print it for a person or, with ``--json``, for a program.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from momedod.admin.locate import add_socket_arguments, connect_error, socket_path
from momedod.admin.protocol import (
    AdminError,
    DeviceInfo,
    InviteInfo,
    Request,
    UserInfo,
    decode_response,
    encode_request,
    parse_time,
)
from momedod.config import ConfigError
from momedod.protocol import userid

__all__ = ["CtlError", "main", "request"]

REPLY_TIMEOUT_S = 60.0
BACKUP_TIMEOUT_S = 3600.0  # a backup of a big database on an SD card takes a while


class CtlError(Exception):
    """momedod could not be reached or did not answer; the message is one line."""


def request(
    path: Path, cmd: str, args: dict[str, Any], *, timeout: float = REPLY_TIMEOUT_S
) -> dict[str, Any]:
    """Send one admin request to the socket at ``path`` and return its result.

    Raises CtlError if the daemon cannot be reached or does not answer, AdminError if it
    answers with an error.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
        except OSError as e:
            raise CtlError(connect_error(path, e)) from None
        try:
            sock.sendall(encode_request(Request(cmd=cmd, args=args, id=1)))
            reply = _read_line(sock)
        except TimeoutError:
            raise CtlError(f"momedod at {path} did not answer within {timeout:g} s") from None
        except OSError as e:
            raise CtlError(f"lost the connection to momedod at {path}: {e.strerror}") from None
    response = decode_response(reply)
    if response.error is not None:
        raise response.error
    return response.result or {}


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        data = sock.recv(65536)
        if not data:
            raise CtlError("momedod closed the connection without answering")
        newline = data.find(b"\n")
        if newline >= 0:
            chunks.append(data[:newline])
            return b"".join(chunks)
        chunks.append(data)


# --- human output ----------------------------------------------------------------------------


def _when(iso: str | None, never: str = "never") -> str:
    if iso is None:
        return never
    return parse_time(iso).strftime("%Y-%m-%d %H:%M UTC")


def _shown_user_id(text: str) -> str:
    try:
        return userid.display(userid.normalize(text))
    except ValueError:
        return text


def _table(header: Sequence[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [list(header), *rows]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [fmt(header)] + [fmt(r) for r in rows]


def _device_table(devices: list[DeviceInfo]) -> list[str]:
    rows = [
        [
            str(d.device_id),
            d.name,
            _when(d.created),
            _when(d.last_seen),
            str(d.mailbox),
            "active" if d.revoked is None else f"revoked {_when(d.revoked)}",
        ]
        for d in devices
    ]
    header = ["DEVICE", "NAME", "CREATED", "LAST SEEN", "QUEUED", "STATUS"]
    return _table(header, rows, right={0, 4})


def _invite_lines(invite: InviteInfo) -> list[str]:
    return [f"Invite link (valid until {_when(invite.expires)}):", f"  {invite.link}"]


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _host_port(address: str, port: Any) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _show_user_add(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    user = UserInfo.from_json(result["user"])
    return [
        f"User {user.user_id} created ({user.name}).",
        *_invite_lines(InviteInfo.from_json(result["invite"])),
    ]


def _show_user_list(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    users = [UserInfo.from_json(u) for u in result["users"]]
    if not users:
        return ["No users yet. Create one with: momedoctl user add NAME"]
    rows = [
        [u.user_id, u.name, str(u.devices), "disabled" if u.disabled else "active"] for u in users
    ]
    return _table(["ID", "NAME", "DEVICES", "STATUS"], rows, right={2})


def _show_user_show(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    user = UserInfo.from_json(result["user"])
    devices = [DeviceInfo.from_json(d) for d in result["devices"]]
    lines = [
        f"User {user.user_id}: {user.name}",
        f"  created  {_when(user.created)}",
        f"  status   {'disabled' if user.disabled else 'active'}",
    ]
    if not devices:
        return [
            *lines,
            "No devices yet: the invite has not been redeemed "
            f"(a new one: momedoctl user invite {user.user_id}).",
        ]
    return [*lines, "", *_device_table(devices)]


def _show_user_state(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    user = UserInfo.from_json(result["user"])
    if user.disabled:
        return [
            f"User {user.user_id} ({user.name}) is disabled; its devices were "
            "disconnected and cannot sign in until it is enabled again."
        ]
    return [f"User {user.user_id} ({user.name}) is enabled."]


def _show_user_delete(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    return [
        f"User {_shown_user_id(args.user_id)} deleted; its devices were disconnected "
        "and its queued messages removed."
    ]


def _show_user_invite(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    invite = InviteInfo.from_json(result["invite"])
    return [
        f"New invite for {_shown_user_id(args.user_id)}; older unused invites no longer work.",
        *_invite_lines(invite),
    ]


def _show_device_list(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    devices = [DeviceInfo.from_json(d) for d in result["devices"]]
    if not devices:
        return [f"User {_shown_user_id(args.user_id)} has no devices yet."]
    return _device_table(devices)


def _show_device_revoke(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    device = DeviceInfo.from_json(result["device"])
    return [
        f"Device {device.device_id} ({device.name}) of user "
        f"{_shown_user_id(args.user_id)} revoked; it was disconnected and its queued "
        "messages deleted."
    ]


def _show_server_info(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    fingerprint = result.get("fingerprint", "")
    pairs = [
        ("Name", result.get("name")),
        ("Version", result.get("version")),
        ("Uptime", _uptime(result["uptime_s"]) if "uptime_s" in result else None),
        ("Public address", result.get("public_address")),
        ("Fingerprint", fingerprint),
        ("State directory", result.get("state_dir")),
        ("Users", result.get("users")),
        ("Devices", result.get("devices")),
        ("Online devices", result.get("online_devices")),
        ("Queued messages", result.get("mailbox_entries")),
    ]
    lines = [f"{label + ':':<17}{value}" for label, value in pairs if value is not None]
    lines.append("Listeners:")
    for ls in result.get("listeners", []):
        line = (
            f"  {_host_port(ls['address'], ls['port'])}  "
            f"{ls['connections']} of {ls['max_connections']} connections"
        )
        if ls.get("fingerprint") not in (None, fingerprint):
            line += f"  (certificate {ls['fingerprint']})"
        lines.append(line)
    return lines


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _count(n: Any, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _show_backup(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    seconds = float(result["seconds"])
    return [
        f"Backup written to {result['dir']} in {seconds:.{2 if seconds < 10 else 0}f} s: "
        f"{_count(result['files'], 'file')}, {_size(int(result['bytes']))}.",
        f"  {_count(result['users'], 'user')}, {_count(result['devices'], 'device')}, "
        f"{_count(result['mailbox_entries'], 'queued message')}.",
    ]


def _backup_visible(result: dict[str, Any]) -> str | None:
    """Why the backup the daemon wrote is not visible here, or None if it is (or may be)."""
    directory = str(result.get("dir", ""))
    try:
        os.stat(directory)
    except FileNotFoundError:
        return (
            f"momedod reports a backup in {directory}, but that directory does not exist here: "
            "the service has its own /tmp (PrivateTmp=) or file system view; "
            "choose a directory outside /tmp that the service may write to"
        )
    except OSError:
        pass  # e.g. no permission to look: assume it is there
    return None


# --- command line ----------------------------------------------------------------------------

_Show = Callable[[dict[str, Any], argparse.Namespace], list[str]]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="momedoctl",
        description="Manage users and devices of a running momedod through its admin socket.",
    )
    add_socket_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    # --json is also accepted after the command; SUPPRESS keeps a leading one in effect.
    late_json = argparse.ArgumentParser(add_help=False)
    late_json.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the result as JSON"
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    def command(parent: Any, name: str, cmd: str, show: _Show, help: str) -> Any:
        sub = parent.add_parser(name, help=help, description=help, parents=[late_json])
        sub.set_defaults(cmd=cmd, show=show)
        return sub

    user = groups.add_parser("user", help="create, list, disable and delete users")
    users = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = command(
        users, "add", "user.add", _show_user_add, "create a user and print its invite link"
    )
    add.add_argument("name", nargs="+", help="the person's name (quotes optional)")
    command(users, "list", "user.list", _show_user_list, "list all users")
    for name, show, text in [
        ("show", _show_user_show, "show a user and its devices"),
        ("disable", _show_user_state, "disable a user and disconnect its devices at once"),
        ("enable", _show_user_state, "enable a disabled user again"),
        ("delete", _show_user_delete, "delete a user, its devices and queued messages"),
        ("invite", _show_user_invite, "make a new invite link (older unused ones stop working)"),
    ]:
        command(users, name, f"user.{name}", show, text).add_argument(
            "user_id", metavar="ID", help="user ID, e.g. M8N2-2HTR"
        )

    device = groups.add_parser("device", help="list and revoke a user's devices")
    devices = device.add_subparsers(dest="action", required=True, metavar="ACTION")
    command(
        devices, "list", "device.list", _show_device_list, "list a user's devices"
    ).add_argument("user_id", metavar="ID")
    revoke = command(
        devices,
        "revoke",
        "device.revoke",
        _show_device_revoke,
        "revoke a device (lost phone): disconnect it and delete its queue",
    )
    revoke.add_argument("user_id", metavar="ID")
    revoke.add_argument("device_id", metavar="DEVICE", type=int, help="device number")

    backup = command(
        groups,
        "backup",
        "server.backup",
        _show_backup,
        "write an online backup of the server into a new or empty directory DIR "
        "(on the server's machine; momedod writes it, so its user must be able to)",
    )
    backup.add_argument(
        "dir", metavar="DIR", help="backup directory, e.g. /var/backups/momedo/2026-12-01"
    )

    server = groups.add_parser("server", help="server status")
    servers = server.add_subparsers(dest="action", required=True, metavar="ACTION")
    command(
        servers,
        "info",
        "server.info",
        _show_server_info,
        "show version, listeners, certificate fingerprint and counts",
    )
    return parser


def _request_args(ns: argparse.Namespace) -> dict[str, Any]:
    if ns.cmd == "user.add":
        return {"name": " ".join(ns.name)}
    if ns.cmd == "server.backup":
        return {"dir": os.path.abspath(ns.dir)}
    args: dict[str, Any] = {}
    if hasattr(ns, "user_id"):
        args["user_id"] = ns.user_id
    if hasattr(ns, "device_id"):
        args["device_id"] = ns.device_id
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``momedoctl``; returns the exit code (argparse exits 2 on usage errors)."""
    ns = _build_parser().parse_args(argv)
    timeout = BACKUP_TIMEOUT_S if ns.cmd == "server.backup" else REPLY_TIMEOUT_S
    try:
        result = request(socket_path(ns), ns.cmd, _request_args(ns), timeout=timeout)
    except (ConfigError, CtlError, AdminError) as e:
        print(f"momedoctl: {e}", file=sys.stderr)
        return 1
    if ns.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        try:
            lines = ns.show(result, ns)
        except (AdminError, KeyError, TypeError, ValueError) as e:
            print(f"momedoctl: unexpected reply from momedod ({e}); try --json", file=sys.stderr)
            return 1
        print("\n".join(lines))
    if ns.cmd == "server.backup" and (problem := _backup_visible(result)):
        print(f"momedoctl: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
