"""Attachment blobs against the real daemon over TLS: upload, resume, limits, access, expiry.

Every test but the backup one runs on both storage engines (the ``engine`` fixture): with
SQLite the bytes are files in the state directory, with PostgreSQL ``blob_chunks`` rows (any
node of a cluster serves any blob). :class:`Engine` looks at where the bytes are.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
from argparse import Namespace
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from pg import PgServer
from support import Server, make_config, new_message_id

from momedod.admin.ctl import _show_server_stats
from momedod.client.blobs import download_blob, upload_blob
from momedod.client.transport import Client, ServerError, connect
from momedod.config import AttachmentsConfig, StorageConfig
from momedod.protocol import frames as f
from momedod.protocol.errors import ErrorCode
from momedod.server.blobstore import BlobFiles
from momedod.server.daemon import serve
from momedod.store import postgres
from momedod.store.postgres import BLOB_CHUNK_BYTES

MIB = 1 << 20
CHUNK = f.MAX_BLOB_CHUNK


class Engine:
    """One storage engine under test, and where it keeps the bytes of blobs."""

    def __init__(self, name: str, dsn: str | None = None) -> None:
        self.name, self.dsn = name, dsn

    def __repr__(self) -> str:
        return self.name

    def storage(self) -> StorageConfig:
        if self.dsn is None:
            return StorageConfig()
        return StorageConfig(engine="postgres", dsn=self.dsn, pool_size=4)

    def stored(self, server: Server) -> dict[bytes, bytes]:
        """Every blob's bytes the server holds (complete or not), by blob ID."""
        if self.dsn is None:
            files = [p for p in (server.state_dir / "blobs").rglob("*") if p.is_file()]
            return {bytes.fromhex(p.name): p.read_bytes() for p in files}
        # With PostgreSQL nothing is written into the state directory's blob directory.
        assert not any(p.is_file() for p in (server.state_dir / "blobs").rglob("*"))
        held: dict[bytes, bytes] = {}
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute("SELECT blob_id, idx, data FROM blob_chunks ORDER BY blob_id, idx")
            for blob_id, idx, data in rows:
                got = held.setdefault(bytes(blob_id), b"")
                assert len(got) == idx * BLOB_CHUNK_BYTES  # full rows, numbered from 0
                held[bytes(blob_id)] = got + bytes(data)
        return held

    def lose_tail(self, server: Server, blob_id: bytes, keep: int) -> None:
        """What a crash can leave of an unfinished upload: only its first ``keep`` bytes."""
        if self.dsn is None:
            os.truncate(blob_files(server).partial_path(blob_id), keep)
            return
        idx, within = divmod(keep, BLOB_CHUNK_BYTES)
        with psycopg.connect(self.dsn) as conn:
            conn.execute("DELETE FROM blob_chunks WHERE blob_id = %s AND idx > %s", (blob_id, idx))
            conn.execute(
                "UPDATE blob_chunks SET data = substring(data FROM 1 FOR %s)"
                " WHERE blob_id = %s AND idx = %s",
                (within, blob_id, idx),
            )


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest) -> Engine:
    if request.param == "sqlite":
        return Engine("sqlite")
    pg: PgServer = request.getfixturevalue("pg_server")
    return Engine("postgres", pg.new_dsn())


async def start(
    tmp_path: Path, nursery: trio.Nursery, engine: Engine | None = None, **attachments: Any
) -> Server:
    config = make_config(tmp_path / "state")
    config = replace(
        config,
        attachments=replace(AttachmentsConfig(), **attachments),
        storage=(engine or Engine("sqlite")).storage(),
    )
    daemon = await nursery.start(serve, config)
    return Server(daemon, config.server.state_dir)


def blob_files(server: Server) -> BlobFiles:
    files = server.daemon.ctx.blob_files
    assert files is not None
    return files


def count_chunk_bytes(client: Client) -> list[int]:
    """Wrap ``client.send_request`` so the returned list holds the BLOB_CHUNK bytes sent."""
    sent = [0]
    original = client.send_request

    async def counting(frame: f.Frame) -> Any:
        if isinstance(frame, f.BlobChunk):
            sent[0] += len(frame.data)
        return await original(frame)

    client.send_request = counting  # type: ignore[method-assign]
    return sent


async def receive_deliver(client: Client) -> f.Deliver:
    while True:
        event = await client.receive(5)
        if isinstance(event, f.Deliver):
            return event


