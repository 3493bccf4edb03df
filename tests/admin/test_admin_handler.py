"""AdminHandler against an in-memory store: results, error codes, disconnects, audit log."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from fakes import FINGERPRINT, NOW_MS, FakeControl, FakeStore
from structlog.testing import capture_logs

from momedod.admin.server import AdminHandler
from momedod.config import Config, LimitsConfig
from momedod.protocol import userid
from momedod.protocol.errors import ErrorCode
from momedod.store import StoreError


@pytest.fixture
def control() -> FakeControl:
    return FakeControl(FakeStore())


@pytest.fixture
def handler(control: FakeControl) -> AdminHandler:
    return AdminHandler(control)


async def call(handler: AdminHandler, cmd: str, **args: Any) -> dict[str, Any]:
    reply = await handler.handle({"id": 7, "cmd": cmd, "args": args}, peer_uid=1000)
    assert reply["id"] == 7
    return reply


async def ok(handler: AdminHandler, cmd: str, **args: Any) -> dict[str, Any]:
    reply = await call(handler, cmd, **args)
    assert reply["ok"] is True, reply
    return reply["result"]


async def error(handler: AdminHandler, cmd: str, **args: Any) -> tuple[str, str]:
    reply = await call(handler, cmd, **args)
    assert reply["ok"] is False, reply
    return reply["error"]["code"], reply["error"]["message"]


async def test_user_add_returns_display_id_and_invite_link(control, handler):
    result = await ok(handler, "user.add", name="  Anna Schmidt ")
    user, invite = result["user"], result["invite"]
    uid = userid.normalize(user["user_id"])
    assert user == {
        "user_id": userid.display(uid),
        "name": "Anna Schmidt",
        "created": "2026-11-29T19:00:00Z",
        "disabled": False,
        "devices": 0,
        "last_seen": None,
        "mailbox": 0,
        "external_id": None,
        "bot": False,
    }
    assert control.store.users[uid].name == "Anna Schmidt"
    assert invite["expires"] == "2026-12-06T19:00:00Z"  # 168 h default
    assert invite["link"] == f"momedo://127.0.0.1:7443/invite/{invite['code']}#{FINGERPRINT}"


async def test_invite_ttl_comes_from_the_config():
    control = FakeControl(FakeStore(), Config(limits=LimitsConfig(invite_ttl_hours=2)))
    result = await ok(AdminHandler(control), "user.add", name="Ben")
    assert result["invite"]["expires"] == "2026-11-29T21:00:00Z"
    assert control.store.invites[-1][1] == 2 * 3_600_000


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("x" * 101, "at most 100"),
        ("Anna\x07", "U+0007"),
        ("Anna\nSchmidt", "U+000A"),
    ],
)
async def test_user_add_rejects_bad_names(handler, control, name, fragment):
    code, message = await error(handler, "user.add", name=name)
    assert code == "invalid_argument"
    assert fragment in message
    assert control.store.users == {}


async def test_user_add_accepts_100_characters_and_non_ascii(handler):
    assert (await ok(handler, "user.add", name="é" * 100))["user"]["name"] == "é" * 100
    assert (await ok(handler, "user.add", name="Jürgen Öztürk"))["user"]["name"] == "Jürgen Öztürk"


async def test_user_add_name_must_be_a_string(handler):
    assert (await error(handler, "user.add", name=5))[0] == "bad_request"


async def test_user_list_counts_active_devices(control, handler):
    anna = control.store.add_user("Anna", created_ms=NOW_MS - 2000)
    ben = control.store.add_user("Ben", created_ms=NOW_MS - 1000)
    control.store.add_device(anna.user_id, "phone")
    control.store.add_device(anna.user_id, "old phone", revoked_ms=NOW_MS - 10)
    control.store.users[ben.user_id] = dataclasses.replace(ben, disabled=True)
    users = (await ok(handler, "user.list"))["users"]
    assert [(u["name"], u["devices"], u["disabled"]) for u in users] == [
        ("Anna", 1, False),
        ("Ben", 0, True),
    ]


async def test_user_show_accepts_sloppy_ids_and_lists_devices(control, handler):
    anna = control.store.add_user("Anna")
    control.store.add_device(anna.user_id, "Pixel", last_seen_ms=NOW_MS, mailbox_count=4)
    control.store.add_device(anna.user_id, "iPad", revoked_ms=NOW_MS)
    sloppy = anna.user_id.lower().replace("0", "o")
    result = await ok(handler, "user.show", user_id=sloppy)
    assert result["user"]["user_id"] == userid.display(anna.user_id)
    assert result["devices"] == [
        {
            "device_id": 1,
            "name": "Pixel",
            "created": "2026-11-29T18:00:00Z",
            "last_seen": "2026-11-29T19:00:00Z",
            "revoked": None,
            "mailbox": 4,
        },
        {
            "device_id": 2,
            "name": "iPad",
            "created": "2026-11-29T18:00:00Z",
            "last_seen": None,
            "revoked": "2026-11-29T19:00:00Z",
            "mailbox": 0,
        },
    ]


@pytest.mark.parametrize(
    "cmd", ["user.show", "user.disable", "user.enable", "user.delete", "user.invite", "device.list"]
)
async def test_unknown_user_is_not_found_with_display_id(handler, cmd):
    assert await error(handler, cmd, user_id="m8n22htr") == ("not_found", "no user M8N2-2HTR")


async def test_malformed_user_id_is_invalid_argument_with_reason(handler):
    code, message = await error(handler, "user.show", user_id="M8N2-2HTX")
    assert code == "invalid_argument"
    assert "check character" in message
    code, message = await error(handler, "user.show", user_id="ABC")
    assert (code, "8 characters" in message) == ("invalid_argument", True)


async def test_disable_disconnects_live_sessions_and_enable_does_not(control, handler):
    anna = control.store.add_user("Anna")
    control.online[anna.user_id] = 2
    result = await ok(handler, "user.disable", user_id=anna.user_id)
    assert result["user"]["disabled"] is True
    assert control.store.users[anna.user_id].disabled
    assert control.disconnected == [(anna.user_id, ErrorCode.USER_DISABLED)]
    result = await ok(handler, "user.enable", user_id=anna.user_id)
    assert result["user"]["disabled"] is False
    assert len(control.disconnected) == 1


async def test_delete_disconnects_and_forgets_the_user(control, handler):
    anna = control.store.add_user("Anna")
    assert await ok(handler, "user.delete", user_id=anna.user_id) == {}
    assert control.disconnected == [(anna.user_id, ErrorCode.USER_DISABLED)]
    code, _ = await error(handler, "user.show", user_id=anna.user_id)
    assert code == "not_found"


async def test_user_invite_makes_a_new_invite(control, handler):
    anna = control.store.add_user("Anna")
    invite = (await ok(handler, "user.invite", user_id=anna.user_id))["invite"]
    assert control.store.invites[-1][0].code == invite["code"]
    assert invite["code"] in invite["link"]


async def test_disabled_user_gets_no_invite(control, handler):
    anna = control.store.add_user("Anna")
    await ok(handler, "user.disable", user_id=anna.user_id)
    code, message = await error(handler, "user.invite", user_id=anna.user_id)
    assert code == "conflict"
    assert "user enable" in message
    assert control.store.invites == []


async def test_device_revoke_disconnects_that_device(control, handler):
    anna = control.store.add_user("Anna")
    control.store.add_device(anna.user_id, "phone", mailbox_count=3)
    result = await ok(handler, "device.revoke", user_id=anna.user_id, device_id=1)
    assert result["device"]["revoked"] == "2026-11-29T19:00:00Z"
    assert control.disconnected == [(anna.user_id, 1, ErrorCode.DEVICE_REVOKED)]
    code, message = await error(handler, "device.revoke", user_id=anna.user_id, device_id=1)
    assert code == "conflict"
    assert message.endswith("already revoked on 2026-11-29 19:00 UTC")
    assert len(control.disconnected) == 1


async def test_device_revoke_unknown_device(control, handler):
    anna = control.store.add_user("Anna")
    shown = userid.display(anna.user_id)
    code, message = await error(handler, "device.revoke", user_id=anna.user_id, device_id=9)
    assert (code, message) == ("not_found", f"no device 9 of user {shown}")
    assert control.disconnected == []


@pytest.mark.parametrize(
    ("device_id", "code"), [(True, "bad_request"), ("1", "bad_request"), (0, "invalid_argument")]
)
async def test_device_revoke_checks_device_id(control, handler, device_id, code):
    anna = control.store.add_user("Anna")
    control.store.add_device(anna.user_id, "phone")
    reply = await call(handler, "device.revoke", user_id=anna.user_id, device_id=device_id)
    assert reply["error"]["code"] == code
    assert control.disconnected == []


async def test_device_list(control, handler):
    anna = control.store.add_user("Anna")
    control.store.add_device(anna.user_id, "phone")
    devices = (await ok(handler, "device.list", user_id=userid.display(anna.user_id)))["devices"]
    assert [d["name"] for d in devices] == ["phone"]


async def test_server_info_adds_store_counts(control, handler):
    anna = control.store.add_user("Anna")
    control.store.add_device(anna.user_id, "phone", mailbox_count=5)
    info = await ok(handler, "server.info")
    assert info["fingerprint"] == FINGERPRINT
    assert info["listeners"][0]["port"] == 7443
    assert (info["users"], info["devices"], info["mailbox_entries"]) == (1, 1, 5)


async def test_unknown_command_and_bad_arguments(handler):
    code, message = await error(handler, "user.frobnicate")
    assert code == "unknown_command"
    assert "user.add" in message
    assert (await error(handler, "user.show"))[0] == "bad_request"
    code, message = await error(handler, "user.list", verbose=True)
    assert (code, "verbose" in message) == ("bad_request", True)


@pytest.mark.parametrize(
    "request_obj",
    [
        [],
        {"id": 1},
        {"id": 1, "cmd": 5},
        {"id": 1, "cmd": "user.list", "args": []},
        {"id": 1.5, "cmd": "user.list"},
    ],
)
async def test_malformed_requests_are_bad_request(handler, request_obj):
    reply = await handler.handle(request_obj)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "bad_request"
    assert reply["id"] in (None, 1)


async def test_request_id_is_echoed_including_strings_and_missing(handler):
    assert (await handler.handle({"id": "abc", "cmd": "user.list"}))["id"] == "abc"
    assert (await handler.handle({"cmd": "user.list"})) == {
        "id": None,
        "ok": True,
        "result": {"users": [], "next": None},
    }


async def test_store_errors_become_internal_errors(control, handler):
    control.store.fail = StoreError("database is locked by another process")
    assert await error(handler, "user.list") == (
        "internal",
        "database is locked by another process",
    )


async def test_unexpected_exceptions_do_not_leak_details(control, handler):
    control.store.fail = ZeroDivisionError("secret internals")
    with capture_logs() as logs:
        code, message = await error(handler, "user.list")
    assert code == "internal"
    assert "secret" not in message and "Traceback" not in message
    assert any(e["event"] == "admin.failed" for e in logs)


async def test_changes_are_logged_with_caller_uid_but_never_invite_codes(control, handler):
    anna = control.store.add_user("Anna")
    control.store.add_device(anna.user_id, "phone")
    with capture_logs() as logs:
        added = await ok(handler, "user.add", name="Ben")
        invite = await ok(handler, "user.invite", user_id=anna.user_id)
        await ok(handler, "device.revoke", user_id=anna.user_id, device_id=1)
        await ok(handler, "user.disable", user_id=anna.user_id)
        await ok(handler, "user.list")  # reads are not audited
    actions = [(e["action"], e["target"], e["uid"]) for e in logs if e["event"] == "admin.action"]
    shown = userid.display(anna.user_id)
    assert actions == [
        ("user.add", added["user"]["user_id"], 1000),
        ("user.invite", shown, 1000),
        ("device.revoke", f"{shown}/1", 1000),
        ("user.disable", shown, 1000),
    ]
    text = repr(logs)
    for code in (added["invite"]["code"], invite["invite"]["code"]):
        assert code not in text
    assert "Ben" not in text


async def test_user_bot_sets_and_clears_the_flag_and_user_add_takes_it(control, handler):
    bot = (await ok(handler, "user.add", name="Hausmeister-Bot", bot=True))["user"]
    assert bot["bot"] is True
    cleared = await ok(handler, "user.bot", user_id=bot["user_id"], bot=False)
    assert cleared["user"]["bot"] is False
    assert control.store.users[userid.normalize(bot["user_id"])].bot is False
