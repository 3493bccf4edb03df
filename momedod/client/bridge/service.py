"""The bridge's client side: one connected bot device, shared by the receive loop and the API.

Theory of operation. One task owns the connection (:meth:`Bridge._connection_loop`): it
connects, publishes due prekeys, then processes deliveries until the connection fails, and
reconnects after a jittered, doubling back-off (1 s … 60 s). Connecting goes through
:func:`~momedod.client.transport.connect`: a server with several nodes has several
addresses, and each attempt tries them all, the one that last worked first; a certificate
that matches none of the pins is logged as ``bridge_pin_mismatch`` naming the address.
Each connection gets a fresh :class:`~momedod.client.messenger.Messenger` over the state
*as saved*: whatever a failed connection changed in memory and did not save is forgotten,
and the server redelivers what was not acked.

Every use of the messenger's state holds ``self._lock``, so a send never interleaves with a
delivery being processed. A delivery is processed as: handle (decrypt; E2E state changed in
memory) → download and decrypt its attachments → commit message and attachments to the
inbox (fsynced) → save the E2E state → ACK. A crash anywhere before the inbox commit leaves
the delivery unacked and the state unsaved, so it is processed again; a crash after it makes
the redelivery a duplicate the inbox ignores (``msg_id`` is unique).
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio

from momedod.client import blobs
from momedod.client.attachments import (
    fetch_attachment,
    image_size,
    message_pointers,
    pointer_json,
)
from momedod.client.bridge.inbox import BRIDGE_DIR, Inbox, NewAttachment
from momedod.client.messenger import (
    KeyChangedError,
    Message,
    Messenger,
    MessengerError,
    Notice,
    maintain_prekeys,
)
from momedod.client.profile import Profile
from momedod.client.transport import Backoff, Client, ClientError, ServerError
from momedod.client.transport import connect as transport_connect
from momedod.e2e.attachment import AttachmentPointer, encrypt_attachment
from momedod.e2e.envelope import ContentType
from momedod.e2e.errors import E2EError
from momedod.e2e.rich import RichText
from momedod.e2e.roster import KIND_CHANNEL
from momedod.protocol import frames as f
from momedod.protocol.errors import ErrorCode
from momedod.protocol.userid import display

log = structlog.get_logger("momedo.bridge")

TOKEN_NAME = "token"
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0
KEEPALIVE_S = 30.0
CONNECT_WAIT_S = 10.0
"""How long an API send waits for a connection before answering 503."""
KEEP_DAYS = 30
"""Inbox messages (and attachment files) older than this, already delivered, are deleted."""


class BridgeError(Exception):
    """The bridge cannot start (token file, profile)."""


class RequestError(Exception):
    """An API request the bridge refuses: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


