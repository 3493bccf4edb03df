"""Attachments in the client (docs/E2E.md, "Attachments in the client").

Sending (:func:`send_file`): the file is encrypted chunk by chunk
(:class:`~momedod.e2e.attachment.AttachmentEncryptor`) into ``PROFILE/outbox/<id>.blob``
next to ``<id>.json`` (blob_id, the key K, the ciphertext's SHA-256, the file's size and
mtime), uploaded with :func:`~momedod.client.blobs.upload_blob` (which resumes where the
server's copy ends), and announced by an ordinary end-to-end message whose content (type 5
ATTACHMENT) is the :class:`~momedod.e2e.attachment.AttachmentPointer`; the SEND
(SEND_BLOBS) or CONV_SEND names the blob so its readers may fetch it. Running the same
``send --file`` again after an interruption finds the outbox entry (same path, size and
mtime) and continues the same upload. The outbox entry is deleted once the message is
accepted.

Receiving (:func:`saver`): with ``--save-dir`` the blob is downloaded, its SHA-256 checked
against the pointer before anything is decrypted, decrypted, truncated to the size and
written to ``DIR/<name>`` (never over an existing file: ``name-1.ext``, ``name-2.ext``, ...).
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from momedod.client import blobs
from momedod.client.files import write_private
from momedod.client.messenger import (
    Message,
    Messenger,
    MessengerError,
    Notice,
    maintain_prekeys,
)
from momedod.client.profile import Profile
from momedod.client.transport import ClientError, ServerError
from momedod.client.transport import connect as transport_connect
from momedod.e2e.attachment import (
    MAX_NAME,
    AttachmentEncryptor,
    AttachmentPointer,
    ciphertext_size,
    decrypt_attachment,
)
from momedod.e2e.envelope import ContentType
from momedod.e2e.errors import E2EError
from momedod.e2e.rich import RichText
from momedod.protocol.errors import ErrorCode
from momedod.protocol.userid import display

OUTBOX = "outbox"
"""Directory in the profile holding encrypted uploads until their message is accepted."""
READ_BLOCK = 1 << 20
SEND_ATTEMPTS = 3

Progress = Callable[[int, int], object]


def describe(content: bytes) -> tuple[str, dict[str, Any] | None]:
    """The caption to show and the metadata of an ATTACHMENT content."""
    try:
        ptr = AttachmentPointer.decode(content)
    except E2EError:
        return "(an attachment this client cannot read: invalid pointer)", None
    return ptr.caption, pointer_json(ptr)


def pointer_json(ptr: AttachmentPointer) -> dict[str, Any]:
    """The metadata of a pointer as shown (``--json``): never the key."""
    return {
        "blob_id": ptr.blob_id.hex(),
        "name": ptr.name,
        "mime": ptr.mime,
        "size": ptr.size,
        "width": ptr.width,
        "height": ptr.height,
        "taken_ms": ptr.taken_ms,
        "location": (
            {"lat": ptr.lat, "lon": ptr.lon, "accuracy_m": ptr.accuracy_m}
            if ptr.has_location
            else None
        ),
        "path": None,
    }


def attachment_line(caption: str, att: dict[str, Any]) -> str:
    """One line for a received attachment: caption, then where it is and what it is."""
    where = att.get("path") or (f"not saved: {att['error']}" if att.get("error") else "not saved")
    facts = [f"{att['size']} bytes", att["mime"] or "unknown type"]
    if att["width"] and att["height"]:
        facts.append(f"{att['width']}x{att['height']}")
    loc = att.get("location")
    if loc:
        acc = f" ±{loc['accuracy_m']:g} m" if loc["accuracy_m"] else ""
        facts.append(f"location {loc['lat']:.7f},{loc['lon']:.7f}{acc}")
    head = f"{caption} " if caption else ""
    return f"{head}[file {att['name'] or '(unnamed)'}: {where}; {', '.join(facts)}]"


# -- metadata --------------------------------------------------------------------------------


def image_size(head: bytes) -> tuple[int, int]:
    """(width, height) of a PNG or JPEG from its first bytes; (0, 0) if unknown."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        w, h = struct.unpack(">II", head[16:24])
        return w, h
    if head[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                return 0, 0
            marker = head[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            (length,) = struct.unpack(">H", head[i + 2 : i + 4])
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", head[i + 5 : i + 9])
                return w, h
            i += 2 + length
    return 0, 0


def _safe_name(name: str) -> str:
    cleaned = "".join(c for c in name if ord(c) >= 0x20 and ord(c) != 0x7F and c not in "/\\")
    while len(cleaned.encode()) > MAX_NAME:
        cleaned = cleaned[:-1]
    return "" if cleaned in (".", "..") else cleaned


# -- the outbox (resumable uploads) ----------------------------------------------------------


@dataclass
class Upload:
    """An encrypted file waiting in the outbox (``<id>.json`` + ``<id>.blob``)."""

    ident: str
    source: str
    file_size: int
    mtime_ns: int
    blob_id: bytes
    key: bytes
    sha256: bytes
    ct_size: int
    resumed: bool = field(default=False, compare=False)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "source": self.source,
                "file_size": self.file_size,
                "mtime_ns": self.mtime_ns,
                "blob_id": self.blob_id.hex(),
                "key": self.key.hex(),
                "sha256": self.sha256.hex(),
                "ct_size": self.ct_size,
            }
        ).encode()


