"""The real daemon (``momedod run``) with ``[storage] engine = "postgres"`` relays messages.

It runs against the session's throwaway PostgreSQL server (tests/pg.py), in a schema of its
own, as a subprocess configured through its TOML file like an operator would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pg import PgServer
from support import DaemonProcess, admin_call, free_port, new_message_id

from momedod.client.transport import Credentials, connect, connect_invite
from momedod.protocol.frames import Deliver, Drained, Recipient


async def enroll(proc: DaemonProcess, name: str) -> Credentials:
    link = admin_call(proc.socket, "user.add", name=name)["invite"]["link"]
    async with connect_invite(link, f"{name}-phone") as (_client, creds):
        return creds


async def drain(client, timeout: float = 5.0) -> list[Deliver]:  # type: ignore[no-untyped-def]
    got = []
    while True:
        ev = await client.receive(timeout)
        if isinstance(ev, Drained):
            return got
        got.append(ev)


async def test_daemon_on_postgres_relays_between_two_clients_and_keeps_them_on_restart(
    tmp_path: Path, pg_server: PgServer
) -> None:
    dsn = pg_server.new_dsn()
    proc = DaemonProcess(
        tmp_path, free_port(), f'[storage]\nengine = "postgres"\ndsn = "{dsn}"\npool_size = 4\n'
    )
    proc.start()
    try:
        alice, bob = await enroll(proc, "Alice"), await enroll(proc, "Bob")
        async with connect(alice) as a, connect(bob) as b:
            assert await drain(a) == [] and await drain(b) == []
            mid = new_message_id()
            accepted = await a.send(mid, b"envelope-1", [Recipient(bob.user_id, 1, b"part")])
            assert accepted.message_id == mid and not accepted.duplicate
            got = await b.receive(5)
            assert isinstance(got, Deliver)
            assert (got.message_id, got.payload, got.part) == (mid, b"envelope-1", b"part")
            await b.ack([got.seq])
            back = new_message_id()
            await b.send(back, b"envelope-2", [Recipient(alice.user_id, 1, b"")])
            reply = await a.receive(5)
            assert isinstance(reply, Deliver) and reply.payload == b"envelope-2"
            await a.ack([reply.seq])
        # Bob is offline: the message waits in PostgreSQL's mailbox across a restart.
        async with connect(alice) as a:
            await drain(a)
            await a.send(new_message_id(), b"while-away", [Recipient(bob.user_id, 1, b"")])
        stats = admin_call(proc.socket, "server.stats")
        assert stats["users"] == 2 and stats["mailbox_entries"] == 1 and stats["store_bytes"] > 0
        # momedoctl backup copies SQLite files only; it says what to use instead.
        with pytest.raises(RuntimeError, match="pg_dump"):
            admin_call(proc.socket, "server.backup", dir=str(tmp_path / "backup"))
        assert not (tmp_path / "backup").exists()
        assert proc.stop() == 0
        proc.start()
        async with connect(bob) as b:
            [waiting] = await drain(b)
            assert waiting.payload == b"while-away"
        assert not (proc.state / "momedo.sqlite3").exists()
    finally:
        proc.stop()
