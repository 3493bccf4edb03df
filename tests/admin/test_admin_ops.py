"""Operator commands over the real SQLite store: audit log, paging and search, rename,
server.stats, invite.bulk, the subscribe stream and their momedoctl front ends."""

from __future__ import annotations

import csv
import io
import json
import os
import pwd
import re
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import segno
import structlog
import structlog.testing
import trio
from fakes import NOW_MS, FakeControl

from momedod.admin import ctl, letters
from momedod.admin.protocol import Event, Response, decode_line
from momedod.admin.server import AdminHandler, serve_admin
from momedod.protocol import userid
from momedod.protocol.invite import parse_invite_link
from momedod.store import open_store

PEER = 4242


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    # Keep structlog's default stdout renderer out of momedoctl's captured output (the
    # admin socket still adds its warning/error hook to this configuration).
    with structlog.testing.capture_logs() as entries:
        yield entries


@pytest.fixture
async def handler(tmp_path: Path) -> AsyncIterator[AdminHandler]:
    async with open_store("sqlite", tmp_path / "state") as store:
        yield AdminHandler(FakeControl(store))


async def call(handler: AdminHandler, cmd: str, **args: Any) -> dict[str, Any]:
    return await handler.handle({"id": 1, "cmd": cmd, "args": args}, peer_uid=PEER)


async def ok(handler: AdminHandler, cmd: str, **args: Any) -> dict[str, Any]:
    reply = await call(handler, cmd, **args)
    assert reply["ok"] is True, reply
    return reply["result"]


async def error(handler: AdminHandler, cmd: str, **args: Any) -> tuple[str, str]:
    reply = await call(handler, cmd, **args)
    assert reply["ok"] is False, reply
    return reply["error"]["code"], reply["error"]["message"]


async def enroll(handler: AdminHandler, code: str, name: str = "phone") -> None:
    await handler.control.store.redeem_invite(code, os.urandom(32), name, NOW_MS)


# --- audit --------------------------------------------------------------------------------


async def test_every_change_is_audited_with_the_callers_uid(handler, tmp_path):
    added = await ok(handler, "user.add", name="Anna")
    shown = added["user"]["user_id"]
    other = await ok(handler, "user.add", name="Ben")
    await enroll(handler, added["invite"]["code"])
    await ok(handler, "user.rename", user_id=shown, name="Anna Schmidt")
    await ok(handler, "user.disable", user_id=shown)
    await ok(handler, "user.enable", user_id=shown)
    invite = await ok(handler, "user.invite", user_id=shown)
    await ok(handler, "device.revoke", user_id=shown, device_id=1)
    bulk = await ok(handler, "invite.bulk", scope="never_enrolled")
    await ok(handler, "server.backup", dir=str(tmp_path / "backup"))
    await ok(handler, "user.delete", user_id=other["user"]["user_id"])
    before = len((await ok(handler, "audit.list"))["entries"])
    for cmd, args in [
        ("user.list", {}),
        ("user.show", {"user_id": shown}),
        ("device.list", {"user_id": shown}),
        ("server.info", {}),
        ("server.stats", {}),
        ("audit.list", {}),
    ]:
        await ok(handler, cmd, **args)  # reads are not audited
    result = await ok(handler, "audit.list")
    entries = result["entries"]
    assert len(entries) == before and result["next"] is None
    ben = other["user"]["user_id"]
    assert [(e["action"], e["target"], e["uid"]) for e in reversed(entries)] == [
        ("user.add", shown, PEER),
        ("user.add", ben, PEER),
        ("user.rename", shown, PEER),
        ("user.disable", shown, PEER),
        ("user.enable", shown, PEER),
        ("user.invite", shown, PEER),
        ("device.revoke", f"{shown}/1", PEER),
        ("user.invite", shown, PEER),  # invite.bulk: one entry per user...
        ("user.invite", ben, PEER),
        ("server.backup", str(tmp_path / "backup"), PEER),
        ("user.delete", ben, PEER),
    ]
    by_id = {e["id"]: e for e in entries}
    assert all(e["time"] == "2026-11-29T19:00:00Z" for e in entries)
    rename = next(e for e in entries if e["action"] == "user.rename")
    assert rename["detail"] == {"old_name": "Anna", "name": "Anna Schmidt"}
    assert rename["user_id"] == shown
    bulk_entries = [e for e in entries if e["detail"].get("bulk") == "never_enrolled"]
    assert len(bulk_entries) == len(bulk["invites"]) == 2
    backup = next(e for e in entries if e["action"] == "server.backup")
    assert backup["user_id"] is None and backup["detail"]["files"] >= 2
    deleted = [e for e in by_id.values() if e["user_id"] == ben]
    assert all("name" not in e["detail"] for e in deleted)  # forgotten with the user
    text = json.dumps(entries)
    codes = [added["invite"]["code"], other["invite"]["code"], invite["invite"]["code"]]
    codes += [i["invite"]["code"] for i in bulk["invites"]]
    for code in codes:
        assert code not in text


