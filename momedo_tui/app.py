"""The momedo-tui application: a live dashboard, the server state and the users of a momedod.

Theory of operation: ``main`` finds the admin socket exactly as momedoctl does (``-c``,
``--dev``, ``$MOMEDO_CONFIG``, ``momedod.config.load_config``) and asks for ``server.info``
before the UI starts, so that a missing socket or a permission problem is one line on stderr
and exit code 1 instead of a screen. The app then fetches ``server.info`` and ``user.list``
every ``refresh_interval`` seconds (and at once on ``r``) in a worker; refreshes never
overlap, a refresh requested while one runs is done right after it. If the daemon goes away
the last data stays on screen, a status line says what is wrong, and the next refresh
connects again.

The dashboard is fed by a second connection of its own that runs ``subscribe`` (one
``stats`` event a second, plus ``log`` events for warnings and errors); when that stream
drops, the dashboard says why and it is reopened every ``reconnect_interval`` seconds.

User actions (add, disable, enable, new invite, delete) work on the selected row of the
users table over the request connection; their outcome, or the daemon's error, goes to the
status line, and the table is refreshed afterwards. Add and invite show the QR code with the
link beside it (a usual link's code, 23 rows, fits 80x24 whole; longer ones scroll). ``v``
lists the selected user's devices in a dialog, where ``k`` revokes one after a confirmation
(momedod disconnects it at once); ``g`` opens groups and channels (``momedo_tui.groups``,
which signs roster changes with the organisation key file found as momedoctl finds it);
``l`` shows the newest audit-log entries.

Every screen is laid out for 80x24 with its keys in the bottom line; tests/tui/snapshots/
holds the text of each (tests/tui/test_tui_snapshots.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import DataTable, Footer, Header, Static

from momedo_tui.client import AdminClient, ConnectionProblem, subscribe
from momedo_tui.groups import GroupsScreen
from momedo_tui.screens import (
    AuditScreen,
    ConfirmScreen,
    DevicesScreen,
    InviteScreen,
    NameScreen,
    QuietScreen,
    fit,
    until_closed,
)
from momedod.admin import orgkey
from momedod.admin.locate import add_socket_arguments, socket_path
from momedod.admin.protocol import AdminError, UserInfo
from momedod.config import ConfigError

__all__ = ["MomedoTui", "main"]

REFRESH_INTERVAL_S = 2.0
RECONNECT_S = 2.0
"""Pause between attempts to reopen the subscribe stream."""
RECENT_LOG_LINES = 2
LINE_WIDTH = 76
"""Text width inside a bordered, padded panel of an 80-column terminal."""
NAME_WIDTH = 40
"""Width of the users table's name column (longer names end in "…")."""
USER_ACTIONS = frozenset(
    {
        "add_user",
        "disable_user",
        "enable_user",
        "invite_user",
        "delete_user",
        "show_devices",
        "show_audit",
        "show_groups",
        "reload",
    }
)
_LABEL_WIDTH = 17


def local_time() -> str:
    """The local time of day, HH:MM:SS."""
    return time.strftime("%H:%M:%S")


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
    """The server panel as (label, value) lines, from a ``server.info`` result.

    Uptime and the counts are on the dashboard and in the users table's title; the panel
    keeps to what does not change, so the users table gets the rows of an 80x24 terminal.
    """
    fingerprint = info["fingerprint"]
    lines = [
        ("Public address", str(info["public_address"])),
        ("Fingerprint", str(fingerprint)),
    ]
    for i, listener in enumerate(info["listeners"]):
        value = (
            f"{_host_port(listener['address'], listener['port'])}  "
            f"{listener['connections']} of {listener['max_connections']} connections"
        )
        if listener.get("fingerprint") not in (None, fingerprint):
            value += "  (other certificate)"
        lines.append(("Listeners" if i == 0 else "", value))
    for i, node in enumerate(info.get("cluster") or []):  # [cluster]: every node
        value = (
            f"{node['node']}{' (this)' if node.get('self') else ''}  {node['state']}  "
            f"{node['connections']} connections, heartbeat {node['heartbeat_age_s']} s ago"
        )
        lines.append(("Nodes" if i == 0 else "", value))
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


