"""Groups and channels in momedo-tui: list, create, delete, members and admins.

Theory of operation: the daemon never holds the organisation's private key. Like momedoctl,
the console signs every change itself: it reads the organisation key file (found as momedoctl
finds it, ``momedod.admin.orgkey.locate``; created on first use), publishes the key's
records the daemon lacks (``org.key.get``/``org.key.put``), builds the next roster with
``momedod.e2e.roster`` and sends it signed (``group.add``, ``group.update``). A change that
raced with another operator's (``conflict``) is rebuilt on the new roster and sent again,
as momedoctl does. Groups created by users (not ``managed``) are shown read-only: only their
admins change them, in the app.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Static

from momedo_tui.client import AdminClient, ConnectionProblem
from momedo_tui.screens import ConfirmScreen, NameScreen, fit, short_time, until_closed
from momedod.admin import orgkey
from momedod.admin.protocol import AdminError, AdminErrorCode, UserInfo
from momedod.e2e.errors import E2EError
from momedod.e2e.roster import (
    KIND_CHANNEL,
    KIND_GROUP,
    MODE_CHAINS,
    Roster,
    parse_roster_record,
    sign_roster_org,
)
from momedod.protocol import userid

__all__ = [
    "GroupProblem",
    "GroupScreen",
    "GroupsScreen",
    "UserPickerScreen",
    "change_members",
    "create_group",
    "ready_key",
]

UPDATE_ATTEMPTS = 3
"""A roster change that raced with another one is rebuilt and sent again this often."""
GROUP_NAME_WIDTH = 24
MEMBER_NAME_WIDTH = 40
PICKER_NAME_WIDTH = 50
EXAMPLE_NAMES = {"group": "e.g. Klasse 5a", "channel": "e.g. Eltern 5a"}


class GroupProblem(Exception):
    """A group change cannot be made; the message is one line for the operator."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- the organisation key and rosters (no UI) ------------------------------------------------


async def ready_key(client: AdminClient, path: Path) -> tuple[orgkey.OrgKeyFile, bool]:
    """The organisation key at ``path`` (created if there is none) once momedod knows it;
    and whether it was created now. Raises GroupProblem, ConnectionProblem, AdminError."""
    try:
        key = orgkey.load(path)
        created = key is None
        if key is None:
            key = orgkey.create(path)
    except orgkey.OrgKeyError as e:
        raise GroupProblem(str(e)) from None
    info = await client.call("org.key.get")
    stored = [base64.b64decode(r) for r in info["records"]]
    try:
        missing = orgkey.missing_records(stored, key, info.get("fingerprint"))
    except orgkey.OrgKeyError as e:
        raise GroupProblem(str(e)) from None
    for record in missing:
        await client.call("org.key.put", record=_b64(record))
    return key, created


async def create_group(
    client: AdminClient, key_path: Path, name: str, kind: int
) -> tuple[dict[str, Any], bool]:
    """Create a group (KIND_GROUP) or channel (KIND_CHANNEL) without members, managed by
    the organisation; returns the group ``G`` and whether the key file was created."""
    key, created = await ready_key(client, key_path)
    try:
        roster = Roster.first(secrets.token_bytes(16), kind, {}, name, mode=MODE_CHAINS)
    except ValueError as e:
        raise GroupProblem(f"cannot use this name: {e}") from None
    record = sign_roster_org(roster, key.key)
    result = await client.call(
        "group.add", name=name, roster=_b64(record), kind=kind, mode=MODE_CHAINS
    )
    return result["group"], created


