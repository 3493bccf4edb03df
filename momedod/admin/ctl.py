"""momedoctl: manage users and devices of a running momedod over its admin socket, back it up.

A plain blocking client (no event loop) so that it starts fast: connect, send one request
line, read one reply line, print it for a person or, with ``--json``, for a program. A few
commands send more than one request (``user list --all`` follows the list's cursors).
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import pwd
import secrets
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from momedod.admin import orgkey
from momedod.admin.locate import add_socket_arguments, connect_error, socket_path
from momedod.admin.protocol import (
    IMPORT_MAX_ROWS,
    MAX_EXTERNAL_ID_CHARS,
    MAX_LINE_BYTES,
    AdminError,
    AdminErrorCode,
    AuditInfo,
    DeviceInfo,
    InviteInfo,
    Request,
    UserInfo,
    decode_response,
    encode_request,
    name_problem,
    parse_time,
)
from momedod.config import ConfigError
from momedod.e2e.roster import (
    KIND_CHANNEL,
    KIND_GROUP,
    MODE_CHAINS,
    MODE_MULTI,
    ROLE_MEMBER,
    Roster,
    parse_roster_record,
    sign_roster_org,
)
from momedod.protocol import userid

__all__ = ["CtlError", "main", "request"]

REPLY_TIMEOUT_S = 60.0
IMPORT_TIMEOUT_S = 600.0  # one transaction for thousands of users on an SD card
BACKUP_TIMEOUT_S = 3600.0  # a backup of a big database on an SD card takes a while
AUDIT_DEFAULT_LIMIT = 50


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
    kind = ", a bot" if user.bot else ""
    return [
        f"User {user.user_id} created ({user.name}{kind}).",
        *_invite_lines(InviteInfo.from_json(result["invite"])),
    ]


def _show_user_bot(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    user = UserInfo.from_json(result["user"])
    what = "is now marked as a bot" if user.bot else "is no longer marked as a bot"
    return [f"User {user.user_id} ({user.name}) {what}."]


def _filtered(args: argparse.Namespace) -> bool:
    return bool(args.search or args.disabled or args.never_enrolled or args.inactive)


def _show_user_list(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    users = [UserInfo.from_json(u) for u in result["users"]]
    if not users:
        if _filtered(args):
            return ["No users match."]
        return ["No users yet. Create one with: momedoctl user add NAME"]
    rows = [
        [
            u.user_id,
            u.name,
            str(u.devices),
            _when(u.last_seen),
            ("disabled" if u.disabled else "active") + (", bot" if u.bot else ""),
        ]
        for u in users
    ]
    lines = _table(["ID", "NAME", "DEVICES", "LAST SEEN", "STATUS"], rows, right={2})
    if result.get("next"):
        lines.append(
            f"(the first {len(users)} users; all of them with --all, or narrow with --search)"
        )
    return lines


def _show_user_show(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    user = UserInfo.from_json(result["user"])
    devices = [DeviceInfo.from_json(d) for d in result["devices"]]
    lines = [
        f"User {user.user_id}: {user.name}",
        f"  created    {_when(user.created)}",
        f"  status     {'disabled' if user.disabled else 'active'}",
        f"  last seen  {_when(user.last_seen)}",
        f"  queued     {user.mailbox}",
    ]
    if user.external_id is not None:
        lines.append(f"  external   {user.external_id}")
    if user.bot:
        lines.append("  kind       bot (an integration account run by momedo bridge)")
    if not devices:
        lines.append(
            "No devices yet: the invite has not been redeemed "
            f"(a new one: momedoctl user invite {user.user_id})."
        )
    else:
        lines += ["", *_device_table(devices)]
    groups = result.get("groups", [])
    if groups:
        rows = [
            [g["name"] or f"(user group {g['conv_id'][:12]})", g["kind"], g["role"]] for g in groups
        ]
        lines += ["", *_table(["GROUP", "KIND", "ROLE"], rows, right=set())]
    else:
        lines += ["", "Not in any group or channel."]
    return lines


def _show_user_state(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    user = UserInfo.from_json(result["user"])
    if user.disabled:
        return [
            f"User {user.user_id} ({user.name}) is disabled; its devices were "
            "disconnected and cannot sign in until it is enabled again."
        ]
    return [f"User {user.user_id} ({user.name}) is enabled."]


def _show_user_rename(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    user = UserInfo.from_json(result["user"])
    return [f"User {user.user_id} renamed: {result.get('old_name', '?')} -> {user.name}."]


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
    addresses = result.get("public_addresses") or []
    other_pins = [p for p in result.get("certificate_pins") or [] if p != fingerprint]
    pairs = [
        ("Name", result.get("name")),
        ("Node", result.get("node") if result.get("cluster") is not None else None),
        ("Version", result.get("version")),
        ("Uptime", _uptime(result["uptime_s"]) if "uptime_s" in result else None),
        ("Public address", result.get("public_address") if len(addresses) < 2 else None),
        ("Addresses", ", ".join(addresses) if len(addresses) > 1 else None),
        ("Fingerprint", fingerprint),
        ("Other pins", ", ".join(other_pins) if other_pins else None),
        ("Org key", result.get("org_fingerprint")),
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


def _show_cluster_status(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    if not result.get("enabled"):
        return [f"Node {result.get('node')} is not part of a cluster ([cluster] enabled = false)."]
    rows = [("NODE", "STATE", "CONNECTIONS", "DEVICES", "HEARTBEAT", "VERSION", "ADDRESSES")]
    for n in result.get("nodes", []):
        rows.append(
            (
                n["node"] + (" *" if n.get("self") else ""),
                n["state"],
                str(n["connections"]),
                str(n["devices"]),
                f"{float(n['heartbeat_age_s']):.1f} s ago",
                n.get("version", ""),
                ", ".join(n.get("addresses", [])),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    live = sum(1 for n in result.get("nodes", []) if n["state"] == "live")
    lines.append(f"{live} of {len(rows) - 1} nodes live; * = the node that answered")
    return lines


def _rate(value: Any) -> str:
    return f"{float(value):.1f}/s"


def _show_server_stats(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    oldest = result.get("mailbox_oldest_age_s")
    backlog = _count(result["mailbox_entries"], "message")
    if oldest is not None:
        backlog += f", oldest {_uptime(float(oldest))}"
    window = float(result.get("rate_window_s") or 0)
    over = f" (last {window:.0f} s)" if window else ""
    pairs = [
        ("Uptime", _uptime(result["uptime_s"])),
        ("Connections", result["connections"]),
        ("Online devices", result["online_devices"]),
        ("Accepted", _rate(result["messages_accepted_per_s"]) + over),
        ("Delivered", _rate(result["messages_delivered_per_s"]) + over),
        ("Mailbox backlog", backlog),
        ("Store size", _size(int(result["store_bytes"]))),
        (
            "Attachments",
            f"{_size(int(result.get('blob_bytes', 0)))} in "
            f"{_count(int(result.get('blobs', 0)), 'file')}",
        ),
        ("Users", result["users"]),
        ("Devices", result["devices"]),
    ]
    lines = [f"{label + ':':<17}{value}" for label, value in pairs]
    lines.append("Listeners:")
    for ls in result.get("listeners", []):
        lines.append(
            f"  {_host_port(ls['address'], ls['port'])}  "
            f"{ls['connections']} of {ls['max_connections']} connections"
        )
    return lines


def _caller(uid: int | None) -> str:
    if uid is None:
        return "?"
    try:
        return f"{uid} ({pwd.getpwuid(uid).pw_name})"
    except (KeyError, OverflowError):
        return str(uid)


def _show_audit(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    entries = [AuditInfo.from_json(e) for e in result["entries"]]
    if not entries:
        return ["No audit entries match."]
    rows = [
        [
            parse_time(e.time).strftime("%Y-%m-%d %H:%M:%S"),
            _caller(e.uid),
            e.action,
            e.target,
        ]
        for e in reversed(entries)  # oldest first, the newest at the bottom
    ]
    lines = _table(["TIME (UTC)", "UID", "ACTION", "TARGET"], rows, right=set())
    if result.get("next") is not None:
        lines.append(f"(the newest {len(entries)} entries; more with --limit)")
    return lines


def _show_invites_export(result: dict[str, Any], args: argparse.Namespace) -> list[str] | None:
    from momedod.admin import letters

    invites = result["invites"]
    if args.format == "csv":
        document = letters.invites_csv(invites)
    else:
        document = letters.invites_html(invites)
    if args.output is None:
        sys.stdout.write(document)
        sys.stdout.flush()
    else:
        _write_private(Path(args.output), document)
    who = (
        "users without an active device"
        if result.get("scope") == "never_enrolled"
        else "all enabled users"
    )
    group = result.get("group")
    if group:
        who += f" in {_group_title(group)}"
    print(
        f"momedoctl: {_count(len(invites), 'new invite')} for {who}"
        + (f" written to {args.output}" if args.output is not None else "")
        + "; older unused invites of these users no longer work.",
        file=sys.stderr,
    )
    return None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable only by its owner: invite links are secrets."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    except OSError as e:
        raise CtlError(f"cannot write {path}: {e.strerror or e}") from None


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


# --- groups and the organisation key ---------------------------------------------------------

UPDATE_ATTEMPTS = 3  # a roster change that raced with another operator's is rebuilt and resent


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _key_path(ns: argparse.Namespace) -> Path:
    return orgkey.locate(ns.config, ns.dev, ns.org_key)


def _load_key(path: Path) -> orgkey.OrgKeyFile | None:
    try:
        return orgkey.load(path)
    except orgkey.OrgKeyError as e:
        raise CtlError(str(e)) from None


def _publish(sock: Path, key: orgkey.OrgKeyFile) -> int:
    """Give momedod the records of ``key``'s chain it lacks; return how many were sent."""
    info = request(sock, "org.key.get", {})
    stored = [base64.b64decode(r) for r in info["records"]]
    try:
        missing = orgkey.missing_records(stored, key, info["fingerprint"])
    except orgkey.OrgKeyError as e:
        raise CtlError(str(e)) from None
    for record in missing:
        request(sock, "org.key.put", {"record": _b64(record)})
    return len(missing)