def dashboard_lines(stats: dict[str, Any]) -> list[str]:
    """The two summary lines of the dashboard, from a ``stats`` event (``server.stats``)."""
    connections = sum(int(listener["connections"]) for listener in stats["listeners"])
    backlog = f"{stats['mailbox_entries']}"
    oldest = stats.get("mailbox_oldest_age_s")
    if oldest is not None:
        backlog += f" (oldest {_uptime(oldest)})"
    return [
        f"Live connections: {connections}   Online devices: {stats['online_devices']}"
        f"   Uptime: {_uptime(stats['uptime_s'])}",
        f"Msgs/s accepted: {stats['messages_accepted_per_s']:.1f}"
        f"   delivered: {stats['messages_delivered_per_s']:.1f}   Backlog: {backlog}",
    ]


def log_line(data: dict[str, Any]) -> str:
    """One warning or error from a ``log`` event, shortened to a line."""
    time_text = str(data.get("time", ""))[11:19]
    fields = data.get("fields") or {}
    detail = " ".join(f"{k}={v}" for k, v in fields.items()) if isinstance(fields, dict) else ""
    line = f"{time_text} {str(data.get('level', '?')).upper()} {data.get('event', '?')} {detail}"
    return fit(line.rstrip(), LINE_WIDTH)


