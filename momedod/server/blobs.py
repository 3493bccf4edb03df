"""Session handlers for attachment blobs (BLOB_START/CHUNK/FINISH/GET, SEND_BLOBS) and the
collector that removes expired blobs and abandoned uploads.

An upload: BLOB_START checks size and quota before any data flows and answers how much the
server already holds (resume); BLOB_CHUNKs append strictly at that offset; BLOB_FINISH checks
the SHA-256 and makes the blob durable. Progress is recorded in the store *before* the chunk
is written to the file (with the postgres engine: the ``blob_chunks`` rows, see
:func:`backend`), and a BLOB_START trusts the smaller of the two (cutting the bytes or
lowering the record), so a crash or a failed write anywhere in between costs a re-sent chunk,
never a corrupt blob; the final hash check catches anything else. Blob IDs are logged only at
debug level, and never the bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
import trio

from momedod.observability import metrics
from momedod.protocol import frames as f
from momedod.protocol.errors import ErrorCode
from momedod.server.blobstore import BlobBackend, BlobDiskFull, BlobMissing, blob_backend
from momedod.server.clock import now_ms
from momedod.store import (
    BlobInfo,
    BlobNotFound,
    BlobTooLarge,
    Conflict,
    QuotaExceeded,
    Store,
    StoreError,
)

if TYPE_CHECKING:
    from momedod.server.session import Session, SessionContext

log = structlog.get_logger("momedod.blobs")

MIB = 1 << 20
FRAME_OVERHEAD = 64  # bytes of a BLOB_DATA frame besides its data (41), rounded up
COLLECT_BATCH = 1000
_DISK_FULL = "the server's disk is full; attachment not stored, try again later"
_NOT_FOUND = "attachment not found"


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def backend(ctx: SessionContext) -> BlobBackend | None:
    """Where this daemon's attachment bytes live: rows in PostgreSQL with the postgres engine
    (any node serves any blob), else the files in ``ctx.blob_files``; None: disabled."""
    if ctx.blob_files is None:
        return None
    return blob_backend(ctx.store, ctx.blob_files)


def _status(frame_rid: int, info: BlobInfo, received: int | None = None) -> f.BlobStatus:
    got = info.received if received is None else received
    return f.BlobStatus(frame_rid, info.blob_id, info.size, got, info.complete)


async def handle(session: Session, frame: f.Frame) -> None:
    """Answer one blob request of an authenticated session."""
    if isinstance(frame, f.SendBlobs):
        await session._on_send(frame)
        return
    files = backend(session.ctx)
    if files is None:
        await session._error(frame.request_id, ErrorCode.BAD_REQUEST, "attachments are disabled")
        return
    try:
        if isinstance(frame, f.BlobStart):
            await _start(session, files, frame)
        elif isinstance(frame, f.BlobChunk):
            await _chunk(session, files, frame)
        elif isinstance(frame, f.BlobFinish):
            await _finish(session, files, frame)
        elif isinstance(frame, f.BlobGet):
            await _get(session, files, frame)
    except BlobDiskFull:
        session._log.error("blob.disk_full", note="the state directory's filesystem is full")
        await session._error(frame.request_id, ErrorCode.INTERNAL, _DISK_FULL)
    except OSError as e:
        session._log.error("blob.io_failed", error=str(e))
        await session._error(
            frame.request_id, ErrorCode.INTERNAL, "cannot access attachment storage; retry later"
        )


async def _start(session: Session, files: BlobBackend, frame: f.BlobStart) -> None:
    rid, uid = frame.request_id, session.addr[0]
    limits = session.ctx.attachments
    max_bytes = limits.max_file_mib * MIB
    if frame.size > max_bytes:
        await session._error(
            rid,
            ErrorCode.TOO_LARGE,
            f"attachment of {_mib(frame.size)} exceeds the limit of {limits.max_file_mib} MiB",
        )
        return
    if frame.size == 0:
        await session._error(rid, ErrorCode.BAD_REQUEST, "an attachment has at least one byte")
        return
    now = now_ms()
    try:
        info = await session.ctx.store.blob_start(
            uid,
            frame.blob_id,
            frame.size,
            now,
            max_bytes=max_bytes,
            quota_bytes=limits.quota_mib_per_user * MIB,
        )
    except QuotaExceeded as e:
        await session._error(
            rid,
            ErrorCode.QUOTA_EXCEEDED,
            f"attachment of {_mib(frame.size)} does not fit your attachment quota of "
            f"{limits.quota_mib_per_user} MiB ({_mib(e.used)} in use; space is freed "
            f"{limits.ttl_days} days after the messages referencing it are gone)",
        )
        return
    except BlobTooLarge:  # the limit changed between our check and the store's
        await session._error(rid, ErrorCode.TOO_LARGE, "attachment exceeds the size limit")
        return
    except Conflict as e:
        await session._error(rid, ErrorCode.CONFLICT, str(e))
        return
    if info.complete:
        await session._send(_status(rid, info))
        return
    have = await files.open_partial(frame.blob_id, info.received)
    if have < info.received:  # the file lost its tail (crash): continue from what it holds
        await session.ctx.store.blob_rewind(uid, frame.blob_id, have, now)
    session._log.debug("blob.start", blob=frame.blob_id.hex(), size=frame.size, received=have)
    await session._send(_status(rid, info, have))


async def _chunk(session: Session, files: BlobBackend, frame: f.BlobChunk) -> None:
    rid, uid = frame.request_id, session.addr[0]
    n = len(frame.data)
    try:
        info = await session.ctx.store.blob_received(uid, frame.blob_id, frame.offset, n, now_ms())
    except BlobNotFound:
        await session._error(rid, ErrorCode.NOT_FOUND, "no such upload in progress")
        return
    except Conflict as e:
        await session._error(rid, ErrorCode.CONFLICT, str(e))
        return
    except ValueError as e:
        await session._error(rid, ErrorCode.BAD_REQUEST, str(e))
        return
    try:
        await files.write(frame.blob_id, frame.offset, frame.data)
    except BlobMissing:
        await session._error(rid, ErrorCode.NOT_FOUND, "upload was discarded; start again")
        return
    except (BlobDiskFull, OSError):
        # Recorded but not written: take the record back so the client can retry this chunk.
        await session.ctx.store.blob_rewind(uid, frame.blob_id, frame.offset, now_ms())
        raise
    await session._send(_status(rid, info))


async def _finish(session: Session, files: BlobBackend, frame: f.BlobFinish) -> None:
    rid, uid, store = frame.request_id, session.addr[0], session.ctx.store
    info = await store.get_blob(uid, frame.blob_id)
    if info is None or info.owner != uid:
        await session._error(rid, ErrorCode.NOT_FOUND, "no such upload")
        return
    if info.complete:  # a repeated FINISH (e.g. the reply was lost)
        await session._send(_status(rid, info))
        return
    if info.received != info.size:
        await session._error(
            rid,
            ErrorCode.BAD_REQUEST,
            f"upload incomplete: {info.received} of {info.size} bytes received",
        )
        return
    try:
        ok = await files.seal(frame.blob_id, info.size, frame.sha256)
    except BlobMissing:
        ok = False
    if not ok:
        await store.blob_discard(uid, frame.blob_id)
        await session._error(
            rid,
            ErrorCode.BAD_REQUEST,
            "the uploaded data does not match its SHA-256; the upload was discarded, "
            "start it again",
        )
        return
    info = await store.blob_complete(uid, frame.blob_id, now_ms())
    metrics.BLOB_UPLOADS.inc()
    session._log.debug("blob.complete", blob=frame.blob_id.hex(), size=info.size)
    await session._send(_status(rid, info))


async def _get(session: Session, files: BlobBackend, frame: f.BlobGet) -> None:
    rid = frame.request_id
    info = await session.ctx.store.get_blob(session.addr[0], frame.blob_id)
    if info is None or not info.complete:
        await session._error(rid, ErrorCode.NOT_FOUND, _NOT_FOUND)
        return
    data = b""
    if frame.offset < info.size:
        # Never more than fits into one frame (clients cut their reads the same way).
        length = min(frame.length, session.ctx.max_frame_bytes - FRAME_OVERHEAD)
        try:
            data = await files.read(frame.blob_id, frame.offset, length)
        except BlobMissing:
            await session._error(rid, ErrorCode.NOT_FOUND, _NOT_FOUND)
            return
    await session._send(f.BlobData(rid, frame.blob_id, info.size, frame.offset, data))


# -- the collector ---------------------------------------------------------------------------


async def collect(
    store: Store, files: BlobBackend, now_ms: int, ttl_ms: int, partial_ttl_ms: int
) -> tuple[int, int]:
    """Remove due blobs (rows first, then files); return (expired, partial) counts."""
    expired = partial = 0
    while True:
        due = await store.collect_blobs(now_ms, ttl_ms, partial_ttl_ms, COLLECT_BATCH)
        await files.remove(due)
        done = sum(1 for _, complete in due if complete)
        expired += done
        partial += len(due) - done
        if len(due) < COLLECT_BATCH:
            break
    if expired:
        metrics.BLOB_COLLECTED.labels("expired").inc(expired)
    if partial:
        metrics.BLOB_COLLECTED.labels("partial").inc(partial)
    return expired, partial


async def run_collector(ctx: SessionContext) -> None:
    """Collect every ``[attachments] collect_interval`` seconds (a daemon task; a reload
    changes ``ctx.attachments`` in place)."""
    files = backend(ctx)
    if files is None:
        return
    while True:
        limits = ctx.attachments
        try:
            expired, partial = await collect(
                ctx.store,
                files,
                now_ms(),
                limits.ttl_days * 86_400_000,
                limits.partial_ttl_hours * 3_600_000,
            )
            if expired or partial:
                log.info("blobs.collected", expired=expired, partial=partial)
        except (StoreError, OSError) as e:
            log.error("blobs.collect_failed", error=str(e))
        await trio.sleep(limits.collect_interval)
