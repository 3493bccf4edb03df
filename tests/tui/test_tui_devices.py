"""momedo-tui's devices dialog (revoke) and audit view against a real momedod, at 80x24.

Sync tests around ``asyncio.run`` like test_tui_actions; the enrolled client is the ``Phone``
of test_tui_actions, connected under ``trio.run`` in a thread of its own.
"""

from __future__ import annotations

import asyncio
import time

from support import DaemonProcess, admin_call
from test_tui import SIZE, daemon, screen_text, wait_for_text, wait_until, workdir
from test_tui_actions import Phone
from textual.widgets import DataTable

from momedo_tui.app import MomedoTui
from momedo_tui.client import AdminClient
from momedo_tui.screens import AuditScreen, ConfirmScreen, DevicesScreen
from momedod.client.transport import ServerError

__all__ = ["daemon", "workdir"]  # fixtures, re-used from test_tui


def test_revoke_a_device_and_see_it_in_the_audit_log(daemon: DaemonProcess) -> None:
    added = admin_call(daemon.socket, "user.add", name="Carla Vogt")
    user_id = added["user"]["user_id"]
    phone = Phone(added["invite"]["link"])
    timings: dict[str, float] = {}

    async def scenario() -> None:
        client = AdminClient(daemon.socket)
        app = MomedoTui(client, refresh_interval=0.5)
        try:
            phone.start()
            await asyncio.to_thread(phone.enrolled.wait, 10)
            assert phone.enrolled.is_set(), phone.error
            async with app.run_test(size=SIZE) as pilot:
                await wait_for_text(pilot, app, "Carla Vogt", "v Devices", "l Log")
                await pilot.press("v")
                await wait_until(pilot, app, lambda: isinstance(app.screen, DevicesScreen))
                await wait_for_text(pilot, app, f"Devices of Carla Vogt ({user_id})", "phone")
                assert "active" in screen_text(app)
                table = app.screen.query_one("#devices", DataTable)
                assert table.row_count == 1
                await pilot.press("k")
                await wait_until(pilot, app, lambda: isinstance(app.screen, ConfirmScreen))
                await wait_for_text(pilot, app, "Revoke device")
                pressed = time.monotonic()
                await pilot.press("y")
                await wait_until(pilot, app, lambda: phone.error is not None, timeout=5)
                assert phone.error_at is not None
                timings["disconnect"] = phone.error_at - pressed
                assert isinstance(phone.error, ServerError), repr(phone.error)
                assert "DEVICE_REVOKED" in str(phone.error), repr(phone.error)
                assert timings["disconnect"] < 1.0
                await wait_for_text(pilot, app, "Revoked device", "revoked 20")
                assert isinstance(app.screen, DevicesScreen)
                (device,) = admin_call(daemon.socket, "device.list", user_id=user_id)["devices"]
                assert device["revoked"] is not None

                await pilot.press("escape")
                await wait_until(pilot, app, lambda: not isinstance(app.screen, DevicesScreen))
                await pilot.press("l")
                await wait_until(pilot, app, lambda: isinstance(app.screen, AuditScreen))
                await wait_for_text(pilot, app, "Audit log", "device.revoke", "user.add")
                text = screen_text(app)
                # newest first: the revoke is above the user.add
                assert text.index("device.revoke") < text.index("user.add")
                assert f"{user_id}/{device['device_id']}" in text
                await pilot.press("escape")
                await wait_until(pilot, app, lambda: not isinstance(app.screen, AuditScreen))
                assert app.is_running
        finally:
            phone.close()
            await client.aclose()

    asyncio.run(scenario())
    print(f"timings: {timings}")


def test_devices_dialog_without_a_selected_user(daemon: DaemonProcess) -> None:
    async def scenario() -> None:
        client = AdminClient(daemon.socket)
        app = MomedoTui(client, refresh_interval=3600)
        try:
            async with app.run_test(size=SIZE) as pilot:
                await wait_for_text(pilot, app, "Live connections")
                await pilot.press("v")
                await wait_for_text(pilot, app, "No user selected")
                assert not isinstance(app.screen, DevicesScreen)
        finally:
            await client.aclose()

    asyncio.run(scenario())
