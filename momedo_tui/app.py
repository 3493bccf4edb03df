"""The momedo-tui application: server state and users of a running momedod at a glance.

Theory of operation: ``main`` finds the admin socket exactly as momedoctl does (``-c``,
``--dev``, ``$MOMEDO_CONFIG``, ``momedod.config.load_config``) and asks for ``server.info``
before the UI starts, so that a missing socket or a permission problem is one line on stderr
and exit code 1 instead of a screen. The app then fetches ``server.info`` and ``user.list``
every ``refresh_interval`` seconds (and at once on ``r``) in a worker; refreshes never
overlap, a refresh requested while one runs is done right after it. If the daemon goes away
the last data stays on screen, a status line says what is wrong, and the next refresh
connects again.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import DataTable, Footer, Header, Static

from momedo_tui.client import AdminClient, ConnectionProblem
from momedod.admin.locate import add_socket_arguments, socket_path
from momedod.admin.protocol import AdminError, UserInfo
from momedod.config import ConfigError

__all__ = ["MomedoTui", "main"]

REFRESH_INTERVAL_S = 2.0
_LABEL_WIDTH = 17


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _host_port(address: str, port: Any) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def server_lines(info: dict[str, Any]) -> list[tuple[str, str]]:
    """The server panel as (label, value) lines, from a ``server.info`` result."""
    fingerprint = info["fingerprint"]
    counts = (
        f"{info['users']}    Online devices: {info['online_devices']}"
        f"    Queued messages: {info['mailbox_entries']}"
    )
    lines = [
        ("Public address", str(info["public_address"])),
        ("Fingerprint", str(fingerprint)),
        ("Uptime", _uptime(info["uptime_s"])),
        ("Users", counts),
    ]
    for i, listener in enumerate(info["listeners"]):
        value = (
            f"{_host_port(listener['address'], listener['port'])}  "
            f"{listener['connections']} of {listener['max_connections']} connections"
        )
        if listener.get("fingerprint") not in (None, fingerprint):
            value += "  (other certificate)"
        lines.append(("Listeners" if i == 0 else "", value))
    return lines


class ServerPanel(Static):
    """Public address, fingerprint, uptime, counts and listeners from ``server.info``."""

    def show_info(self, info: dict[str, Any]) -> None:
        lines = server_lines(info)
        parts: list[str | tuple[str, str]] = []
        for i, (label, value) in enumerate(lines):
            heading = f"{label}:" if label else ""
            parts += [(heading.ljust(_LABEL_WIDTH), "bold"), value]
            if i < len(lines) - 1:
                parts.append("\n")
        self.update(Content.assemble(*parts))


class MomedoTui(App[int]):
    """The operator console; ``client`` talks to the daemon's admin socket."""

    CSS_PATH = "app.tcss"
    TITLE = "momedo"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("r", "reload", "Refresh"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        client: AdminClient,
        *,
        refresh_interval: float = REFRESH_INTERVAL_S,
    ) -> None:
        super().__init__()
        self.client = client
        self.refresh_interval = refresh_interval
        self._users: list[UserInfo] | None = None
        self._refresh_wanted = False
        self._refreshing = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield ServerPanel("Waiting for momedod…", id="server")
        with Vertical(id="users-box"):
            yield DataTable(id="users", cursor_type="row", zebra_stripes=True)
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#server", ServerPanel).border_title = "Server"
        self.query_one("#users-box").border_title = "Users"
        table = self.query_one("#users", DataTable)
        table.add_column("ID", key="id")
        table.add_column("Name", key="name")
        table.add_column(Text("Devices", justify="right"), key="devices")
        table.add_column("Status", key="status")
        self.request_refresh()
        self.set_interval(self.refresh_interval, self.request_refresh)

    def action_reload(self) -> None:
        """Fetch server state and users now."""
        self.request_refresh()

    def request_refresh(self) -> None:
        """Refresh soon: now, or right after the refresh that is running."""
        self._refresh_wanted = True
        if not self._refreshing:
            self._refreshing = True
            self.run_worker(self._refresh_loop(), group="refresh")

    async def _refresh_loop(self) -> None:
        try:
            while self._refresh_wanted:
                self._refresh_wanted = False
                await self._refresh_once()
        finally:
            self._refreshing = False

    async def _refresh_once(self) -> None:
        try:
            info = await self.client.call("server.info")
            users: list[UserInfo] = []
            cursor = None
            while True:  # user.list is paged; follow the cursor to show everyone
                args = {"limit": 1000} if cursor is None else {"limit": 1000, "cursor": cursor}
                listing = await self.client.call("user.list", **args)
                users.extend(UserInfo.from_json(u) for u in listing["users"])
                cursor = listing.get("next")
                if not cursor:
                    break
            self._show_server(info)
        except ConnectionProblem as e:
            self._show_problem(f"{e} — retrying every {self.refresh_interval:g} s")
            return
        except AdminError as e:
            self._show_problem(f"momedod: {e}")
            return
        except (KeyError, TypeError, ValueError) as e:
            self._show_problem(f"unexpected reply from momedod ({e!r})")
            return
        self._show_users(users)
        status = self.query_one("#status", Static)
        status.update("")
        status.remove_class("-problem")
        updated = time.strftime("%H:%M:%S")
        self.query_one("#server", ServerPanel).border_subtitle = f"updated {updated}"

    def _show_problem(self, message: str) -> None:
        status = self.query_one("#status", Static)
        status.update(Content(message))
        status.add_class("-problem")

    def _show_server(self, info: dict[str, Any]) -> None:
        self.query_one("#server", ServerPanel).show_info(info)
        self.title = str(info["name"])
        self.sub_title = f"momedod {info['version']}"

    def _show_users(self, users: list[UserInfo]) -> None:
        self.query_one("#users-box").border_title = f"Users ({len(users)})"
        if users == self._users:
            return
        self._users = users
        table = self.query_one("#users", DataTable)
        selected = None
        if table.row_count:
            selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        for user in users:
            table.add_row(
                Text(user.user_id),
                Text(user.name),
                Text(str(user.devices), justify="right"),
                Text("disabled" if user.disabled else "active"),
                key=user.user_id,
            )
        if selected is not None and selected in table.rows:
            table.move_cursor(row=table.get_row_index(selected))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="momedo-tui",
        description="Watch a running momedod: server state and users, through its admin socket.",
    )
    add_socket_arguments(parser)
    return parser


async def _run(socket_path: Path) -> int:
    client = AdminClient(socket_path)
    try:
        try:
            await client.call("server.info")
        except (ConnectionProblem, AdminError) as e:
            print(f"momedo-tui: {e}", file=sys.stderr)
            return 1
        app = MomedoTui(client)
        await app.run_async()
        return app.return_code or 0
    finally:
        await client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``momedo-tui``; returns the exit code (argparse exits 2 on usage errors)."""
    ns = _build_parser().parse_args(argv)
    try:
        path = socket_path(ns)
    except ConfigError as e:
        print(f"momedo-tui: {e}", file=sys.stderr)
        return 1
    return asyncio.run(_run(path))


if __name__ == "__main__":
    sys.exit(main())