def _ready_key(ns: argparse.Namespace, sock: Path) -> tuple[orgkey.OrgKeyFile, bool, int]:
    """The organisation key (created on first use) once momedod knows it: (key, created,
    records published)."""
    path = _key_path(ns)
    key = _load_key(path)
    created = key is None
    if key is None:
        try:
            key = orgkey.create(path)
        except orgkey.OrgKeyError as e:
            raise CtlError(str(e)) from None
    return key, created, _publish(sock, key)


def _org_key(ns: argparse.Namespace, sock: Path) -> dict[str, Any]:
    if not ns.rotate:
        key, created, published = _ready_key(ns, sock)
        return {
            "fingerprint": key.fingerprint,
            "version": key.version,
            "path": str(key.path),
            "created": created,
            "published": published,
        }
    path = _key_path(ns)
    old = _load_key(path)
    if old is None:
        raise CtlError(f"no organisation key at {path} to rotate; create one: momedoctl org key")
    _publish(sock, old)
    try:
        key = orgkey.rotate(old)
    except orgkey.OrgKeyError as e:
        raise CtlError(str(e)) from None
    published = _publish(sock, key)
    return {
        "fingerprint": key.fingerprint,
        "version": key.version,
        "path": str(key.path),
        "created": True,
        "published": published,
        "previous": {
            "fingerprint": old.fingerprint,
            "version": old.version,
            "path": str(path.with_name(f"{path.name}.{old.version}")),
        },
    }