async def change_members(
    client: AdminClient, key_path: Path, group: str, change: orgkey.Change, users: list[str]
) -> tuple[dict[str, Any], bool]:
    """Apply ``change`` to ``users`` (IDs as typed or shown) in ``group`` with a new roster
    signed by the organisation key; returns the group ``G`` and whether anything changed."""
    try:
        uids = [userid.normalize(u) for u in users]
    except userid.InvalidUserId as e:
        raise GroupProblem(str(e)) from None
    key, _created = await ready_key(client, key_path)
    for attempt in range(UPDATE_ATTEMPTS):
        shown = await client.call("group.show", group=group)
        info = shown["group"]
        if not info["managed"]:
            raise GroupProblem("this group was created by a user; its admins change it in the app")
        if not shown.get("roster"):
            raise GroupProblem("momedod sent no roster for this group")
        try:
            current = parse_roster_record(base64.b64decode(shown["roster"])).roster
        except (E2EError, ValueError) as e:
            raise GroupProblem(f"cannot read the group's roster: {e}") from None
        roles = dict(current.members)
        # Deleted users (no name any more) cannot be in a new roster: drop them on the way.
        deleted = {userid.normalize(m["user_id"]) for m in shown["members"] if m["name"] is None}
        wanted = orgkey.change_roles(roles, change, uids, deleted)
        if wanted == roles:
            return info, False
        try:
            record = sign_roster_org(current.next(members=wanted), key.key)
        except (E2EError, ValueError) as e:  # e.g. a malformed ID that the roster refuses
            raise GroupProblem(f"cannot build the new roster: {e}") from None
        try:
            result = await client.call("group.update", group=info["conv_id"], roster=_b64(record))
        except AdminError as e:
            if e.code == AdminErrorCode.CONFLICT and attempt + 1 < UPDATE_ATTEMPTS:
                continue  # another change came first: rebuild on top of it
            raise
        return result["group"], True
    raise AssertionError("unreachable")


