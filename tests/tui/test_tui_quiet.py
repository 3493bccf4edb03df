"""momedo-tui shows the quiet-hours policies and the urgent allow-list (h), at 80x24."""

from __future__ import annotations

import asyncio

from support import DaemonProcess, admin_call
from test_tui import SIZE, daemon, screen_text, wait_for_text, wait_until, workdir

from momedo_tui.app import MomedoTui
from momedo_tui.client import AdminClient
from momedo_tui.screens import QuietScreen

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