async def test_a_refused_change_is_not_audited(handler):
    added = await ok(handler, "user.add", name="Anna")
    shown = added["user"]["user_id"]
    await ok(handler, "user.disable", user_id=shown)
    assert (await error(handler, "user.invite", user_id=shown))[0] == "conflict"
    assert (await error(handler, "user.rename", user_id="M8N2-2HTR", name="x"))[0] == "not_found"
    assert (await error(handler, "device.revoke", user_id=shown, device_id=3))[0] == "not_found"
    actions = [e["action"] for e in (await ok(handler, "audit.list"))["entries"]]
    assert actions == ["user.disable", "user.add"]


async def test_audit_list_pages_and_filters(handler):
    ids = []
    for i in range(7):
        ids.append((await ok(handler, "user.add", name=f"U{i}"))["user"]["user_id"])
    await ok(handler, "user.disable", user_id=ids[3])
    first = await ok(handler, "audit.list", limit=3)
    assert [e["action"] for e in first["entries"]] == ["user.disable", "user.add", "user.add"]
    assert first["next"] == first["entries"][-1]["id"]
    rest = await ok(handler, "audit.list", limit=100, before=first["next"])
    assert rest["next"] is None
    seen = [e["id"] for e in first["entries"] + rest["entries"]]
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == 8
    sloppy = ids[3].lower().replace("-", "")
    mine = await ok(handler, "audit.list", user_id=sloppy)
    assert [e["action"] for e in mine["entries"]] == ["user.disable", "user.add"]
    assert len((await ok(handler, "audit.list", action="user.add"))["entries"]) == 7
    assert len((await ok(handler, "audit.list", action="user."))["entries"]) == 8
    assert (await error(handler, "audit.list", limit=0))[0] == "invalid_argument"
    assert (await error(handler, "audit.list", limit=1001))[0] == "invalid_argument"
    assert (await error(handler, "audit.list", before="9"))[0] == "bad_request"
    assert (await error(handler, "audit.list", action=""))[0] == "bad_request"
    assert (await error(handler, "audit.list", user_id="M8N2-2HTX"))[0] == "invalid_argument"
    assert (await error(handler, "audit.list", verbose=True))[0] == "bad_request"


# --- user.list, user.show, user.rename ---------------------------------------------------------


async def test_user_list_pages_of_100_over_250_users(handler):
    for i in range(250):
        await ok(handler, "user.add", name=f"Pupil {i:03d}")
    everyone: list[str] = []
    cursor = None
    pages = []
    while True:
        args: dict[str, Any] = {} if cursor is None else {"cursor": cursor}
        page = await ok(handler, "user.list", **args)
        pages.append(len(page["users"]))
        everyone.extend(u["user_id"] for u in page["users"])
        cursor = page["next"]
        if cursor is None:
            break
        # Cursors are stable: asking again gives the same page.
        assert await ok(handler, "user.list", cursor=cursor) == await ok(
            handler, "user.list", cursor=cursor
        )
    assert pages == [100, 100, 50]
    assert len(everyone) == len(set(everyone)) == 250
    names = [u["name"] for u in (await ok(handler, "user.list", limit=1000))["users"]]
    assert names == [f"Pupil {i:03d}" for i in range(250)]
    small = await ok(handler, "user.list", limit=7)
    assert len(small["users"]) == 7 and small["next"]
    for bad in (0, 1001):
        assert (await error(handler, "user.list", limit=bad))[0] == "invalid_argument"
    assert (await error(handler, "user.list", limit=True))[0] == "bad_request"
    assert (await error(handler, "user.list", cursor=5))[0] == "bad_request"
    code, message = await error(handler, "user.list", cursor="not-a-cursor")
    assert code == "invalid_argument" and "cursor" in message


