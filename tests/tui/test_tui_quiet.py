"""momedo-tui shows and changes the quiet-hours policies and the urgent allow-list (h), at
80x24, against a real momedod."""

from __future__ import annotations

import asyncio
from typing import Any

from support import DaemonProcess, admin_call
from test_tui import SIZE, daemon, screen_text, wait_for_text, wait_until, workdir
from textual.widgets import Checkbox, Input

from momedo_tui.app import MomedoTui
from momedo_tui.client import AdminClient
from momedo_tui.screens import ConfirmScreen, NameScreen, OnOffScreen, QuietFormScreen, QuietScreen

__all__ = ["daemon", "workdir"]  # fixtures, re-used from test_tui


def test_quiet_hours_policies_and_urgent_senders_are_shown(daemon: DaemonProcess) -> None:
    user_id = admin_call(daemon.socket, "user.add", name="Carla Vogt")["user"]["user_id"]
    window = "Mon-Fri 07:00-18:00 Europe/Berlin"
    admin_call(daemon.socket, "quiet.set", name="staff", window=window, users=[user_id])
    admin_call(daemon.socket, "urgent.set", user_id=user_id, allowed=True)

    async def scenario() -> None:
        client = AdminClient(daemon.socket)
        app = MomedoTui(client, refresh_interval=0.5)
        try:
            async with app.run_test(size=SIZE) as pilot:
                await wait_for_text(pilot, app, "Carla Vogt")
                await pilot.press("h")
                await wait_until(pilot, app, lambda: isinstance(app.screen, QuietScreen))
                await wait_for_text(pilot, app, "Quiet hours", "staff", window)
                text = screen_text(app)
                assert user_id in text and f"May send urgent messages: {user_id}" in text
                assert "QUIET" in text or "work" in text
                await pilot.press("escape")
                await wait_until(pilot, app, lambda: not isinstance(app.screen, QuietScreen))
        finally:
            await client.aclose()

    asyncio.run(scenario())


def fill(app: MomedoTui, selector: str, text: str) -> None:
    """Put ``text`` into the focused form field ``selector``, as if typed: pressing each key
    costs ~0.1 s in the pilot; the names (and user IDs on the urgent screen) are still typed."""
    field = app.screen.query_one(selector, Input)
    assert field.has_focus, f"{selector} is not the focused field"
    field.value = text
    field.cursor_position = len(text)


def policies(daemon: DaemonProcess) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in admin_call(daemon.socket, "quiet.list")["policies"]}


def urgent_users(daemon: DaemonProcess) -> list[str]:
    return list(admin_call(daemon.socket, "quiet.list")["urgent"]["users"])