def load_token(path: Path) -> tuple[str, bool]:
    """The API token from ``path``; a missing file is created (mode 0600, 256 random bits).
    Returns ``(token, created)``. Refuses a file that group or others may read or write."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as e:
        raise BridgeError(f"cannot create the token file {path}: {e.strerror}") from None
    else:
        token = secrets.token_urlsafe(32)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return token, True
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise BridgeError(f"cannot read the token file {path}: {e}") from None
    if mode & 0o077:
        raise BridgeError(
            f"{path} is accessible to group or others (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}"
        )
    if len(text) < 16 or any(c.isspace() for c in text):
        raise BridgeError(f"{path}: the token must be one word of at least 16 characters")
    return text, False


def default_token_file(profile: Profile) -> Path:
    d = profile.path / BRIDGE_DIR
    d.mkdir(mode=0o700, exist_ok=True)
    return d / TOKEN_NAME


@dataclass(frozen=True)
class OutAttachment:
    """A file to send: name, MIME type, bytes and an optional location (lat, lon, metres)."""

    name: str
    mime: str
    data: bytes
    location: tuple[float, float, float] | None = None


@dataclass
class OutMessage:
    """What ``POST /v1/messages`` asks to send (exactly one of ``to`` and ``group``)."""

    to: str | None
    group: str | None
    text: str = ""
    attachments: list[OutAttachment] = field(default_factory=list)
    metadata: dict[str, Any] | None = None
    reply_to: bytes = b""


# What an inbound attachment shows of its pointer (never the key, nor the blob ID: the API
# serves the decrypted bytes by the bridge's own ID).
_ATTACHMENT_FIELDS = ("name", "mime", "size", "width", "height", "taken_ms", "location")


class Bridge:
    """The bot device: connection, inbound processing and sending."""

    def __init__(self, profile: Profile, inbox: Inbox) -> None:
        self.profile = profile
        self.inbox = inbox
        self.user_id = profile.credentials().user_id
        self._lock = trio.Lock()
        self._msgr: Messenger | None = None
        self._connected = trio.Event()
        self.on_stored: list[Any] = []  # callables woken after a message was committed
        self.last_error: str | None = None
        # Waits between reconnection attempts (each a round over every server address).
        self.backoff = Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S)

    @property
    def connected(self) -> bool:
        return self._msgr is not None

    # -- the connection ----------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the device connected and process deliveries, forever."""
        failures = 0
        while True:
            started = trio.current_time()
            try:
                async with transport_connect(
                    self.profile.credentials(), rounds=1, on_warning=self._pin_warning
                ) as client:
                    await self._session(client)
            except* (ClientError, OSError, E2EError, MessengerError) as group:
                self.last_error = str(group.exceptions[0])
                log.warning("bridge_disconnected", error=self.last_error)
            finally:
                self._msgr = None
                self._connected = trio.Event()
            if trio.current_time() - started > 2 * self.backoff.max_s:
                failures = 0  # it was up for a while: a new failure starts low again
            await trio.sleep(self.backoff.delay(failures))
            failures += 1

    def _pin_warning(self, text: str) -> None:
        log.warning("bridge_pin_mismatch", error=text)

    async def _session(self, client: Client) -> None:
        async with self._lock:
            state = self.profile.load_state()
            for n in await maintain_prekeys(self.profile, client, state):
                self._log_notice(n)
            msgr = Messenger(self.profile, client, state)
            for n in await msgr.self_check():
                self._log_notice(n)
        self._msgr = msgr
        self._connected.set()
        self.last_error = None
        log.info("bridge_connected", user_id=display(self.user_id), device_id=client.device_id)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keepalive, client)
            try:
                while True:
                    ev = await client.receive()
                    if isinstance(ev, f.Deliver):
                        await self._process(msgr, ev)
            finally:
                nursery.cancel_scope.cancel()

    async def _keepalive(self, client: Client) -> None:
        # A silent network drop is noticed within one interval: the PING times out.
        while True:
            await trio.sleep(KEEPALIVE_S)
            try:
                with trio.fail_after(KEEPALIVE_S):
                    await client.ping()
            except (trio.TooSlowError, ClientError):
                raise ClientError("the server does not answer PING") from None

    def _log_notice(self, n: Notice) -> None:
        (log.info if n.kind == "info" else log.warning)("bridge_notice", kind=n.kind, text=n.text)

    async def _process(self, msgr: Messenger, ev: f.Deliver) -> None:
        async with self._lock:
            stored = False
            for event in await msgr.handle(ev):
                if isinstance(event, Notice):
                    self._log_notice(event)
                elif not event.outgoing:
                    body, atts = await self._record(msgr, event)
                    cursor = await trio.to_thread.run_sync(
                        self.inbox.add, event.msg_id, int(time.time() * 1000), body, atts
                    )
                    stored = stored or cursor is not None
                    log.info("bridge_received", msg_id=event.msg_id, cursor=cursor)
            msgr.save()
        await msgr.client.ack([ev.seq])
        if stored:
            for wake in self.on_stored:
                wake()

    async def _record(
        self, msgr: Messenger, msg: Message
    ) -> tuple[dict[str, Any], list[NewAttachment]]:
        """The inbox entry for ``msg`` and its decrypted attachments. A blob that is gone or
        does not verify is recorded with an ``error``; a lost connection raises (the delivery
        is not acked and comes again)."""
        atts: list[dict[str, Any]] = []
        files: list[NewAttachment] = []
        try:
            pointers = message_pointers(msg)
        except E2EError:
            pointers = []
        for i, ptr in enumerate(pointers):
            ident = f"{msg.msg_id}-{i}"
            shown = pointer_json(ptr)
            entry: dict[str, Any] = {"id": ident, **{k: shown[k] for k in _ATTACHMENT_FIELDS}}
            try:
                data = await fetch_attachment(msgr, ptr)
                files.append(NewAttachment(ident, ptr.name, ptr.mime, data))
            except E2EError as e:
                entry["id"], entry["error"] = None, f"cannot decrypt ({e.reason})"
            except ServerError as e:
                gone = e.code == ErrorCode.NOT_FOUND
                entry["id"], entry["error"] = None, "not available" if gone else str(e)
            atts.append(entry)
        if msg.group is not None:
            g = msgr.state.groups.get(msg.group)
            kind = "channel" if g is not None and g.kind == KIND_CHANNEL else "group"
            conversation = {"type": kind, "id": msg.group, "name": msg.group_name}
        else:
            conversation = {"type": "direct", "id": display(msg.sender), "name": None}
        location = next((a["location"] for a in atts if a["location"]), None)
        in_reply_to = None
        if msg.reply_to is not None:
            in_reply_to = await trio.to_thread.run_sync(self.inbox.sent, msg.reply_to)
        body = {
            "id": msg.msg_id,
            "received_ms": int(time.time() * 1000),
            "sent_ms": msg.ts_ms,
            "from": {"user_id": display(msg.sender), "device_id": msg.device_id},
            "conversation": conversation,
            "text": msg.text,
            "reply_to": msg.reply_to,
            "in_reply_to": in_reply_to,
            "metadata": msg.metadata,
            "location": location,
            "attachments": atts,
            "warnings": list(msg.warnings),
        }
        return body, files

    # -- sending -----------------------------------------------------------------------------

    async def _messenger(self) -> Messenger:
        with trio.move_on_after(CONNECT_WAIT_S):
            await self._connected.wait()
        if self._msgr is None:
            why = f": {self.last_error}" if self.last_error else ""
            raise RequestError(503, f"not connected to the momedo server{why}")
        return self._msgr

    async def send(self, out: OutMessage) -> dict[str, Any]:
        """Encrypt, upload and send; returns once the server has accepted the message."""
        msgr = await self._messenger()
        try:
            return await self._send(msgr, out)
        except KeyChangedError as e:
            raise RequestError(409, str(e)) from None
        except MessengerError as e:
            raise RequestError(422, str(e)) from None
        except ServerError as e:
            if e.code in (ErrorCode.TOO_LARGE, ErrorCode.QUOTA_EXCEEDED):
                raise RequestError(413, f"the server refuses: {e}") from None
            raise RequestError(502, f"the server refuses: {e}") from None
        except ClientError as e:
            raise RequestError(503, f"connection lost, not sent: {e}") from None

    async def _send(self, msgr: Messenger, out: OutMessage) -> dict[str, Any]:
        for att in out.attachments:  # refuse a bad name or type before anything is uploaded
            try:
                AttachmentPointer(bytes(16), bytes(32), bytes(32), 0, att.mime, att.name)
            except ValueError as e:
                raise RequestError(400, f"attachment {att.name!r}: {e}") from None
        pointers: list[AttachmentPointer] = []
        for att in out.attachments:
            ct, key, digest = await trio.to_thread.run_sync(encrypt_attachment, att.data)
            blob_id = os.urandom(16)
            await blobs.upload_blob(msgr.client, blob_id, ct)
            width, height = image_size(att.data[: 1 << 16])
            loc = att.location
            pointers.append(
                AttachmentPointer(
                    blob_id,
                    key,
                    digest,
                    len(att.data),
                    att.mime,
                    att.name,
                    "",
                    width,
                    height,
                    int(time.time() * 1000),
                    loc[0] if loc else None,
                    loc[1] if loc else None,
                    loc[2] if loc else 0.0,
                )
            )
        blob_ids = [p.blob_id for p in pointers]
        if not pointers and out.metadata is None and not out.reply_to:
            content_type, content = ContentType.TEXT, out.text.encode("utf-8")
        else:
            content_type = ContentType.RICH_TEXT
            try:
                rich = RichText.build(out.text, out.reply_to, out.metadata, tuple(pointers))
            except ValueError as e:
                raise RequestError(400, str(e)) from None
            content = rich.encode()
        log_text = out.text if not pointers else f"({len(pointers)} file(s)) {out.text}".strip()
        async with self._lock:
            if self._msgr is not msgr:
                raise ClientError("the connection was replaced")
            if out.to is not None:
                batch, notices = await msgr.prepare_text(
                    out.to, out.text, content_type=content_type, content=content
                )
                for one in batch.sends:
                    if blob_ids:
                        await msgr.client.send_blobs(
                            one.message_id, one.payload, one.recipients, blob_ids
                        )
                    else:
                        await msgr.client.send(one.message_id, one.payload, one.recipients)
                msgr.sent(batch, log_text, out.to)
                msg_id, devices = batch.message_id, len(batch.recipients)
            else:
                assert out.group is not None
                notices = []
                conv_id = await msgr.groups.find(out.group, notices)
                try:
                    g_out, more = await msgr.groups.prepare(
                        conv_id, content_type, content, blob_ids
                    )
                finally:
                    msgr.save()
                notices += more
                await msgr.client.conv_send(
                    g_out.message_id, conv_id, g_out.payload, g_out.parts, blob_ids
                )
                if g_out.chain is not None:
                    msgr.sent(g_out.chain, log_text, f"group:{conv_id.hex()}")
                else:
                    msgr.log_sent(g_out.message_id, log_text, f"group:{conv_id.hex()}")
                msg_id, devices = g_out.message_id, len(g_out.devices)
        sent_ms = int(time.time() * 1000)
        record: dict[str, Any] = {
            "sent_ms": sent_ms,
            "to": display(out.to) if out.to else None,
            "group": out.group,
            "text": out.text,
            "metadata": out.metadata,
        }
        await trio.to_thread.run_sync(self.inbox.add_sent, msg_id.hex(), sent_ms, record)
        for n in notices:
            self._log_notice(n)
        log.info("bridge_sent", msg_id=msg_id.hex(), devices=devices)
        return {
            "id": msg_id.hex(),
            "devices": devices,
            "warnings": [n.text for n in notices if n.kind in ("warning", "alarm")],
        }