async def test_user_list_search_and_filters(handler):
    made = {}
    for name in ("Anna Schmidt", "Jürgen Öztürk", "anna-lena Meyer", "Ben", "Cleo"):
        made[name] = await ok(handler, "user.add", name=name)
    await enroll(handler, made["Ben"]["invite"]["code"])
    await ok(handler, "user.disable", user_id=made["Cleo"]["user"]["user_id"])

    async def names(**args: Any) -> list[str]:
        return [u["name"] for u in (await ok(handler, "user.list", **args))["users"]]

    assert await names(search="ANNA") == ["Anna Schmidt", "anna-lena Meyer"]
    assert await names(search="  öztürk ") == ["Jürgen Öztürk"]
    ben = made["Ben"]["user"]["user_id"]  # XXXX-XXXX
    for form in (ben, ben.lower(), ben.replace("-", ""), ben[2:7], ben.lower().replace("0", "o")):
        assert await names(search=form) == ["Ben"], form
    assert await names(filter="disabled") == ["Cleo"]
    assert await names(filter={"disabled": False}) == [
        "Anna Schmidt",
        "Jürgen Öztürk",
        "anna-lena Meyer",
        "Ben",
    ]
    assert await names(filter="never_enrolled") == [
        "Anna Schmidt",
        "Jürgen Öztürk",
        "anna-lena Meyer",
        "Cleo",
    ]
    assert await names(filter={"never_enrolled": True, "disabled": False}, search="anna") == [
        "Anna Schmidt",
        "anna-lena Meyer",
    ]
    assert await names(filter={"inactive_days": 30}) == []  # all created just now
    [shown] = (await ok(handler, "user.list", search="ben"))["users"]
    assert (shown["devices"], shown["mailbox"], shown["last_seen"]) == (1, 0, None)
    for bad, code in [
        ("deleted", "invalid_argument"),
        (5, "bad_request"),
        ({"colour": "red"}, "bad_request"),
        ({"disabled": "yes"}, "bad_request"),
        ({"inactive_days": 0}, "invalid_argument"),
        ({"inactive_days": "3"}, "bad_request"),
    ]:
        assert (await error(handler, "user.list", filter=bad))[0] == code, bad
    assert (await error(handler, "user.list", search=3))[0] == "bad_request"
    assert (await error(handler, "user.list", search="x" * 201))[0] == "invalid_argument"


async def test_user_list_inactive_days_counts_the_newest_device(handler):
    store = handler.control.store
    day = 86_400_000
    anna, a_inv = await store.create_user("Anna", NOW_MS - 90 * day, 10**12)
    ben, b_inv = await store.create_user("Ben", NOW_MS - 90 * day, 10**12)
    await store.redeem_invite(a_inv.code, bytes(32), "old", NOW_MS - 90 * day)
    await store.touch_device(anna.user_id, 1, NOW_MS - 60 * day)
    await store.redeem_invite(b_inv.code, bytes(32), "phone", NOW_MS - 90 * day)
    await store.touch_device(ben.user_id, 1, NOW_MS - 5 * day)
    users = (await ok(handler, "user.list", filter={"inactive_days": 30}))["users"]
    assert [(u["name"], u["last_seen"]) for u in users] == [("Anna", "2026-09-30T19:00:00Z")]


