"""momedo-tui's groups and channels screens against a real momedod, at 80x24.

Sync tests around ``asyncio.run`` like test_tui_actions. The console signs rosters with an
organisation key file of the test's own (created on first use, as momedoctl does).
"""

from __future__ import annotations

import asyncio
import base64
import stat
from pathlib import Path
from typing import Any

import pytest
from support import DaemonProcess, admin_call
from test_tui import SIZE, daemon, screen_text, wait_for_text, wait_until, workdir
from textual.widgets import DataTable

from momedo_tui.app import MomedoTui
from momedo_tui.client import AdminClient
from momedo_tui.groups import (
    GroupProblem,
    GroupScreen,
    GroupsScreen,
    UserPickerScreen,
    ready_key,
)
from momedo_tui.screens import ConfirmScreen, NameScreen
from momedod.admin import orgkey
from momedod.admin.orgkey import change_roles
from momedod.e2e.roster import ROLE_ADMIN, ROLE_MEMBER

__all__ = ["daemon", "workdir"]  # fixtures, re-used from test_tui


def add_user(daemon: DaemonProcess, name: str) -> str:
    return str(admin_call(daemon.socket, "user.add", name=name)["user"]["user_id"])


def group_named(daemon: DaemonProcess, name: str) -> dict[str, Any] | None:
    groups = admin_call(daemon.socket, "group.list")["groups"]
    return next((g for g in groups if g["name"] == name), None)


def roles(daemon: DaemonProcess, name: str) -> dict[str, str]:
    shown = admin_call(daemon.socket, "group.show", group=name)
    return {m["user_id"]: m["role"] for m in shown["members"]}


def select_row(app: MomedoTui, table_id: str, key: str) -> None:
    table = app.screen.query_one(table_id, DataTable)
    table.move_cursor(row=table.get_row_index(key))


