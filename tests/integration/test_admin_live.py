"""Operator features against a real momedod process: the audit log with the caller's uid from
SO_PEERCRED, server.stats after real traffic, the subscribe stream, and invite letters."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import segno
import trio
from support import VENV_BIN, DaemonProcess, admin_call, free_port, new_message_id

from momedod.admin import letters
from momedod.admin.protocol import Event, Response, decode_line
from momedod.client.transport import ClientError, connect, connect_invite
from momedod.protocol import frames as f


@pytest.fixture
def proc(tmp_path: Path):  # type: ignore[no-untyped-def]
    daemon = DaemonProcess(tmp_path, free_port())
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


async def admin(proc: DaemonProcess, cmd: str, **args: Any) -> dict[str, Any]:
    return await trio.to_thread.run_sync(lambda: admin_call(proc.socket, cmd, **args))


async def momedoctl(proc: DaemonProcess, *argv: str) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [str(VENV_BIN / "momedoctl"), "-c", str(proc.config_path), *argv],
            capture_output=True,
            text=True,
            timeout=30,
        )
    )


async def ctl_ok(proc: DaemonProcess, *argv: str) -> str:
    result = await momedoctl(proc, *argv)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def enroll(link: str, name: str):  # type: ignore[no-untyped-def]
    async with connect_invite(link, name) as (_client, creds):
        return creds


async def test_every_change_is_audited_with_the_callers_uid(proc, tmp_path):
    me = os.geteuid()
    out = await ctl_ok(proc, "--json", "user", "add", "Anna")
    anna = json.loads(out)
    shown = anna["user"]["user_id"]
    ben = json.loads(await ctl_ok(proc, "--json", "user", "add", "Ben"))["user"]["user_id"]
    await enroll(anna["invite"]["link"], "phone")
    await ctl_ok(proc, "user", "rename", shown, "Anna", "Schmidt")
    await ctl_ok(proc, "user", "disable", shown)
    await ctl_ok(proc, "user", "enable", shown)
    await ctl_ok(proc, "user", "invite", shown)
    await ctl_ok(proc, "device", "revoke", shown, "1")
    await ctl_ok(proc, "invites", "export")
    await ctl_ok(proc, "backup", str(tmp_path / "backup"))
    await ctl_ok(proc, "user", "delete", ben)
    async with trio.open_nursery() as reads:  # at once: reads are not audited, in any order
        for read in (["user", "list"], ["user", "show", shown], ["server", "stats"], ["audit"]):
            reads.start_soon(ctl_ok, proc, *read)

    entries = json.loads(await ctl_ok(proc, "--json", "audit", "--limit", "100"))["entries"]
    assert [(e["action"], e["target"]) for e in reversed(entries)] == [
        ("user.add", shown),
        ("user.add", ben),
        ("user.rename", shown),
        ("user.disable", shown),
        ("user.enable", shown),
        ("user.invite", shown),
        ("device.revoke", f"{shown}/1"),
        ("user.invite", shown),  # invites export: Anna (device revoked) and Ben
        ("user.invite", ben),
        ("server.backup", str(tmp_path / "backup")),
        ("user.delete", ben),
    ]
    assert {e["uid"] for e in entries} == {me}  # from SO_PEERCRED, 0 when run as root
    table = await ctl_ok(proc, "audit")
    assert len(table.splitlines()) == 1 + len(entries)
    assert all(f"  {me}" in line for line in table.splitlines()[1:])
    if me == 0:
        assert "0 (root)" in table
    # The same entries over the admin protocol, filtered by user.
    mine = await admin(proc, "audit.list", user_id=shown.lower())
    assert [e["action"] for e in mine["entries"]][-1] == "user.add"
    assert all(e["user_id"] == shown for e in mine["entries"])


async def test_server_stats_after_real_traffic(proc):
    alice = await enroll((await admin(proc, "user.add", name="Alice"))["invite"]["link"], "a")
    bob = await enroll((await admin(proc, "user.add", name="Bob"))["invite"]["link"], "b")
    to_bob = [f.Recipient(bob.user_id, bob.device_id, b"")]
    async with connect(alice) as a, connect(bob) as b:
        assert isinstance(await b.receive(5), f.Drained)
        for i in range(20):
            await a.send(new_message_id(), f"m{i}".encode(), to_bob)
        for _ in range(20):
            got = await b.receive(5)
            assert isinstance(got, f.Deliver)
            await b.ack([got.seq])
        stats = await admin(proc, "server.stats")
        assert stats["connections"] == 2
        assert stats["listeners"][0]["connections"] == 2
        assert stats["online_devices"] == 2
        assert stats["messages_accepted_total"] == 20
        assert stats["messages_delivered_total"] == 20
        assert stats["messages_accepted_per_s"] > 0, stats
        assert stats["messages_delivered_per_s"] > 0
        assert 1 <= stats["rate_window_s"] <= 6
        # Per second over the window: 20 messages can mean at most 20 / 0.2 s.
        assert stats["messages_accepted_per_s"] <= 100
        assert (stats["mailbox_entries"], stats["mailbox_oldest_age_s"]) == (0, None)
    # Bob offline: a backlog builds up.
    async with connect(alice) as a:
        for i in range(3):
            await a.send(new_message_id(), f"later{i}".encode(), to_bob)
        await trio.sleep(0.3)
        stats = await admin(proc, "server.stats")
        assert stats["connections"] == 1 and stats["online_devices"] == 1
    assert stats["mailbox_entries"] == 3
    assert 0 <= stats["mailbox_oldest_age_s"] < 30
    assert (stats["users"], stats["devices"]) == (2, 2)
    assert stats["store_bytes"] > 0
    assert stats["messages_accepted_total"] == 23
    text = await ctl_ok(proc, "server", "stats")
    assert "Mailbox backlog: 3 messages, oldest" in text
    assert re.search(r"^Accepted:\s+\d+\.\d/s \(last \d s\)$", text, re.M)
    # The rates fall back to zero once the traffic is older than the window (5 s).
    with trio.fail_after(15):
        while True:
            stats = await admin(proc, "server.stats")
            if stats["messages_accepted_per_s"] == 0 and stats["messages_delivered_per_s"] == 0:
                break
            await trio.sleep(0.2)


class Stream:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.events: list[Event] = []

    async def next(self) -> Response | Event:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            assert data, "momedod closed the subscription"
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return decode_line(line)

    async def wait_for(self, kind: str, timeout: float, **match: Any) -> Event:
        with trio.fail_after(timeout):
            while True:
                event = await self.next()
                assert isinstance(event, Event), event
                self.events.append(event)
                if event.kind == kind and all(event.data.get(k) == v for k, v in match.items()):
                    return event


async def test_subscribe_stream_from_the_daemon(proc):
    raw = await trio.open_unix_socket(os.fspath(proc.socket))
    sub = Stream(raw)
    await raw.send_all(b'{"id": 1, "cmd": "subscribe", "args": {"interval": 1}}\n')
    reply = await sub.next()
    assert isinstance(reply, Response) and reply.result == {"subscribed": True, "interval": 1.0}

    started = trio.current_time()
    await sub.wait_for("stats", 1.0)
    await sub.wait_for("stats", 1.5)
    assert trio.current_time() - started < 2.5
    stats = sub.events[-1].data
    assert stats["listeners"][0]["port"] == proc.port
    assert {"users", "devices", "mailbox_entries", "messages_delivered_per_s"} <= set(stats)

    added = await admin(proc, "user.add", name="Anna")  # on another connection
    event = await sub.wait_for("audit", 1.5, action="user.add")
    assert event.data["target"] == added["user"]["user_id"]
    assert event.data["uid"] == os.geteuid()
    assert added["invite"]["code"] not in json.dumps(event.data)

    # A warning: the reload notices a setting that needs a restart.
    text = proc.config_path.read_text()
    proc.config_path.write_text(re.sub(r"\[metrics\]\nport = \d+", "[metrics]\nport = 1", text))
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGHUP)
    event = await sub.wait_for("log", 5.0, event="reload.needs_restart")
    assert event.data["level"] == "warning"
    assert event.data["fields"]["setting"] == "admin/storage/metrics"
    # An error: a broken configuration is refused.
    proc.config_path.write_text("[limits]\nidle_timeout = 'soon'\n")
    proc.proc.send_signal(signal.SIGHUP)
    event = await sub.wait_for("log", 5.0, event="reload.failed")
    assert event.data["level"] == "error"
    assert "idle_timeout" in event.data["fields"]["error"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event.data["time"])
    # The stream keeps going after the log events.
    await sub.wait_for("stats", 1.5)
    await raw.aclose()
    assert (await admin(proc, "server.info"))["users"] == 1


def qr_paths(svg: str) -> list[str]:
    return re.findall(r'<path[^>]* d="([^"]+)"', svg)


async def test_invites_export_csv_and_html_letters(proc, tmp_path):
    made = [await admin(proc, "user.add", name=n) for n in ("Anna", "Ben", "Cleo", "Dora", "Emil")]
    for m in made[:2]:
        await enroll(m["invite"]["link"], "phone")
    waiting = made[2:]

    out = await ctl_ok(proc, "invites", "export", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["user_id"], r["name"], r["external_id"]) for r in rows] == [
        (m["user"]["user_id"], m["user"]["name"], "") for m in waiting
    ]
    # The new links work, the old ones of those users do not.
    with pytest.raises(ClientError):
        await enroll(waiting[0]["invite"]["link"], "old link")

    target = tmp_path / "letters.html"
    await ctl_ok(proc, "invites", "export", "--format", "html", "-o", str(target))
    document = target.read_text(encoding="utf-8")
    pages = re.findall(r'<section class="letter">(.*?)</section>', document, re.S)
    assert len(pages) == len(waiting) == 3
    assert document.count("page-break-after: always") == 1  # one CSS rule, for every page
    links = []
    for page, m in zip(pages, waiting, strict=True):
        assert f"<h1>{m['user']['name']}</h1>" in page
        assert f"<strong>{m['user']['user_id']}</strong>" in page
        [link] = re.findall(r'<p class="link">([^<]+)</p>', page)
        [svg] = re.findall(r"<svg.*?</svg>", page, re.S)
        encoded = segno.make(link, error=letters.QR_ERROR, micro=False)
        assert qr_paths(svg) == qr_paths(encoded.svg_inline(**letters.QR_SVG_OPTIONS)) != []
        links.append(link)
    # The CSV's links were replaced by the HTML export's; these enroll the right users.
    assert not set(links) & {r["link"] for r in rows}
    creds = await enroll(links[1], "from the letter")
    assert creds.user_id == waiting[1]["user"]["user_id"].replace("-", "")
    # Now only two users remain without a device.
    out = await ctl_ok(proc, "invites", "export")
    assert len(out.splitlines()) == 1 + 2

    bad = await momedoctl(proc, "invites", "export", "--group", "5a")
    assert (bad.returncode, bad.stderr) == (
        1,
        "momedoctl: no group '5a' (see momedoctl group list)\n",
    )
