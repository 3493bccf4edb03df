"""momedoctl org key / group ... end to end: a real momedod process, momedoctl as a subprocess,
the organisation key file on disk (owner-only, never read by the daemon)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
from support import VENV_BIN, DaemonProcess, admin_call, free_port

from momedod.client.transport import connect, connect_invite
from momedod.e2e.event import EVENT_DELETED, EVENT_ROSTER_CHANGED, parse_conv_event
from momedod.protocol import frames as f
from momedod.protocol.invite import fingerprint_text, parse_invite_link


@pytest.fixture
def proc(tmp_path: Path):  # type: ignore[no-untyped-def]
    daemon = DaemonProcess(tmp_path, free_port(), extra="[policy]\nmax_group_size = 3\n")
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def ctl(proc: DaemonProcess, *argv: str, env: dict[str, str] | None = None) -> Any:
    result = subprocess.run(
        [str(VENV_BIN / "momedoctl"), "-c", str(proc.config_path), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    return result


def ok(proc: DaemonProcess, *argv: str) -> Any:
    result = ctl(proc, *argv)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if "--json" in argv else result.stdout


def user(proc: DaemonProcess, name: str) -> tuple[str, str]:
    added = admin_call(proc.socket, "user.add", name=name)
    return added["user"]["user_id"], added["invite"]["link"]


def test_org_key_is_created_owner_only_and_travels_in_new_invite_links(
    proc: DaemonProcess,
) -> None:
    _uid, before = user(proc, "Early")
    assert parse_invite_link(before).org_fp is None
    key = ok(proc, "--json", "org", "key")
    path = proc.workdir / "org.key"  # next to the config file
    assert key["path"] == str(path) and key["created"] and key["version"] == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "seed" in json.loads(path.read_text())
    _uid, link = user(proc, "Late")
    assert fingerprint_text(parse_invite_link(link).org_fp or b"") == key["fingerprint"]
    info = admin_call(proc.socket, "server.info")
    assert info["org_fingerprint"] == key["fingerprint"]
    again = ok(proc, "--json", "org", "key")  # idempotent: same key, nothing to publish
    assert (again["fingerprint"], again["created"], again["published"]) == (
        key["fingerprint"],
        False,
        0,
    )
    path.chmod(0o644)
    refused = ctl(proc, "org", "key")
    assert refused.returncode == 1 and "chmod 600" in refused.stderr


def test_daemon_runs_without_the_key_file_after_publishing(proc: DaemonProcess) -> None:
    key = ok(proc, "--json", "org", "key")
    ok(proc, "group", "add", "Team")
    path = proc.workdir / "org.key"
    path.rename(proc.workdir / "offline-copy.key")  # as if kept on another machine
    proc.stop()
    proc.start()
    assert ok(proc, "--json", "group", "list")["groups"][0]["name"] == "Team"
    _uid, link = user(proc, "Someone")
    assert fingerprint_text(parse_invite_link(link).org_fp or b"") == key["fingerprint"]
    # Changing a group needs the key: momedoctl would make a NEW key, which the daemon
    # refuses as not continuing the published chain.
    refused = ctl(proc, "group", "members", "Team", "add", _uid)
    assert refused.returncode == 1 and "another chain" in refused.stderr
    env = {"MOMEDO_ORG_KEY": str(proc.workdir / "offline-copy.key")}
    result = ctl(proc, "group", "members", "Team", "add", _uid, env=env)
    assert result.returncode == 0, result.stderr


async def test_group_lifecycle_pushes_events_to_member_devices(proc: DaemonProcess) -> None:
    teacher, _link = user(proc, "Teacher")
    pupil, pupil_link = user(proc, "Pupil")
    async with connect_invite(pupil_link, "phone") as (_client, creds):
        pass
    added = await trio.to_thread.run_sync(
        lambda: ok(proc, "--json", "group", "add", "Klasse", "7b", "--channel")
    )
    conv_id = added["group"]["conv_id"]
    assert (added["group"]["kind"], added["group"]["members"]) == ("channel", 0)
    # Any user ID form: lower case and without the dash.
    await trio.to_thread.run_sync(
        lambda: ok(proc, "group", "members", conv_id[:6], "add", teacher, pupil.lower())
    )
    await trio.to_thread.run_sync(lambda: ok(proc, "group", "admins", "Klasse 7b", "add", teacher))
    shown = await trio.to_thread.run_sync(lambda: ok(proc, "--json", "group", "show", "Klasse 7b"))
    assert shown["group"]["epoch"] == 3
    assert [(m["name"], m["role"]) for m in shown["members"]] == sorted(
        [("Teacher", "admin"), ("Pupil", "member")],
        key=lambda nm: {"Teacher": teacher, "Pupil": pupil}[nm[0]].replace("-", ""),
    )
    text = await trio.to_thread.run_sync(lambda: ok(proc, "group", "show", "Klasse 7b"))
    assert "Teacher" in text and "admin" in text
    async with connect(creds) as c:
        events = []
        while len(events) < 2:
            got = await c.receive(10)
            if isinstance(got, f.Deliver):
                events.append(parse_conv_event(got.payload))
        assert [(e.what, e.conv_id.hex(), e.epoch) for e in events] == [
            (EVENT_ROSTER_CHANGED, conv_id, 2),
            (EVENT_ROSTER_CHANGED, conv_id, 3),
        ]
        convs = await c.request(f.ConvList(c.next_id()))
        assert isinstance(convs, f.Convs) and convs.convs[0].managed
        deleted = await trio.to_thread.run_sync(lambda: ok(proc, "group", "delete", "Klasse 7b"))
        assert "deleted" in deleted
        got = await c.receive(10)
        while not isinstance(got, f.Deliver):  # DRAINED
            got = await c.receive(10)
        assert parse_conv_event(got.payload).what == EVENT_DELETED
    listing = await trio.to_thread.run_sync(lambda: ok(proc, "--json", "group", "list"))
    assert listing["groups"] == []
    audit = admin_call(proc.socket, "audit.list", action="group.")["entries"]
    assert [e["action"] for e in reversed(audit)] == [
        "group.add",
        "group.update",
        "group.update",
        "group.delete",
    ]
    org = admin_call(proc.socket, "audit.list", action="org.")["entries"]
    assert [e["action"] for e in org] == ["org.key.put"]
    assert {e["uid"] for e in audit + org} == {os.geteuid()}  # the caller, from SO_PEERCRED


def test_group_commands_refuse_clearly(proc: DaemonProcess) -> None:
    ids = [user(proc, f"U{i}")[0] for i in range(4)]
    ok(proc, "group", "add", "Small")
    too_many = ctl(proc, "group", "members", "Small", "add", *ids)
    assert too_many.returncode == 1 and "at most 3" in too_many.stderr
    unknown = ctl(proc, "group", "show", "Nope")
    assert unknown.returncode == 1 and "no group" in unknown.stderr
    taken = ctl(proc, "group", "add", "Small")
    assert taken.returncode == 1 and "exists" in taken.stderr
    bad_id = ctl(proc, "group", "members", "Small", "add", "not-an-id!")
    assert bad_id.returncode == 1
    same = ok(proc, "group", "members", "Small", "remove", ids[0])
    assert "No change" in same


def test_rotation_keeps_a_backup_and_signs_later_changes_with_the_new_key(
    proc: DaemonProcess,
) -> None:
    first = ok(proc, "--json", "org", "key")
    uid, _link = user(proc, "Anna")
    ok(proc, "group", "add", "Team")
    rotated = ok(proc, "--json", "org", "key", "--rotate")
    assert rotated["version"] == 2 and rotated["fingerprint"] != first["fingerprint"]
    backup = proc.workdir / "org.key.1"
    assert rotated["previous"]["path"] == str(backup)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    ok(proc, "group", "members", "Team", "add", uid)  # signed with the new key
    _uid, link = user(proc, "Ben")
    assert fingerprint_text(parse_invite_link(link).org_fp or b"") == rotated["fingerprint"]
    keys = admin_call(proc.socket, "org.key.get")
    assert keys["version"] == 2 and keys["fingerprint"] == rotated["fingerprint"]
    # The old key file can no longer change anything.
    env = {"MOMEDO_ORG_KEY": str(backup)}
    old = ctl(proc, "group", "members", "Team", "remove", uid, env=env)
    assert old.returncode == 1 and "newest key" in old.stderr
