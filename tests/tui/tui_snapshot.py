"""Plain-text snapshots of momedo-tui screens at 80x24.

``screen_snapshot(app)`` renders what the terminal shows (the active screen over the screens
below it, as ``App.export_screenshot`` does) as 24 lines of text. ``assert_snapshot(name,
text)`` compares it with ``tests/tui/snapshots/NAME.txt`` and fails with a unified diff; run
the tests with ``MOMEDO_UPDATE_SNAPSHOTS=1`` to write the files instead, then review them with
``git diff``. On a mismatch the SVG screenshot is saved as ``snapshots/NAME.failed.svg``
(ignored by git) to look at in a browser.

Text, not SVG: a diff of two texts says what moved, and a text snapshot does not change when
Textual changes a colour. (pytest-textual-snapshot 1.1 pins syrupy 4.8, which needs
pytest < 9, so it does not install here.)

Determinism: the data comes from ``fake_admin.FakeAdmin``, the app gets a fixed ``clock``, and
every DataTable column of the console has a fixed width (a DataTable measures auto-width
columns only when idle, so on a busy machine a snapshot could catch them unmeasured).
``settle`` waits until the same text is seen three times, the screen's messages handled.
"""

from __future__ import annotations

import difflib
import io
import os
import time
from pathlib import Path

from rich.console import Console
from textual.app import App
from textual.pilot import Pilot

SNAPSHOT_DIR = Path(__file__).parent / "snapshots"
UPDATE_ENV = "MOMEDO_UPDATE_SNAPSHOTS"
SIZE = (80, 24)


def screen_snapshot(app: App[object]) -> str:
    """The terminal as 24 lines of 80 columns (trailing blanks stripped)."""
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    # the same rendering as App.export_screenshot, exported as text instead of SVG
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    console.print(update)
    lines = console.export_text(styles=False).splitlines()
    assert len(lines) == height, f"rendered {len(lines)} lines, expected {height}"
    return "\n".join(line.rstrip() for line in lines) + "\n"


async def settle(pilot: Pilot[int], app: App[int], *texts: str, timeout: float = 20.0) -> str:
    """Wait until the screen shows every one of ``texts`` and stays the same.

    Some widgets finish their layout when idle (a DataTable sizes its columns then), so every
    look waits until the screen has handled its messages, and the same text must be seen
    three times in a row: a busy machine is slower, not different.
    """
    deadline = time.monotonic() + timeout
    last, same = "", 0
    while True:
        await pilot.pause(0.05)
        await pilot.pause()  # the screen's pending messages are handled
        await pilot.pause()  # and what they started (idle-time layout)
        text = screen_snapshot(app)
        same = same + 1 if text == last and all(t in text for t in texts) else 0
        if same >= 2:
            return text
        if time.monotonic() > deadline:
            missing = [t for t in texts if t not in text]
            raise AssertionError(f"screen not settled (missing {missing}); it shows:\n{text}")
        last = text


def assert_snapshot(name: str, text: str, app: App[int] | None = None) -> None:
    """Compare ``text`` with snapshots/NAME.txt, or write it there when updating."""
    path = SNAPSHOT_DIR / f"{name}.txt"
    if os.environ.get(UPDATE_ENV):
        SNAPSHOT_DIR.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    if not path.exists():
        raise AssertionError(
            f"no snapshot {path}; run the tests with {UPDATE_ENV}=1 to write it:\n{text}"
        )
    expected = path.read_text(encoding="utf-8")
    svg_path = SNAPSHOT_DIR / f"{name}.failed.svg"
    if text == expected:
        svg_path.unlink(missing_ok=True)  # from an earlier failure
        return
    svg = ""
    if app is not None:
        svg_path.write_text(app.export_screenshot(), encoding="utf-8")
        svg = f"\n(SVG screenshot: {svg_path})"
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            text.splitlines(keepends=True),
            fromfile=f"snapshots/{name}.txt",
            tofile="screen now",
        )
    )
    raise AssertionError(
        f"screen {name!r} differs from its snapshot (rerun with {UPDATE_ENV}=1 "
        f"to accept it):\n{diff}{svg}"
    )