async def test_20_mib_round_trip_and_the_blob_directory_holds_exactly_those_bytes(
    tmp_path, nursery, engine
):
    server = await start(tmp_path, nursery, engine)
    alice = await server.enroll("Alice")
    data = secrets.token_bytes(20 * MIB)
    blob_id = secrets.token_bytes(16)
    async with connect(alice) as a:
        await upload_blob(a, blob_id, data)
        assert await download_blob(a, blob_id, expected_size=len(data)) == data
    assert engine.stored(server) == {blob_id: data}  # the bytes uploaded, nothing added
    if engine.name == "sqlite":
        path = blob_files(server).path(blob_id)
        assert path.read_bytes() == data and oct(path.stat().st_mode & 0o777) == "0o600"
    stats = await server.admin("server.stats")
    assert stats["blob_bytes"] == len(data) and stats["blobs"] == 1
    assert "Attachments:     20.0 MiB in 1 file" in _show_server_stats(stats, Namespace())


async def test_upload_from_a_file_path(tmp_path, nursery, engine):
    server = await start(tmp_path, nursery, engine)
    alice = await server.enroll("Alice")
    path = tmp_path / "photo.bin"
    path.write_bytes(secrets.token_bytes(3 * CHUNK + 5))
    blob_id = secrets.token_bytes(16)
    async with connect(alice) as a:
        await upload_blob(a, blob_id, path, window=3)
        assert await download_blob(a, blob_id) == path.read_bytes()


async def test_interrupted_upload_resumes_at_the_servers_offset(tmp_path, nursery, engine):
    server = await start(tmp_path, nursery, engine)
    alice = await server.enroll("Alice")
    data = secrets.token_bytes(8 * MIB)
    blob_id = secrets.token_bytes(16)
    half = 16 * CHUNK
    async with connect(alice) as a:
        await a.blob_start(blob_id, len(data))
        for offset in range(0, half, CHUNK):
            await a.blob_chunk(blob_id, offset, data[offset : offset + CHUNK])
    # The connection is gone; a new one resumes.
    seen: list[int] = []
    async with connect(alice) as a:
        sent = count_chunk_bytes(a)
        await upload_blob(a, blob_id, data, progress=lambda got, size: seen.append(got))
        assert seen[0] == half
        assert sent[0] == len(data) - half  # the first half was not sent again
        assert await download_blob(a, blob_id) == data


async def test_resume_trusts_the_shorter_file_after_a_crash(tmp_path, nursery, engine):
    server = await start(tmp_path, nursery, engine)
    alice = await server.enroll("Alice")
    data = secrets.token_bytes(4 * CHUNK)
    blob_id = secrets.token_bytes(16)
    async with connect(alice) as a:
        await a.blob_start(blob_id, len(data))
        for offset in range(0, 3 * CHUNK, CHUNK):
            await a.blob_chunk(blob_id, offset, data[offset : offset + CHUNK])
    engine.lose_tail(server, blob_id, CHUNK + 10)
    async with connect(alice) as a:
        status = await a.blob_start(blob_id, len(data))
        assert status.received == CHUNK + 10 and not status.complete
        await upload_blob(a, blob_id, data)
        assert await download_blob(a, blob_id) == data


async def test_over_the_limit_is_refused_before_any_data_is_sent(tmp_path, nursery, engine):
    server = await start(tmp_path, nursery, engine, max_file_mib=25)
    alice = await server.enroll("Alice")
    async with connect(alice) as a:
        with pytest.raises(ServerError) as info:
            await a.blob_start(secrets.token_bytes(16), 30 * MIB)
        assert info.value.code == ErrorCode.TOO_LARGE
        assert info.value.message == "attachment of 30.0 MiB exceeds the limit of 25 MiB"
        sent = count_chunk_bytes(a)
        with pytest.raises(ServerError, match="TOO_LARGE"):
            await upload_blob(a, secrets.token_bytes(16), bytes(25 * MIB + 1))
        assert sent[0] == 0
    assert engine.stored(server) == {}