def _group_add(ns: argparse.Namespace, sock: Path) -> dict[str, Any]:
    key, _created, _published = _ready_key(ns, sock)
    name = " ".join(ns.name).strip()
    kind = KIND_CHANNEL if ns.channel else KIND_GROUP
    mode = MODE_MULTI if ns.asymmetric else MODE_CHAINS
    try:
        roster = Roster.first(secrets.token_bytes(16), kind, {}, name, mode=mode)
    except ValueError as e:
        raise CtlError(f"cannot use this name: {e}") from None
    record = sign_roster_org(roster, key.key)
    args = {"name": name, "roster": _b64(record), "kind": kind, "mode": mode}
    return request(sock, "group.add", args)


def _group_change(ns: argparse.Namespace, sock: Path) -> dict[str, Any]:
    """group members|admins G add|remove USER_ID...: a new org-signed roster."""
    try:
        users = [userid.normalize(u) for u in ns.user_ids]
    except userid.InvalidUserId as e:
        raise CtlError(str(e)) from None
    key, _created, _published = _ready_key(ns, sock)
    for attempt in range(UPDATE_ATTEMPTS):
        shown = request(sock, "group.show", {"group": ns.target})
        group = shown["group"]
        if not group["managed"]:
            raise CtlError(
                f"{ns.target} was created by a user; its admins change it in the app "
                "(operators may only delete it: momedoctl group delete)"
            )
        current = parse_roster_record(base64.b64decode(shown["roster"])).roster
        roles = dict(current.members)
        # Deleted users (no name any more) cannot be in a new roster: drop them on the way.
        deleted = {userid.normalize(m["user_id"]) for m in shown["members"] if m["name"] is None}
        change: orgkey.Change
        if ns.cmd == "group.members":
            change = "add" if ns.op == "add" else "remove"
        else:
            change = "admin" if ns.op == "add" else "member"
        wanted = orgkey.change_roles(roles, change, users, deleted)
        if wanted == roles:
            return {"group": group, "changed": False}
        record = sign_roster_org(current.next(members=wanted), key.key)
        try:
            result = request(
                sock, "group.update", {"group": group["conv_id"], "roster": _b64(record)}
            )
        except AdminError as e:
            if e.code == AdminErrorCode.CONFLICT and attempt + 1 < UPDATE_ATTEMPTS:
                continue  # another change came first: rebuild on top of it
            raise
        return {**result, "changed": True}
    raise AssertionError("unreachable")


def _group_title(group: dict[str, Any]) -> str:
    kind = "Channel" if group["kind"] == "channel" else "Group"
    name = group.get("name")
    return f"{kind} {name!r}" if name else f"{kind} {group['conv_id']}"


