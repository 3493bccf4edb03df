"""Disk full: the state directory's file system fills up under the running daemon.

A real, small file system (a tmpfs mounted for the test; needs root, else skipped): sends get
"server storage full; retry later" (INTERNAL, so clients retry), nothing accepted before is lost
or corrupted, other requests keep working, and once space returns sends succeed again without
a restart.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
import trio
from support import new_message_id

from momedod.client.transport import ServerError, connect
from momedod.protocol import frames as f
from momedod.protocol.errors import ErrorCode

PAYLOAD = 16 * 1024


@pytest.fixture
def small_fs(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> None:
    """Take every free block of path's file system."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 512):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


async def test_full_disk_refuses_sends_keeps_what_was_accepted_and_recovers(
    start_server, small_fs: Path
):
    server = await start_server(small_fs / "state")
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    to_bob = [f.Recipient(bob.user_id, bob.device_id, b"")]
    accepted: list[bytes] = []
    filler = small_fs / "filler"
    async with connect(alice) as a:
        for i in range(5):
            accepted.append(new_message_id())
            await a.send(accepted[-1], bytes([i]) * PAYLOAD, to_bob)
        fill(filler)
        refused = None
        for _ in range(200):  # SQLite may still have room in its WAL for a few
            message_id = new_message_id()
            try:
                await a.send(message_id, b"\x07" * PAYLOAD, to_bob)
            except ServerError as e:
                refused = e
                break
            accepted.append(message_id)
        assert refused is not None, "the disk never filled up"
        assert refused.code == ErrorCode.INTERNAL
        assert refused.message == "server storage full; retry later"
        await a.ping()  # the connection stays up
        filler.unlink()  # space returns ...
        with trio.fail_after(10):
            await a.send(new_message_id(), b"after", to_bob)  # ... and sends work again
    async with connect(bob) as b:
        got = []
        while not isinstance(ev := await b.receive(5), f.Drained):
            got.append(ev)
        await b.ack([d.seq for d in got])
    ids = [d.message_id for d in got]
    assert ids[: len(accepted)] == accepted  # everything accepted, in order, intact
    assert [d.payload for d in got[:5]] == [bytes([i]) * PAYLOAD for i in range(5)]
    assert got[-1].payload == b"after" and len(got) == len(accepted) + 1
    db = next((small_fs / "state").rglob("momedo.sqlite3"))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
