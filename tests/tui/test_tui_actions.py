"""momedo-tui's dashboard and user actions against a real momedod, driven headless at 80x24.

Sync tests around ``asyncio.run`` (pytest-trio owns async tests). The enrolled client runs in
a thread of its own under ``trio.run``; the app itself never imports trio.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, field

import trio
from support import DaemonProcess, admin_call
from test_tui import SIZE, daemon, screen_text, wait_for_text, wait_until, workdir
from textual.widgets import DataTable

from momedo_tui.app import MomedoTui, dashboard_lines, log_line
from momedo_tui.client import AdminClient
from momedo_tui.screens import InviteScreen, qr_text
from momedod.client.transport import ClientError, connect_invite

__all__ = ["daemon", "workdir"]  # fixtures, re-used from test_tui


@dataclass
class Phone:
    """A client device kept connected in a background thread until ``stop`` is set."""

    link: str
    enrolled: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    error_at: float | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)
        self.thread.start()

    async def _main(self) -> None:
        try:
            async with connect_invite(self.link, "phone") as (client, _creds):
                self.enrolled.set()
                async with trio.open_nursery() as nursery:

                    async def stopper() -> None:
                        while not self.stop.is_set():
                            await trio.sleep(0.02)
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(stopper)
                    try:
                        while True:
                            await client.receive()
                    except ClientError as e:
                        self.error_at = time.monotonic()
                        self.error = e
                        nursery.cancel_scope.cancel()
        except BaseException as e:  # enrolment or teardown failed: reported by the test
            if self.error is None:
                self.error_at = time.monotonic()
                self.error = e

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)


def invite_link_on_screen(app: MomedoTui) -> str:
    """Read the invite link from the screen: beside the QR code, it starts at ``momedo://``
    and goes on for lines in the same column."""
    lines = screen_text(app).splitlines()
    start = next(i for i, line in enumerate(lines) if "momedo://" in line)
    column = lines[start].index("momedo://")
    link = lines[start][column:].rstrip()
    for line in lines[start + 1 :]:
        part = line[column:].rstrip()
        if not part or " " in part:
            break
        link += part
    return link


def live_connections(app: MomedoTui) -> int | None:
    found = re.search(r"Live connections: (\d+)", screen_text(app))
    return int(found.group(1)) if found else None


def test_add_user_enroll_and_disable_from_the_tui(daemon: DaemonProcess) -> None:
    phone: Phone | None = None
    timings: dict[str, float] = {}

    async def scenario() -> None:
        nonlocal phone
        client = AdminClient(daemon.socket)
        app = MomedoTui(client, refresh_interval=0.5)
        try:
            async with app.run_test(size=SIZE) as pilot:
                await wait_for_text(pilot, app, "Live connections: 0", "a Add", "d Disable")
                await pilot.press("a")
                await wait_for_text(pilot, app, "Name of the new user")
                await pilot.press(*"Emil Kraus")
                await pilot.press("enter")
                await wait_until(pilot, app, lambda: isinstance(app.screen, InviteScreen))
                await wait_for_text(pilot, app, "Invite for Emil Kraus", "momedo://")
                link = invite_link_on_screen(app)
                assert isinstance(app.screen, InviteScreen)
                assert link == app.screen.link  # what the operator reads is the whole link
                await pilot.press("escape")
                await wait_for_text(pilot, app, "Emil Kraus", "Added Emil Kraus")

                phone = Phone(link)
                phone.start()
                await asyncio.to_thread(phone.enrolled.wait, 10)
                assert phone.enrolled.is_set(), phone.error
                enrolled_at = time.monotonic()
                await wait_until(pilot, app, lambda: (live_connections(app) or 0) >= 1, timeout=2.0)
                timings["dashboard"] = time.monotonic() - enrolled_at
                assert phone.error is None

                table = app.query_one("#users", DataTable)
                users = admin_call(daemon.socket, "user.list")["users"]
                (emil,) = [u for u in users if u["name"] == "Emil Kraus"]
                table.move_cursor(row=table.get_row_index(emil["user_id"]))
                await pilot.pause()
                pressed = time.monotonic()
                await pilot.press("d")
                await wait_until(pilot, app, lambda: phone is not None and phone.error is not None)
                assert phone.error_at is not None
                timings["disconnect"] = phone.error_at - pressed
                assert "USER_DISABLED" in str(phone.error), repr(phone.error)
                assert timings["disconnect"] < 1.0
                await wait_for_text(pilot, app, "Disabled Emil Kraus", "disabled")

                # enable, new invite, delete with confirmation
                await pilot.press("e")
                await wait_for_text(pilot, app, "Enabled Emil Kraus")
                await pilot.press("i")
                await wait_until(pilot, app, lambda: isinstance(app.screen, InviteScreen))
                assert invite_link_on_screen(app) != link
                await pilot.press("escape")
                await pilot.press("x")
                await wait_for_text(pilot, app, "Delete Emil Kraus")
                await pilot.press("n")
                await pilot.pause(0.3)
                assert any(
                    u["name"] == "Emil Kraus"
                    for u in admin_call(daemon.socket, "user.list")["users"]
                )
                await pilot.press("x")
                await wait_for_text(pilot, app, "Delete Emil Kraus")
                await pilot.press("y")
                await wait_for_text(pilot, app, "Deleted Emil Kraus")
                assert admin_call(daemon.socket, "user.list")["users"] == []
        finally:
            if phone is not None:
                phone.close()
            await client.aclose()

    asyncio.run(scenario())
    print(f"timings: {timings}")


def test_admin_errors_show_in_the_status_line(daemon: DaemonProcess) -> None:
    async def scenario() -> None:
        client = AdminClient(daemon.socket)
        app = MomedoTui(client, refresh_interval=3600)
        try:
            async with app.run_test(size=SIZE) as pilot:
                await wait_for_text(pilot, app, "Live connections")
                await pilot.press("d")
                await wait_for_text(pilot, app, "No user selected")
                user_id = admin_call(daemon.socket, "user.add", name="Gone Soon")["user"]["user_id"]
                await pilot.press("r")
                await wait_for_text(pilot, app, "Gone Soon")
                admin_call(daemon.socket, "user.delete", user_id=user_id)  # behind the TUI's back
                await pilot.press("d")
                await wait_for_text(pilot, app, "user.disable failed")
                assert app.is_running
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_dashboard_reconnects_after_a_restart(daemon: DaemonProcess) -> None:
    async def scenario() -> None:
        client = AdminClient(daemon.socket)
        app = MomedoTui(client, refresh_interval=3600)
        try:
            async with app.run_test(size=SIZE) as pilot:
                await wait_for_text(pilot, app, "Live connections: 0")
                await asyncio.to_thread(daemon.stop)
                await wait_for_text(pilot, app, "reconnecting every 2 s")
                await asyncio.to_thread(daemon.start)
                await wait_until(
                    pilot, app, lambda: "reconnecting" not in screen_text(app), timeout=10
                )
                assert "Live connections: 0" in screen_text(app)
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_qr_code_is_half_blocks_of_the_link() -> None:
    text = qr_text("momedo://example.org:7443/invite/ABCD#xyz").plain
    rows = text.splitlines()
    assert len({len(r) for r in rows}) == 1
    assert set(text) <= {"█", "▀", "▄", " ", "\n"}


def test_dashboard_lines_and_log_lines() -> None:
    stats = {
        "uptime_s": 3725,
        "listeners": [{"connections": 3}, {"connections": 4}],
        "online_devices": 5,
        "messages_accepted_per_s": 2.44,
        "messages_delivered_per_s": 7.06,
        "mailbox_entries": 112,
        "mailbox_oldest_age_s": 7380,
    }
    assert dashboard_lines(stats) == [
        "Live connections: 7   Online devices: 5   Uptime: 1h 2m",
        "Msgs/s accepted: 2.4   delivered: 7.1   Backlog: 112 (oldest 2h 3m)",
    ]
    line = log_line(
        {
            "level": "warning",
            "event": "reload.needs_restart",
            "time": "2026-12-01T10:00:00Z",
            "fields": {"setting": "admin"},
        }
    )
    assert line == "10:00:00 WARNING reload.needs_restart setting=admin"
