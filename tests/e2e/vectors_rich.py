"""The ``rich`` section of docs/test-vectors/e2e.json: RICH_TEXT content (type 11)."""

from __future__ import annotations

from typing import Any

from momedod.e2e.attachment import AttachmentPointer
from momedod.e2e.errors import E2EError
from momedod.e2e.rich import RichText

REPLY = bytes.fromhex("00112233445566778899aabbccddeeff")
POINTER = AttachmentPointer(
    bytes(range(16)),
    bytes(range(32, 64)),
    bytes(range(64, 96)),
    27,
    "image/jpeg",
    "schaden.jpg",
    "",
    4000,
    3000,
    1_767_225_600_000,
    52.5200066,
    13.404954,
    5.0,
)


def _case(name: str, rich: RichText) -> dict[str, Any]:
    return {
        "name": name,
        "text": rich.text,
        "reply_to": rich.reply_to.hex(),
        "metadata": rich.metadata_json.decode(),
        "attachments": [a.hex() for a in rich.attachments],
        "encoded": rich.encode().hex(),
    }


def vectors() -> dict[str, Any]:
    ok = [
        _case("text only", RichText("Heizung Raum 204")),
        _case("reply", RichText("erledigt", REPLY)),
        _case(
            "reply with metadata and a photo",
            RichText.build("erledigt ✓", REPLY, {"ticket": "FM-4711", "n": 1}, (POINTER,)),
        ),
    ]
    good = RichText("x", REPLY).encode()
    must_fail = [
        {"name": "trailing byte", "encoded": (good + b"\x00").hex()},
        {"name": "truncated", "encoded": good[:-1].hex()},
        {
            "name": "reply_to of 15 bytes",
            "encoded": RichText("x").encode()[:5].hex()
            + "0000000f"
            + REPLY[:15].hex()
            + "00000000"
            + "00000000",
        },
        {
            "name": "metadata not an object",
            "encoded": "00000000" * 2 + "00000003" + b"[1]".hex() + "00000000",
        },
        {"name": "11 attachments", "encoded": "00000000" * 3 + "0000000b"},
    ]
    return {
        "description": "RichText = bytes text | bytes reply_to (0 or 16) | bytes metadata (JSON "
        "object, <= 4096) | list<bytes> attachments (AttachmentPointer, <= 10); content type 11",
        "cases": ok,
        "must_fail": must_fail,
    }


def check(v: dict[str, Any]) -> None:
    for case in v["cases"]:
        raw = bytes.fromhex(case["encoded"])
        rich = RichText.decode(raw)
        assert rich.text == case["text"], case["name"]
        assert rich.reply_to.hex() == case["reply_to"], case["name"]
        assert rich.metadata_json.decode() == case["metadata"], case["name"]
        assert [a.hex() for a in rich.attachments] == case["attachments"], case["name"]
        assert rich.encode() == raw, case["name"]
    for case in v["must_fail"]:
        try:
            RichText.decode(bytes.fromhex(case["encoded"]))
        except E2EError as e:
            assert e.reason == "rich", case["name"]
        else:
            raise AssertionError(f"{case['name']}: accepted")
