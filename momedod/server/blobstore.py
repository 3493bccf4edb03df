"""Attachment bytes on disk: ``STATE/blobs/partial/<hex>`` while uploading, then
``STATE/blobs/<hex[:2]>/<hex>``.

The store holds each blob's metadata (owner, size, progress, grants, references); this module
only moves bytes. Chunks are appended with ``pwrite`` and not fsynced one by one: a crash may
lose the tail of an upload, which the next BLOB_START notices (the file is shorter than the
store recorded) and the SHA-256 check at the end catches anything worse. Finishing hashes the
whole file, fsyncs it, renames it into its final directory and fsyncs that directory, so a
complete blob is durable before the store calls it complete. Complete files never change;
they are only unlinked (which is why a backup may hard-link them).

Every file operation runs in a worker thread: a 25 MiB hash or even a cold ``pread`` must not
stall the event loop. The bytes are ciphertext the server never looks into.

With ``[storage] engine = "postgres"`` the bytes live in the database instead
(:class:`PgBlobs`, table ``blob_chunks``: one row per 256 KiB chunk), so every node of a
cluster serves every attachment. Both implement :class:`BlobBackend`, the five operations
the session handlers and the collector use; :func:`blob_backend` picks the one for a store.
Each chunk write is its own committed transaction, so there is no "lost tail" in the file
sense, but the progress record and the chunk are still two transactions and BLOB_START still
trusts the smaller of the two.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import trio

from momedod.store import StorageFull, Store, StoreError
from momedod.store.sqlite import fsync_path

if TYPE_CHECKING:
    from momedod.store.postgres import PostgresStore

__all__ = [
    "BlobBackend",
    "BlobDiskFull",
    "BlobFiles",
    "BlobMissing",
    "BlobStorageError",
    "PgBlobs",
    "blob_backend",
]

PARTIAL_DIR = "partial"
_HASH_CHUNK = 1 << 20
T = TypeVar("T")


class BlobDiskFull(Exception):
    """The state directory's filesystem is full (ENOSPC/EDQUOT)."""


class BlobMissing(Exception):
    """The blob's file is not there (collected meanwhile, or lost)."""


class BlobStorageError(OSError):
    """The database holding the blob rows failed (an OSError: answered like a failed disk)."""


