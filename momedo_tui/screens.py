"""The modal screens of momedo-tui: ask for a name, confirm, show an invite with its QR code,
list a user's devices (and revoke one), show the audit log, show and change quiet hours."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import Any

import segno
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import Checkbox, DataTable, Footer, Input, Static

from momedo_tui.client import AdminClient, ConnectionProblem
from momedod.admin.protocol import AdminError, AuditInfo, DeviceInfo
from momedod.protocol import userid


async def until_closed(work: Awaitable[object]) -> None:
    """Run ``work`` (a worker's coroutine) unless its screen or the app closes meanwhile.

    The console never removes a widget while its screen is open, so a query that finds
    nothing (NoMatches) means the screen or app was closed under the worker: stop quietly
    instead of failing the app on its way out.
    """
    with contextlib.suppress(NoMatches):
        await work


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in "…" if it was longer."""
    return text if len(text) <= width else text[: width - 1] + "…"


__all__ = [
    "AUDIT_LIMIT",
    "QR_BORDER",
    "AuditScreen",
    "ConfirmScreen",
    "DevicesScreen",
    "InviteScreen",
    "NameScreen",
    "OnOffScreen",
    "QuietFormScreen",
    "QuietScreen",
    "fit",
    "qr_text",
    "short_time",
    "until_closed",
]

AUDIT_LIMIT = 100
"""The audit view shows this many of the newest entries."""

LINK_CHUNK = 31
"""The invite link is shown in lines of this many characters, beside the QR code."""
QR_BORDER = 2
"""Quiet zone of the QR code in modules (light, as the code is drawn black on white)."""

DEVICE_NAME_WIDTH = 20
AUDIT_ACTION_WIDTH = 14
AUDIT_TARGET_WIDTH = 29
"""Column widths that keep the devices and audit tables inside an 80-column terminal."""

_QR_STYLE = Style(color="black", bgcolor="white")


def qr_text(data: str) -> Text:
    """A QR code of ``data`` in half-block characters: two modules per character, black on white."""
    qr = segno.make(data, error="l")
    rows = [[bool(v) for v in row] for row in qr.matrix_iter(scale=1, border=QR_BORDER)]
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

    def __init__(
        self, prompt: str, placeholder: str = "Name", hint: str = "Enter: create   Esc: cancel"
    ) -> None:
        super().__init__()
        self.prompt = prompt
        self.placeholder = placeholder
        self.hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.prompt)
            yield Input(placeholder=self.placeholder, id="name")
            yield Static(self.hint, classes="hint")

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
    """An invite's QR code with the link and its expiry beside it.

    At 80x24 the whole code of a usual link (version 6, 41 modules and a quiet zone of 2: 23
    rows) is on screen at once, so it can be scanned off the terminal; longer links or
    smaller terminals scroll.
    """

    BINDINGS = [Binding("escape,enter,q", "close", "Close")]

    def __init__(self, title: str, link: str, expires: str) -> None:
        super().__init__()
        self.title_text = title
        self.link = link
        self.expires = expires

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="invite-box"), Horizontal(id="invite-row"):
            yield Static(qr_text(self.link), id="invite-qr")
            with Vertical(id="invite-side"):
                yield Static(Text(self.title_text, style="bold"))
                yield Static(f"Expires {short_time(self.expires)} UTC.")
                yield Static("Invite link:")
                yield Static(Text(link_lines(self.link), no_wrap=True), id="invite-link")
                yield Static("Scan the code with the momedo app, or type the link.")
                yield Static("Esc/Enter/q: close", classes="hint")

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
        table.add_column("ID", key="id", width=4)
        table.add_column("Name", key="name", width=DEVICE_NAME_WIDTH)
        table.add_column("Last seen", key="last_seen", width=16)
        table.add_column(Text("Queued", justify="right"), key="queued", width=6)
        table.add_column("Status", key="status", width=18)
        table.focus()
        self.action_reload()

    def _note(self, message: str) -> None:
        self.query_one("#devices-note", Static).update(Text(message))

    def action_reload(self) -> None:
        """Fetch the devices again."""
        self.run_worker(until_closed(self._load()), group="devices", exclusive=True)

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
            status = f"revoked {device.revoked[:10]}" if device.revoked else "active"
            table.add_row(
                Text(str(device.device_id)),
                Text(fit(device.name, DEVICE_NAME_WIDTH)),
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
                self.run_worker(until_closed(self._revoke(device)), group="revoke")

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
        Text(fit(entry.action, AUDIT_ACTION_WIDTH)),
        Text(fit(entry.target, AUDIT_TARGET_WIDTH)),
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
        table.add_column("Time (UTC)", key="time", width=19)
        table.add_column(Text("UID", justify="right"), key="uid", width=5)
        table.add_column("Action", key="action", width=AUDIT_ACTION_WIDTH)
        table.add_column("Target", key="target", width=AUDIT_TARGET_WIDTH)
        table.focus()
        self.action_reload()

    def action_reload(self) -> None:
        """Fetch the newest entries again."""
        self.run_worker(until_closed(self._load()), group="audit", exclusive=True)

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


def split_users(text: str) -> list[str]:
    """User IDs typed into the form: separated by commas and/or spaces."""
    return [u for u in text.replace(",", " ").split() if u]


def split_groups(text: str) -> list[str]:
    """Group names typed into the form: separated by commas (a name may contain spaces)."""
    return [g.strip() for g in text.split(",") if g.strip()]


def defer_label(defer: bool) -> str:
    """The defer box's label says its state in words (a text snapshot shows no colours)."""
    if defer:
        return "yes: phones show messages only when the window opens"
    return "no: phones are not woken; an open app still shows messages"


class QuietFormScreen(ModalScreen[dict[str, Any] | None]):
    """Add or edit a quiet-hours policy; dismisses with the ``quiet.set`` arguments or None.

    The daemon checks the window (and that users and groups exist); its answer goes to the
    quiet-hours screen's status line.
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, policy: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.policy = policy

    def compose(self) -> ComposeResult:
        p = self.policy or {}
        with Vertical(classes="dialog", id="quiet-form"):
            yield Static(Text("Edit policy" if p else "New quiet-hours policy", style="bold"))
            with Horizontal(classes="field"):
                yield Static("Name", classes="label")
                yield Input(
                    p.get("name", ""),
                    placeholder="e.g. Kollegium",
                    id="q-name",
                    compact=True,
                    disabled=bool(p),
                )
            with Horizontal(classes="field"):
                yield Static("Window", classes="label")
                yield Input(
                    p.get("window", ""),
                    placeholder="e.g. Mon-Fri 07:00-18:00 Europe/Berlin",
                    id="q-window",
                    compact=True,
                )
            with Horizontal(classes="field"):
                yield Static("Defer", classes="label")
                defer = bool(p.get("defer_delivery", False))
                yield Checkbox(
                    defer_label(defer),
                    defer,
                    id="q-defer",
                    compact=True,
                )
            with Horizontal(classes="field"):
                yield Static("Users", classes="label")
                yield Input(
                    " ".join(p.get("users", [])),
                    placeholder="user IDs, e.g. M8N2-2HTR GSRZ-2T7A",
                    id="q-users",
                    compact=True,
                )
            with Horizontal(classes="field"):
                yield Static("Groups", classes="label")
                yield Input(
                    ", ".join(p.get("groups", [])),
                    placeholder="group names, comma separated",
                    id="q-groups",
                    compact=True,
                )
            yield Static(id="q-note", classes="hint")
            yield Static(
                "Enter: save   Tab: next   Space: defer on/off   Esc: cancel", classes="hint"
            )

    def on_mount(self) -> None:
        self.query_one("#q-window" if self.policy else "#q-name", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.checkbox.label = defer_label(event.value)

    def action_save(self) -> None:
        name = self.query_one("#q-name", Input).value.strip()
        window = self.query_one("#q-window", Input).value.strip()
        if not name or not window:
            self.query_one("#q-note", Static).update(Text("Name and window are needed."))
            return
        self.dismiss(
            {
                "name": name,
                "window": window,
                "defer_delivery": self.query_one("#q-defer", Checkbox).value,
                "users": split_users(self.query_one("#q-users", Input).value),
                "groups": split_groups(self.query_one("#q-groups", Input).value),
            }
        )

    def action_cancel(self) -> None:
        self.dismiss(None)


class OnOffScreen(ModalScreen[bool | None]):
    """Turn something on (``o``) or off (``f``); dismisses with True, False or None (Esc)."""

    BINDINGS = [
        Binding("o", "answer(True)", "On"),
        Binding("f", "answer(False)", "Off"),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Text(self.question))
            yield Static("o: on   f: off   Esc: cancel", classes="hint")

    def action_answer(self, on: bool) -> None:
        self.dismiss(on)

    def action_cancel(self) -> None:
        self.dismiss(None)


def urgent_target(text: str) -> dict[str, str]:
    """``urgent.set``'s target for what was typed: a user ID if it is one, else a group."""
    try:
        return {"user_id": userid.normalize(text)}
    except ValueError:
        return {"group": text}


class QuietScreen(ModalScreen[None]):
    """Quiet-hours policies and who may send urgent messages; add, edit and delete policies
    and allow or stop urgent senders (as momedoctl quiet / urgent do)."""

    BINDINGS = [
        Binding("n", "new", "New"),
        Binding("e", "edit", "Edit"),
        Binding("x", "delete", "Delete"),
        Binding("u", "urgent", "Urgent"),
        Binding("r", "reload", "Refresh"),
        Binding("escape", "close", "Close"),
    ]

    def __init__(self, client: AdminClient) -> None:
        super().__init__()
        self.client = client
        self.policies: list[dict[str, Any]] = []
        self.urgent: list[str] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="quiet-box", classes="listing"):
            yield DataTable(id="quiet", cursor_type="row", zebra_stripes=True)
            yield Static(id="quiet-urgent")
            yield Static(id="quiet-note", classes="hint")
            yield Static(
                "n: new  e: edit  x: delete  u: urgent on/off  r: refresh  Esc: close",
                classes="hint",
            )
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#quiet-box").border_title = "Quiet hours"
        table = self.query_one("#quiet", DataTable)
        table.add_column("Policy", key="name", width=10)
        table.add_column("Working window", key="window", width=36)
        table.add_column("Now", key="now", width=5)
        table.add_column("Applies to", key="whom", width=16)
        table.focus()
        self.action_reload()

    def action_reload(self) -> None:
        """Fetch the policies again."""
        self.run_worker(until_closed(self._load()), group="quiet", exclusive=True)

    async def _load(self) -> None:
        note = self.query_one("#quiet-urgent", Static)
        try:
            result = await self.client.call("quiet.list")
            policies = result["policies"]
            urgent = [*result["urgent"]["users"], *result["urgent"]["groups"]]
        except (ConnectionProblem, AdminError) as e:
            note.update(Text(f"quiet.list failed: {e}"))
            return
        except (KeyError, TypeError) as e:
            note.update(Text(f"unexpected reply from momedod ({e!r})"))
            return
        self.policies, self.urgent = policies, urgent
        table = self.query_one("#quiet", DataTable)
        selected = None
        if table.row_count:
            selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        for p in policies:
            whom = ", ".join([*p["users"], *p["groups"]]) or "nobody"
            defer = " (+phones)" if p["defer_delivery"] else ""
            table.add_row(
                p["name"],
                p["window"] + defer,
                "work" if p["open_now"] else "QUIET",
                whom,
                key=p["name"],
            )
        if selected is not None and selected in table.rows:
            table.move_cursor(row=table.get_row_index(selected))
        if not policies:
            note.update(Text("No policies: messages wake phones at any time."))
        else:
            note.update(Text(f"May send urgent messages: {', '.join(urgent) or 'nobody'}"))

    def _note(self, message: str) -> None:
        self.query_one("#quiet-note", Static).update(Text(message))

    async def _change(self, cmd: str, done: str, **args: Any) -> None:
        """Run one changing command, say how it went, and load the list again."""
        try:
            await self.client.call(cmd, **args)
        except (ConnectionProblem, AdminError) as e:
            self._note(f"{cmd} failed: {e}")
        else:
            self._note(done)
        await self._load()

    def _selected(self) -> dict[str, Any] | None:
        table = self.query_one("#quiet", DataTable)
        if not table.row_count:
            self._note("No policy selected.")
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((p for p in self.policies if p["name"] == key), None)

    def _open_form(self, policy: dict[str, Any] | None) -> None:
        def saved(args: dict[str, Any] | None) -> None:
            if args:
                done = f"Saved policy {args['name']}."
                self.run_worker(until_closed(self._change("quiet.set", done, **args)))

        self.app.push_screen(QuietFormScreen(policy), saved)

    def action_new(self) -> None:
        """Add a policy (the form asks for name, window, defer, users and groups)."""
        self._open_form(None)

    def action_edit(self) -> None:
        """Change the selected policy."""
        policy = self._selected()
        if policy is None:
            return
        if policy.get("source") == "config":
            self._note(f"{policy['name']} is set in the configuration file; change it there.")
            return
        self._open_form(policy)

    def action_delete(self) -> None:
        """Delete the selected policy after a confirmation."""
        policy = self._selected()
        if policy is None:
            return
        name = str(policy["name"])

        def confirmed(yes: bool | None) -> None:
            if yes:
                done = f"Deleted policy {name}."
                self.run_worker(until_closed(self._change("quiet.delete", done, name=name)))

        question = f"Delete the quiet-hours policy {name}? Its people get messages at any time."
        self.app.push_screen(ConfirmScreen(question), confirmed)

    def action_urgent(self) -> None:
        """Ask for a user ID or group name, then allow it to send urgent messages or stop it."""

        def named(text: str | None) -> None:
            if not text:
                return
            target = urgent_target(text)
            shown = userid.display(target["user_id"]) if "user_id" in target else text
            now = "may" if shown in self.urgent else "may not"

            def chosen(on: bool | None) -> None:
                if on is not None:
                    done = f"{shown} {'may' if on else 'may not'} send urgent messages."
                    self.run_worker(
                        until_closed(self._change("urgent.set", done, allowed=on, **target))
                    )

            question = f"{shown} {now} send urgent messages now. Allow it?"
            self.app.push_screen(OnOffScreen(question), chosen)

        prompt = "User ID or group name (urgent messages pass quiet hours):"
        self.app.push_screen(
            NameScreen(prompt, "M8N2-2HTR or Notfall", hint="Enter: next   Esc: cancel"), named
        )

    def action_close(self) -> None:
        self.dismiss(None)
