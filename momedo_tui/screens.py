"""The modal screens of momedo-tui: ask for a name, confirm, show an invite with its QR code."""

from __future__ import annotations

import segno
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Static

__all__ = ["ConfirmScreen", "InviteScreen", "NameScreen", "qr_text"]

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