class BlobBackend(Protocol):
    """Where attachment bytes live; the store keeps the metadata (see the module docstring)."""

    async def open_partial(self, blob_id: bytes, received: int) -> int:
        """Make the upload exist and hold at most ``received`` bytes; return how many."""
        ...

    async def write(self, blob_id: bytes, offset: int, data: bytes) -> None:
        """Write one chunk at ``offset`` of an unfinished upload; BlobMissing if gone."""
        ...

    async def seal(self, blob_id: bytes, size: int, sha256: bytes) -> bool:
        """True (and durable) if the upload has ``size`` bytes with this SHA-256; else
        remove it and return False. BlobMissing if there is nothing."""
        ...

    async def read(self, blob_id: bytes, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of a complete blob from ``offset``; BlobMissing if gone."""
        ...

    async def remove(self, blobs: list[tuple[bytes, bool]]) -> int:
        """Remove the bytes of ``(blob_id, complete)`` pairs; return how many existed."""
        ...


def blob_backend(store: Store, files: BlobFiles) -> BlobBackend:
    """The backend for ``store``: rows in PostgreSQL for the postgres engine, else ``files``."""
    from momedod.store.postgres import PostgresStore

    if isinstance(store, PostgresStore):
        return PgBlobs(store)
    return files


async def _thread(fn: Callable[..., T], *args: object) -> T:
    """Run blocking file code in a worker thread; a full disk becomes BlobDiskFull."""
    try:
        return await trio.to_thread.run_sync(fn, *args)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise BlobDiskFull(str(exc)) from exc
        raise


class BlobFiles:
    """The blob directory ``root`` (normally ``STATE/blobs``); directories are made on demand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.partial_dir = root / PARTIAL_DIR

    def partial_path(self, blob_id: bytes) -> Path:
        """Where an unfinished upload is written."""
        return self.partial_dir / blob_id.hex()

    def path(self, blob_id: bytes) -> Path:
        """Where a complete blob lives."""
        name = blob_id.hex()
        return self.root / name[:2] / name

    # -- uploads ---------------------------------------------------------------------------

    async def open_partial(self, blob_id: bytes, received: int) -> int:
        """Create the upload's file if missing and cut it to at most ``received`` bytes;
        return its length (which may be less than ``received`` after a crash)."""
        return await _thread(self._open_partial, blob_id, received)

    def _open_partial(self, blob_id: bytes, received: int) -> int:
        self.partial_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.partial_path(blob_id), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size > received:
                os.ftruncate(fd, received)
                size = received
            return size
        finally:
            os.close(fd)

    async def write(self, blob_id: bytes, offset: int, data: bytes) -> None:
        """Write one chunk at ``offset`` of an unfinished upload (never creates the file)."""
        await _thread(self._write, blob_id, offset, data)

    def _write(self, blob_id: bytes, offset: int, data: bytes) -> None:
        try:
            fd = os.open(self.partial_path(blob_id), os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobMissing(blob_id.hex()) from None
        try:
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
        finally:
            os.close(fd)

    async def seal(self, blob_id: bytes, size: int, sha256: bytes) -> bool:
        """Check the upload's length and SHA-256; if right, make it durable and move it to
        its final place and return True. If wrong, remove it and return False."""
        return await _thread(self._seal, blob_id, size, sha256)

    def _seal(self, blob_id: bytes, size: int, sha256: bytes) -> bool:
        src, dst = self.partial_path(blob_id), self.path(blob_id)
        if not src.exists() and dst.exists():
            src = dst  # renamed by an earlier finish whose store update did not happen
        try:
            with open(src, "rb") as fh:
                digest = hashlib.sha256()
                length = 0
                while chunk := fh.read(_HASH_CHUNK):
                    digest.update(chunk)
                    length += len(chunk)
                if length != size or not hmac.compare_digest(digest.digest(), sha256):
                    with contextlib.suppress(OSError):
                        os.unlink(src)
                    return False
                os.fsync(fh.fileno())
        except FileNotFoundError:
            raise BlobMissing(blob_id.hex()) from None
        if src != dst:
            dst.parent.mkdir(mode=0o700, exist_ok=True)
            os.rename(src, dst)
            fsync_path(dst.parent)
            fsync_path(self.partial_dir)
        return True

    # -- reading and removing --------------------------------------------------------------

    async def read(self, blob_id: bytes, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of a complete blob from ``offset`` (empty at the end)."""
        return await _thread(self._read, blob_id, offset, length)

    def _read(self, blob_id: bytes, offset: int, length: int) -> bytes:
        try:
            fd = os.open(self.path(blob_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobMissing(blob_id.hex()) from None
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    async def remove(self, blobs: list[tuple[bytes, bool]]) -> int:
        """Unlink the files of ``(blob_id, complete)`` pairs; return how many existed."""
        return await _thread(self._remove, blobs)

    def _remove(self, blobs: list[tuple[bytes, bool]]) -> int:
        removed = 0
        for blob_id, complete in blobs:
            # An unfinished upload may also have its final name: sealed, but the store was
            # not told (a failed write after the rename) and the client never finished again.
            final = self.path(blob_id)
            for path in [final] if complete else [self.partial_path(blob_id), final]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed += 1
        return removed


class PgBlobs:
    """Attachment bytes as ``blob_chunks`` rows of the postgres engine's database.

    Same contract as :class:`BlobFiles`: a database error is a :class:`BlobStorageError` (an
    OSError), a full database :class:`BlobDiskFull`. The SQL is in
    :mod:`momedod.store.postgres` (``blob_chunks_*``).
    """

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def open_partial(self, blob_id: bytes, received: int) -> int:
        return await _db(self.store.blob_chunks_open(blob_id, received))

    async def write(self, blob_id: bytes, offset: int, data: bytes) -> None:
        await _db(self.store.blob_chunks_write(blob_id, offset, data))

    async def seal(self, blob_id: bytes, size: int, sha256: bytes) -> bool:
        length, digest = await _db(self.store.blob_chunks_digest(blob_id))
        if length == size and hmac.compare_digest(digest, sha256):
            return True  # every chunk was committed (durable) when it was written
        await _db(self.store.blob_chunks_remove([blob_id]))
        if length == 0:
            raise BlobMissing(blob_id.hex())
        return False

    async def read(self, blob_id: bytes, offset: int, length: int) -> bytes:
        return await _db(self.store.blob_chunks_read(blob_id, offset, length))

    async def remove(self, blobs: list[tuple[bytes, bool]]) -> int:
        if not blobs:
            return 0
        return await _db(self.store.blob_chunks_remove([blob_id for blob_id, _ in blobs]))


async def _db(call: Awaitable[T]) -> T:
    """Await a store call; map its errors to the blob errors the session handlers know."""
    from momedod.store.postgres import BlobChunksMissing

    try:
        return await call
    except BlobChunksMissing as exc:
        raise BlobMissing(str(exc)) from None
    except StorageFull as exc:
        raise BlobDiskFull(str(exc)) from exc
    except StoreError as exc:
        raise BlobStorageError(str(exc)) from exc
