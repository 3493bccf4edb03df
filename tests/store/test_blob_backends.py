"""Where attachment bytes live, on both engines: files (SQLite) and blob_chunks rows
(PostgreSQL) behave the same through momedod.server.blobstore.BlobBackend.

Chunks here are deliberately not aligned to the 256 KiB rows (clients may send any size up
to it), reads span rows, and a crash's lost tail is cut back.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from momedod.server.blobstore import BlobBackend, BlobFiles, BlobMissing, PgBlobs, blob_backend
from momedod.store import Store
from momedod.store.postgres import BLOB_CHUNK_BYTES

T0 = 1_700_000_000_000
DAY = 86_400_000
BLOB = b"\x07" * 16


async def backend_with_upload(store: Store, tmp_path: Path, size: int) -> BlobBackend:
    user, invite = await store.create_user("Anna", T0, DAY)
    await store.redeem_invite(invite.code, b"\x01" * 32, "phone", T0)
    await store.blob_start(user.user_id, BLOB, size, T0, max_bytes=size, quota_bytes=size)
    files = blob_backend(store, BlobFiles(tmp_path / "blobs"))
    assert isinstance(files, PgBlobs) == (type(store).__name__ == "PostgresStore")
    return files


async def test_unaligned_chunks_resume_read_and_seal(store: Store, tmp_path: Path) -> None:
    data = os.urandom(3 * BLOB_CHUNK_BYTES + 123)
    files = await backend_with_upload(store, tmp_path, len(data))
    assert await files.open_partial(BLOB, 0) == 0
    step = 100_000  # not a divisor of the row size: rows are filled across writes
    for offset in range(0, 2 * BLOB_CHUNK_BYTES, step):
        await files.write(BLOB, offset, data[offset : min(offset + step, 2 * BLOB_CHUNK_BYTES)])
    # A BLOB_START after a crash that recorded less: cut back to it, then continue.
    assert await files.open_partial(BLOB, BLOB_CHUNK_BYTES + 7) == BLOB_CHUNK_BYTES + 7
    assert await files.open_partial(BLOB, 10 * BLOB_CHUNK_BYTES) == BLOB_CHUNK_BYTES + 7
    for offset in range(BLOB_CHUNK_BYTES + 7, len(data), BLOB_CHUNK_BYTES):
        await files.write(BLOB, offset, data[offset : offset + BLOB_CHUNK_BYTES])
    assert await files.seal(BLOB, len(data), hashlib.sha256(data).digest())
    pieces = [
        await files.read(BLOB, offset, BLOB_CHUNK_BYTES)
        for offset in range(0, len(data), BLOB_CHUNK_BYTES)
    ]
    assert b"".join(pieces) == data


async def test_a_good_upload_seals_and_reads_back_anywhere(store: Store, tmp_path: Path) -> None:
    data = os.urandom(2 * BLOB_CHUNK_BYTES + 99)
    files = await backend_with_upload(store, tmp_path, len(data))
    await files.open_partial(BLOB, 0)
    for offset in range(0, len(data), 70_000):
        await files.write(BLOB, offset, data[offset : offset + 70_000])
    assert await files.seal(BLOB, len(data), hashlib.sha256(data).digest())
    for offset, length in ((0, 10), (BLOB_CHUNK_BYTES - 5, 10), (len(data) - 50, 1000)):
        assert await files.read(BLOB, offset, length) == data[offset : offset + length]
    assert await files.read(BLOB, len(data), 10) == b""
    assert await files.remove([(BLOB, True)]) == 1
    with pytest.raises(BlobMissing):
        await files.read(BLOB, 0, 10)


async def test_a_wrong_hash_removes_the_bytes(store: Store, tmp_path: Path) -> None:
    data = os.urandom(1000)
    files = await backend_with_upload(store, tmp_path, len(data))
    await files.open_partial(BLOB, 0)
    await files.write(BLOB, 0, data)
    assert not await files.seal(BLOB, len(data), hashlib.sha256(b"other").digest())
    with pytest.raises(BlobMissing):
        await files.seal(BLOB, len(data), hashlib.sha256(data).digest())
    assert await files.remove([(BLOB, False)]) == 0


async def test_a_write_after_the_upload_was_collected_is_refused(
    store: Store, tmp_path: Path
) -> None:
    files = await backend_with_upload(store, tmp_path, 1000)
    await files.open_partial(BLOB, 0)
    await files.write(BLOB, 0, b"a" * 100)
    assert await store.collect_blobs(T0 + DAY, DAY, 0) == [(BLOB, False)]
    assert await files.remove([(BLOB, False)]) == 1
    with pytest.raises(BlobMissing):
        await files.write(BLOB, 100, b"b" * 100)
