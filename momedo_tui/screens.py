"""The modal screens of momedo-tui: ask for a name, confirm, show an invite with its QR code,
list a user's devices (and revoke one), show the audit log."""

from __future__ import annotations

import segno
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Static

from momedo_tui.client import AdminClient, ConnectionProblem
from momedod.admin.protocol import AdminError, AuditInfo, DeviceInfo

__all__ = [
    "AUDIT_LIMIT",
    "AuditScreen",
    "ConfirmScreen",
    "DevicesScreen",
    "InviteScreen",
    "NameScreen",
    "qr_text",
]

AUDIT_LIMIT = 100
"""The audit view shows this many of the newest entries."""

LINK_CHUNK = 64
"""The invite link is shown in lines of this many characters, so it fits 80 columns."""

_QR_STYLE = Style(color="black", bgcolor="white")


def qr_text(data: str) -> Text:
    """A QR code of ``data`` in half-block characters: two modules per character, black on white."""
    qr = segno.make(data, error="l")
    rows = [[bool(v) for v in row] for row in qr.matrix_iter(scale=1, border=4)]
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))
    lines = []
    for top, bottom in zip(rows[0::2], rows[1::2], strict=True):
        chars = []
        for upper, lower in zip(top, bottom, strict=True):
            chars.append("█" if upper and lower else "▀" if upper else "▄" if lower else " ")
        lines.append("".join(chars))
    return Text("\n".join(lines), style=_QR_STYLE, no_wrap=True)


def link_lines(link: str) -> str:
    """``link`` cut into lines of LINK_CHUNK characters (join them without separator)."""
    return "\n".join(link[i : i + LINK_CHUNK] for i in range(0, len(link), LINK_CHUNK))