def _outbox(profile: Profile) -> Path:
    path = profile.path / OUTBOX
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _encrypt_to(src: Path, dst: Path, size: int) -> tuple[bytes, bytes]:
    """Encrypt ``src`` (``size`` bytes) into ``dst`` (0600); returns (K, SHA-256)."""
    enc = AttachmentEncryptor(size)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, open(src, "rb") as fh:
        done = 0
        while block := fh.read(READ_BLOCK):
            done += len(block)
            if done > size:
                raise MessengerError(f"{src} changed while it was encrypted")
            out.write(enc.update(block))
        if done != size:
            raise MessengerError(f"{src} changed while it was encrypted")
        tail, digest = enc.finish()
        out.write(tail)
        out.flush()
        os.fsync(out.fileno())
    return enc.key, digest


def stage(profile: Profile, path: Path) -> Upload:
    """The outbox entry for ``path``: the existing one (same file, size and mtime: an
    interrupted upload resumes with the same blob and key), else a new encryption."""
    try:
        st = path.stat()
    except OSError as e:
        raise MessengerError(f"cannot read {path}: {e.strerror}") from None
    if not path.is_file():
        raise MessengerError(f"{path} is not a regular file")
    source = str(path.resolve())
    ident = hashlib.sha256(f"{source}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]
    box = _outbox(profile)
    meta, blob = box / f"{ident}.json", box / f"{ident}.blob"
    if meta.exists() and blob.exists():
        try:
            d = json.loads(meta.read_bytes())
            up = Upload(
                ident,
                d["source"],
                int(d["file_size"]),
                int(d["mtime_ns"]),
                bytes.fromhex(d["blob_id"]),
                bytes.fromhex(d["key"]),
                bytes.fromhex(d["sha256"]),
                int(d["ct_size"]),
                resumed=True,
            )
            if blob.stat().st_size == up.ct_size and up.source == source:
                return up
        except (ValueError, KeyError, TypeError, OSError):
            pass  # a damaged entry: encrypt again
    key, digest = _encrypt_to(path, blob, st.st_size)
    up = Upload(
        ident,
        source,
        st.st_size,
        st.st_mtime_ns,
        os.urandom(16),
        key,
        digest,
        ciphertext_size(st.st_size),
    )
    write_private(meta, up.to_json())
    return up


def _drop(profile: Profile, up: Upload) -> None:
    box = profile.path / OUTBOX
    for name in (f"{up.ident}.blob", f"{up.ident}.json"):
        (box / name).unlink(missing_ok=True)


# -- sending ---------------------------------------------------------------------------------


@dataclass
class SentFile:
    """What ``send --file`` did."""

    target: str  # a user ID (display form) or the group's name in quotes
    message_id: bytes
    blob_id: bytes
    name: str
    size: int
    mime: str
    devices: int
    resumed_at: int  # bytes the server already held when this run started the upload
    notices: list[Notice]
    group: str | None = None

    def json(self) -> dict[str, Any]:
        return {
            "to": self.target,
            "group": self.group,
            "msg_id": self.message_id.hex(),
            "blob_id": self.blob_id.hex(),
            "name": self.name,
            "size": self.size,
            "mime": self.mime,
            "devices": self.devices,
            "resumed_at": self.resumed_at,
        }


async def send_file(
    profile: Profile,
    path: Path,
    *,
    to: str | None = None,
    group: str | bytes | None = None,
    caption: str = "",
    location: tuple[float, float] | None = None,
    accuracy_m: float = 0.0,
    progress: Progress | None = None,
) -> SentFile:
    """Encrypt ``path``, upload it (resuming an interrupted upload of the same file) and send
    the pointer to user ``to`` or to ``group`` (exactly one of them)."""
    if (to is None) == (group is None):
        raise ValueError("give exactly one of to and group")
    up = await trio.to_thread.run_sync(stage, profile, path)
    name = _safe_name(path.name)
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    with open(path, "rb") as fh:
        width, height = image_size(fh.read(1 << 16))
    ptr = AttachmentPointer(
        up.blob_id,
        up.key,
        up.sha256,
        up.file_size,
        mime,
        name,
        caption,
        width,
        height,
        up.mtime_ns // 1_000_000,
        location[0] if location else None,
        location[1] if location else None,
        accuracy_m if location else 0.0,
    )
    content = ptr.encode()
    creds = profile.credentials()
    state = profile.load_state()
    resumed_at: int | None = None

    def seen(received: int, total: int) -> None:
        nonlocal resumed_at
        if resumed_at is None:
            resumed_at = received
        if progress is not None:
            progress(received, total)

    last: ClientError | None = None
    for _attempt in range(SEND_ATTEMPTS):
        try:
            async with transport_connect(creds) as client:
                try:
                    await blobs.upload_blob(
                        client,
                        up.blob_id,
                        profile.path / OUTBOX / f"{up.ident}.blob",
                        progress=seen,
                    )
                except ServerError as e:
                    if e.code in (ErrorCode.TOO_LARGE, ErrorCode.QUOTA_EXCEEDED):
                        _drop(profile, up)
                    raise MessengerError(f"the server refuses the file {path.name}: {e}") from None
                msgr = Messenger(profile, client, state)
                notices = await maintain_prekeys(profile, client, state)
                if group is not None:
                    notices_g: list[Notice] = []
                    conv_id = (
                        group
                        if isinstance(group, bytes)
                        else await msgr.groups.find(group, notices_g)
                    )
                    try:
                        out, more = await msgr.groups.prepare(
                            conv_id, ContentType.ATTACHMENT, content, [up.blob_id]
                        )
                    finally:
                        msgr.save()
                    try:
                        await client.conv_send(
                            out.message_id, conv_id, out.payload, out.parts, [up.blob_id]
                        )
                    except ServerError as e:
                        raise MessengerError(
                            f'the server refused the file in "{out.name}": {e}'
                        ) from None
                    log = f"(file {name}) {caption}".strip()
                    if out.chain is not None:
                        msgr.sent(out.chain, log, f"group:{conv_id.hex()}")
                    else:
                        msgr.log_sent(out.message_id, log, f"group:{conv_id.hex()}")
                    _drop(profile, up)
                    return SentFile(
                        f'"{out.name}"',
                        out.message_id,
                        up.blob_id,
                        name,
                        up.file_size,
                        mime,
                        len(out.devices),
                        resumed_at or 0,
                        notices + notices_g + more,
                        conv_id.hex(),
                    )
                assert to is not None
                batch, more = await msgr.prepare_text(
                    to, caption, content_type=ContentType.ATTACHMENT, content=content
                )
                for one in batch.sends:
                    await client.send_blobs(
                        one.message_id, one.payload, one.recipients, [up.blob_id]
                    )
                msgr.sent(batch, f"(file {name}) {caption}".strip(), to)
                _drop(profile, up)
                return SentFile(
                    display(to),
                    batch.message_id,
                    up.blob_id,
                    name,
                    up.file_size,
                    mime,
                    len(batch.recipients),
                    resumed_at or 0,
                    notices + more,
                )
        except ClientError as e:
            if isinstance(e, ServerError):
                raise
            last = e
            await trio.sleep(0.5)
    assert last is not None
    raise last


# -- receiving -------------------------------------------------------------------------------


def _unique(directory: Path, name: str) -> tuple[Path, int]:
    """Create ``directory/name`` exclusively (mode 0600), adding ``-1``, ``-2``, ... before
    the extension while the name is taken; returns the path and an open descriptor."""
    stem, dot, ext = name.rpartition(".")
    if not stem:
        stem, dot, ext = name, "", ""
    for i in range(10_000):
        cand = name if i == 0 else f"{stem}-{i}{dot}{ext}"
        path = directory / cand
        try:
            return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
    raise MessengerError(f"no free file name for {name} in {directory}")


def _save(directory: Path, name: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path, fd = _unique(directory, name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


async def fetch_attachment(msgr: Messenger, ptr: AttachmentPointer) -> bytes:
    """Download the blob, check its SHA-256 against the pointer, then decrypt it."""
    data = await blobs.download_blob(msgr.client, ptr.blob_id, ciphertext_size(ptr.size))
    if hashlib.sha256(data).digest() != ptr.sha256:
        raise E2EError("the file does not match its hash", reason="hash")
    return await trio.to_thread.run_sync(decrypt_attachment, data, ptr.key, ptr.sha256, ptr.size)


def message_pointers(msg: Message) -> list[AttachmentPointer]:
    """The attachment pointers of a received message (ATTACHMENT or RICH_TEXT content)."""
    if not msg.attachments:
        return []
    if msg.content_type == ContentType.RICH_TEXT:
        return RichText.decode(msg.content).pointers()
    return [AttachmentPointer.decode(msg.content)]


def saver(msgr: Messenger, directory: Path) -> Callable[[Message], Awaitable[Message]]:
    """The receive loop's attachment hook: fetch, check, decrypt and save to ``directory``."""

    async def save(msg: Message) -> Message:
        assert msg.attachment is not None
        atts = [dict(a) for a in msg.attachments]
        warnings = list(msg.warnings)
        for att, ptr in zip(atts, message_pointers(msg), strict=True):
            try:
                plain = await fetch_attachment(msgr, ptr)
                name = ptr.name or f"attachment-{ptr.blob_id.hex()[:8]}"
                path = await trio.to_thread.run_sync(_save, directory, name, plain)
                att["path"] = str(path)
                continue
            except E2EError as e:
                att["error"] = f"cannot decrypt ({e.reason})"
            except ServerError as e:
                att["error"] = (
                    "not available on the server" if e.code == ErrorCode.NOT_FOUND else str(e)
                )
            except (ClientError, OSError) as e:
                att["error"] = str(e)
            warnings.append(f"attachment not saved: {att['error']}")
        return replace(msg, attachment=atts[0], attachments=tuple(atts), warnings=tuple(warnings))

    return save