def count(n: int, word: str) -> str:
    """``1 member``, ``2 members``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def group_title(group: Mapping[str, Any]) -> str:
    """``Channel Eltern 5a`` / ``Group Klasse 5a``; a user group without name by its ID."""
    kind = "Channel" if group["kind"] == "channel" else "Group"
    return f"{kind} {group.get('name') or group['conv_id'][:8]}"


# --- screens ---------------------------------------------------------------------------------


class GroupsScreen(ModalScreen[None]):
    """Every group and channel; create one, delete one, or open its members."""

    BINDINGS = [
        Binding("m", "members", "Members"),
        Binding("n", "new('group')", "New group"),
        Binding("c", "new('channel')", "New channel"),
        Binding("x", "delete", "Delete"),
        Binding("r", "reload", "Refresh"),
        Binding("escape", "close", "Close"),
    ]

    def __init__(self, client: AdminClient, key_path: Path | None) -> None:
        super().__init__()
        self.client = client
        self.key_path = key_path
        self.groups: list[dict[str, Any]] | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="groups-box", classes="listing"):
            yield DataTable(id="groups", cursor_type="row", zebra_stripes=True)
            yield Static(id="groups-note", classes="hint")
            yield Static("Enter/m: members   n: new group   c: new channel", classes="hint")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#groups-box").border_title = "Groups and channels"
        table = self.query_one("#groups", DataTable)
        table.add_column("ID", key="id", width=8)
        table.add_column("Name", key="name", width=GROUP_NAME_WIDTH)
        table.add_column("Kind", key="kind", width=7)
        table.add_column(Text("Members", justify="right"), key="members", width=7)
        table.add_column(Text("Epoch", justify="right"), key="epoch", width=5)
        table.add_column("Managed by", key="managed", width=10)
        table.focus()
        if self.key_path is not None:
            self.note(f"Changes are signed with the organisation key {self.key_path}.")
        self.action_reload()

    def note(self, message: str) -> None:
        self.query_one("#groups-note", Static).update(Text(message))

    def action_reload(self) -> None:
        """Fetch the groups again."""
        self.run_worker(until_closed(self._load()), group="groups", exclusive=True)

    async def _load(self) -> None:
        try:
            groups = list((await self.client.call("group.list"))["groups"])
            self._show(groups)
        except (ConnectionProblem, AdminError) as e:
            self.note(f"group.list failed: {e}")
        except (KeyError, TypeError) as e:
            self.note(f"unexpected reply from momedod ({e!r})")

    def _show(self, groups: list[dict[str, Any]]) -> None:
        self.groups = groups
        table = self.query_one("#groups", DataTable)
        selected = None
        if table.row_count:
            selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        for group in groups:
            table.add_row(
                Text(group["conv_id"][:8]),
                Text(fit(group.get("name") or "(no name)", GROUP_NAME_WIDTH)),
                Text(group["kind"]),
                Text(str(group["members"]), justify="right"),
                Text(str(group["epoch"]), justify="right"),
                Text("operators" if group["managed"] else "its admins"),
                key=group["conv_id"],
            )
        if selected is not None and selected in table.rows:
            table.move_cursor(row=table.get_row_index(selected))
        channels = sum(1 for g in groups if g["kind"] == "channel")
        subtitle = f"{count(len(groups) - channels, 'group')}, {count(channels, 'channel')}"
        self.query_one("#groups-box").border_subtitle = subtitle

    def _selected(self) -> dict[str, Any] | None:
        table = self.query_one("#groups", DataTable)
        if not table.row_count or self.groups is None:
            self.note("No group selected.")
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((g for g in self.groups if g["conv_id"] == key), None)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_members()

    def action_members(self) -> None:
        """Show the selected group's members and admins."""
        group = self._selected()
        if group is not None:
            self.app.push_screen(
                GroupScreen(self.client, self.key_path, group), lambda _: self.action_reload()
            )

    def action_new(self, kind: str) -> None:
        """Ask for a name and create a group or channel managed by the organisation."""
        if self.key_path is None:
            self.note("No organisation key file: start momedo-tui with --org-key FILE.")
            return

        def named(name: str | None) -> None:
            if name:
                self.run_worker(until_closed(self._create(name, kind)), group="change")

        self.app.push_screen(
            NameScreen(f"Name of the new {kind}:", placeholder=EXAMPLE_NAMES[kind]), named
        )

    async def _create(self, name: str, kind: str) -> None:
        assert self.key_path is not None
        code = KIND_CHANNEL if kind == "channel" else KIND_GROUP
        try:
            group, created = await create_group(self.client, self.key_path, name, code)
        except (GroupProblem, ConnectionProblem, AdminError) as e:
            self.note(f"Cannot create {kind} {name}: {e}")
            return
        except (KeyError, TypeError, ValueError, E2EError) as e:
            self.note(f"Cannot create {kind} {name}: unexpected reply from momedod ({e!r})")
            return
        done = f"Created {group_title(group)}; add members with Enter."
        if created:
            done += f" New organisation key {self.key_path}: back it up."
        self.note(done)
        await self._load()
        table = self.query_one("#groups", DataTable)
        if group["conv_id"] in table.rows:
            table.move_cursor(row=table.get_row_index(group["conv_id"]))

    def action_delete(self) -> None:
        """Delete the selected group after a confirmation (its members are told)."""
        group = self._selected()
        if group is None:
            return

        def confirmed(yes: bool | None) -> None:
            if yes and group is not None:
                self.run_worker(until_closed(self._delete(group)), group="change")

        question = (
            f"Delete {group_title(group)} with its {count(group['members'], 'member')}? "
            "Their apps remove it; messages in it are lost."
        )
        self.app.push_screen(ConfirmScreen(question), confirmed)

    async def _delete(self, group: dict[str, Any]) -> None:
        try:
            await self.client.call("group.delete", group=group["conv_id"])
        except (ConnectionProblem, AdminError) as e:
            self.note(f"group.delete failed: {e}")
        else:
            self.note(f"Deleted {group_title(group)}.")
        await self._load()

    def action_close(self) -> None:
        self.dismiss(None)