def test_create_groups_and_change_members_and_admins(daemon: DaemonProcess, workdir: Path) -> None:
    anna = add_user(daemon, "Anna Schmidt")
    ben = add_user(daemon, "Ben Meyer")
    key_path = workdir / "org.key"

    async def scenario() -> None:
        client = AdminClient(daemon.socket)
        app = MomedoTui(client, refresh_interval=3600, org_key=key_path)
        try:
            async with app.run_test(size=SIZE) as pilot:
                await wait_for_text(pilot, app, "Anna Schmidt", "g Groups")
                await pilot.press("g")
                await wait_until(pilot, app, lambda: isinstance(app.screen, GroupsScreen))
                await wait_for_text(pilot, app, "Groups and channels", "0 groups, 0 channels")

                # create a group and a channel
                await pilot.press("n")
                await wait_until(pilot, app, lambda: isinstance(app.screen, NameScreen))
                await pilot.press(*"Klasse 5a", "enter")
                await wait_for_text(pilot, app, "Created Group Klasse 5a", "New organisation key")
                await pilot.press("c")
                await wait_until(pilot, app, lambda: isinstance(app.screen, NameScreen))
                await pilot.press(*"Eltern 5a", "enter")
                await wait_for_text(pilot, app, "Created Channel Eltern 5a", "1 group, 1 channel")
                klasse, eltern = group_named(daemon, "Klasse 5a"), group_named(daemon, "Eltern 5a")
                assert klasse is not None and eltern is not None
                assert (klasse["kind"], klasse["managed"], klasse["epoch"]) == ("group", True, 1)
                assert (eltern["kind"], eltern["managed"]) == ("channel", True)
                assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
                key = orgkey.load(key_path)
                assert key is not None
                assert admin_call(daemon.socket, "org.key.get")["fingerprint"] == key.fingerprint

                # members: pick two users, make one admin and back, remove the other
                select_row(app, "#groups", klasse["conv_id"])
                await pilot.press("m")
                await wait_until(pilot, app, lambda: isinstance(app.screen, GroupScreen))
                await wait_for_text(pilot, app, "Group Klasse 5a", "No members yet")
                for search, user in (("anna", anna), ("MEY", ben)):
                    await pilot.press("a")
                    await wait_until(pilot, app, lambda: isinstance(app.screen, UserPickerScreen))
                    await wait_for_text(pilot, app, "users who are not members yet")
                    await pilot.press(*search)
                    await wait_for_text(pilot, app, "1 of", user)
                    await pilot.press("enter")
                    await wait_for_text(pilot, app, f"Added {user}")
                assert roles(daemon, "Klasse 5a") == {anna: "member", ben: "member"}
                await wait_for_text(pilot, app, "2 members")

                select_row(app, "#members", anna)
                await pilot.press("t")
                await wait_for_text(pilot, app, f"{anna} is now an admin")
                assert roles(daemon, "Klasse 5a") == {anna: "admin", ben: "member"}
                select_row(app, "#members", anna)
                await pilot.press("t")
                await wait_for_text(pilot, app, f"{anna} is no longer an admin")
                assert roles(daemon, "Klasse 5a")[anna] == "member"

                select_row(app, "#members", ben)
                await pilot.press("x")
                await wait_until(pilot, app, lambda: isinstance(app.screen, ConfirmScreen))
                await wait_for_text(pilot, app, f"Remove Ben Meyer ({ben})")
                await pilot.press("y")
                await wait_for_text(pilot, app, f"Removed {ben}")
                assert roles(daemon, "Klasse 5a") == {anna: "member"}
                shown = group_named(daemon, "Klasse 5a")
                assert shown is not None and shown["epoch"] == 6

                # back to the list, which shows the new count; delete the channel
                await pilot.press("escape")
                await wait_until(pilot, app, lambda: isinstance(app.screen, GroupsScreen))
                select_row(app, "#groups", eltern["conv_id"])
                await pilot.press("x")
                await wait_until(pilot, app, lambda: isinstance(app.screen, ConfirmScreen))
                await pilot.press("y")
                await wait_for_text(pilot, app, "Deleted Channel Eltern 5a", "1 group, 0 channels")
                assert group_named(daemon, "Eltern 5a") is None
                await pilot.press("escape")
                await wait_until(pilot, app, lambda: len(app.screen_stack) == 1)

                await pilot.press("l")
                await wait_for_text(pilot, app, "group.delete", "group.update", "group.add")
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_a_key_of_another_chain_is_refused(daemon: DaemonProcess, workdir: Path) -> None:
    theirs = orgkey.create(workdir / "theirs.key")
    admin_call(daemon.socket, "org.key.put", record=_b64(theirs.chain[0]))
    mine = workdir / "mine.key"

    async def scenario() -> None:
        client = AdminClient(daemon.socket)
        try:
            with pytest.raises(GroupProblem, match="of another chain"):
                await ready_key(client, mine)
            app = MomedoTui(client, refresh_interval=3600, org_key=mine)
            async with app.run_test(size=SIZE) as pilot:
                await wait_for_text(pilot, app, "g Groups")
                await pilot.press("g", "n")
                await wait_until(pilot, app, lambda: isinstance(app.screen, NameScreen))
                await pilot.press(*"Chor", "enter")
                await wait_for_text(pilot, app, "Cannot create group Chor")
                assert "of another" in screen_text(app)
                assert admin_call(daemon.socket, "group.list")["groups"] == []
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_change_roles_rules() -> None:
    roles = {"AAAAAAAA": ROLE_ADMIN, "BBBBBBBB": ROLE_MEMBER}
    assert change_roles(roles, "add", ["AAAAAAAA", "CCCCCCCC"]) == {
        "AAAAAAAA": ROLE_ADMIN,  # an admin added again stays admin
        "BBBBBBBB": ROLE_MEMBER,
        "CCCCCCCC": ROLE_MEMBER,
    }
    assert change_roles(roles, "remove", ["AAAAAAAA", "DDDDDDDD"]) == {"BBBBBBBB": ROLE_MEMBER}
    assert change_roles(roles, "admin", ["BBBBBBBB", "CCCCCCCC"]) == {
        "AAAAAAAA": ROLE_ADMIN,
        "BBBBBBBB": ROLE_ADMIN,
        "CCCCCCCC": ROLE_ADMIN,
    }
    assert change_roles(roles, "member", ["AAAAAAAA", "DDDDDDDD"]) == {
        "AAAAAAAA": ROLE_MEMBER,
        "BBBBBBBB": ROLE_MEMBER,
    }
    # deleted users fall out of the next roster whatever the change
    assert change_roles(roles, "add", ["CCCCCCCC"], drop={"BBBBBBBB"}) == {
        "AAAAAAAA": ROLE_ADMIN,
        "CCCCCCCC": ROLE_MEMBER,
    }
    assert roles == {"AAAAAAAA": ROLE_ADMIN, "BBBBBBBB": ROLE_MEMBER}  # not changed in place


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