async def test_quota_counts_complete_and_unfinished_uploads(tmp_path, nursery, engine):
    server = await start(tmp_path, nursery, engine, max_file_mib=1, quota_mib_per_user=2)
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    async with connect(alice) as a:
        await upload_blob(a, secrets.token_bytes(16), secrets.token_bytes(MIB))
        await a.blob_start(secrets.token_bytes(16), MIB // 2)  # unfinished, still counted
        with pytest.raises(ServerError) as info:
            await a.blob_start(secrets.token_bytes(16), MIB)
        assert info.value.code == ErrorCode.QUOTA_EXCEEDED
        assert "quota of 2 MiB" in info.value.message and "1.5 MiB in use" in info.value.message
    async with connect(bob) as b:  # the quota is per user
        await upload_blob(b, secrets.token_bytes(16), secrets.token_bytes(MIB))


async def test_blob_ids_conflicts_and_offsets(tmp_path, nursery, engine):
    server = await start(tmp_path, nursery, engine)
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    blob_id = secrets.token_bytes(16)
    async with connect(alice) as a, connect(bob) as b:
        await a.blob_start(blob_id, 1000)
        with pytest.raises(ServerError, match="CONFLICT"):
            await a.blob_start(blob_id, 1001)  # another size
        with pytest.raises(ServerError, match="CONFLICT"):
            await b.blob_start(blob_id, 1000)  # another user
        with pytest.raises(ServerError) as info:
            await a.blob_chunk(blob_id, 10, b"x")
        assert info.value.code == ErrorCode.CONFLICT and "continues at 0" in info.value.message
        with pytest.raises(ServerError, match="BAD_REQUEST"):
            await a.blob_chunk(blob_id, 0, bytes(1001))  # past the size
        with pytest.raises(ServerError, match="NOT_FOUND"):
            await b.blob_chunk(blob_id, 0, b"x")  # not Bob's upload
        with pytest.raises(ServerError, match=r"BAD_REQUEST.*incomplete"):
            await a.blob_finish(blob_id, bytes(32))
        await a.ping()  # all of that was non-fatal


async def test_a_bad_sha256_discards_the_upload(tmp_path, nursery, engine):
    server = await start(tmp_path, nursery, engine)
    alice = await server.enroll("Alice")
    data = secrets.token_bytes(CHUNK + 1)
    blob_id = secrets.token_bytes(16)
    async with connect(alice) as a:
        await a.blob_start(blob_id, len(data))
        await a.blob_chunk(blob_id, 0, data[:CHUNK])
        await a.blob_chunk(blob_id, CHUNK, data[CHUNK:])
        with pytest.raises(ServerError) as info:
            await a.blob_finish(blob_id, hashlib.sha256(b"something else").digest())
        assert info.value.code == ErrorCode.BAD_REQUEST and "SHA-256" in info.value.message
        assert engine.stored(server) == {}
        with pytest.raises(ServerError, match="NOT_FOUND"):
            await a.blob_get(blob_id, 0, 10)
        status = await a.blob_start(blob_id, len(data))  # starts over
        assert status.received == 0
        await upload_blob(a, blob_id, data)


async def test_only_the_uploader_and_granted_users_may_read(tmp_path, nursery, engine):
    server = await start(tmp_path, nursery, engine)
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    carol = await server.enroll("Carol")
    data = secrets.token_bytes(100_000)
    blob_id = secrets.token_bytes(16)
    async with connect(alice) as a, connect(bob) as b, connect(carol) as c:
        await upload_blob(a, blob_id, data)
        with pytest.raises(ServerError) as unknown:
            await b.blob_get(secrets.token_bytes(16), 0, 10)
        with pytest.raises(ServerError) as hidden:
            await b.blob_get(blob_id, 0, 10)
        # An unknown blob and somebody else's look the same.
        assert unknown.value.code == hidden.value.code == ErrorCode.NOT_FOUND
        assert unknown.value.message == hidden.value.message
        mid = new_message_id()
        await a.send_blobs(
            mid, b"pointer", [f.Recipient(bob.user_id, bob.device_id, b"")], [blob_id]
        )
        got = await receive_deliver(b)
        assert (got.message_id, got.payload) == (mid, b"pointer")
        assert await download_blob(b, blob_id, expected_size=len(data)) == data
        with pytest.raises(ServerError, match="NOT_FOUND"):
            await c.blob_get(blob_id, 0, 10)
        # Bob may pass it on to Carol without uploading it again.
        await b.send_blobs(
            new_message_id(), b"fwd", [f.Recipient(carol.user_id, carol.device_id, b"")], [blob_id]
        )
        assert await download_blob(c, blob_id) == data


async def test_send_blobs_with_a_foreign_or_unfinished_blob_stores_nothing(
    tmp_path, nursery, engine
):
    server = await start(tmp_path, nursery, engine)
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    theirs, unfinished = secrets.token_bytes(16), secrets.token_bytes(16)
    to_bob = [f.Recipient(bob.user_id, bob.device_id, b"")]
    async with connect(alice) as a, connect(bob) as b:
        await upload_blob(b, theirs, b"bob's")
        await a.blob_start(unfinished, 10)
        for blob_id in (theirs, unfinished, secrets.token_bytes(16)):
            with pytest.raises(ServerError) as info:
                await a.send_blobs(new_message_id(), b"p", to_bob, [blob_id])
            assert info.value.code == ErrorCode.NOT_FOUND
        stats = await server.admin("server.stats")
        assert stats["mailbox_entries"] == 0


async def test_collector_removes_expired_blobs_and_abandoned_uploads(tmp_path, nursery, engine):
    kept, loose, partial = (secrets.token_bytes(16) for _ in range(3))
    async with trio.open_nursery() as first:  # uploads under the default (long) TTLs
        server = await start(tmp_path, first, engine)
        alice = await server.enroll("Alice")
        bob = await server.enroll("Bob")
        async with connect(alice) as a:
            await upload_blob(a, kept, b"k" * 1000)
            await a.send_blobs(
                new_message_id(), b"p", [f.Recipient(bob.user_id, bob.device_id, b"")], [kept]
            )
            await upload_blob(a, loose, b"l" * 1000)  # never sent: expires
            await a.blob_start(partial, 5000)
            await a.blob_chunk(partial, 0, b"x" * 100)  # abandoned
        first.cancel_scope.cancel()
    # The same state with tiny TTLs and a collector running every 50 ms.
    server = await start(
        tmp_path, nursery, engine, ttl_days=0, partial_ttl_hours=0, collect_interval=0.05
    )
    alice, bob = (replace(c, port=server.address[1]) for c in (alice, bob))
    with trio.fail_after(5):
        while loose in (held := engine.stored(server)) or partial in held:
            await trio.sleep(0.02)
    await trio.sleep(0.2)  # a few more runs: the referenced blob stays
    assert engine.stored(server) == {kept: b"k" * 1000}
    async with connect(alice) as a, connect(bob) as b:
        with pytest.raises(ServerError, match="NOT_FOUND"):
            await a.blob_get(loose, 0, 1)
        got = await receive_deliver(b)
        assert await download_blob(b, kept) == b"k" * 1000
        await b.ack([got.seq])  # the last reference goes: the blob expires (TTL 0)
        with trio.fail_after(5):
            while engine.stored(server):
                await trio.sleep(0.02)
    stats = await server.admin("server.stats")
    assert stats["blobs"] == 0 and stats["blob_bytes"] == 0


async def test_a_full_disk_answers_an_error_and_the_server_keeps_serving(
    tmp_path, nursery, monkeypatch, engine
):
    server = await start(tmp_path, nursery, engine)
    alice = await server.enroll("Alice")
    data = secrets.token_bytes(2 * CHUNK)
    blob_id = secrets.token_bytes(16)

    def full(self: BlobFiles, blob_id: bytes, offset: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def full_db(tx: Any, blob_id: bytes, offset: int, data: bytes) -> None:
        raise psycopg.errors.DiskFull("could not extend file: No space left on device")

    async with connect(alice) as a:
        await a.blob_start(blob_id, len(data))
        await a.blob_chunk(blob_id, 0, data[:CHUNK])
        with monkeypatch.context() as patch:
            if engine.name == "sqlite":
                patch.setattr(BlobFiles, "_write", full)
            else:
                patch.setattr(postgres, "_chunks_write", full_db)
            with pytest.raises(ServerError) as info:
                await a.blob_chunk(blob_id, CHUNK, data[CHUNK:])
        assert info.value.code == ErrorCode.INTERNAL and "disk is full" in info.value.message
        await a.ping()
        await upload_blob(a, blob_id, data)  # resumes at the chunk that failed
        assert await download_blob(a, blob_id) == data


async def test_backup_holds_the_complete_blobs_and_restore_brings_them_back(tmp_path, nursery):
    # SQLite only: a PostgreSQL store is backed up with PostgreSQL's tools (docs/ADMIN.md).
    from momedod.store.backup import restore_backup, verify_backup

    server = await start(tmp_path, nursery)
    alice = await server.enroll("Alice")
    data = secrets.token_bytes(3 * CHUNK)
    blob_id, unfinished = secrets.token_bytes(16), secrets.token_bytes(16)
    async with connect(alice) as a:
        await upload_blob(a, blob_id, data)
        await a.blob_start(unfinished, 10)
    dest = tmp_path / "backup"
    result = await server.admin("server.backup", dir=str(dest))
    manifest = await trio.to_thread.run_sync(verify_backup, dest)
    rel = f"blobs/{blob_id.hex()[:2]}/{blob_id.hex()}"
    assert [(e.path, e.kind, e.size) for e in manifest.files if e.kind == "blob"] == [
        (rel, "blob", len(data))
    ]
    assert (dest / rel).read_bytes() == data and result["files"] == len(manifest.files) + 1
    restored = tmp_path / "restored"
    await trio.to_thread.run_sync(
        lambda: restore_backup(dest, restored, admin_socket=tmp_path / "no.sock")
    )
    assert (restored / rel).read_bytes() == data
    assert not (restored / "blobs" / "partial").exists()
