"""RICH_TEXT content (reply_to, metadata, attachments) and how `momedo recv` shows it; the
webhook signature; the inbox ignoring a redelivery."""

from __future__ import annotations

import os
import time

import pytest

from momedod.client import messenger as m
from momedod.client.bridge import webhook as wh
from momedod.client.bridge.inbox import Inbox, NewAttachment
from momedod.e2e.attachment import AttachmentPointer
from momedod.e2e.envelope import ContentType
from momedod.e2e.errors import E2EError
from momedod.e2e.rich import MAX_METADATA, RichText

REPLY = bytes.fromhex("00112233445566778899aabbccddeeff")


def _pointer() -> AttachmentPointer:
    return AttachmentPointer(
        b"\x01" * 16, b"\x02" * 32, b"\x03" * 32, 5, "image/png", "a.png", "", 1, 2, 3, 52.5, 13.4
    )


def test_rich_text_is_exact_bytes_and_round_trips():
    rich = RichText.build("erledigt", REPLY, {"ticket": "FM-4711"})
    raw = rich.encode()
    meta = b'{"ticket":"FM-4711"}'
    assert raw == (
        b"\x00\x00\x00\x08erledigt"
        + b"\x00\x00\x00\x10"
        + REPLY
        + len(meta).to_bytes(4, "big")
        + meta
        + b"\x00\x00\x00\x00"
    )
    assert raw[-4:] == b"\x00\x00\x00\x00" and RichText.decode(raw) == rich
    assert rich.metadata == {"ticket": "FM-4711"}
    with_att = RichText.build("", b"", None, (_pointer(),))
    assert RichText.decode(with_att.encode()).pointers() == [_pointer()]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        RichText("x").encode() + b"\x00",  # trailing byte
        b"\x00\x00\x00\x00" + b"\x00\x00\x00\x03abc" + b"\x00" * 8,  # reply_to of 3 bytes
        b"\x00\x00\x00\x00" * 2 + b"\x00\x00\x00\x03[1]" + b"\x00" * 4,  # metadata not an object
        b"\x00\x00\x00\x00" * 3 + b"\x00\x00\x00\x0b",  # 11 attachments announced
        b"\x00\x00\x00\x00" * 3 + b"\x00\x00\x00\x01\x00\x00\x00\x02ab",  # invalid pointer
    ],
)
def test_rich_text_decoding_is_strict(raw):
    with pytest.raises(E2EError) as e:
        RichText.decode(raw)
    assert e.value.reason == "rich"


def test_rich_text_limits():
    with pytest.raises(ValueError, match="metadata"):
        RichText.build("x", b"", {"k": "v" * MAX_METADATA})
    with pytest.raises(ValueError, match="reply_to"):
        RichText("x", b"\x01")


def test_recv_shows_text_reply_and_metadata():
    content = RichText.build("erledigt", REPLY, {"ticket": "FM-4711"}).encode()
    msg = m.Message(
        "M8N22HTR", 1, None, False, 0, "ab" * 16, **m.content_fields(ContentType.RICH_TEXT, content)
    )
    line = msg.line()
    assert line.startswith("M8N2-2HTR (device 1): erledigt ↪ reply to " + REPLY.hex())
    assert '{"ticket": "FM-4711"}' in line
    assert msg.json()["reply_to"] == REPLY.hex() and msg.json()["metadata"]["ticket"] == "FM-4711"
    plain = m.content_fields(ContentType.TEXT, b"erledigt")
    assert plain["text"] == "erledigt" and "reply_to" not in plain


def test_webhook_signature_binds_body_and_timestamp():
    key, body, ts = b"k" * 32, b'{"type":"message"}', str(int(time.time()))
    sig = wh.signature(key, ts, body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert wh.verify(key, ts, body, sig)
    assert not wh.verify(key, ts, body + b" ", sig)
    assert not wh.verify(key, str(int(ts) - 1), body, sig)
    assert not wh.verify(b"x" * 32, ts, body, sig)
    old = str(int(time.time()) - 3600)
    assert not wh.verify(key, old, body, wh.signature(key, old, body))


def test_inbox_ignores_a_redelivery_and_keeps_files_private(tmp_path):
    tmp_path.chmod(0o700)
    inbox = Inbox(tmp_path)
    att = NewAttachment("m1-0", "a.png", "image/png", b"png")
    assert inbox.add("m1", 1, {"id": "m1"}, [att]) == 1
    assert inbox.add("m1", 2, {"id": "m1"}, [att]) is None
    assert [r["cursor"] for r in inbox.after(0, 10)] == [1]
    stored = inbox.attachment("m1-0")
    assert stored is not None and stored.path.read_bytes() == b"png"
    assert os.stat(stored.path).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "bridge" / "inbox.sqlite").st_mode & 0o777 == 0o600
    inbox.set_delivered(1)
    assert inbox.prune(10, inbox.delivered()) == 1 and inbox.attachment("m1-0") is None
    inbox.close()