async def test_user_show_has_last_seen_and_mailbox_depth(handler):
    store = handler.control.store
    added = await ok(handler, "user.add", name="Anna")
    shown = added["user"]["user_id"]
    uid = userid.normalize(shown)
    await enroll(handler, added["invite"]["code"], "Pixel")
    second = await ok(handler, "user.invite", user_id=shown)
    await enroll(handler, second["invite"]["code"], "iPad")
    await store.touch_device(uid, 1, NOW_MS - 3_600_000)
    await store.touch_device(uid, 2, NOW_MS - 60_000)
    from momedod.store import Recipient

    for i in range(3):
        await store.enqueue(
            (uid, 1),
            os.urandom(16),
            b"x",
            [Recipient(uid, 2, b""), *([Recipient(uid, 1, b"")] if i else [])],
            NOW_MS,
            100,
        )
    user = (await ok(handler, "user.show", user_id=shown))["user"]
    assert (user["last_seen"], user["mailbox"], user["devices"]) == ("2026-11-29T18:59:00Z", 5, 2)


async def test_user_rename(handler):
    added = await ok(handler, "user.add", name="Anna")
    shown = added["user"]["user_id"]
    result = await ok(handler, "user.rename", user_id=shown.lower(), name="  Anna Müller ")
    assert result["old_name"] == "Anna"
    assert result["user"]["name"] == "Anna Müller" and result["user"]["user_id"] == shown
    assert (await ok(handler, "user.show", user_id=shown))["user"]["name"] == "Anna Müller"
    assert (await error(handler, "user.rename", user_id=shown, name=" "))[0] == "invalid_argument"
    assert (await error(handler, "user.rename", user_id=shown, name="a\nb"))[0] == (
        "invalid_argument"
    )
    assert (await error(handler, "user.rename", user_id=shown))[0] == "bad_request"
    await ok(handler, "user.delete", user_id=shown)
    code, message = await error(handler, "user.rename", user_id=shown, name="Zombie")
    assert (code, message) == ("not_found", f"no user {shown}")


# --- invite.bulk, server.stats, subscribe arguments ------------------------------------------


async def test_invite_bulk(handler):
    a = await ok(handler, "user.add", name="Anna")
    b = await ok(handler, "user.add", name="Ben")
    c = await ok(handler, "user.add", name="Cleo")
    await enroll(handler, a["invite"]["code"])
    await ok(handler, "user.disable", user_id=c["user"]["user_id"])
    result = await ok(handler, "invite.bulk", scope="never_enrolled")
    assert result["scope"] == "never_enrolled"
    [item] = result["invites"]
    assert (item["user_id"], item["name"]) == (b["user"]["user_id"], "Ben")
    assert item["invite"]["expires"] == "2026-12-06T19:00:00Z"
    assert item["invite"]["code"] in item["invite"]["link"]
    assert item["invite"]["code"] != b["invite"]["code"]
    everyone = await ok(handler, "invite.bulk", scope="all")
    assert [i["name"] for i in everyone["invites"]] == ["Anna", "Ben"]
    assert (await error(handler, "invite.bulk", scope="everyone"))[0] == "invalid_argument"
    assert (await error(handler, "invite.bulk", scope=1))[0] == "bad_request"
    assert (await error(handler, "invite.bulk"))[0] == "bad_request"


async def test_server_stats_combines_daemon_and_store(handler):
    a = await ok(handler, "user.add", name="Anna")
    await enroll(handler, a["invite"]["code"])
    stats = await ok(handler, "server.stats")
    assert stats["time"] == "2026-11-29T19:00:00Z"
    assert (stats["users"], stats["devices"], stats["mailbox_entries"]) == (1, 1, 0)
    assert stats["mailbox_oldest_age_s"] is None
    assert stats["store_bytes"] > 0
    assert stats["messages_accepted_per_s"] == 1.5 and stats["connections"] == 3
    assert stats["listeners"][0]["max_connections"] == 10000