class GroupScreen(ModalScreen[None]):
    """The members and admins of one group; add, remove, make or unmake admins."""

    BINDINGS = [
        Binding("a", "add", "Add member"),
        Binding("t", "toggle_admin", "Admin on/off"),
        Binding("x", "remove", "Remove"),
        Binding("r", "reload", "Refresh"),
        Binding("escape", "close", "Close"),
    ]

    def __init__(self, client: AdminClient, key_path: Path | None, group: dict[str, Any]):
        super().__init__()
        self.client = client
        self.key_path = key_path
        self.group = group
        self.members: list[dict[str, Any]] | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="members-box", classes="listing"):
            yield Static(id="group-facts")
            yield DataTable(id="members", cursor_type="row", zebra_stripes=True)
            yield Static(id="members-note", classes="hint")
            yield Static("a: add   t: admin on/off   x: remove   Esc: back", classes="hint")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#members", DataTable)
        table.add_column("User", key="user_id", width=9)
        table.add_column("Name", key="name", width=MEMBER_NAME_WIDTH)
        table.add_column("Role", key="role", width=6)
        table.focus()
        self._show_group(self.group)
        self.action_reload()

    def note(self, message: str) -> None:
        self.query_one("#members-note", Static).update(Text(message))

    def _show_group(self, group: dict[str, Any]) -> None:
        self.group = group
        box = self.query_one("#members-box")
        box.border_title = fit(group_title(group), 60)
        box.border_subtitle = count(group["members"], "member")
        managed = (
            "the organisation" if group["managed"] else "its admins, in the app (read-only here)"
        )
        self.query_one("#group-facts", Static).update(
            Text(
                f"ID {group['conv_id']}   roster version {group['epoch']}\n"
                f"Created {short_time(group['created'])}, managed by {managed}"
            )
        )

    def action_reload(self) -> None:
        """Fetch the members again."""
        self.run_worker(until_closed(self._load()), group="members", exclusive=True)

    async def _load(self) -> None:
        try:
            shown = await self.client.call("group.show", group=self.group["conv_id"])
            self._show_group(shown["group"])
            self._show_members(list(shown["members"]))
        except (ConnectionProblem, AdminError) as e:
            self.note(f"group.show failed: {e}")
        except (KeyError, TypeError) as e:
            self.note(f"unexpected reply from momedod ({e!r})")

    def _show_members(self, members: list[dict[str, Any]]) -> None:
        self.members = members
        table = self.query_one("#members", DataTable)
        selected = None
        if table.row_count:
            selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        # admins first, then by name
        members.sort(key=lambda m: (m["role"] != "admin", (m["name"] or "").casefold()))
        for member in members:
            table.add_row(
                Text(member["user_id"]),
                Text(fit(member["name"] or "(deleted user)", MEMBER_NAME_WIDTH)),
                Text(member["role"], style="bold" if member["role"] == "admin" else ""),
                key=member["user_id"],
            )
        if selected is not None and selected in table.rows:
            table.move_cursor(row=table.get_row_index(selected))
        if not members:
            self.note("No members yet: press a to add one.")

    def _selected(self) -> dict[str, Any] | None:
        table = self.query_one("#members", DataTable)
        if not table.row_count or self.members is None:
            self.note("No member selected.")
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((m for m in self.members if m["user_id"] == key), None)

    def _can_change(self) -> bool:
        if not self.group["managed"]:
            self.note("Created by a user: its admins change it in the app.")
            return False
        if self.key_path is None:
            self.note("No organisation key file: start momedo-tui with --org-key FILE.")
            return False
        return True

    def action_add(self) -> None:
        """Pick a user and add them as a member."""
        if not self._can_change():
            return
        present = {m["user_id"] for m in self.members or []}

        def picked(user_id: str | None) -> None:
            if user_id:
                self.run_worker(until_closed(self._change("add", user_id)), group="change")

        self.app.push_screen(UserPickerScreen(self.client, present), picked)

    def action_toggle_admin(self) -> None:
        """Make the selected member an admin, or an admin a member again."""
        member = self._selected()
        if member is None or not self._can_change():
            return
        change: orgkey.Change = "member" if member["role"] == "admin" else "admin"
        self.run_worker(until_closed(self._change(change, member["user_id"])), group="change")

    def action_remove(self) -> None:
        """Remove the selected member after a confirmation."""
        member = self._selected()
        if member is None or not self._can_change():
            return

        def confirmed(yes: bool | None) -> None:
            if yes and member is not None:
                self.run_worker(
                    until_closed(self._change("remove", member["user_id"])), group="change"
                )

        who = f"{member['name'] or '(deleted user)'} ({member['user_id']})"
        self.app.push_screen(
            ConfirmScreen(f"Remove {who} from {group_title(self.group)}?"), confirmed
        )

    async def _change(self, change: orgkey.Change, user_id: str) -> None:
        assert self.key_path is not None
        try:
            group, changed = await change_members(
                self.client, self.key_path, self.group["conv_id"], change, [user_id]
            )
        except (GroupProblem, ConnectionProblem, AdminError) as e:
            self.note(f"Cannot change {group_title(self.group)}: {e}")
            return
        except (KeyError, TypeError, ValueError, E2EError) as e:
            self.note(f"Cannot change {group_title(self.group)}: unexpected reply ({e!r})")
            return
        done = {
            "add": f"Added {user_id}.",
            "remove": f"Removed {user_id}.",
            "admin": f"{user_id} is now an admin.",
            "member": f"{user_id} is no longer an admin.",
        }[change]
        self.note(f"{done} Roster version {group['epoch']}." if changed else "No change.")
        await self._load()

    def action_close(self) -> None:
        self.dismiss(None)