class Dashboard(Static):
    """Live figures from the subscribe stream and the latest warnings and errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stats_lines = ["Waiting for the event stream…", ""]
        self.recent: list[str] = []
        self.problem = ""

    def show(self) -> None:
        parts: list[str | tuple[str, str]] = ["\n".join(self.stats_lines)]
        if self.problem:
            parts += ["\n", (self.problem, "bold $text-error")]
        logs = self.recent[-RECENT_LOG_LINES:] or ["No warnings or errors since start."]
        for line in logs:
            parts += ["\n", (line, "$text-warning" if self.recent else "$text-muted")]
        self.update(Content.assemble(*parts))


class MomedoTui(App[int]):
    """The operator console; ``client`` talks to the daemon's admin socket."""

    CSS_PATH = "app.tcss"
    TITLE = "momedo"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("a", "add_user", "Add"),
        Binding("d", "disable_user", "Disable"),
        Binding("e", "enable_user", "Enable"),
        Binding("i", "invite_user", "Invite"),
        Binding("x", "delete_user", "Delete"),
        Binding("v", "show_devices", "Devices"),
        Binding("g", "show_groups", "Groups"),
        Binding("l", "show_audit", "Log"),
        Binding("h", "show_quiet", "Quiet hours", show=False),  # h: hours (footer is full)
        # refreshing is automatic; r (not in the footer, to leave room) does it at once
        Binding("r", "reload", "Refresh", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        client: AdminClient,
        *,
        refresh_interval: float = REFRESH_INTERVAL_S,
        stats_interval: float = 1.0,
        reconnect_interval: float = RECONNECT_S,
        clock: Callable[[], str] = local_time,
        org_key: Path | None = None,
    ) -> None:
        super().__init__()
        self.org_key = org_key  # the organisation key file group changes are signed with
        self.clock = clock  # the time shown for the last refresh and stats event
        self.client = client
        self.refresh_interval = refresh_interval
        self.stats_interval = stats_interval
        self.reconnect_interval = reconnect_interval
        self._refresh_problem = ""
        self._note = ""
        self._note_is_error = False
        self._users: list[UserInfo] | None = None
        self._refresh_wanted = False
        self._refreshing = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield ServerPanel("Waiting for momedod…", id="server")
        yield Dashboard(id="dashboard")
        with Vertical(id="users-box"):
            yield DataTable(id="users", cursor_type="row", zebra_stripes=True)
        yield Static(id="status")
        yield Footer(compact=True)  # every key fits 80 columns

    def on_mount(self) -> None:
        self.query_one("#server", ServerPanel).border_title = "Server"
        self.query_one("#users-box").border_title = "Users"
        dashboard = self.query_one("#dashboard", Dashboard)
        dashboard.border_title = "Dashboard"
        dashboard.show()
        self.run_worker(until_closed(self._stream_loop()), group="subscribe")
        table = self.query_one("#users", DataTable)
        table.add_column("ID", key="id", width=9)
        table.add_column("Name", key="name", width=NAME_WIDTH)
        table.add_column(Text("Devices", justify="right"), key="devices", width=7)
        table.add_column("Status", key="status", width=8)
        self.request_refresh()
        self.set_interval(self.refresh_interval, self.request_refresh)

    async def _stream_loop(self) -> None:
        """Feed the dashboard from a subscribe stream; reopen it every few seconds if it drops."""
        dashboard = self.query_one("#dashboard", Dashboard)
        while True:
            try:
                async for event in subscribe(self.client.path, self.stats_interval):
                    if event.kind == "stats":
                        dashboard.stats_lines = dashboard_lines(event.data)
                        dashboard.problem = ""
                        dashboard.border_subtitle = f"live {self.clock()}"
                    elif event.kind == "log":
                        dashboard.recent = [*dashboard.recent[-9:], log_line(event.data)]
                    else:
                        continue
                    dashboard.show()
            except (ConnectionProblem, AdminError) as e:
                problem = str(e)
            except (KeyError, TypeError, ValueError) as e:
                problem = f"unexpected event from momedod ({e!r})"
            else:
                problem = "the event stream ended"
            dashboard.problem = f"{problem} — reconnecting every {self.reconnect_interval:g} s"
            dashboard.show()
            await asyncio.sleep(self.reconnect_interval)

    # --- user actions ------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # while a dialog is open only its keys count
        return not (action in USER_ACTIONS and len(self.screen_stack) > 1)

    def _selected_user(self) -> UserInfo | None:
        table = self.query_one("#users", DataTable)
        if not table.row_count or self._users is None:
            self._set_note("No user selected.", error=True)
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        for user in self._users:
            if user.user_id == key:
                return user
        self._set_note("No user selected.", error=True)
        return None

    def _set_note(self, message: str, *, error: bool = False) -> None:
        self._note = message
        self._note_is_error = error
        self._show_status()

    def _show_status(self) -> None:
        status = self.query_one("#status", Static)
        message = self._refresh_problem or self._note
        status.update(Content(message))
        problem = bool(self._refresh_problem) or (bool(self._note) and self._note_is_error)
        status.set_class(problem, "-problem")
        status.set_class(bool(message) and not problem, "-note")

    async def _admin(self, cmd: str, done: str, **args: Any) -> dict[str, Any] | None:
        """Run one changing command; report the outcome in the status line, then refresh."""
        try:
            result = await self.client.call(cmd, **args)
        except (ConnectionProblem, AdminError) as e:
            self._set_note(f"{cmd} failed: {e}", error=True)
            return None
        self._set_note(done)
        self.request_refresh()
        return result

    def _show_invite(self, title: str, result: dict[str, Any]) -> None:
        invite = result["invite"]
        self.push_screen(InviteScreen(title, str(invite["link"]), str(invite["expires"])))

    def action_add_user(self) -> None:
        """Ask for a name, create the user and show its invite."""

        def created(name: str | None) -> None:
            if name:
                self.run_worker(until_closed(self._add_user(name)), group="action")

        self.push_screen(NameScreen("Name of the new user:"), created)

    async def _add_user(self, name: str) -> None:
        result = await self._admin("user.add", f"Added {name}.", name=name)
        if result is not None:
            user_id = result["user"]["user_id"]
            self._set_note(f"Added {name} ({user_id}).")
            self._show_invite(f"Invite for {name} ({user_id})", result)

    def action_disable_user(self) -> None:
        """Disable the selected user (their devices are disconnected)."""
        user = self._selected_user()
        if user is not None:
            done = f"Disabled {user.name} ({user.user_id})."
            self.run_worker(until_closed(self._admin("user.disable", done, user_id=user.user_id)))

    def action_enable_user(self) -> None:
        """Enable the selected user again."""
        user = self._selected_user()
        if user is not None:
            done = f"Enabled {user.name} ({user.user_id})."
            self.run_worker(until_closed(self._admin("user.enable", done, user_id=user.user_id)))

    def action_invite_user(self) -> None:
        """Make a new invite for the selected user and show it."""
        user = self._selected_user()
        if user is not None:
            self.run_worker(until_closed(self._invite_user(user)))

    async def _invite_user(self, user: UserInfo) -> None:
        done = f"New invite for {user.name} ({user.user_id})."
        result = await self._admin("user.invite", done, user_id=user.user_id)
        if result is not None:
            self._show_invite(f"Invite for {user.name} ({user.user_id})", result)

    def action_delete_user(self) -> None:
        """Delete the selected user after a confirmation."""
        user = self._selected_user()
        if user is None:
            return

        def confirmed(yes: bool | None) -> None:
            if yes and user is not None:
                done = f"Deleted {user.name} ({user.user_id})."
                self.run_worker(
                    until_closed(self._admin("user.delete", done, user_id=user.user_id))
                )

        question = (
            f"Delete {user.name} ({user.user_id}) and all their devices? This cannot be undone."
        )
        self.push_screen(ConfirmScreen(question), confirmed)

    def action_show_devices(self) -> None:
        """List the selected user's devices (revoke one with k there)."""
        user = self._selected_user()
        if user is not None:
            self.push_screen(
                DevicesScreen(self.client, user.user_id, user.name),
                lambda _: self.request_refresh(),
            )

    def action_show_groups(self) -> None:
        """List groups and channels (create, delete, members and admins there)."""
        self.push_screen(GroupsScreen(self.client, self.org_key))

    def action_show_audit(self) -> None:
        """Show the newest entries of the audit log."""
        self.push_screen(AuditScreen(self.client))

    def action_show_quiet(self) -> None:
        """Show (and change) the quiet-hours policies and who may send urgent messages."""
        self.push_screen(QuietScreen(self.client))

    def action_reload(self) -> None:
        """Fetch server state and users now."""
        self.request_refresh()

    def request_refresh(self) -> None:
        """Refresh soon: now, or right after the refresh that is running."""
        self._refresh_wanted = True
        if not self._refreshing:
            self._refreshing = True
            self.run_worker(until_closed(self._refresh_loop()), group="refresh")

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
        self._refresh_problem = ""
        self._show_status()
        updated = self.clock()
        self.query_one("#server", ServerPanel).border_subtitle = f"updated {updated}"

    def _show_problem(self, message: str) -> None:
        self._refresh_problem = message
        self._show_status()

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
                Text(fit(user.name, NAME_WIDTH)),
                Text(str(user.devices), justify="right"),
                # A bot (integration account, `momedo bridge`) that is enabled shows as "bot".
                Text("disabled" if user.disabled else "bot" if user.bot else "active"),
                key=user.user_id,
            )
        if selected is not None and selected in table.rows:
            table.move_cursor(row=table.get_row_index(selected))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="momedo-tui",
        description="Watch and manage a running momedod (server state, users, devices, groups, "
        "audit log) through its admin socket.",
    )
    add_socket_arguments(parser)
    parser.add_argument(
        "--org-key",
        type=Path,
        metavar="FILE",
        help="organisation key file that group changes are signed with (default: as "
        "momedoctl: $MOMEDO_ORG_KEY, else org.key next to the config file, with --dev in "
        "./.momedo-dev)",
    )
    return parser


async def _run(socket_path: Path, org_key: Path | None = None) -> int:
    client = AdminClient(socket_path)
    try:
        try:
            await client.call("server.info")
        except (ConnectionProblem, AdminError) as e:
            print(f"momedo-tui: {e}", file=sys.stderr)
            return 1
        app = MomedoTui(client, org_key=org_key)
        await app.run_async()
        return app.return_code or 0
    finally:
        await client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``momedo-tui``; returns the exit code (argparse exits 2 on usage errors)."""
    ns = _build_parser().parse_args(argv)
    try:
        path = socket_path(ns)
        key_path = orgkey.locate(ns.config, ns.dev, ns.org_key)
    except ConfigError as e:
        print(f"momedo-tui: {e}", file=sys.stderr)
        return 1
    return asyncio.run(_run(path, key_path))


if __name__ == "__main__":
    sys.exit(main())
