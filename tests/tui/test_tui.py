"""momedo-tui against a real momedod subprocess, driven headless at 80x24.

pytest-trio's trio_mode owns async tests, so these are sync tests that run Textual's pilot
under ``asyncio.run`` (see ENGINEERING-NOTES.md, Textual).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import DaemonProcess, admin_call, free_port
from textual.pilot import Pilot
from textual.widgets import DataTable

from momedo_tui.app import MomedoTui, main
from momedo_tui.client import AdminClient

SIZE = (80, 24)


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short, because a Unix socket path has at most 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="tui-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(workdir: Path) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(workdir, free_port())
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def add_user(daemon: DaemonProcess, name: str) -> str:
    return str(admin_call(daemon.socket, "user.add", name=name)["user"]["user_id"])


def screen_text(app: MomedoTui) -> str:
    """What the terminal shows, as plain text lines."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def wait_until(
    pilot: Pilot[int], app: MomedoTui, predicate: Callable[[], bool], timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; the screen shows:\n{screen_text(app)}")
        await pilot.pause(0.05)


async def wait_for_text(pilot: Pilot[int], app: MomedoTui, *texts: str) -> None:
    """Wait until the screen shows every one of ``texts``."""
    await wait_until(pilot, app, lambda: all(t in screen_text(app) for t in texts))


def test_shows_server_and_users_and_refreshes_on_r(daemon: DaemonProcess) -> None:
    anna = add_user(daemon, "Anna Schmidt")
    ben = add_user(daemon, "Ben Meyer")
    info = admin_call(daemon.socket, "server.info")

    async def scenario() -> None:
        client = AdminClient(daemon.socket)
        # A long interval: the third user must come from pressing r, not from the timer.
        app = MomedoTui(client, refresh_interval=3600)
        try:
            async with app.run_test(size=SIZE) as pilot:
                # Rendering follows the data by a frame or two: wait for all of it.
                await wait_for_text(
                    pilot,
                    app,
                    anna,
                    "Anna Schmidt",
                    ben,
                    "Ben Meyer",
                    info["fingerprint"],
                    f"momedod {info['version']}",  # header
                    f"127.0.0.1:{daemon.port}  0 of 10000 connections",  # listener
                    "Online devices: 0",
                    "l Log",  # footer
                    "q Quit",
                )
                table = app.query_one("#users", DataTable)
                assert [str(c) for c in table.get_row(anna)] == [
                    anna,
                    "Anna Schmidt",
                    "0",
                    "active",
                ]

                carla = add_user(daemon, "Carla Weber")
                admin_call(daemon.socket, "user.disable", user_id=ben)
                await pilot.press("r")
                await wait_for_text(pilot, app, carla, "Carla Weber", "disabled")
                assert [str(c) for c in table.get_row(ben)][3] == "disabled"
                assert table.row_count == 3

                await pilot.press("q")
                async with asyncio.timeout(5):
                    while app.is_running:
                        await asyncio.sleep(0.02)
            assert app.return_code == 0
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_refreshes_by_itself(daemon: DaemonProcess) -> None:
    add_user(daemon, "Anna Schmidt")

    async def scenario() -> None:
        client = AdminClient(daemon.socket)
        app = MomedoTui(client, refresh_interval=0.2)
        try:
            async with app.run_test(size=SIZE) as pilot:
                await wait_for_text(pilot, app, "Anna Schmidt")
                dora = add_user(daemon, "Dora Brandt")
                await wait_for_text(pilot, app, dora, "Dora Brandt")
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_survives_a_daemon_restart(daemon: DaemonProcess) -> None:
    anna = add_user(daemon, "Anna Schmidt")

    async def scenario() -> None:
        client = AdminClient(daemon.socket)
        app = MomedoTui(client, refresh_interval=0.2)
        try:
            async with app.run_test(size=SIZE) as pilot:
                await wait_for_text(pilot, app, anna)
                await asyncio.to_thread(daemon.stop)
                await wait_for_text(pilot, app, "no such socket")
                assert anna in screen_text(app)  # the last data stays on screen
                assert app.is_running
                await asyncio.to_thread(daemon.start)
                await wait_until(pilot, app, lambda: "no such socket" not in screen_text(app))
                assert anna in screen_text(app)
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_missing_socket_is_one_line_and_exit_1(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = workdir / "admin.sock"
    config = workdir / "momedod.toml"
    config.write_text(f'[admin]\nsocket = "{sock}"\n')

    assert main(["-c", str(config)]) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"momedo-tui: cannot reach momedod at {sock}: no such socket — is the daemon running?\n"
    )


def test_permission_denied_is_one_line_and_exit_1(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root the socket's mode cannot deny access, so make connect() fail as it would.
    async def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(asyncio, "open_unix_connection", denied)
    sock = workdir / "admin.sock"
    config = workdir / "momedod.toml"
    config.write_text(f'[admin]\nsocket = "{sock}"\n')

    assert main(["-c", str(config)]) == 1

    err = capsys.readouterr().err
    assert err == (
        f"momedo-tui: cannot reach momedod at {sock}: permission denied — "
        "add your account to the group momedo-admin\n"
    )


def test_bad_config_is_one_line_and_exit_1(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-c", str(workdir / "nope.toml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("momedo-tui: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_imports_neither_trio_nor_the_server() -> None:
    code = (
        "import sys, momedo_tui.app\n"
        "bad = sorted(m for m in sys.modules if m == 'trio' or m.startswith("
        "('trio.', 'momedod.server', 'momedod.store')))\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
