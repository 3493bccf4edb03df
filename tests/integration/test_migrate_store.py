"""Issue 10, acceptance 5: an SQLite installation with users, groups, queued messages and an
attachment is migrated to PostgreSQL (``momedoctl migrate-store``) and serves everything
afterwards.

All real processes: ``momedod run`` on SQLite, ``momedoctl`` for the operator's steps, the E2E
client library for the users; then ``momedod run`` again on the session's throwaway
PostgreSQL server (tests/pg.py) with the ``[storage]`` section ``migrate-store`` printed.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import trio
from pg import PgServer
from support import FEW_OTPKS, VENV_BIN, DaemonProcess, enroll_many, free_port

from momedod.client import attachments
from momedod.client import groups as g
from momedod.client import messenger as m
from momedod.client.profile import Profile
from momedod.protocol.userid import display
from momedod.store.migrate import TABLES
from momedod.store.sqlite import DB_FILENAME


class Operator:
    """``momedoctl -c <the daemon's config>`` as a subprocess (users, groups, migration)."""

    def __init__(self, proc: DaemonProcess, org_key: Path) -> None:
        self.proc, self.org_key = proc, org_key

    async def run(self, *args: str, ok: bool = True) -> tuple[int, str, str]:
        res = await trio.run_process(
            [
                str(VENV_BIN / "momedoctl"),
                "-c",
                str(self.proc.config_path),
                "--org-key",
                str(self.org_key),
                *args,
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        out, err = res.stdout.decode(), res.stderr.decode()
        if ok:
            assert res.returncode == 0, err
        return res.returncode, out, err

    async def json(self, *args: str) -> Any:
        return json.loads((await self.run("--json", *args))[1])

    async def add_user(self, name: str) -> tuple[str, str]:
        """What enroll_many needs of a server: (user ID, invite link) of a new user."""
        result = await self.json("user", "add", name)
        return result["user"]["user_id"], result["invite"]["link"]


def texts(events: list[m.Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, m.Message)]


async def receive(prof: Profile, save_dir: Path | None = None) -> list[m.Event]:
    got: list[m.Event] = []
    await m.receive(prof, got.append, wait=0.0, save_dir=save_dir)
    return got


async def test_sqlite_installation_migrated_to_postgres_serves_everything(
    tmp_path: Path, pg_server: PgServer, monkeypatch: Any
) -> None:
    monkeypatch.setattr(m, "OTPK_COUNT", FEW_OTPKS)
    port = free_port()
    proc = DaemonProcess(tmp_path, port)
    op = Operator(proc, tmp_path / "org.key")
    proc.start()
    try:
        await op.run("org", "key")
        people = await enroll_many(op, tmp_path, ["anna", "bruno", "carla"])
        (anna, a_uid), (bruno, b_uid), (carla, c_uid) = people
        # An organisation channel (momedoctl) and a user group (the client).
        await op.run("group", "add", "--channel", "Rathaus")
        await op.run("group", "members", "Rathaus", "add", a_uid, b_uid, c_uid)
        await op.run("group", "admins", "Rathaus", "add", a_uid)
        await g.create_group(anna, "Bauhof", [b_uid, c_uid], channel=False, multi=False)
        # Bruno and Carla are offline from here on: everything waits in their mailboxes.
        direct = [f"Nachricht {i}" for i in range(5)]
        for text in direct:
            await m.send_text(anna, b_uid, text)
        await g.send_group_text(anna, "Bauhof", "Schneeräumung ab 5 Uhr")
        await g.send_group_text(anna, "Rathaus", "Sitzung verschoben")
        photo = tmp_path / "plan.bin"
        data = os.urandom(700_000)  # several 256 KiB chunks
        photo.write_bytes(data)
        await attachments.send_file(anna, photo, to=b_uid, caption="Lageplan")
        users_before = (await op.json("user", "list", "--all"))["users"]
        audit_before = (await op.json("audit", "--limit", "1000"))["entries"]
        assert any(e["action"] == "user.add" for e in audit_before)

        dsn = pg_server.new_dsn()
        # Refused while the daemon runs: it would keep accepting what the copy lacks.
        rc, _out, err = await op.run("migrate-store", "--to", "postgres", "--dsn", dsn, ok=False)
        assert rc == 1 and "momedod is running" in err and "stop it first" in err
    finally:
        assert proc.stop() == 0
    db = proc.state / DB_FILENAME
    sqlite_before = db.read_bytes()

    with trio.fail_after(120):
        _rc, out, _err = await op.run("migrate-store", "--to", "postgres", "--dsn", dsn)
    assert db.read_bytes() == sqlite_before  # SQLite untouched: the way back stays open
    with sqlite3.connect(db) as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    for table in ("users", "devices", "mailbox", "payloads", "audit", "blobs"):
        assert counts[table] > 0
        assert f"  {table} " in out
    shown = {
        line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line.endswith(" rows")
    }
    assert shown == counts
    snippet = out.split("\n\n")[2]
    assert snippet == f'[storage]\nengine = "postgres"\ndsn = {json.dumps(dsn)}'
    # A second run finds the database occupied and changes nothing.
    rc, _out, err = await op.run("migrate-store", "--to", "postgres", "--dsn", dsn, ok=False)
    assert rc == 1 and "not empty" in err

    # The same node, its state directory (TLS) and port, on PostgreSQL.
    pg_proc = DaemonProcess(tmp_path, port, snippet + "\npool_size = 4\n")
    op = Operator(pg_proc, tmp_path / "org.key")
    pg_proc.start()
    try:
        # The operator's view is the same: users (with their waiting mailboxes), audit log.
        assert (await op.json("user", "list", "--all"))["users"] == users_before
        assert (await op.json("audit", "--limit", "1000"))["entries"] == audit_before
        saved = tmp_path / "saved"
        got = await receive(bruno, saved)
        want = [*direct, "Schneeräumung ab 5 Uhr", "Sitzung verschoben", "Lageplan"]
        assert sorted(texts(got)) == sorted(want)  # every queued message, exactly once
        assert not [e for e in got if isinstance(e, m.Notice) and e.kind == "undecryptable"]
        (with_file,) = [e for e in got if isinstance(e, m.Message) and e.attachment]
        assert with_file.attachment is not None
        assert Path(with_file.attachment["path"]).read_bytes() == data  # byte for byte
        assert texts(await receive(bruno)) == []  # acknowledged: nothing comes twice
        assert sorted(texts(await receive(carla))) == [
            "Schneeräumung ab 5 Uhr",
            "Sitzung verschoben",
        ]
        # The attachment came from PostgreSQL's rows (a node without the state directory
        # would serve it too).
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT count(*), sum(octet_length(data)) FROM blob_chunks")
            n_rows, n_bytes = row.fetchone() or (0, 0)
        assert n_rows >= 3 and n_bytes > len(data)

        # Group sends still work, and new users and devices get fresh IDs.
        await g.send_group_text(anna, "Bauhof", "Streusalz ist da")
        await g.send_group_text(anna, "Rathaus", "Neuer Termin: Montag")
        ((dora, d_uid),) = await enroll_many(op, tmp_path, ["dora"])
        await m.send_text(dora, a_uid, "Hallo Anna")
        for prof in (bruno, carla):
            assert sorted(texts(await receive(prof))) == [
                "Neuer Termin: Montag",
                "Streusalz ist da",
            ]
        assert texts(await receive(anna)) == ["Hallo Anna"]

        users_after = (await op.json("user", "list", "--all"))["users"]
        assert sorted(u["user_id"] for u in users_after) == sorted(
            [u["user_id"] for u in users_before] + [display(d_uid)]
        )
        audit_after = (await op.json("audit", "--limit", "1000"))["entries"]
        new_entries = [e for e in audit_after if e not in audit_before]
        assert [e["action"] for e in new_entries] == ["user.add"]  # a fresh audit ID
        assert new_entries[0]["id"] > max(e["id"] for e in audit_before)
    finally:
        assert pg_proc.stop() == 0
