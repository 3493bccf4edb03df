"""serve_admin on a real Unix socket, driven by the real momedoctl code path."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from fakes import FINGERPRINT, FakeControl, FakeStore
from structlog.testing import capture_logs

from momedod.admin import ctl
from momedod.admin.protocol import MAX_LINE_BYTES
from momedod.admin.server import AdminHandler, serve_admin
from momedod.protocol import userid


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict]]:
    # Keep structlog's default stdout renderer out of momedoctl's captured output.
    with capture_logs() as entries:
        yield entries


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 107-byte limit of a Unix socket path.
    path = Path(tempfile.mkdtemp(prefix="momedo-admin-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@dataclass
class Admin:
    path: Path
    control: FakeControl
    config: Path  # a momedod.toml naming the socket, as momedoctl -c reads it


@pytest.fixture
async def admin(short_dir: Path, nursery: trio.Nursery) -> Admin:
    path = short_dir / "run" / "admin.sock"
    control = FakeControl(FakeStore())
    await nursery.start(serve_admin, path, AdminHandler(control))
    config = short_dir / "momedod.toml"
    config.write_text(f'[admin]\nsocket = "{path}"\n')
    config.chmod(0o644)
    return Admin(path, control, config)


async def momedoctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await trio.to_thread.run_sync(ctl.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class LineClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def reply(self) -> dict | None:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)


async def connect(path: Path) -> LineClient:
    return LineClient(await trio.open_unix_socket(os.fspath(path)))


async def test_socket_is_group_accessible_only(admin):
    assert stat.S_IMODE(os.stat(admin.path).st_mode) == 0o660
    assert stat.S_IMODE(os.stat(admin.path.parent).st_mode) == 0o750


async def test_user_add_prints_id_and_invite_link(admin, capsys):
    code, out, err = await momedoctl(capsys, "-c", str(admin.config), "user", "add", "Anna Schmidt")
    assert (code, err) == (0, "")
    [user] = admin.control.store.users.values()
    [(invite, _)] = admin.control.store.invites
    assert out == (
        f"User {userid.display(user.user_id)} created (Anna Schmidt).\n"
        "Invite link (valid until 2026-12-06 19:00 UTC):\n"
        f"  momedo://127.0.0.1:7443/invite/{invite.code}#{FINGERPRINT}\n"
    )


async def test_user_add_joins_unquoted_words(admin, capsys):
    code, out, _ = await momedoctl(capsys, "-c", str(admin.config), "user", "add", "Anna", "Lena")
    assert code == 0
    assert "(Anna Lena)" in out


async def test_user_list_table_and_json(admin, capsys):
    store = admin.control.store
    anna = store.add_user("Anna Schmidt")
    store.add_device(anna.user_id, "phone")
    ben = store.add_user("Ben")
    await store.set_user_disabled(ben.user_id, True)

    code, out, _ = await momedoctl(capsys, "-c", str(admin.config), "user", "list")
    assert code == 0
    assert out.splitlines() == [
        "ID         NAME          DEVICES  LAST SEEN  STATUS",
        f"{userid.display(anna.user_id)}  Anna Schmidt        1  never      active",
        f"{userid.display(ben.user_id)}  Ben                 0  never      disabled",
    ]

    for argv in (["--json", "user", "list"], ["user", "list", "--json"]):
        code, out, _ = await momedoctl(capsys, "-c", str(admin.config), *argv)
        assert code == 0
        users = json.loads(out)["users"]
        assert [(u["user_id"], u["disabled"]) for u in users] == [
            (userid.display(anna.user_id), False),
            (userid.display(ben.user_id), True),
        ]


async def test_user_show_and_device_revoke(admin, capsys):
    store = admin.control.store
    anna = store.add_user("Anna")
    store.add_device(anna.user_id, "Pixel 7", mailbox_count=2)
    shown = userid.display(anna.user_id)

    code, out, _ = await momedoctl(capsys, "-c", str(admin.config), "user", "show", shown.lower())
    assert code == 0
    assert out.splitlines() == [
        f"User {shown}: Anna",
        "  created    2026-11-28 19:00 UTC",
        "  status     active",
        "  last seen  never",
        "  queued     2",
        "",
        "DEVICE  NAME     CREATED               LAST SEEN  QUEUED  STATUS",
        "     1  Pixel 7  2026-11-29 18:00 UTC  never           2  active",
        "",
        "Not in any group or channel.",
    ]

    code, out, _ = await momedoctl(capsys, "-c", str(admin.config), "device", "revoke", shown, "1")
    assert code == 0
    assert out.startswith(f"Device 1 (Pixel 7) of user {shown} revoked")
    assert not store.devices[(anna.user_id, 1)].active


async def test_server_info_shows_listeners_and_fingerprint(admin, capsys):
    code, out, _ = await momedoctl(capsys, "-c", str(admin.config), "server", "info")
    assert code == 0
    lines = out.splitlines()
    assert f"Fingerprint:     {FINGERPRINT}" in lines
    assert "Public address:  127.0.0.1:7443" in lines
    assert "Uptime:          3h 12m" in lines
    assert lines[-2:] == ["Listeners:", "  127.0.0.1:7443  3 of 10000 connections"]


async def test_server_errors_are_one_line_and_exit_1(admin, capsys):
    code, out, err = await momedoctl(capsys, "-c", str(admin.config), "user", "disable", "M8N22HTR")
    assert (code, out) == (1, "")
    assert err == "momedoctl: no user M8N2-2HTR\n"
    code, _, err = await momedoctl(capsys, "-c", str(admin.config), "user", "show", "nope")
    assert code == 1
    assert err.startswith("momedoctl: a user ID has 8 characters")


async def test_usage_errors_exit_2(admin, capsys):
    for argv in (["user"], ["device", "revoke", "M8N2-2HTR", "one"], ["user", "rename", "x"]):
        with pytest.raises(SystemExit) as info:
            await momedoctl(capsys, "-c", str(admin.config), *argv)
        assert info.value.code == 2


async def test_missing_socket_error(short_dir, capsys):
    config = short_dir / "momedod.toml"
    config.write_text(f'[admin]\nsocket = "{short_dir}/admin.sock"\n')
    code, out, err = await momedoctl(capsys, "-c", str(config), "user", "list")
    assert (code, out) == (1, "")
    assert err == (
        f"momedoctl: cannot reach momedod at {short_dir}/admin.sock: "
        "no such socket — is the daemon running?\n"
    )


async def test_config_errors_are_reported_by_momedoctl(short_dir, capsys):
    config = short_dir / "momedod.toml"
    config.write_text("[admin]\nsockets = 1\n")
    code, _, err = await momedoctl(capsys, "-c", str(config), "user", "list")
    assert code == 1
    assert err == f"momedoctl: {config}: admin.sockets: unknown key (known: socket)\n"


async def test_permission_denied_error(admin, capsys):
    argv = ["-c", str(admin.config), "user", "list"]
    expected = (
        f"momedoctl: cannot reach momedod at {admin.path}: permission denied — "
        "add your account to the group momedo-admin\n"
    )
    admin.path.chmod(0)  # refuses even the socket's owner...
    if os.geteuid() != 0:
        code, _, err = await momedoctl(capsys, *argv)
        assert (code, err) == (1, expected)
        return
    # ...except root with CAP_DAC_OVERRIDE: run momedoctl without any capabilities.
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv is not installed")
    result = await trio.run_process(
        [
            setpriv,
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--",
            sys.executable,
            "-m",
            "momedod.admin.ctl",
            *argv,
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert (result.returncode, result.stderr.decode()) == (1, expected)


async def test_bad_json_gets_bad_request_and_the_connection_stays_open(admin):
    client = await connect(admin.path)
    await client.send(b"{not json\n")
    reply = await client.reply()
    assert reply["id"] is None
    assert reply["error"]["code"] == "bad_request"
    await client.send(b'{"id": 2, "cmd": "user.list"}\n')
    assert await client.reply() == {"id": 2, "ok": True, "result": {"users": [], "next": None}}


async def test_pipelined_requests_are_answered_in_order(admin):
    client = await connect(admin.path)
    lines = [json.dumps({"id": i, "cmd": "user.add", "args": {"name": f"U{i}"}}) for i in range(5)]
    await client.send(("\n".join(lines) + "\n\n").encode())
    replies = [await client.reply() for _ in range(5)]
    assert [r["id"] for r in replies] == list(range(5))
    assert [r["result"]["user"]["name"] for r in replies] == [f"U{i}" for i in range(5)]


async def test_line_of_exactly_the_limit_is_accepted(admin):
    client = await connect(admin.path)
    head = b'{"id":1,"cmd":"user.add","args":{"name":"'
    tail = b'"}}'
    await client.send(head + b"x" * (MAX_LINE_BYTES - len(head) - len(tail)) + tail + b"\n")
    reply = await client.reply()
    assert reply["error"]["code"] == "invalid_argument"  # too long a name, but answered
    await client.send(b'{"id": 2, "cmd": "user.list"}\n')
    assert (await client.reply())["ok"] is True


async def test_overlong_line_gets_an_error_and_is_closed(admin):
    client = await connect(admin.path)
    with trio.fail_after(10):
        # The server may close before it has read everything we send.
        with contextlib.suppress(trio.BrokenResourceError):
            await client.send(b"x" * (MAX_LINE_BYTES + 100))
        reply = await client.reply()
        assert reply["id"] is None
        assert reply["error"]["code"] == "bad_request"
        assert "longer than" in reply["error"]["message"]
        assert await client.reply() is None  # closed


async def test_changes_are_logged_with_the_callers_uid(admin, capsys, logs):
    code, _, _ = await momedoctl(capsys, "-c", str(admin.config), "user", "add", "Anna")
    assert code == 0
    [entry] = [e for e in logs if e["event"] == "admin.action"]
    assert (entry["action"], entry["uid"]) == ("user.add", os.geteuid())


async def test_stale_socket_is_replaced(short_dir, nursery):
    path = short_dir / "admin.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.fspath(path))
    stale.close()  # the file stays; nobody listens
    await nursery.start(serve_admin, path, AdminHandler(FakeControl()))
    client = await connect(path)
    await client.send(b'{"id": 1, "cmd": "user.list"}\n')
    assert (await client.reply())["ok"] is True


async def test_refuses_a_socket_in_use_and_a_non_socket_file(admin, short_dir, nursery):
    with pytest.raises(OSError) as info:
        await nursery.start(serve_admin, admin.path, AdminHandler(FakeControl()))
    assert info.value.errno == errno.EADDRINUSE
    client = await connect(admin.path)  # the first server is unharmed
    await client.send(b'{"id": 1, "cmd": "user.list"}\n')
    assert (await client.reply())["ok"] is True

    regular = short_dir / "not-a-socket"
    regular.write_text("keep me")
    with pytest.raises(OSError) as info:
        await nursery.start(serve_admin, regular, AdminHandler(FakeControl()))
    assert info.value.errno == errno.EEXIST
    assert regular.read_text() == "keep me"


async def test_shutdown_with_idle_clients_is_prompt_and_removes_the_socket(short_dir):
    path = short_dir / "admin.sock"
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_admin, path, AdminHandler(FakeControl()))
            idle = await connect(path)
            half = await connect(path)
            await half.send(b'{"id": 1, "cmd": "user.li')  # a request cut off mid-line
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert not path.exists()
    assert await idle.reply() is None


async def test_lone_surrogates_do_not_break_replies(admin):
    client = await connect(admin.path)
    await client.send(b'{"id": "\\ud800", "cmd": "user.show", "args": {"user_id": "\\udc00"}}\n')
    reply = await client.reply()
    assert reply["id"] == "\ud800"
    assert reply["error"]["code"] == "invalid_argument"


async def test_a_reply_that_cannot_be_encoded_fails_only_that_request(admin):
    admin.control.server_info = lambda: {"state_dir": Path("/not/json")}
    client = await connect(admin.path)
    await client.send(b'{"id": 1, "cmd": "server.info"}\n{"id": 2, "cmd": "user.list"}\n')
    first, second = await client.reply(), await client.reply()
    assert first["error"] == {"code": "internal", "message": "internal error; see the momedod log"}
    assert second["ok"] is True