def test_quiet_hours_are_edited_in_the_console(daemon: DaemonProcess) -> None:
    carla = admin_call(daemon.socket, "user.add", name="Carla Vogt")["user"]["user_id"]
    dirk = admin_call(daemon.socket, "user.add", name="Dirk Lang")["user"]["user_id"]
    window = "Mon-Fri 07:00-18:00 Europe/Berlin"

    async def scenario() -> None:
        client = AdminClient(daemon.socket)
        app = MomedoTui(client, refresh_interval=3600)
        try:
            async with app.run_test(size=SIZE) as pilot:
                await wait_for_text(pilot, app, "Carla Vogt")
                await pilot.press("h")
                await wait_until(pilot, app, lambda: isinstance(app.screen, QuietScreen))
                await wait_for_text(pilot, app, "No policies")

                # new: a window the daemon refuses, then a good one
                await pilot.press("n")
                await wait_until(pilot, app, lambda: isinstance(app.screen, QuietFormScreen))
                await pilot.press(*"Kollegium", "tab")
                fill(app, "#q-window", "Mon-Fri 25:00-18:00 Europe/Berlin")
                await pilot.press("tab", "space", "tab")
                fill(app, "#q-users", f"{carla}, {dirk}")
                await pilot.press("enter")
                await wait_until(pilot, app, lambda: isinstance(app.screen, QuietScreen))
                await wait_for_text(pilot, app, "quiet.set failed")
                assert "Kollegium" not in policies(daemon)
                await pilot.press("n")
                await wait_until(pilot, app, lambda: isinstance(app.screen, QuietFormScreen))
                await pilot.press(*"Kollegium", "tab")
                fill(app, "#q-window", window)
                await pilot.press("tab", "space", "tab")
                fill(app, "#q-users", f"{carla}, {dirk}")
                await pilot.press("enter")
                await wait_for_text(pilot, app, "Saved policy Kollegium.", window)
                policy = policies(daemon)["Kollegium"]
                assert policy["window"] == window and policy["defer_delivery"] is True
                assert policy["users"] == [carla, dirk] and policy["source"] == "operator"

                # edit: the form shows the policy, the name is fixed; change window and users
                await pilot.press("e")
                await wait_until(pilot, app, lambda: isinstance(app.screen, QuietFormScreen))
                form = app.screen
                assert form.query_one("#q-name", Input).disabled
                assert form.query_one("#q-window", Input).value == window
                assert form.query_one("#q-defer", Checkbox).value is True
                fill(app, "#q-window", "Mon-Thu 08:00-16:30 Europe/Berlin")
                await pilot.press("tab", "space", "tab")
                fill(app, "#q-users", dirk)
                await pilot.press("enter")
                await wait_for_text(pilot, app, "Saved policy Kollegium.", "Mon-Thu 08:00-16:30")
                policy = policies(daemon)["Kollegium"]
                assert policy["window"] == "Mon-Thu 08:00-16:30 Europe/Berlin"
                assert policy["defer_delivery"] is False and policy["users"] == [dirk]

                # urgent on and off for a user; an unknown group is refused
                await pilot.press("u")
                await wait_until(pilot, app, lambda: isinstance(app.screen, NameScreen))
                await pilot.press(*carla.lower(), "enter")
                await wait_until(pilot, app, lambda: isinstance(app.screen, OnOffScreen))
                await wait_for_text(pilot, app, f"{carla} may not send urgent messages now")
                await pilot.press("o")
                await wait_for_text(pilot, app, f"May send urgent messages: {carla}")
                assert urgent_users(daemon) == [carla]
                await pilot.press("u")
                await wait_until(pilot, app, lambda: isinstance(app.screen, NameScreen))
                await pilot.press(*carla, "enter")
                await wait_for_text(pilot, app, f"{carla} may send urgent messages now")
                await pilot.press("f")
                await wait_for_text(pilot, app, f"{carla} may not send urgent messages.")
                assert urgent_users(daemon) == []
                await pilot.press("u")
                await wait_until(pilot, app, lambda: isinstance(app.screen, NameScreen))
                await pilot.press(*"Notfall", "enter")
                await wait_until(pilot, app, lambda: isinstance(app.screen, OnOffScreen))
                await pilot.press("o")
                await wait_for_text(pilot, app, "urgent.set failed")

                # delete, after a confirmation
                await pilot.press("x")
                await wait_until(pilot, app, lambda: isinstance(app.screen, ConfirmScreen))
                await pilot.press("n")
                await wait_until(pilot, app, lambda: isinstance(app.screen, QuietScreen))
                assert "Kollegium" in policies(daemon)
                await pilot.press("x")
                await wait_until(pilot, app, lambda: isinstance(app.screen, ConfirmScreen))
                await pilot.press("y")
                await wait_for_text(pilot, app, "Deleted policy Kollegium.", "No policies")
                assert policies(daemon) == {}
        finally:
            await client.aclose()

    asyncio.run(scenario())
    actions = [
        (e["action"], e["target"])
        for e in admin_call(daemon.socket, "audit.list", limit=100)["entries"]
    ]
    for done in [
        ("quiet.set", "Kollegium"),
        ("urgent.set", carla),
        ("quiet.delete", "Kollegium"),
    ]:
        assert done in actions
