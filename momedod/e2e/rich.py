"""RICH_TEXT content (content type 11): text with a reply reference, metadata and attachments.

TEXT content is exactly the UTF-8 text and stays so; a message that needs more travels as::

    RichText = bytes text | bytes reply_to | bytes metadata | list<bytes> attachments

``text`` is UTF-8 (may be empty); ``reply_to`` is empty or the 16-byte message ID of an
earlier message (its ``msg_id``); ``metadata`` is empty or a JSON object as UTF-8, at most
``MAX_METADATA`` bytes; ``attachments`` holds at most ``MAX_ATTACHMENTS`` encoded
:class:`~momedod.e2e.attachment.AttachmentPointer`. The whole content obeys the client's
content limit (16,000 bytes). Everything is inside the end-to-end encrypted payload: the
server sees none of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from momedod.protocol.encoding import Reader, Writer
from momedod.protocol.errors import ProtocolError

from .attachment import AttachmentPointer
from .errors import E2EError
from .seal import MSG_ID_LEN

__all__ = ["MAX_ATTACHMENTS", "MAX_METADATA", "MAX_RICH_TEXT", "RichText"]

MAX_RICH_TEXT = 16_000
"""Longest ``text`` in bytes."""
MAX_METADATA = 4_096
"""Longest ``metadata`` (the JSON object's UTF-8 bytes)."""
MAX_ATTACHMENTS = 10
"""Most attachment pointers in one message."""
_MAX_POINTER = 32 + 32 + 16 + 8 + 4 + 255 + 4 + 1_024 + 4 + 16_000 + 29


def _fail() -> E2EError:
    return E2EError("invalid rich text content", reason="rich")


@dataclass(frozen=True)
class RichText:
    """Text with an optional reply reference, metadata object and attachments.

    ``metadata`` is kept as the exact JSON bytes received (:attr:`metadata_json`); the
    constructor raises ValueError on a bad field, :meth:`decode` E2EError(reason="rich").
    """

    text: str = ""
    reply_to: bytes = b""
    metadata_json: bytes = b""
    attachments: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if len(self.text.encode("utf-8")) > MAX_RICH_TEXT:
            raise ValueError(f"text longer than {MAX_RICH_TEXT} bytes")
        if len(self.reply_to) not in (0, MSG_ID_LEN):
            raise ValueError(f"reply_to is empty or {MSG_ID_LEN} bytes")
        if len(self.metadata_json) > MAX_METADATA:
            raise ValueError(f"metadata longer than {MAX_METADATA} bytes")
        if self.metadata_json:
            try:
                value = json.loads(self.metadata_json.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise ValueError("metadata is not JSON") from None
            if not isinstance(value, dict):
                raise ValueError("metadata must be a JSON object")
        if len(self.attachments) > MAX_ATTACHMENTS:
            raise ValueError(f"at most {MAX_ATTACHMENTS} attachments")
        for raw in self.attachments:
            try:
                AttachmentPointer.decode(raw)
            except E2EError:
                raise ValueError("invalid attachment pointer") from None

    @classmethod
    def build(
        cls,
        text: str = "",
        reply_to: bytes = b"",
        metadata: dict[str, Any] | None = None,
        attachments: tuple[AttachmentPointer, ...] = (),
    ) -> RichText:
        """A RichText from Python values (metadata serialised compactly, keys sorted)."""
        meta = b""
        if metadata is not None:
            meta = json.dumps(
                metadata, ensure_ascii=False, separators=(",", ":"), sort_keys=True
            ).encode("utf-8")
        return cls(text, reply_to, meta, tuple(p.encode() for p in attachments))

    @property
    def metadata(self) -> dict[str, Any] | None:
        """The metadata object (None when absent)."""
        if not self.metadata_json:
            return None
        value: dict[str, Any] = json.loads(self.metadata_json.decode("utf-8"))
        return value

    def pointers(self) -> list[AttachmentPointer]:
        """The attachment pointers, decoded."""
        return [AttachmentPointer.decode(raw) for raw in self.attachments]

    def encode(self) -> bytes:
        """The RichText bytes."""
        w = Writer().string(self.text, MAX_RICH_TEXT).bytes_(self.reply_to, MSG_ID_LEN)
        w.bytes_(self.metadata_json, MAX_METADATA)
        w.list_(self.attachments, lambda w2, raw: w2.bytes_(raw, _MAX_POINTER))
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> RichText:
        """Parse strictly: truncation, trailing bytes, an over-long field, a reply_to that is
        neither empty nor 16 bytes, metadata that is not a JSON object, too many or invalid
        pointers are all E2EError(reason="rich")."""
        try:
            r = Reader(data)
            text = r.string(MAX_RICH_TEXT, "text")
            reply_to = r.bytes_(MSG_ID_LEN, "reply_to")
            meta = r.bytes_(MAX_METADATA, "metadata")
            n = r.count(MAX_ATTACHMENTS, 4, "attachments")
            ptrs = tuple(r.bytes_(_MAX_POINTER, "attachment") for _ in range(n))
            r.finish("RichText")
            return cls(text, reply_to, meta, ptrs)
        except (ProtocolError, ValueError):
            raise _fail() from None