def _show_org_key(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    lines = [
        f"Organisation key {result['fingerprint']} (version {result['version']})",
        f"  file  {result['path']}",
    ]
    previous = result.get("previous")
    if previous:
        lines += [
            f"Replaces {previous['fingerprint']} (version {previous['version']}), kept as "
            f"{previous['path']}.",
            "Existing rosters stay valid; changes from now on are signed with the new key.",
        ]
    elif result.get("created"):
        lines.append(
            "A new key was created: back up this file now (see docs/ADMIN.md, "
            '"The organisation key"); momedod never reads it.'
        )
    if result.get("published"):
        lines.append("momedod now puts its fingerprint into new invite links.")
    return lines


def _show_group(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    group = result["group"]
    short = group["conv_id"][:8]
    if args.cmd == "group.add":
        return [
            f"{_group_title(group)} created (ID {group['conv_id']}).",
            f"Add members: momedoctl group members {short} add USER_ID...",
        ]
    if args.cmd == "group.delete":
        return [
            f"{_group_title(group)} deleted; its {_count(group['members'], 'member')} were told."
        ]
    if not result.get("changed", True):
        return [f"No change: {_group_title(group)} already is as asked."]
    admins = "" if args.cmd == "group.members" else " (admins changed)"
    return [
        f"{_group_title(group)} now has {_count(group['members'], 'member')}{admins}; "
        f"roster version {group['epoch']}, signed with the organisation key."
    ]


def _show_group_list(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    groups = result["groups"]
    if not groups:
        return ["No groups yet. Create one with: momedoctl group add NAME [--channel]"]
    rows = [
        [
            g["conv_id"][:12],
            g["name"] or "(user group)",
            g["kind"],
            str(g["members"]),
            "organisation" if g["managed"] else "user",
        ]
        for g in groups
    ]
    return _table(["ID", "NAME", "KIND", "MEMBERS", "MANAGED BY"], rows, right={3})


def _show_quiet_list(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    lines = []
    if not result["policies"]:
        lines.append("No quiet-hours policies: messages wake phones at any time.")
    for p in result["policies"]:
        state = "working hours now" if p["open_now"] else "QUIET now"
        source = "config file" if p["source"] == "config" else "momedoctl"
        lines.append(f"{p['name']}: {p['window']} ({state}; set in the {source})")
        whom = [*(_shown_user_id(u) for u in p["users"]), *(f"group {g}" for g in p["groups"])]
        lines.append(f"  applies to: {', '.join(whom) or 'nobody yet'}")
        if p["defer_delivery"]:
            lines.append("  outside the window, phones also get non-urgent messages only later")
    urgent = result["urgent"]
    allowed = [*urgent["users"], *(f"group {g}" for g in urgent["groups"])]
    lines.append(f"May send urgent messages: {', '.join(allowed) or 'nobody'}")
    return lines


def _show_quiet_set(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    if args.cmd == "quiet.delete":
        return [f"Policy {result['deleted']} removed."]
    p = result["policy"]
    return [f"Policy {p['name']}: working window {p['window']}."]


def _show_urgent(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    verb = "may now" if result["allowed"] else "may no longer"
    return [f"{result['target']} {verb} send urgent messages."]


def _show_group_show(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    group = result["group"]
    lines = [
        f"{_group_title(group)}",
        f"  id          {group['conv_id']}",
        f"  managed by  {'the organisation' if group['managed'] else 'its admins (user group)'}",
        f"  created     {_when(group['created'])}",
        f"  roster      version {group['epoch']}",
        f"  members     {group['members']}",
    ]
    members = result["members"]
    if not members:
        return [*lines, f"No members yet: momedoctl group members {group['conv_id'][:8]} add ID"]
    rows = [[m["user_id"], m["name"] or "(deleted user)", m["role"]] for m in members]
    return [*lines, "", *_table(["USER", "NAME", "ROLE"], rows, right=set())]


# --- user import (CSV) -----------------------------------------------------------------------

IMPORT_COLUMNS = ("name", "groups", "external_id")
IMPORT_REQUIRED = ("name", "groups")
INVITE_CSV_COLUMNS = ("name", "user_id", "external_id", "groups", "link", "expires")


@dataclass(frozen=True)
class ImportLine:
    """One person of an import file: its line number, name, external_id and groups."""

    line: int
    name: str
    external_id: str | None
    groups: tuple[str, ...]


def _import_error(path: Path, line: int, message: str) -> CtlError:
    return CtlError(f"{path}: line {line}: {message}; nothing was imported")


def read_import(path: Path) -> list[ImportLine]:
    """Parse and check an import file (see docs/ADMIN.md, "Importing users from a CSV file").

    Raises CtlError naming the line of the first problem; nothing is sent before the whole
    file is known to be good.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CtlError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise _import_error(
            path, line, f"not UTF-8 (byte 0x{data[e.start]:02x}); save the file as CSV UTF-8"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    lines: list[ImportLine] = []
    columns: dict[str, int] | None = None
    header_line = 1
    seen: dict[str, int] = {}
    start = 1
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue  # blank line
            if columns is None:
                header_line = line
                columns = _import_header(path, line, cells)
                continue
            lines.append(_import_row(path, line, cells, columns, seen))
    except csv.Error as e:
        raise _import_error(path, start, f"not valid CSV ({e})") from None
    if columns is None:
        raise CtlError(f"{path}: empty file: the first line must name the columns name,groups")
    if not lines:
        raise _import_error(path, header_line, "only a header row, nobody to import")
    if len(lines) > IMPORT_MAX_ROWS:
        raise CtlError(
            f"{path}: {len(lines)} people; at most {IMPORT_MAX_ROWS} per import: split the file"
        )
    return lines


def _import_header(path: Path, line: int, cells: list[str]) -> dict[str, int]:
    names = [c.strip().lower() for c in cells]
    if len(names) == 1 and ";" in names[0]:
        raise _import_error(
            path,
            line,
            "the columns seem to be separated by ';'; momedo reads ',' between columns "
            "(in a spreadsheet: save as 'CSV UTF-8 (comma delimited)')",
        )
    columns: dict[str, int] = {}
    for index, name in enumerate(names):
        if name not in IMPORT_COLUMNS:
            raise _import_error(
                path,
                line,
                f"unknown column {cells[index].strip()!r} in the header "
                f"(known: {', '.join(IMPORT_COLUMNS)})",
            )
        if name in columns:
            raise _import_error(path, line, f"column {name!r} appears twice in the header")
        columns[name] = index
    missing = [c for c in IMPORT_REQUIRED if c not in columns]
    if missing:
        raise _import_error(
            path,
            line,
            f"the header lacks the column(s) {', '.join(missing)} (it must name name and "
            "groups, and may name external_id)",
        )
    return columns


def _import_row(
    path: Path, line: int, cells: list[str], columns: dict[str, int], seen: dict[str, int]
) -> ImportLine:
    if len(cells) > len(columns):
        raise _import_error(
            path, line, f"{len(cells)} fields, but the header names {len(columns)} columns"
        )

    def cell(column: str) -> str:
        index = columns.get(column)
        return cells[index].strip() if index is not None and index < len(cells) else ""

    name = cell("name")
    problem = name_problem(name)
    if problem is not None:
        raise _import_error(path, line, problem)
    external = cell("external_id") or None
    if external is not None:
        problem = name_problem(external, "external_id", MAX_EXTERNAL_ID_CHARS)
        if problem is not None:
            raise _import_error(path, line, problem)
        if external in seen:
            raise _import_error(
                path, line, f"external_id {external!r} is on line {seen[external]} already"
            )
        seen[external] = line
    groups: list[str] = []
    for group in cell("groups").split(";"):
        group = group.strip()
        if not group:
            continue
        problem = name_problem(group, "group name")
        if problem is not None:
            raise _import_error(path, line, problem)
        if group not in groups:
            groups.append(group)
    return ImportLine(line, name, external, tuple(groups))


def _user_import(ns: argparse.Namespace, sock: Path) -> dict[str, Any]:
    """user import FILE: users in one request, then at most one new roster per group."""
    path = Path(ns.file)
    people = read_import(path)
    kind = KIND_GROUP if ns.new_groups == "group" else KIND_CHANNEL
    wanted: dict[str, list[int]] = {}  # group name -> indexes into people
    for index, person in enumerate(people):
        for group in person.groups:
            wanted.setdefault(group, []).append(index)
    listed = request(sock, "group.list", {})["groups"]
    existing = {g["name"]: g for g in listed if g["managed"] and g["name"]}
    key: orgkey.OrgKeyFile | None = None
    if any(name not in existing for name in wanted) or (wanted and _key_path(ns).exists()):
        # Before any user is created: a key problem (wrong file, mode) stops the import here.
        key = _ready_key(ns, sock)[0]
    rows = [
        {"name": p.name, **({"external_id": p.external_id} if p.external_id else {})}
        for p in people
    ]
    if len(encode_request(Request("user.import", {"rows": rows}, 1))) > MAX_LINE_BYTES:
        raise CtlError(f"{path}: too large for one import; split the file; nothing was imported")
    imported = request(sock, "user.import", {"rows": rows}, timeout=IMPORT_TIMEOUT_S)
    users = [
        {**u, "line": p.line, "file_name": p.name, "groups": list(p.groups)}
        for u, p in zip(imported["users"], people, strict=True)
    ]
    result: dict[str, Any] = {
        "file": str(path),
        "users": users,
        "created": imported["created"],
        "matched": imported["matched"],
        "linked": imported.get("linked", 0),
        "new_groups": "group" if kind == KIND_GROUP else "channel",
        "groups": [],
        "groups_created": 0,
        "groups_changed": 0,
        "output": None,
        "error": None,
    }
    invites = [u for u in users if u["invite"] is not None]
    if ns.output is not None and invites:
        _write_private(Path(ns.output), _import_invites_csv(invites))
        result["output"] = ns.output
    try:
        for name, indexes in wanted.items():
            members = [userid.normalize(users[i]["user_id"]) for i in indexes]
            if name in existing:
                outcome = _import_into_group(ns, sock, existing[name], members, key)
                key = outcome.pop("key")
            else:
                if key is None:
                    key = _ready_key(ns, sock)[0]
                outcome = _import_new_group(sock, key, name, kind, members)
            result["groups"].append(outcome)
    except (CtlError, AdminError) as e:
        result["error"] = (
            f"the users were imported, but not all groups: {e}; run the same import again "
            "to finish (it creates no users twice)"
        )
    result["groups_created"] = sum(1 for g in result["groups"] if g["created"])
    result["groups_changed"] = sum(1 for g in result["groups"] if g["changed"])
    return result


def _import_new_group(
    sock: Path, key: orgkey.OrgKeyFile, name: str, kind: int, members: list[str]
) -> dict[str, Any]:
    roles = dict.fromkeys(members, ROLE_MEMBER)
    roster = Roster.first(secrets.token_bytes(16), kind, roles, name, mode=MODE_CHAINS)
    record = sign_roster_org(roster, key.key)
    args = {"name": name, "roster": _b64(record), "kind": kind, "mode": MODE_CHAINS}
    group = request(sock, "group.add", args)["group"]
    return {**group, "created": True, "changed": False, "added": len(roles)}


def _import_into_group(
    ns: argparse.Namespace,
    sock: Path,
    group: dict[str, Any],
    members: list[str],
    key: orgkey.OrgKeyFile | None,
) -> dict[str, Any]:
    """Add ``members`` to an existing organisation group, if any of them is not in it yet."""
    for attempt in range(UPDATE_ATTEMPTS):
        shown = request(sock, "group.show", {"group": group["conv_id"]})
        current = parse_roster_record(base64.b64decode(shown["roster"])).roster
        roles = dict(current.members)
        added = [u for u in dict.fromkeys(members) if u not in roles]
        if not added:
            return {**shown["group"], "created": False, "changed": False, "added": 0, "key": key}
        if key is None:
            key = _ready_key(ns, sock)[0]
        deleted = {userid.normalize(m["user_id"]) for m in shown["members"] if m["name"] is None}
        new_roles = orgkey.change_roles(roles, "add", added, deleted)
        record = sign_roster_org(current.next(members=new_roles), key.key)
        try:
            updated = request(
                sock, "group.update", {"group": group["conv_id"], "roster": _b64(record)}
            )
        except AdminError as e:
            if e.code == AdminErrorCode.CONFLICT and attempt + 1 < UPDATE_ATTEMPTS:
                continue  # another change came first: rebuild on top of it
            raise
        return {
            **updated["group"],
            "created": False,
            "changed": True,
            "added": len(added),
            "key": key,
        }
    raise AssertionError("unreachable")


def _import_invites_csv(users: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(INVITE_CSV_COLUMNS)
    for u in users:
        writer.writerow(
            [
                u["name"],
                u["user_id"],
                u.get("external_id") or "",
                "; ".join(u["groups"]),
                u["invite"]["link"],
                u["invite"]["expires"],
            ]
        )
    return out.getvalue()


def _show_user_import(result: dict[str, Any], args: argparse.Namespace) -> list[str] | None:
    kind = result["new_groups"]
    lines = [
        f"{_count(result['created'], 'user')} created, {result['matched']} matched; "
        f"{_count(result['groups_created'], kind)} created, {result['groups_changed']} changed."
    ]
    if result.get("linked"):
        linked = int(result["linked"])
        lines.append(
            f"{_count(linked, 'existing user')} matched by name now "
            f"{'carries its' if linked == 1 else 'carry their'} external_id from the file."
        )
    renamed = [u for u in result["users"] if not u["created"] and u["name"] != u["file_name"]]
    if renamed:
        first = renamed[0]
        lines.append(
            f"{_count(len(renamed), 'matched user')} "
            f"{'has' if len(renamed) == 1 else 'have'} another name in the file (e.g. line "
            f"{first['line']}: {first['file_name']!r}, is {first['name']!r}); an import does "
            "not rename: momedoctl user rename ID NAME"
        )
    invites = [u for u in result["users"] if u["invite"] is not None]
    to_stdout = False
    if not invites:
        lines.append(
            "No new users, so no new invites"
            + (f" ({args.output} left unchanged)." if args.output else ".")
            + " Letters for users without a device: momedoctl invites export --group G"
        )
    elif result.get("output"):
        lines.append(
            f"{_count(len(invites), 'invite')} of the new users written to {result['output']}."
        )
    else:
        to_stdout = True
    if to_stdout:
        sys.stdout.write(_import_invites_csv(invites))
        sys.stdout.flush()
        for line in lines:
            print(f"momedoctl: {line}", file=sys.stderr)
    if result.get("error"):
        if not to_stdout:
            print("\n".join(lines))
        raise CtlError(result["error"])
    return None if to_stdout else lines


# --- command line ----------------------------------------------------------------------------

_Show = Callable[[dict[str, Any], argparse.Namespace], "list[str] | None"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="momedoctl",
        description="Manage users, devices and groups of a running momedod through its admin "
        "socket.",
    )
    add_socket_arguments(parser)
    parser.add_argument(
        "--org-key",
        type=Path,
        metavar="FILE",
        help="organisation key file (default: $MOMEDO_ORG_KEY, else org.key next to the "
        "config file, with --dev in ./.momedo-dev)",
    )
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
    add.add_argument(
        "--bot", action="store_true", help="an integration account run by `momedo bridge`"
    )
    bot = command(
        users, "bot", "user.bot", _show_user_bot, "mark a user as a bot (integration) or not"
    )
    bot.add_argument("user_id", metavar="ID", help="user ID, e.g. M8N2-2HTR")
    bot.add_argument("state", choices=("on", "off"))
    listing = command(
        users, "list", "user.list", _show_user_list, "list users (the first 100 unless --all)"
    )
    listing.add_argument("--search", metavar="TEXT", help="part of the name or of the user ID")
    listing.add_argument("--disabled", action="store_true", help="only disabled users")
    listing.add_argument(
        "--never-enrolled",
        action="store_true",
        help="only users without an active device (invite not redeemed, or devices revoked)",
    )
    listing.add_argument(
        "--inactive",
        type=_positive_int,
        metavar="DAYS",
        help="only users none of whose devices signed in for DAYS days",
    )
    listing.add_argument("--all", action="store_true", help="every matching user, not 100")
    imports = command(
        users,
        "import",
        "user.import",
        _show_user_import,
        "create users and their group/channel memberships from a CSV file (columns name, "
        "groups, optional external_id); a repeated import changes nothing",
    )
    imports.add_argument("file", metavar="FILE.csv", help="UTF-8 CSV with a header row")
    imports.add_argument(
        "--new-groups",
        choices=("channel", "group"),
        default="channel",
        help="what a group named in the file that does not exist yet becomes (default: an "
        "announcement channel)",
    )
    imports.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the invites of the new users to FILE (CSV, mode 0600) instead of stdout",
    )
    rename = command(users, "rename", "user.rename", _show_user_rename, "give a user a new name")
    rename.add_argument("user_id", metavar="ID", help="user ID, e.g. M8N2-2HTR")
    rename.add_argument("name", nargs="+", help="the new name (quotes optional)")
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
    command(
        servers,
        "stats",
        "server.stats",
        _show_server_stats,
        "show connections, messages per second, mailbox backlog and store size",
    )

    cluster = groups.add_parser(
        "cluster", help="the nodes of a cluster ([cluster] in momedod.toml)"
    )
    clusters = cluster.add_subparsers(dest="action", required=True, metavar="ACTION")
    command(
        clusters,
        "status",
        "cluster.status",
        _show_cluster_status,
        "list every node with its state (live, dead, stopped), connections and heartbeat",
    )

    audit = command(
        groups, "audit", "audit.list", _show_audit, "show the newest entries of the audit log"
    )
    audit.add_argument(
        "--limit",
        type=_positive_int,
        default=AUDIT_DEFAULT_LIMIT,
        metavar="N",
        help=f"how many entries (default {AUDIT_DEFAULT_LIMIT}, at most 1000)",
    )
    audit.add_argument("--user", metavar="ID", help="only changes to this user")
    audit.add_argument(
        "--action", metavar="ACTION", help="only this action, e.g. user.disable (or user.)"
    )

    org = groups.add_parser("org", help="the organisation key that signs group rosters")
    orgs = org.add_subparsers(dest="action", required=True, metavar="ACTION")
    key = command(
        orgs,
        "key",
        "org.key",
        _show_org_key,
        "show the organisation key's fingerprint (creating and publishing it on first use)",
    )
    key.add_argument(
        "--rotate",
        action="store_true",
        help="replace it with a new key signed by the old one (the old file is kept)",
    )

    group = groups.add_parser("group", help="organisation groups and announcement channels")
    group_actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    gadd = command(group_actions, "add", "group.add", _show_group, "create a group (or --channel)")
    gadd.add_argument("name", nargs="+", help="its name, shown to members (quotes optional)")
    gadd.add_argument(
        "--channel", action="store_true", help="an announcement channel: only admins post"
    )
    gadd.add_argument(
        "--asymmetric",
        action="store_true",
        help="encrypt every message to every device (for small sensitive groups)",
    )
    command(group_actions, "list", "group.list", _show_group_list, "list groups and channels")
    for name, show, text in [
        ("show", _show_group_show, "show a group and its members"),
        ("delete", _show_group, "delete a group; its members are told"),
    ]:
        command(group_actions, name, f"group.{name}", show, text).add_argument(
            "target", metavar="G", help="group ID (or 6+ of its first hex digits) or name"
        )
    for name, text in [
        ("members", "add or remove members"),
        ("admins", "make members admins (who post in channels) or take it back"),
    ]:
        change = command(group_actions, name, f"group.{name}", _show_group, text)
        change.add_argument("target", metavar="G", help="group ID, ID prefix or name")
        change.add_argument("op", choices=("add", "remove"))
        change.add_argument("user_ids", nargs="+", metavar="USER_ID")

    quiet = groups.add_parser("quiet", help="quiet hours: when work messages reach phones")
    quiet_actions = quiet.add_subparsers(dest="action", required=True, metavar="ACTION")
    command(quiet_actions, "list", "quiet.list", _show_quiet_list, "policies and urgent senders")
    qset = command(
        quiet_actions,
        "set",
        "quiet.set",
        _show_quiet_set,
        "add or replace a policy: outside its working window wake-ups wait",
    )
    qset.add_argument("name", help="name of the policy")
    qset.add_argument("window", help="working window, e.g. 'Mon-Fri 07:00-18:00 Europe/Berlin'")
    qset.add_argument(
        "--defer", action="store_true", help="also hold back live delivery to mobile devices"
    )
    qset.add_argument("--user", action="append", default=[], metavar="USER_ID", help="repeatable")
    qset.add_argument("--group", action="append", default=[], metavar="G", help="repeatable")
    command(
        quiet_actions, "delete", "quiet.delete", _show_quiet_set, "remove a policy"
    ).add_argument("name", help="name of the policy")
    urgent = groups.add_parser("urgent", help="who may send urgent messages (pass quiet hours)")
    urgent_actions = urgent.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, metavar, text in [
        ("user", "USER_ID", "allow a user to send urgent messages anywhere (or stop it)"),
        ("group", "G", "allow urgent messages in a group or channel (or stop it)"),
    ]:
        sub = command(urgent_actions, name, "urgent.set", _show_urgent, text)
        sub.add_argument("subject", metavar=metavar)
        sub.add_argument("state", choices=("on", "off"))

    migrate = groups.add_parser(
        "migrate-store",
        help="copy a stopped SQLite installation into an empty PostgreSQL database",
        description="Copy the SQLite store of a STOPPED momedod (users, devices, queued "
        "messages, keys, groups, audit log, attachments) into an EMPTY PostgreSQL database "
        "in one transaction, check the row counts and print the [storage] settings to use. "
        "The SQLite database is only read: switching engine back to sqlite goes back.",
        parents=[late_json],
    )
    migrate.set_defaults(cmd="store.migrate", show=None)
    migrate.add_argument("--to", required=True, choices=("postgres",), help="target engine")
    migrate.add_argument(
        "--dsn",
        required=True,
        metavar="DSN",
        help="the target database, e.g. 'host=db1 dbname=momedo user=momedo' or a "
        "postgresql:// URI (a password is better kept in ~/.pgpass)",
    )
    migrate.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="momedod config file of the installation (as before the command)",
    )

    invites = groups.add_parser("invites", help="invite letters for many users at once")
    invite_actions = invites.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = command(
        invite_actions,
        "export",
        "invite.bulk",
        _show_invites_export,
        "make a NEW invite for every user without an active device (or with --all: every "
        "enabled user) and write them as CSV or as printable HTML letters",
    )
    export.add_argument("--format", choices=("csv", "html"), default="csv", help="default: csv")
    export.add_argument(
        "--all", action="store_true", help="every enabled user, also those with a device"
    )
    export.add_argument(
        "--group",
        metavar="G",
        help="only the members of group or channel G (ID, 6+ of its first hex digits, or name)",
    )
    export.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE (mode 0600) instead of stdout"
    )
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def _request_args(ns: argparse.Namespace) -> dict[str, Any]:
    if ns.cmd == "user.add":
        return {"name": " ".join(ns.name), **({"bot": True} if ns.bot else {})}
    if ns.cmd == "user.bot":
        return {"user_id": ns.user_id, "bot": ns.state == "on"}
    if ns.cmd == "user.rename":
        return {"user_id": ns.user_id, "name": " ".join(ns.name)}
    if ns.cmd == "server.backup":
        return {"dir": os.path.abspath(ns.dir)}
    if ns.cmd == "user.list":
        filters: dict[str, Any] = {}
        if ns.disabled:
            filters["disabled"] = True
        if ns.never_enrolled:
            filters["never_enrolled"] = True
        if ns.inactive:
            filters["inactive_days"] = ns.inactive
        listing: dict[str, Any] = {"limit": 1000 if ns.all else 100}
        if ns.search:
            listing["search"] = ns.search
        if filters:
            listing["filter"] = filters
        return listing
    if ns.cmd == "audit.list":
        audit: dict[str, Any] = {"limit": min(ns.limit, 1000)}
        if ns.user:
            audit["user_id"] = ns.user
        if ns.action:
            audit["action"] = ns.action
        return audit
    if ns.cmd == "invite.bulk":
        bulk: dict[str, Any] = {"scope": "all" if ns.all else "never_enrolled"}
        if ns.group is not None:
            bulk["group"] = ns.group
        return bulk
    if ns.cmd == "quiet.set":
        quiet: dict[str, Any] = {"name": ns.name, "window": ns.window, "defer_delivery": ns.defer}
        return {**quiet, "users": ns.user, "groups": ns.group}
    if ns.cmd == "quiet.delete":
        return {"name": ns.name}
    if ns.cmd == "urgent.set":
        key = "user_id" if ns.action == "user" else "group"
        return {key: ns.subject, "allowed": ns.state == "on"}
    args: dict[str, Any] = {}
    if hasattr(ns, "target"):
        args["group"] = ns.target
    if hasattr(ns, "user_id"):
        args["user_id"] = ns.user_id
    if hasattr(ns, "device_id"):
        args["device_id"] = ns.device_id
    return args


# Commands that are more than one request (and sign with the organisation key).
_FLOWS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "org.key": _org_key,
    "group.add": _group_add,
    "group.members": _group_change,
    "group.admins": _group_change,
    "user.import": _user_import,
}


def _run(ns: argparse.Namespace) -> dict[str, Any]:
    """Send the command's request(s) and return the (combined) result."""
    path = socket_path(ns)
    flow = _FLOWS.get(ns.cmd)
    if flow is not None:
        return flow(ns, path)
    timeout = BACKUP_TIMEOUT_S if ns.cmd == "server.backup" else REPLY_TIMEOUT_S
    args = _request_args(ns)
    result = request(path, ns.cmd, args, timeout=timeout)
    if ns.cmd == "user.list" and ns.all:
        users = list(result["users"])
        while result.get("next"):
            result = request(path, ns.cmd, {**args, "cursor": result["next"]}, timeout=timeout)
            users.extend(result["users"])
        result = {"users": users, "next": None}
    return result


def _migrate_store(ns: argparse.Namespace) -> int:
    """``momedoctl migrate-store --to postgres --dsn DSN``: see momedod.store.migrate."""
    from momedod.config import find_config_file, load_config
    from momedod.store.migrate import MigrateError, config_snippet, migrate_to_postgres

    try:
        config = load_config(ns.config, dev=ns.dev)
    except ConfigError as e:
        print(f"momedoctl: {e}", file=sys.stderr)
        return 1
    if config.storage.engine != "sqlite":
        print(
            f"momedoctl: the config file says engine = {json.dumps(config.storage.engine)}; "
            "migrate-store copies an SQLite installation: run it with the config that still "
            'says engine = "sqlite" (or none), then change it as printed',
            file=sys.stderr,
        )
        return 1
    state_dir = config.server.state_dir
    quiet = ns.json or not sys.stderr.isatty()
    try:
        result = migrate_to_postgres(
            state_dir,
            ns.dsn,
            admin_socket=config.admin.socket,
            progress=None if quiet else (lambda text: print(f"  {text}", file=sys.stderr)),
        )
    except MigrateError as e:
        print(f"momedoctl: {e}", file=sys.stderr)
        return 1
    snippet = config_snippet(ns.dsn)
    source = find_config_file(ns.config, dev=ns.dev)
    if ns.json:
        print(
            json.dumps(
                {
                    "tables": result.counts,
                    "blob_files": result.blob_files,
                    "blob_bytes": result.blob_bytes,
                    "warnings": result.warnings,
                    "seconds": round(result.seconds, 3),
                    "target": result.target,
                    "config": snippet,
                },
                indent=2,
            )
        )
        return 0
    lines = [f"Copied {state_dir} into {result.target} in {result.seconds:.1f} s:"]
    width = max(len(t) for t in result.counts)
    lines += [f"  {table:<{width}}  {n:>9} rows" for table, n in result.counts.items()]
    lines.append(
        f"  {'attachments':<{width}}  {result.blob_files:>9} files, {result.blob_bytes} bytes"
    )
    lines.append("Every table has the same number of rows in both databases.")
    lines += [f"warning: {w}" for w in result.warnings]
    lines += [
        "",
        f"Next: in {source or 'the momedod config file'} set (replacing any [storage] section)",
        "",
        snippet,
        "",
        "then start momedod (systemctl start momedod). The SQLite database was not changed:",
        'to go back, set engine = "sqlite" again and remove dsn (anything received on',
        "PostgreSQL meanwhile stays there). The blobs directory is no longer used.",
    ]
    print("\n".join(lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``momedoctl``; returns the exit code (argparse exits 2 on usage errors)."""
    ns = _build_parser().parse_args(argv)
    if ns.cmd == "store.migrate":
        return _migrate_store(ns)
    try:
        result = _run(ns)
    except (ConfigError, CtlError, AdminError) as e:
        print(f"momedoctl: {e}", file=sys.stderr)
        return 1
    if ns.json:
        text = json.dumps(result, indent=2, ensure_ascii=False)
        if ns.cmd == "invite.bulk" and ns.output is not None:
            try:
                _write_private(Path(ns.output), text + "\n")
            except CtlError as e:
                print(f"momedoctl: {e}", file=sys.stderr)
                return 1
        else:
            print(text)
        if ns.cmd == "user.import" and result.get("error"):
            print(f"momedoctl: {result['error']}", file=sys.stderr)
            return 1
    else:
        try:
            lines = ns.show(result, ns)
        except CtlError as e:
            print(f"momedoctl: {e}", file=sys.stderr)
            return 1
        except (AdminError, KeyError, TypeError, ValueError) as e:
            print(f"momedoctl: unexpected reply from momedod ({e}); try --json", file=sys.stderr)
            return 1
        if lines is not None:
            print("\n".join(lines))
    if ns.cmd == "server.backup" and (problem := _backup_visible(result)):
        print(f"momedoctl: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
