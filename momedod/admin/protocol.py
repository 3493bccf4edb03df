"""The admin protocol: JSON lines over the daemon's Unix socket (sans-IO).

Theory of operation: a client writes one JSON object per line and reads one reply line per
request, in order::

    {"id": 7, "cmd": "user.add", "args": {"name": "Anna Schmidt"}}
    {"id": 7, "ok": true, "result": {"user": {...}, "invite": {...}}}
    {"id": 7, "ok": false, "error": {"code": "not_found", "message": "no user M8N2-2HTR"}}

Lines are UTF-8 and at most ``MAX_LINE_BYTES`` long. ``id`` is chosen by the client (an
integer, a string or null) and echoed; a line that is not JSON is answered with id null.
This module holds only the message shapes, so the daemon, ``momedoctl`` and ``momedo-tui``
(asyncio) share it; it imports no event loop, no sockets and nothing else of momedod.

Arguments: :data:`COMMANDS` names the arguments each command requires, :data:`OPTIONAL_ARGS`
those it also accepts; any other argument is a ``bad_request``.

Groups and the organisation key: binary records travel as standard base64 strings.
``org.key.get`` answers ``{"records": [...], "version": n, "fingerprint": text-or-null}``;
``org.key.put {record}`` appends the next OrgKeyRecord (the daemon verifies the chain; it
never sees the private key). ``group.add {name, roster, kind?, mode?}`` and ``group.update
{group, roster}`` take a RosterRecord signed with the organisation key (momedoctl signs it);
``group`` is a conversation ID (32 hex characters), a unique prefix of at least 6, or a
unique name. ``user.import {rows: [{name, external_id?}, ...]}`` matches or creates a user
per row in one transaction (see docs/ADMIN.md). ``group.list`` answers ``{"groups": [G,
...]}``, ``group.show`` ``{"group": G, "members": [{"user_id", "name", "role"}], "roster":
record}``, where ``G`` = ``{"conv_id", "name", "kind": "group"|"channel", "managed",
"epoch", "members", "created"}``.

Lists are paged. ``user.list`` takes ``limit`` (1-1000, default 100) and ``cursor`` and
answers ``{"users": [U, ...], "next": cursor-or-null}``; pass ``next`` back as ``cursor`` to
get the following page (a cursor is an opaque string and stays valid while users are added
or deleted). ``audit.list`` answers ``{"entries": [A, ...], "next": id-or-null}``, newest
first; pass ``next`` back as ``before``.

The subscribe stream
--------------------
``{"id": 1, "cmd": "subscribe", "args": {"interval": 1.0}}`` (interval in seconds, 0.5 to
60, default 1) is answered like any request, ``{"id": 1, "ok": true, "result":
{"subscribed": true, "interval": 1.0}}``, and from then on the connection carries only event
lines, one JSON object each, until the client closes it (the server reads and ignores
anything else the client sends)::

    {"event": "stats", "data": S}   # at once, then every interval; S = server.stats result
    {"event": "audit", "data": A}   # each new audit entry, as in audit.list, oldest first
    {"event": "log",   "data": L}   # each warning or error the daemon logs

``L`` is ``{"level": "warning"|"error", "event": "reload.failed", "time":
"2026-12-01T10:00:00Z", "fields": {...}}``: the log event's other
key/value pairs, after the same redaction as the log itself (values that are not JSON
become strings). Event lines never have an ``"id"``, replies always do: a client tells them
apart by the ``"event"`` key (:func:`decode_line`). Only entries made after the subscription
are sent; fetch history with ``audit.list``. If the client reads too slowly the server
closes the connection; log entries it could not send in time may be skipped.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "AUDIT_LIST_LIMIT",
    "COMMANDS",
    "EVENT_KINDS",
    "IMPORT_MAX_ROWS",
    "INVITE_SCOPES",
    "MAX_EXTERNAL_ID_CHARS",
    "MAX_LINE_BYTES",
    "MAX_NAME_CHARS",
    "OPTIONAL_ARGS",
    "USER_LIST_LIMIT",
    "AdminError",
    "AdminErrorCode",
    "AuditInfo",
    "DeviceInfo",
    "Event",
    "InviteInfo",
    "Request",
    "RequestId",
    "Response",
    "UserInfo",
    "decode_line",
    "decode_request",
    "decode_response",
    "encode_event",
    "encode_request",
    "encode_response",
    "format_time",
    "name_problem",
    "parse_request",
    "parse_time",
]

MAX_LINE_BYTES = 1024 * 1024
"""Longest request line the server accepts (replies may be longer)."""

RequestId = int | str | None

# Command name -> the argument names it requires.
COMMANDS: dict[str, tuple[str, ...]] = {
    "server.info": (),
    "server.stats": (),
    "server.backup": ("dir",),
    "cluster.status": (),
    "user.add": ("name",),
    "user.list": (),
    "user.show": ("user_id",),
    "user.rename": ("user_id", "name"),
    "user.disable": ("user_id",),
    "user.enable": ("user_id",),
    "user.bot": ("user_id", "bot"),
    "user.delete": ("user_id",),
    "user.invite": ("user_id",),
    "user.import": ("rows",),
    "invite.bulk": ("scope",),
    "device.list": ("user_id",),
    "device.revoke": ("user_id", "device_id"),
    "audit.list": (),
    "subscribe": (),
    "org.key.get": (),
    "org.key.put": ("record",),
    "group.add": ("name", "roster"),
    "group.list": (),
    "group.show": ("group",),
    "group.update": ("group", "roster"),
    "group.delete": ("group",),
    "quiet.list": (),
    "quiet.set": ("name", "window"),
    "quiet.delete": ("name",),
    "urgent.set": ("allowed",),
}

# Command name -> the arguments it accepts besides the required ones.
OPTIONAL_ARGS: dict[str, tuple[str, ...]] = {
    "user.list": ("limit", "cursor", "search", "filter"),
    "audit.list": ("limit", "before", "user_id", "action"),
    "subscribe": ("interval",),
    "user.add": ("bot",),
    "group.add": ("kind", "mode"),
    "invite.bulk": ("group",),
    "quiet.set": ("defer_delivery", "users", "groups"),
    "urgent.set": ("user_id", "group"),
}

USER_LIST_LIMIT = (100, 1000)
"""``user.list``: (default, maximum) users per page."""
AUDIT_LIST_LIMIT = (100, 1000)
"""``audit.list``: (default, maximum) entries per page."""
INVITE_SCOPES = ("never_enrolled", "all")
"""``invite.bulk`` scopes: users without an active device, or every enabled user."""
MAX_NAME_CHARS = 100
"""Longest user name, in characters."""
MAX_EXTERNAL_ID_CHARS = 100
"""Longest external_id (the ID in the organisation's own records), in characters."""
IMPORT_MAX_ROWS = 20_000
"""``user.import``: most rows in one request."""
# Control characters, line/paragraph separators and lone surrogates have no place in a name.
_BAD_NAME_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def name_problem(name: str, what: str = "name", limit: int = MAX_NAME_CHARS) -> str | None:
    """Why ``name`` (already stripped) cannot be a user name (or, with ``what`` and
    ``limit``, an external_id); None if it can. The daemon's rule, shared with momedoctl so
    that a CSV import reports bad lines before it sends anything."""
    if not name:
        return f"{what} must not be empty"
    if len(name) > limit:
        return f"{what} is {len(name)} characters long; at most {limit} are allowed"
    for c in name:
        if unicodedata.category(c) in _BAD_NAME_CATEGORIES:
            return f"{what} must not contain control characters (found U+{ord(c):04X})"
    return None


class AdminErrorCode(StrEnum):
    """The ``error.code`` strings of a failed reply."""

    BAD_REQUEST = "bad_request"  # not a JSON object / missing or mistyped fields
    UNKNOWN_COMMAND = "unknown_command"
    NOT_FOUND = "not_found"  # no such user or device
    INVALID_ARGUMENT = "invalid_argument"  # e.g. a malformed user ID or name
    CONFLICT = "conflict"  # not possible in the current state (e.g. already revoked)
    INTERNAL = "internal"  # server-side failure; see the daemon's log


class AdminError(Exception):
    """A failed admin request: ``code`` for programs, ``message`` for the operator."""

    def __init__(self, code: AdminErrorCode, message: str, *, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id  # set when the request could be identified

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Request:
    """One admin request."""

    cmd: str
    args: dict[str, Any] = field(default_factory=dict)
    id: RequestId = None


@dataclass(frozen=True)
class Response:
    """One admin reply: ``result`` when it succeeded, ``error`` when not."""

    id: RequestId
    result: dict[str, Any] | None = None
    error: AdminError | None = None

    @property
    def ok(self) -> bool:
        """True if the request succeeded."""
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        """The reply object as it goes on the wire."""
        if self.error is not None:
            error = {"code": str(self.error.code), "message": self.error.message}
            return {"id": self.id, "ok": False, "error": error}
        return {"id": self.id, "ok": True, "result": self.result or {}}


def _line(obj: dict[str, Any]) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape: keep it escaped
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _valid_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or type(value) is int


def encode_request(request: Request) -> bytes:
    """One request line, newline-terminated."""
    return _line({"id": request.id, "cmd": request.cmd, "args": request.args})


def parse_request(obj: Any) -> Request:
    """Check the shape of a decoded request object; raise AdminError(bad_request) if wrong.

    Only the envelope is checked here; whether ``cmd`` exists and its arguments are valid is
    the handler's business.
    """
    if not isinstance(obj, dict):
        raise AdminError(AdminErrorCode.BAD_REQUEST, "request must be a JSON object")
    request_id = obj.get("id")
    if not _valid_id(request_id):
        raise AdminError(AdminErrorCode.BAD_REQUEST, '"id" must be an integer, a string or null')
    cmd, args = obj.get("cmd"), obj.get("args", {})
    if not isinstance(cmd, str):
        raise AdminError(
            AdminErrorCode.BAD_REQUEST, 'request needs "cmd" (a string)', request_id=request_id
        )
    if not isinstance(args, dict):
        raise AdminError(
            AdminErrorCode.BAD_REQUEST, '"args" must be a JSON object', request_id=request_id
        )
    extra = sorted(set(obj) - {"id", "cmd", "args"})
    if extra:
        raise AdminError(
            AdminErrorCode.BAD_REQUEST,
            f"unknown request field(s): {', '.join(extra)}",
            request_id=request_id,
        )
    return Request(cmd=cmd, args=args, id=request_id)


def decode_request(line: bytes) -> Request:
    """Parse one request line (with or without its newline)."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise AdminError(AdminErrorCode.BAD_REQUEST, "request is not valid UTF-8") from None
    except json.JSONDecodeError as e:
        message = f"request is not valid JSON: {e.msg}"
        raise AdminError(AdminErrorCode.BAD_REQUEST, message) from None
    except (ValueError, RecursionError):  # an integer of > 4300 digits, or nesting too deep
        message = "request is not valid JSON: a number is too long or nesting too deep"
        raise AdminError(AdminErrorCode.BAD_REQUEST, message) from None
    return parse_request(obj)


def encode_response(response: Response) -> bytes:
    """One reply line, newline-terminated."""
    return _line(response.to_json())


def decode_response(line: bytes) -> Response:
    """Parse one reply line; a malformed reply raises AdminError(internal)."""

    def bad(why: str) -> AdminError:
        return AdminError(AdminErrorCode.INTERNAL, f"malformed reply from momedod: {why}")

    try:
        obj = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or too long/deep a JSON
        raise bad("not JSON") from None
    if not isinstance(obj, dict) or not _valid_id(obj.get("id")):
        raise bad("not a reply object")
    if obj.get("ok") is True and isinstance(obj.get("result"), dict):
        return Response(id=obj["id"], result=obj["result"])
    error = obj.get("error")
    if obj.get("ok") is False and isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        if isinstance(code, str) and isinstance(message, str):
            try:
                known = AdminErrorCode(code)
            except ValueError:
                known = AdminErrorCode.INTERNAL
            return Response(id=obj["id"], error=AdminError(known, message))
    raise bad("neither a result nor an error")


# --- result shapes -------------------------------------------------------------------------


def format_time(ms: int) -> str:
    """Milliseconds since the epoch as ISO-8601 UTC, e.g. ``2026-12-06T19:00:00Z``."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """An ISO-8601 time from a reply as an aware datetime."""
    return datetime.fromisoformat(text)


def _field(obj: Any, name: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(name) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise AdminError(AdminErrorCode.INTERNAL, f"malformed reply from momedod: bad {name!r}")
    return value


def _optional(obj: Any, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    """A field that older servers do not send."""
    if isinstance(obj, dict) and name not in obj:
        return default
    return _field(obj, name, kind)


@dataclass(frozen=True)
class UserInfo:
    """A user as the admin protocol shows it.

    ``devices`` counts active devices; ``last_seen`` is the latest sign-in of any of the
    user's devices (None: never), ``mailbox`` the messages waiting for them.
    """

    user_id: str  # display form, XXXX-XXXX
    name: str
    created: str
    disabled: bool
    devices: int
    last_seen: str | None = None
    mailbox: int = 0
    external_id: str | None = None  # the ID in the organisation's records (CSV import)
    bot: bool = False  # an integration account run by ``momedo bridge``

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``U``."""
        return {
            "user_id": self.user_id,
            "name": self.name,
            "created": self.created,
            "disabled": self.disabled,
            "devices": self.devices,
            "last_seen": self.last_seen,
            "mailbox": self.mailbox,
            "external_id": self.external_id,
            "bot": self.bot,
        }

    @classmethod
    def from_json(cls, obj: Any) -> UserInfo:
        """Parse ``U`` from a reply."""
        return cls(
            user_id=_field(obj, "user_id", str),
            name=_field(obj, "name", str),
            created=_field(obj, "created", str),
            disabled=_field(obj, "disabled", bool),
            devices=_field(obj, "devices", int),
            last_seen=_optional(obj, "last_seen", (str, type(None)), None),
            mailbox=_optional(obj, "mailbox", int, 0),
            external_id=_optional(obj, "external_id", (str, type(None)), None),
            bot=_optional(obj, "bot", bool, False),
        )


@dataclass(frozen=True)
class DeviceInfo:
    """A device as the admin protocol shows it (``mailbox`` = undelivered messages)."""

    device_id: int
    name: str
    created: str
    last_seen: str | None
    revoked: str | None
    mailbox: int

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``D``."""
        return {
            "device_id": self.device_id,
            "name": self.name,
            "created": self.created,
            "last_seen": self.last_seen,
            "revoked": self.revoked,
            "mailbox": self.mailbox,
        }

    @classmethod
    def from_json(cls, obj: Any) -> DeviceInfo:
        """Parse ``D`` from a reply."""
        return cls(
            device_id=_field(obj, "device_id", int),
            name=_field(obj, "name", str),
            created=_field(obj, "created", str),
            last_seen=_field(obj, "last_seen", (str, type(None))),
            revoked=_field(obj, "revoked", (str, type(None))),
            mailbox=_field(obj, "mailbox", int),
        )


@dataclass(frozen=True)
class InviteInfo:
    """An invite: the one-time code, the full link to hand out and its expiry."""

    code: str
    link: str
    expires: str

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``I``."""
        return {"code": self.code, "link": self.link, "expires": self.expires}

    @classmethod
    def from_json(cls, obj: Any) -> InviteInfo:
        """Parse ``I`` from a reply."""
        return cls(
            code=_field(obj, "code", str),
            link=_field(obj, "link", str),
            expires=_field(obj, "expires", str),
        )


@dataclass(frozen=True)
class AuditInfo:
    """An audit-log entry ``A``: who (Unix ``uid``, None if unknown) did what, when, to whom.

    ``target`` is what the change was about in operator form (``Q7AW-GNX9``,
    ``Q7AW-GNX9/1``, a backup directory); ``user_id`` the user it concerns, if any.
    ``detail`` holds extra facts (e.g. ``name`` for user.add, ``old_name`` and ``name`` for
    user.rename), never invite codes or keys.
    """

    id: int
    time: str
    uid: int | None
    action: str
    target: str
    user_id: str | None
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``A``."""
        return {
            "id": self.id,
            "time": self.time,
            "uid": self.uid,
            "action": self.action,
            "target": self.target,
            "user_id": self.user_id,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, obj: Any) -> AuditInfo:
        """Parse ``A`` from a reply or an audit event."""
        return cls(
            id=_field(obj, "id", int),
            time=_field(obj, "time", str),
            uid=_field(obj, "uid", (int, type(None))),
            action=_field(obj, "action", str),
            target=_field(obj, "target", str),
            user_id=_field(obj, "user_id", (str, type(None))),
            detail=_field(obj, "detail", dict),
        )


EVENT_KINDS = ("stats", "audit", "log")
"""The ``event`` values of a subscribe stream."""


@dataclass(frozen=True)
class Event:
    """One line of a subscribe stream: ``{"event": kind, "data": {...}}``."""

    kind: str
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The event object as it goes on the wire."""
        return {"event": self.kind, "data": self.data}


def encode_event(event: Event) -> bytes:
    """One event line, newline-terminated."""
    return _line(event.to_json())


def decode_line(line: bytes) -> Response | Event:
    """Parse a line read from the admin socket: a reply, or (after subscribe) an event.

    Event kinds other than those in :data:`EVENT_KINDS` may appear in later versions; a client
    should skip events it does not know. A malformed line raises AdminError(internal).
    """
    try:
        obj = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or too long/deep a JSON
        raise AdminError(AdminErrorCode.INTERNAL, "malformed line from momedod: not JSON") from None
    if isinstance(obj, dict) and "event" in obj and "id" not in obj:
        kind, data = obj.get("event"), obj.get("data")
        if isinstance(kind, str) and isinstance(data, dict):
            return Event(kind, data)
        raise AdminError(AdminErrorCode.INTERNAL, "malformed event from momedod")
    return decode_response(line)