class NameScreen(ModalScreen[str | None]):
    """Ask for a user's name; dismisses with the name, or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, prompt: str) -> None:
        super().__init__()
        self.prompt = prompt

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.prompt)
            yield Input(placeholder="Name", id="name")
            yield Static("Enter: create   Esc: cancel", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        name = event.value.strip()
        if name:
            self.dismiss(name)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; dismisses with True only on ``y``."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Text(self.question))
            yield Static("y: yes   n/Esc: no", classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class InviteScreen(ModalScreen[None]):
    """An invite link and its QR code, scrollable when the code is taller than the terminal."""

    BINDINGS = [Binding("escape,enter,q", "close", "Close")]

    def __init__(self, title: str, link: str, expires: str) -> None:
        super().__init__()
        self.title_text = title
        self.link = link
        self.expires = expires

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="invite-box"):
            yield Static(Text(self.title_text, style="bold"))
            yield Static(f"Expires {self.expires}. Esc/Enter closes, arrows scroll.")
            yield Static("Invite link:")
            yield Static(Text(link_lines(self.link), no_wrap=True), id="invite-link")
            yield Static("")
            yield Static(qr_text(self.link), id="invite-qr")

    def on_mount(self) -> None:
        self.query_one("#invite-box").focus()

    def action_close(self) -> None:
        self.dismiss(None)


def short_time(value: str | None) -> str:
    """``2026-12-06T19:35:00Z`` as ``2026-12-06 19:35``; None as ``never``."""
    if value is None:
        return "never"
    return value[:16].replace("T", " ")


class DevicesScreen(ModalScreen[None]):
    """The devices of one user; ``k`` revokes the selected one after a confirmation."""

    BINDINGS = [
        Binding("k", "revoke", "Revoke"),
        Binding("r", "reload", "Refresh"),
        Binding("escape", "close", "Close"),
    ]

    def __init__(self, client: AdminClient, user_id: str, name: str) -> None:
        super().__init__()
        self.client = client
        self.user_id = user_id
        self.user_name = name
        self.devices: list[DeviceInfo] | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="devices-box", classes="listing"):
            yield DataTable(id="devices", cursor_type="row", zebra_stripes=True)
            yield Static(id="devices-note", classes="hint")
            yield Static("k: revoke   r: refresh   Esc: close", classes="hint")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        box = self.query_one("#devices-box")
        box.border_title = f"Devices of {self.user_name} ({self.user_id})"
        table = self.query_one("#devices", DataTable)
        table.add_column("ID", key="id")
        table.add_column("Name", key="name")
        table.add_column("Last seen", key="last_seen")
        table.add_column(Text("Queued", justify="right"), key="queued")
        table.add_column("Status", key="status")
        table.focus()
        self.action_reload()

    def _note(self, message: str) -> None:
        self.query_one("#devices-note", Static).update(Text(message))

    def action_reload(self) -> None:
        """Fetch the devices again."""
        self.run_worker(self._load(), group="devices", exclusive=True)

    async def _load(self) -> None:
        try:
            result = await self.client.call("device.list", user_id=self.user_id)
            devices = [DeviceInfo.from_json(d) for d in result["devices"]]
        except (ConnectionProblem, AdminError) as e:
            self._note(f"device.list failed: {e}")
            return
        except (KeyError, TypeError, ValueError) as e:
            self._note(f"unexpected reply from momedod ({e!r})")
            return
        self._show(devices)

    def _show(self, devices: list[DeviceInfo]) -> None:
        self.devices = devices
        table = self.query_one("#devices", DataTable)
        selected = None
        if table.row_count:
            selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        for device in devices:
            status = f"revoked {short_time(device.revoked)}" if device.revoked else "active"
            table.add_row(
                Text(str(device.device_id)),
                Text(device.name),
                Text(short_time(device.last_seen)),
                Text(str(device.mailbox), justify="right"),
                Text(status),
                key=str(device.device_id),
            )
        if selected is not None and selected in table.rows:
            table.move_cursor(row=table.get_row_index(selected))
        self.query_one("#devices-box").border_subtitle = (
            "1 device" if len(devices) == 1 else f"{len(devices)} devices"
        )

    def _selected(self) -> DeviceInfo | None:
        table = self.query_one("#devices", DataTable)
        if not table.row_count or self.devices is None:
            self._note("No device selected.")
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        for device in self.devices:
            if str(device.device_id) == key:
                return device
        return None

    def action_revoke(self) -> None:
        """Revoke the selected device after a confirmation; it is disconnected at once."""
        device = self._selected()
        if device is None:
            return
        if device.revoked:
            self._note(f"Device {device.device_id} is already revoked.")
            return

        def confirmed(yes: bool | None) -> None:
            if yes and device is not None:
                self.run_worker(self._revoke(device), group="revoke")

        question = (
            f"Revoke device {device.device_id} ({device.name}) of {self.user_name}? "
            "It is disconnected at once and cannot sign in again."
        )
        self.app.push_screen(ConfirmScreen(question), confirmed)

    async def _revoke(self, device: DeviceInfo) -> None:
        try:
            await self.client.call(
                "device.revoke", user_id=self.user_id, device_id=device.device_id
            )
        except (ConnectionProblem, AdminError) as e:
            self._note(f"device.revoke failed: {e}")
        else:
            self._note(f"Revoked device {device.device_id} ({device.name}).")
        await self._load()

    def action_close(self) -> None:
        self.dismiss(None)


def audit_row(entry: AuditInfo) -> tuple[Text, ...]:
    """One line of the audit view: time, uid, action, target."""
    return (
        Text(entry.time[:19].replace("T", " ")),
        Text("?" if entry.uid is None else str(entry.uid), justify="right"),
        Text(entry.action),
        Text(entry.target),
    )


class AuditScreen(ModalScreen[None]):
    """The newest AUDIT_LIMIT entries of the audit log, newest first."""

    BINDINGS = [
        Binding("r", "reload", "Refresh"),
        Binding("escape", "close", "Close"),
    ]

    def __init__(self, client: AdminClient) -> None:
        super().__init__()
        self.client = client
        self.entries: list[AuditInfo] | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="audit-box", classes="listing"):
            yield DataTable(id="audit", cursor_type="row", zebra_stripes=True)
            yield Static(id="audit-note", classes="hint")
            yield Static("r: refresh   Esc: close", classes="hint")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#audit-box").border_title = "Audit log (newest first)"
        table = self.query_one("#audit", DataTable)
        table.add_column("Time (UTC)", key="time")
        table.add_column(Text("UID", justify="right"), key="uid")
        table.add_column("Action", key="action")
        table.add_column("Target", key="target")
        table.focus()
        self.action_reload()

    def action_reload(self) -> None:
        """Fetch the newest entries again."""
        self.run_worker(self._load(), group="audit", exclusive=True)

    async def _load(self) -> None:
        note = self.query_one("#audit-note", Static)
        try:
            result = await self.client.call("audit.list", limit=AUDIT_LIMIT)
            entries = [AuditInfo.from_json(a) for a in result["entries"]]
        except (ConnectionProblem, AdminError) as e:
            note.update(Text(f"audit.list failed: {e}"))
            return
        except (KeyError, TypeError, ValueError) as e:
            note.update(Text(f"unexpected reply from momedod ({e!r})"))
            return
        entries.sort(key=lambda a: a.id, reverse=True)
        self.entries = entries[:AUDIT_LIMIT]
        table = self.query_one("#audit", DataTable)
        table.clear()
        for entry in self.entries:
            table.add_row(*audit_row(entry), key=str(entry.id))
        more = " (older entries not shown)" if result.get("next") else ""
        note.update(Text(f"{len(self.entries)} entries{more}"))

    def action_close(self) -> None:
        self.dismiss(None)
