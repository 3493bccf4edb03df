"""Snapshots of every momedo-tui screen at 80x24, fed by a scripted admin server.

The app talks to ``FakeAdmin`` (fixed replies in the admin protocol's exact shapes), so the
screens are the same on every run; each is compared as text with
``tests/tui/snapshots/NAME.txt`` (see tui_snapshot.py; ``MOMEDO_UPDATE_SNAPSHOTS=1``
rewrites them). Each test also checks that every key the footer should show is on screen.
The behaviour against the real daemon is tested in test_tui*.py.

Sync tests around ``asyncio.run`` (pytest-trio's trio_mode owns async tests).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import segno
from fake_admin import FakeAdmin, Reply
from textual.pilot import Pilot
from textual.widgets import DataTable, Footer
from tui_snapshot import SIZE, assert_snapshot, settle

from momedo_tui.app import MomedoTui
from momedo_tui.client import AdminClient
from momedo_tui.groups import GroupScreen, GroupsScreen, UserPickerScreen
from momedo_tui.screens import (
    QR_BORDER,
    AuditScreen,
    ConfirmScreen,
    DevicesScreen,
    InviteScreen,
    NameScreen,
    OnOffScreen,
    QuietFormScreen,
    QuietScreen,
)

Scenario = Callable[[Pilot[int], MomedoTui, FakeAdmin], Awaitable[None]]
NO_SOCKET = Path("/run/momedo-snapshot-test/admin.sock")
MAIN_READY = ("Live connections: 19", "ZC5D-3JVL", "updated 10:15:00", "live 10:15:00")


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # Short, because a Unix socket path has at most 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="tuisnap-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(
    sockdir: Path,
    scenario: Scenario,
    *,
    replies: dict[str, Reply] | None = None,
    serve: bool = True,
    **app_args: Any,
) -> None:
    """Run ``scenario`` on a MomedoTui at 80x24 talking to a FakeAdmin (or, when not
    ``serve``, to a socket that does not exist)."""

    async def main() -> None:
        fake = FakeAdmin(sockdir / "admin.sock" if serve else NO_SOCKET, replies)
        client = AdminClient(fake.path)
        app = MomedoTui(
            client, **{"refresh_interval": 3600, "clock": lambda: "10:15:00", **app_args}
        )
        try:
            if serve:
                async with fake, app.run_test(size=SIZE) as pilot:
                    await scenario(pilot, app, fake)
            else:
                async with app.run_test(size=SIZE) as pilot:
                    await scenario(pilot, app, fake)
        finally:
            await client.aclose()

    asyncio.run(main())


def footer_keys(app: MomedoTui) -> list[str]:
    """The ``key Description`` items the footer of the active screen should show."""
    seen: set[str] = set()
    keys = []
    for active in app.screen.active_bindings.values():
        binding = active.binding
        if binding.show and binding.action not in seen:
            seen.add(binding.action)
            keys.append(f"{app.get_key_display(binding)} {binding.description}")
    return keys


def check(name: str, app: MomedoTui, text: str) -> None:
    """Compare with the snapshot; when the screen has a footer, it must show all its keys."""
    has_footer = bool(app.screen.query(Footer)) or len(app.screen_stack) == 1
    if has_footer:
        bottom = text.rstrip("\n").splitlines()[-1]
        missing = [key for key in footer_keys(app) if key not in bottom]
        assert not missing, f"{name}: keys {missing} cut off the footer line {bottom!r}"
    assert_snapshot(name, text, app)


async def wait_for_screen(pilot: Pilot[int], app: MomedoTui, kind: type) -> None:
    for _ in range(200):
        if isinstance(app.screen, kind):
            return
        await pilot.pause(0.02)
    raise AssertionError(f"{kind.__name__} did not open; the screen is {app.screen!r}")


def qr_on_screen(text: str, size: int) -> list[list[bool]]:
    """The QR modules drawn in the top-left ``size`` columns, two rows per line."""
    modules = []
    for line in text.splitlines()[: (size + 1) // 2]:
        cells = line[:size].ljust(size)
        modules.append([c in "█▀" for c in cells])
        modules.append([c in "█▄" for c in cells])
    return modules[:size]


def select_user(app: MomedoTui, user_id: str) -> None:
    table = app.query_one("#users", DataTable)
    table.move_cursor(row=table.get_row_index(user_id))


def test_snapshot_main_screen(sockdir: Path) -> None:
    async def scenario(pilot: Pilot[int], app: MomedoTui, fake: FakeAdmin) -> None:
        check("main", app, await settle(pilot, app, *MAIN_READY))
        # an action's outcome in the status line
        select_user(app, "M8N2-2HTR")
        await pilot.press("d")
        check("main_note", app, await settle(pilot, app, "Disabled Ben Meyer"))
        assert ("user.disable", {"user_id": "M8N2-2HTR"}) in fake.requests

    run(sockdir, scenario)


def test_snapshot_add_user_and_invite(sockdir: Path) -> None:
    async def scenario(pilot: Pilot[int], app: MomedoTui, fake: FakeAdmin) -> None:
        await settle(pilot, app, *MAIN_READY)
        await pilot.press("a")
        await pilot.press(*"Hanna Roth")
        check("add_user", app, await settle(pilot, app, "Name of the new user", "Hanna Roth"))
        await pilot.press("enter")
        await wait_for_screen(pilot, app, InviteScreen)
        text = await settle(pilot, app, "Invite for Hanna Roth", "K25IU4")
        check("invite", app, text)
        # the whole code is on the 80x24 screen, module for module
        assert isinstance(app.screen, InviteScreen)
        expected = [
            [bool(m) for m in row]
            for row in segno.make(app.screen.link, error="l").matrix_iter(border=QR_BORDER)
        ]
        assert qr_on_screen(text, len(expected)) == expected

    run(sockdir, scenario)


def test_snapshot_delete_confirmation(sockdir: Path) -> None:
    async def scenario(pilot: Pilot[int], app: MomedoTui, fake: FakeAdmin) -> None:
        await settle(pilot, app, *MAIN_READY)
        select_user(app, "T4KP-9WQE")
        await pilot.press("x")
        await wait_for_screen(pilot, app, ConfirmScreen)
        check("delete_confirm", app, await settle(pilot, app, "Delete Dilara Öztürk"))

    run(sockdir, scenario)


def test_snapshot_devices_and_revoke(sockdir: Path) -> None:
    async def scenario(pilot: Pilot[int], app: MomedoTui, fake: FakeAdmin) -> None:
        await settle(pilot, app, *MAIN_READY)
        await pilot.press("v")
        await wait_for_screen(pilot, app, DevicesScreen)
        check("devices", app, await settle(pilot, app, "Devices of Anna Schmidt", "3 devices"))
        await pilot.press("k")
        await wait_for_screen(pilot, app, ConfirmScreen)
        check("revoke_confirm", app, await settle(pilot, app, "Revoke device 1"))

    run(sockdir, scenario)


def test_snapshot_audit_log(sockdir: Path) -> None:
    async def scenario(pilot: Pilot[int], app: MomedoTui, fake: FakeAdmin) -> None:
        await settle(pilot, app, *MAIN_READY)
        await pilot.press("l")
        await wait_for_screen(pilot, app, AuditScreen)
        check("audit", app, await settle(pilot, app, "Audit log", "5 entries"))

    run(sockdir, scenario)


def test_snapshot_groups(sockdir: Path) -> None:
    async def scenario(pilot: Pilot[int], app: MomedoTui, fake: FakeAdmin) -> None:
        await settle(pilot, app, *MAIN_READY)
        await pilot.press("g")
        await wait_for_screen(pilot, app, GroupsScreen)
        check("groups", app, await settle(pilot, app, "Fußball AG", "3 groups, 2 channels"))
        await pilot.press("c")
        await wait_for_screen(pilot, app, NameScreen)
        check("group_new_channel", app, await settle(pilot, app, "Name of the new channel"))
        await pilot.press("escape")
        await pilot.press("enter")  # the first row: Klasse 5a
        await wait_for_screen(pilot, app, GroupScreen)
        check("group_members", app, await settle(pilot, app, "Group Klasse 5a", "(deleted user)"))
        await pilot.press("a")
        await wait_for_screen(pilot, app, UserPickerScreen)
        await pilot.press("e")
        check("group_add_member", app, await settle(pilot, app, "2 of 3 users"))
        await pilot.press("escape", "escape")
        await wait_for_screen(pilot, app, GroupsScreen)
        # a group users made: shown, but not changed here
        table = app.screen.query_one("#groups", DataTable)
        table.move_cursor(row=table.get_row_index("1b2c3d4e5f60718293a4b5c6d7e8f901"))
        await pilot.press("m")
        await wait_for_screen(pilot, app, GroupScreen)
        await settle(pilot, app, "Group Fußball AG", "read-only here", "(deleted user)")
        await pilot.press("a")
        text = await settle(pilot, app, "its admins change it in the app")
        assert not isinstance(app.screen, UserPickerScreen)
        check("group_members_user_group", app, text)
        await pilot.press("escape")
        await wait_for_screen(pilot, app, GroupsScreen)
        table.move_cursor(row=0)
        await pilot.press("x")
        await wait_for_screen(pilot, app, ConfirmScreen)
        check("group_delete_confirm", app, await settle(pilot, app, "Delete Group Klasse 5a"))

    # nothing is changed, so the key file is never read: a fixed path for a fixed screen
    run(sockdir, scenario, org_key=Path("/etc/momedo/org.key"))


def test_snapshot_quiet_hours(sockdir: Path) -> None:
    async def scenario(pilot: Pilot[int], app: MomedoTui, fake: FakeAdmin) -> None:
        await settle(pilot, app, *MAIN_READY)
        await pilot.press("h")
        await wait_for_screen(pilot, app, QuietScreen)
        check("quiet", app, await settle(pilot, app, "Quiet hours", "Eltern 5a"))
        await pilot.press("e")  # the first row: Kollegium
        await wait_for_screen(pilot, app, QuietFormScreen)
        check("quiet_form", app, await settle(pilot, app, "Edit policy", "Lehrerzimmer"))
        await pilot.press("escape", "n")
        await wait_for_screen(pilot, app, QuietFormScreen)
        check("quiet_form_new", app, await settle(pilot, app, "New quiet-hours policy"))
        await pilot.press("escape", "u")
        await wait_for_screen(pilot, app, NameScreen)
        await pilot.press(*"gsrz-2t7a", "enter")
        await wait_for_screen(pilot, app, OnOffScreen)
        check("quiet_urgent", app, await settle(pilot, app, "GSRZ-2T7A may send urgent"))
        assert not [r for r in fake.requests if r[0] != "quiet.list" and r[0].startswith("q")]

    run(sockdir, scenario)


def test_snapshot_daemon_missing(sockdir: Path) -> None:
    """The daemon went away (or was never there): the status line and dashboard say so."""

    async def scenario(pilot: Pilot[int], app: MomedoTui, fake: FakeAdmin) -> None:
        text = await settle(pilot, app, "no such socket", "reconnecting every 2 s")
        check("daemon_missing", app, text)

    run(sockdir, scenario, serve=False, refresh_interval=2.0)


def test_snapshot_permission_denied(sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As root the socket's mode cannot deny access, so make connect() fail as it would.
    async def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(asyncio, "open_unix_connection", denied)

    async def scenario(pilot: Pilot[int], app: MomedoTui, fake: FakeAdmin) -> None:
        text = await settle(pilot, app, "add your account", "reconnecting every 2 s")
        check("permission_denied", app, text)

    run(sockdir, scenario, serve=False, refresh_interval=2.0)