async def test_subscribe_checks_its_interval(handler):
    assert await ok(handler, "subscribe") == {"subscribed": True, "interval": 1.0}
    assert (await ok(handler, "subscribe", interval=0.5))["interval"] == 0.5
    for bad, code in [
        (0.1, "invalid_argument"),
        (61, "invalid_argument"),
        ("1", "bad_request"),
        (True, "bad_request"),
    ]:
        assert (await error(handler, "subscribe", interval=bad))[0] == code


# --- over the socket ---------------------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="momedo-ops-", dir="/tmp"))
    yield path
    shutil.rmtree(path)


@dataclass
class Live:
    path: Path
    handler: AdminHandler
    config: Path


@pytest.fixture
async def live(short_dir: Path) -> AsyncIterator[Live]:
    async with open_store("sqlite", short_dir / "state") as store:
        handler = AdminHandler(FakeControl(store))
        path = short_dir / "admin.sock"
        async with trio.open_nursery() as inner:
            await inner.start(serve_admin, path, handler)
            config = short_dir / "momedod.toml"
            config.write_text(f'[admin]\nsocket = "{path}"\n')
            yield Live(path, handler, config)
            inner.cancel_scope.cancel()


class Lines:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, obj: dict[str, Any]) -> None:
        await self.stream.send_all(json.dumps(obj).encode() + b"\n")

    async def next(self) -> Response | Event | None:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return decode_line(line)


async def lines(path: Path) -> Lines:
    return Lines(await trio.open_unix_socket(os.fspath(path)))


async def test_subscribe_streams_stats_audit_and_log_events(live):
    sub = await lines(live.path)
    await sub.send({"id": "s", "cmd": "subscribe", "args": {"interval": 1}})
    reply = await sub.next()
    assert isinstance(reply, Response) and reply.id == "s"
    assert reply.result == {"subscribed": True, "interval": 1.0}
    got: list[Event] = []

    async def until(predicate: Any, timeout: float) -> Event:
        with trio.fail_after(timeout):
            while True:
                event = await sub.next()
                assert isinstance(event, Event), event
                got.append(event)
                if predicate(event):
                    return event

    start = trio.current_time()
    await until(lambda e: sum(1 for g in got if g.kind == "stats") >= 2, 2.5)
    assert trio.current_time() - start < 2.5
    stats = next(e for e in got if e.kind == "stats").data
    assert {"connections", "messages_accepted_per_s", "mailbox_entries", "store_bytes"} <= set(
        stats
    )

    other = await lines(live.path)  # a change on another connection
    await other.send({"id": 1, "cmd": "user.add", "args": {"name": "Anna"}})
    added = await other.next()
    assert isinstance(added, Response) and added.ok
    assert added.result is not None
    event = await until(lambda e: e.kind == "audit", 1.0)
    assert event.data["action"] == "user.add"
    assert event.data["target"] == added.result["user"]["user_id"]
    assert event.data["uid"] == os.geteuid()

    structlog.get_logger("momedod.test").warning(
        "test.provoked", code="INVITECODE", error="disk on fire"
    )
    event = await until(lambda e: e.kind == "log", 1.0)
    assert event.data["level"] == "warning" and event.data["event"] == "test.provoked"
    assert event.data["fields"]["error"] == "disk on fire"
    assert event.data["fields"]["code"] == "[redacted]"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event.data["time"])
    structlog.get_logger("momedod.test").info("test.quiet")  # below warning: not streamed

    # Requests on a subscribed connection are not answered: it carries only events.
    await sub.send({"id": 2, "cmd": "user.list"})
    with trio.move_on_after(1.2):
        while True:
            event = await sub.next()
            assert isinstance(event, Event)
            assert not (event.kind == "log" and event.data["event"] == "test.quiet")
    await sub.stream.aclose()
    await other.send({"id": 2, "cmd": "user.list"})  # the server carries on
    assert isinstance(await other.next(), Response)


async def test_a_vanished_subscriber_ends_its_stream(live):
    for _ in range(3):
        sub = await lines(live.path)
        await sub.send({"id": 1, "cmd": "subscribe", "args": {"interval": 0.5}})
        assert isinstance(await sub.next(), Response)
        await trio.aclose_forcefully(sub.stream)
    await trio.sleep(1.2)  # the server notices on its next write or read, without crashing
    probe = await lines(live.path)
    await probe.send({"id": 1, "cmd": "server.stats"})
    reply = await probe.next()
    assert isinstance(reply, Response) and reply.ok