class UserPickerScreen(ModalScreen[str | None]):
    """Choose a user by typing part of the name or ID; dismisses with the user ID or None."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("up", "cursor(-1)", "Up", show=False),
    ]

    def __init__(self, client: AdminClient, exclude: set[str]) -> None:
        super().__init__()
        self.client = client
        self.exclude = exclude
        self.users: list[UserInfo] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-box", classes="listing"):
            yield Input(placeholder="part of the name or ID", id="picker-search")
            yield DataTable(id="picker", cursor_type="row", zebra_stripes=True)
            yield Static(id="picker-note", classes="hint")
            yield Static("type to search   ↑↓: choose   Enter: add   Esc: cancel", classes="hint")

    def on_mount(self) -> None:
        self.query_one("#picker-box").border_title = "Add a member"
        table = self.query_one("#picker", DataTable)
        table.add_column("ID", key="id", width=9)
        table.add_column("Name", key="name", width=PICKER_NAME_WIDTH)
        table.add_column("Status", key="status", width=8)
        table.can_focus = False  # typing goes to the search field; ↑↓ move the cursor
        self.query_one("#picker-search", Input).focus()
        self.run_worker(until_closed(self._load()), group="picker", exclusive=True)

    async def _load(self) -> None:
        users: list[UserInfo] = []
        cursor = None
        try:
            while True:
                args: dict[str, Any] = {"limit": 1000}
                if cursor:
                    args["cursor"] = cursor
                listing = await self.client.call("user.list", **args)
                users.extend(UserInfo.from_json(u) for u in listing["users"])
                cursor = listing.get("next")
                if not cursor:
                    break
        except (ConnectionProblem, AdminError, KeyError, TypeError) as e:
            self.query_one("#picker-note", Static).update(Text(f"user.list failed: {e!s}"))
            return
        self.users = [u for u in users if u.user_id not in self.exclude]
        self._filter(self.query_one("#picker-search", Input).value)

    def _filter(self, text: str) -> None:
        needle = text.strip().casefold()
        table = self.query_one("#picker", DataTable)
        table.clear()
        shown = 0
        for user in self.users:
            if (
                needle
                and needle not in user.name.casefold()
                and needle not in user.user_id.casefold()
            ):
                continue
            table.add_row(
                Text(user.user_id),
                Text(fit(user.name, PICKER_NAME_WIDTH)),
                Text("disabled" if user.disabled else "active"),
                key=user.user_id,
            )
            shown += 1
        note = f"{shown} of {len(self.users)} users who are not members yet"
        self.query_one("#picker-note", Static).update(Text(note))

    def on_input_changed(self, event: Input.Changed) -> None:
        self._filter(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        table = self.query_one("#picker", DataTable)
        if table.row_count:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
            self.dismiss(key)

    def action_cursor(self, step: int) -> None:
        table = self.query_one("#picker", DataTable)
        if table.row_count:
            table.move_cursor(row=max(0, min(table.row_count - 1, table.cursor_row + step)))

    def action_cancel(self) -> None:
        self.dismiss(None)
