"""Online backup with momedoctl under load, restore with momedod restore, on real processes."""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import trio
from support import VENV_BIN, DaemonProcess, admin_call, free_port

from momedod.client.transport import connect, connect_invite
from momedod.protocol import frames as f


async def enroll_via(proc: DaemonProcess, name: str):  # type: ignore[no-untyped-def]
    link = admin_call(proc.socket, "user.add", name=name)["invite"]["link"]
    async with connect_invite(link, name) as (_c, creds):
        return creds


async def collect(creds, timeout: float = 10.0) -> list[f.Deliver]:  # type: ignore[no-untyped-def]
    """Everything waiting for a device, acknowledged as it arrives."""
    got = []
    async with connect(creds) as c:
        while not isinstance(ev := await c.receive(timeout), f.Drained):
            got.append(ev)
            await c.ack([ev.seq])
    return got


async def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(a) for a in argv]
    return await trio.to_thread.run_sync(
        lambda: subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    )


def new_daemon(workdir: Path) -> DaemonProcess:
    workdir.mkdir()
    return DaemonProcess(workdir, free_port())


def truncate_db(backup: Path) -> None:
    db = backup / "momedo.sqlite3"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])


def flip_byte(backup: Path) -> None:
    db = backup / "momedo.sqlite3"
    data = bytearray(db.read_bytes())
    data[-100] ^= 0x40
    db.write_bytes(bytes(data))


async def test_backup_under_load_restores_every_accepted_message_and_damage_is_refused(
    tmp_path: Path,
) -> None:
    old = new_daemon(tmp_path / "old")
    old.start()
    backup = tmp_path / "backups" / "2026-12-01"
    try:
        senders = [await enroll_via(old, f"Sender{i}") for i in range(2)]
        rcpts = [await enroll_via(old, f"R{i}") for i in range(2)]  # offline: all stays queued
        to = [f.Recipient(r.user_id, r.device_id, b"wrapped-key") for r in rcpts]
        fingerprint = admin_call(old.socket, "server.info")["fingerprint"]
        accepted: list[bytes] = []
        stop = trio.Event()

        async def burst(creds) -> None:  # type: ignore[no-untyped-def]
            async with connect(creds) as c:
                while not stop.is_set():
                    mid = secrets.token_bytes(16)
                    await c.send(mid, mid * 64, to)
                    accepted.append(mid)  # SEND_OK received: the daemon has committed it

        async with trio.open_nursery() as nursery:
            for s in senders:
                nursery.start_soon(burst, s)
            while len(accepted) < 100:
                await trio.sleep(0.01)
            before = set(accepted)
            ctl = await run(VENV_BIN / "momedoctl", "-c", old.config_path, "backup", backup)
            during = len(accepted) - len(before)
            await trio.sleep(0.1)
            stop.set()
        assert ctl.returncode == 0, ctl.stderr
        assert ctl.stdout.startswith(f"Backup written to {backup} in "), ctl.stdout
        assert ": 4 files, " in ctl.stdout and "4 users, 4 devices" in ctl.stdout
        assert during > 0, "the burst did not run while momedoctl backup ran"
        assert len(accepted) > len(before)

        # --json prints the result object.
        again = await run(
            VENV_BIN / "momedoctl", "-c", old.config_path, "backup", "--json", tmp_path / "json"
        )
        assert again.returncode == 0, again.stderr
        result = json.loads(again.stdout)
        assert set(result) == {
            "dir",
            "files",
            "bytes",
            "users",
            "devices",
            "mailbox_entries",
            "seconds",
        }
        assert (result["dir"], result["files"], result["users"]) == (str(tmp_path / "json"), 4, 4)
        assert result["mailbox_entries"] == 2 * len(accepted)  # the burst is over

        # Argument errors come back as invalid_argument, I/O errors as internal.
        for bad, why in [
            ("relative/dir", "invalid_argument.*absolute path"),
            (str(backup), "invalid_argument.*not empty"),
            (f"{old.config_path}/sub", "internal.*cannot create .*: Not a directory"),
        ]:
            with pytest.raises(RuntimeError, match=why):
                admin_call(old.socket, "server.backup", dir=bad)
    finally:
        old.stop()

    manifest = json.loads((backup / "MANIFEST.json").read_text())
    assert manifest["fingerprint"] == fingerprint
    assert {e["path"] for e in manifest["files"]} == {
        "momedo.sqlite3",
        "tls/cert.pem",
        "tls/key.pem",
    }
    queued = manifest["counts"]["mailbox_entries"]
    assert queued >= 2 * len(before)

    # A new machine: fresh state directory, fresh config, another port.
    new = new_daemon(tmp_path / "new")
    restored = await run(VENV_BIN / "momedod", "restore", "-c", new.config_path, backup)
    assert restored.returncode == 0, restored.stderr
    assert f"into {new.state}" in restored.stdout and fingerprint in restored.stdout
    new.start()
    try:
        info = admin_call(new.socket, "server.info")
        assert info["fingerprint"] == fingerprint  # devices keep trusting the server
        assert info["mailbox_entries"] == queued
        for r in rcpts:
            got = await collect(dataclasses.replace(r, port=new.port))
            ids = [d.message_id for d in got]
            assert before <= set(ids), f"{len(before - set(ids))} accepted messages lost"
            assert set(ids) <= set(accepted) and len(ids) == len(set(ids))
            assert all(d.payload == d.message_id * 64 and d.part == b"wrapped-key" for d in got)

        # Restoring over a running daemon is refused.
        busy = await run(VENV_BIN / "momedod", "restore", "--force", "-c", new.config_path, backup)
        assert busy.returncode == 1 and "momedod is running" in busy.stderr
    finally:
        new.stop()

    # A truncated, a damaged and an incomplete copy of the same backup are refused.
    target = new_daemon(tmp_path / "target")
    cases = [
        (truncate_db, "momedo.sqlite3 is .* bytes, the manifest says .*truncated"),
        (flip_byte, "momedo.sqlite3 does not match its SHA-256"),
        (lambda b: (b / "MANIFEST.json").unlink(), "no MANIFEST.json"),
    ]
    for i, (damage, message) in enumerate(cases):
        copy = tmp_path / f"damaged-{i}"
        shutil.copytree(backup, copy)
        damage(copy)
        res = await run(VENV_BIN / "momedod", "restore", "-c", target.config_path, copy)
        assert res.returncode == 1, res.stdout
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("momedod: restore refused: "), res.stderr
        assert str(copy) in lines[0] and re.search(message, lines[0]), lines[0]
        assert not target.state.exists()