async def momedoctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await trio.to_thread.run_sync(ctl.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_momedoctl_user_list_follows_cursors_with_all(live, capsys):
    for i in range(230):
        await ok(live.handler, "user.add", name=f"Pupil {i:03d}")
    cfg = ["-c", str(live.config)]
    code, out, _ = await momedoctl(capsys, *cfg, "user", "list")
    assert code == 0
    rows = out.splitlines()
    assert rows[0].split() == ["ID", "NAME", "DEVICES", "LAST", "SEEN", "STATUS"]
    assert len(rows) == 1 + 100 + 1 and "--all" in rows[-1]
    code, out, _ = await momedoctl(capsys, *cfg, "user", "list", "--all")
    assert len(out.splitlines()) == 1 + 230
    code, out, _ = await momedoctl(capsys, *cfg, "--json", "user", "list", "--all")
    listing = json.loads(out)
    assert len(listing["users"]) == 230 and listing["next"] is None
    code, out, _ = await momedoctl(capsys, *cfg, "user", "list", "--search", "pupil 22")
    assert [r.split()[2] for r in out.splitlines()[1:]] == [str(i) for i in range(220, 230)]
    code, out, _ = await momedoctl(capsys, *cfg, "user", "list", "--disabled")
    assert out == "No users match.\n"
    code, out, _ = await momedoctl(
        capsys, *cfg, "user", "list", "--never-enrolled", "--inactive", "1", "--search", "x"
    )
    assert (code, out) == (0, "No users match.\n")
    with pytest.raises(SystemExit):
        await momedoctl(capsys, *cfg, "user", "list", "--inactive", "0")


async def test_momedoctl_rename_audit_and_stats(live, capsys):
    cfg = ["-c", str(live.config)]
    added = await ok(live.handler, "user.add", name="Anna")
    shown = added["user"]["user_id"]
    code, out, err = await momedoctl(capsys, *cfg, "user", "rename", shown, "Anna", "Müller")
    assert (code, err) == (0, "")
    assert out == f"User {shown} renamed: Anna -> Anna Müller.\n"
    await momedoctl(capsys, *cfg, "user", "disable", shown)

    code, out, _ = await momedoctl(capsys, *cfg, "audit")
    assert code == 0
    lines_ = out.splitlines()
    assert lines_[0].split() == ["TIME", "(UTC)", "UID", "ACTION", "TARGET"]
    me = os.geteuid()
    try:
        caller = f"{me} ({pwd.getpwuid(me).pw_name})"
    except KeyError:
        caller = str(me)
    # Oldest first; the fixture's own user.add came with peer uid PEER (handler call).
    assert [line.split("  ")[0] for line in lines_[1:]] == ["2026-11-29 19:00:00"] * 3
    assert f"  {caller}  user.rename   {shown}" in lines_[2]
    assert lines_[3].endswith(f"user.disable  {shown}")
    assert str(PEER) in lines_[1]
    code, out, _ = await momedoctl(capsys, *cfg, "audit", "--action", "user.disable")
    assert len(out.splitlines()) == 2
    code, out, _ = await momedoctl(capsys, *cfg, "audit", "--limit", "1")
    assert "user.disable" in out and "more with --limit" in out
    code, out, _ = await momedoctl(capsys, *cfg, "audit", "--user", shown.lower())
    assert len(out.splitlines()) == 4
    code, out, _ = await momedoctl(capsys, *cfg, "--json", "audit", "--user", shown)
    assert [e["action"] for e in json.loads(out)["entries"]] == [
        "user.disable",
        "user.rename",
        "user.add",
    ]

    code, out, _ = await momedoctl(capsys, *cfg, "server", "stats")
    assert code == 0
    text = out.splitlines()
    assert "Connections:     3" in text
    assert "Accepted:        1.5/s (last 5 s)" in text
    assert "Delivered:       3.2/s (last 5 s)" in text
    assert "Mailbox backlog: 0 messages" in text
    assert text[-2:] == ["Listeners:", "  127.0.0.1:7443  3 of 10000 connections"]


def qr_paths(svg: str) -> list[str]:
    return re.findall(r'<path[^>]* d="([^"]+)"', svg)


def check_letters(document: str, expected: list[tuple[str, str]]) -> list[str]:
    """One page per (user_id, name), in order; each QR code encodes the link printed below
    it. Returns the links."""
    sections = re.findall(r'<section class="letter">(.*?)</section>', document, re.S)
    assert len(sections) == len(expected)
    assert "page-break-after: always" in document
    links = []
    for section, (user_id, name) in zip(sections, expected, strict=True):
        assert f"<h1>{name}</h1>" in section
        assert f"<strong>{user_id}</strong>" in section
        [link] = re.findall(r'<p class="link">([^<]+)</p>', section)
        [svg] = re.findall(r"<svg.*?</svg>", section, re.S)
        again = segno.make(link, error=letters.QR_ERROR, micro=False)
        assert qr_paths(svg) == qr_paths(again.svg_inline(**letters.QR_SVG_OPTIONS))
        assert qr_paths(svg)
        assert "So geht es" in section and "How to start" in section
        links.append(link)
    return links


async def test_momedoctl_invites_export(live, capsys, short_dir):
    cfg = ["-c", str(live.config)]
    made = [await ok(live.handler, "user.add", name=n) for n in ("Anna", "Ben <b>", "Cleo")]
    await enroll(live.handler, made[0]["invite"]["code"])

    code, out, err = await momedoctl(capsys, *cfg, "invites", "export")
    assert code == 0
    assert "2 new invites" in err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["user_id", "name", "external_id", "link", "expires"]
    assert [(r[0], r[1], r[2]) for r in rows[1:]] == [
        (made[1]["user"]["user_id"], "Ben <b>", ""),
        (made[2]["user"]["user_id"], "Cleo", ""),
    ]
    assert all(r[3].startswith("momedo://") and r[4] == "2026-12-06T19:00:00Z" for r in rows[1:])

    target = short_dir / "letters.html"
    code, out, err = await momedoctl(
        capsys, *cfg, "invites", "export", "--format", "html", "-o", str(target)
    )
    assert (code, out) == (0, "")
    assert str(target) in err
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    document = target.read_text(encoding="utf-8")
    expected = [(made[1]["user"]["user_id"], "Ben &lt;b&gt;"), (made[2]["user"]["user_id"], "Cleo")]
    links = check_letters(document, expected)
    for link, (user_id, _) in zip(links, expected, strict=True):
        # Each printed link is the user's live invite: redeeming it enrolls that user.
        code = parse_invite_link(link).code
        device = await live.handler.control.store.redeem_invite(code, bytes(32), "x", NOW_MS)
        assert userid.display(device.user_id) == user_id

    code, out, _ = await momedoctl(capsys, *cfg, "invites", "export")
    assert (code, out) == (0, "user_id,name,external_id,link,expires\r\n")  # all enrolled now
    code, out, err = await momedoctl(capsys, *cfg, "invites", "export", "--all", "--format", "html")
    assert code == 0 and out.count('<section class="letter">') == 3

    await ok(live.handler, "device.revoke", user_id=made[2]["user"]["user_id"], device_id=1)
    code, out, _ = await momedoctl(capsys, *cfg, "--json", "invites", "export")
    assert [i["name"] for i in json.loads(out)["invites"]] == ["Cleo"]

    code, out, err = await momedoctl(capsys, *cfg, "invites", "export", "--group", "5a")
    assert (code, out, err) == (1, "", "momedoctl: no group '5a' (see momedoctl group list)\n")
    code, _, err = await momedoctl(
        capsys, *cfg, "invites", "export", "-o", str(short_dir / "no" / "such" / "dir.csv")
    )
    assert code == 1 and err.startswith("momedoctl: cannot write")
