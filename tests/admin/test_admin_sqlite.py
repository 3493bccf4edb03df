"""AdminHandler over the real SQLite store: an operator's whole day, end to end."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import NOW_MS, FakeControl

from momedod.admin.server import AdminHandler
from momedod.protocol import userid
from momedod.protocol.errors import ErrorCode
from momedod.store import open_store


@pytest.fixture
async def handler(tmp_path):
    async with open_store("sqlite", tmp_path) as store:
        yield AdminHandler(FakeControl(store))


async def call(handler: AdminHandler, cmd: str, **args: Any) -> dict[str, Any]:
    return await handler.handle({"id": 1, "cmd": cmd, "args": args})


async def test_operator_lifecycle_on_sqlite(handler):
    store, control = handler.control.store, handler.control
    added = await call(handler, "user.add", name="Anna Schmidt")
    assert added["ok"], added
    shown = added["result"]["user"]["user_id"]
    uid = userid.normalize(shown)
    code = added["result"]["invite"]["code"]
    await store.redeem_invite(code, bytes(range(32)), "Pixel 7", NOW_MS + 1000)

    listed = (await call(handler, "user.list"))["result"]["users"]
    assert [(u["user_id"], u["name"], u["devices"]) for u in listed] == [(shown, "Anna Schmidt", 1)]
    shown_result = (await call(handler, "user.show", user_id=shown.lower()))["result"]
    assert [(d["device_id"], d["name"], d["revoked"]) for d in shown_result["devices"]] == [
        (1, "Pixel 7", None)
    ]

    revoked = await call(handler, "device.revoke", user_id=shown, device_id=1)
    assert revoked["ok"], revoked
    assert revoked["result"]["device"]["revoked"] == "2026-11-29T19:00:00Z"
    again = await call(handler, "device.revoke", user_id=shown, device_id=1)
    assert again["error"]["code"] == "conflict"
    missing = await call(handler, "device.revoke", user_id=shown, device_id=2)
    assert missing["error"] == {"code": "not_found", "message": f"no device 2 of user {shown}"}

    assert (await call(handler, "user.disable", user_id=shown))["result"]["user"]["disabled"]
    assert (await call(handler, "user.invite", user_id=shown))["error"]["code"] == "conflict"
    assert not (await call(handler, "user.enable", user_id=shown))["result"]["user"]["disabled"]
    invite = (await call(handler, "user.invite", user_id=shown))["result"]["invite"]
    assert invite["code"] != code

    info = (await call(handler, "server.info"))["result"]
    assert (info["users"], info["devices"], info["mailbox_entries"]) == (1, 0, 0)

    assert (await call(handler, "user.delete", user_id=shown))["result"] == {}
    for cmd in ("user.show", "user.delete", "device.list", "user.disable"):
        reply = await call(handler, cmd, user_id=shown)
        assert reply["error"] == {"code": "not_found", "message": f"no user {shown}"}, cmd
    assert control.disconnected == [
        (uid, 1, ErrorCode.DEVICE_REVOKED),
        (uid, ErrorCode.USER_DISABLED),
        (uid, ErrorCode.USER_DISABLED),
    ]
