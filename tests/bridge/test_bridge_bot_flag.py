"""The operator's bot flag: ``momedoctl user add NAME --bot``, ``user bot ID on|off``, shown
in ``user list`` / ``user show`` (the real momedoctl against an in-process daemon)."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from support import VENV_BIN


async def _ctl(server, tmp_path: Path, *args: str) -> str:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "ctl.toml"
    cfg.write_text(
        f'[server]\nstate_dir = "{server.state_dir}"\n[admin]\nsocket = "{server.socket}"\n'
    )
    res = await trio.run_process(
        [str(VENV_BIN / "momedoctl"), "-c", str(cfg), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode()


async def test_operator_marks_a_bot_and_sees_it_in_list_and_show(server, tmp_path):
    out = await _ctl(server, tmp_path, "user", "add", "Hausmeister", "Bot", "--bot")
    assert "(Hausmeister Bot, a bot)" in out
    uid = out.split()[1]
    await _ctl(server, tmp_path, "user", "add", "Anna")
    shown = json.loads(await _ctl(server, tmp_path, "--json", "user", "show", uid))
    assert shown["user"]["bot"] is True
    listing = await _ctl(server, tmp_path, "user", "list")
    bot_line = next(line for line in listing.splitlines() if uid in line)
    anna_line = next(line for line in listing.splitlines() if "Anna" in line)
    assert bot_line.rstrip().endswith("active, bot") and anna_line.rstrip().endswith("active")
    assert "kind       bot" in await _ctl(server, tmp_path, "user", "show", uid)
    assert "no longer marked as a bot" in await _ctl(server, tmp_path, "user", "bot", uid, "off")
    assert (
        json.loads(await _ctl(server, tmp_path, "--json", "user", "show", uid))["user"]["bot"]
        is False
    )
    assert "is now marked as a bot" in await _ctl(server, tmp_path, "user", "bot", uid, "on")
    audit = json.loads(await _ctl(server, tmp_path, "--json", "audit", "--action", "user.bot"))
    assert [e["detail"]["bot"] for e in audit["entries"]][:3] == [True, False, True]
