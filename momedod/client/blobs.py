"""Upload and download attachment blobs over a connected :class:`~momedod.client.transport.Client`.

The bytes are opaque here (the end-to-end layer encrypts attachments before they get here,
see docs/E2E.md §7). Uploads resume: BLOB_START tells how much the server already holds and
only the rest is sent. Both directions keep up to ``window`` requests in flight on the one
connection; the server answers them in order, so a single task sends them in order and then
collects the replies oldest first.

    await upload_blob(client, blob_id, ciphertext)           # or a Path
    data = await download_blob(client, blob_id, expected_size=len(ciphertext))
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from pathlib import Path

import trio

from momedod.client.transport import Client, ClientError
from momedod.protocol import frames as f

__all__ = ["CHUNK", "WINDOW", "download_blob", "upload_blob"]

CHUNK = f.MAX_BLOB_CHUNK
"""Default bytes per BLOB_CHUNK / BLOB_GET (the protocol's maximum, 256 KiB)."""
WINDOW = 8
"""Default requests in flight."""

Progress = Callable[[int, int], object]
"""Called with (bytes the server holds, total size) as an upload or download advances."""

_Pending = deque[tuple[f.Frame, trio.MemoryReceiveChannel[f.Frame]]]
FRAME_OVERHEAD = 64
"""Bytes of a BLOB_CHUNK/BLOB_DATA frame besides its data (37 or 41, rounded up)."""


def _fit(client: Client, chunk: int, window: int) -> int:
    """``chunk`` checked, and cut to what fits into the server's largest frame."""
    if not 1 <= chunk <= f.MAX_BLOB_CHUNK or window < 1:
        raise ValueError(f"chunk must be 1..{f.MAX_BLOB_CHUNK} and window at least 1")
    if client.welcome is not None:
        chunk = min(chunk, client.welcome.max_frame_bytes - FRAME_OVERHEAD)
    return chunk


def _sha256_file(path: Path) -> tuple[int, bytes]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.digest()


async def upload_blob(
    client: Client,
    blob_id: bytes,
    data: bytes | Path,
    *,
    chunk: int = CHUNK,
    window: int = WINDOW,
    progress: Progress | None = None,
) -> None:
    """Upload ``data`` (bytes, or a file's contents) as blob ``blob_id``, resuming where the
    server's copy ends; returns once the server has checked the SHA-256 and stored it.

    Raises ServerError (e.g. TOO_LARGE or QUOTA_EXCEEDED from BLOB_START, before any data is
    sent) or ClientError. After a dropped connection, call it again on a new one.
    """
    chunk = _fit(client, chunk, window)
    if isinstance(data, Path):
        size, sha256 = await trio.to_thread.run_sync(_sha256_file, data)
    else:
        size = len(data)
        sha256 = await trio.to_thread.run_sync(lambda: hashlib.sha256(data).digest())
    status = await client.blob_start(blob_id, size)
    if status.complete:
        if progress is not None:
            progress(size, size)
        return
    offset = status.received
    if progress is not None:
        progress(offset, size)
    pending: _Pending = deque()
    fh = await trio.open_file(data, "rb") if isinstance(data, Path) else None
    try:
        while offset < size or pending:
            if offset < size and len(pending) < window:
                n = min(chunk, size - offset)
                if fh is None:
                    assert isinstance(data, bytes)
                    piece = data[offset : offset + n]
                else:
                    await fh.seek(offset)
                    piece = await fh.read(n)
                    if len(piece) != n:
                        raise ClientError("the file changed while it was uploaded")
                frame = f.BlobChunk(client.next_id(), blob_id, offset, piece)
                pending.append((frame, await client.send_request(frame)))
                offset += n
                continue
            sent, recv = pending.popleft()
            reply = await client.wait_reply(sent, recv)
            assert isinstance(reply, f.BlobStatus)
            if progress is not None:
                progress(reply.received, size)
    finally:
        if fh is not None:
            await fh.aclose()
    await client.blob_finish(blob_id, sha256)


async def download_blob(
    client: Client,
    blob_id: bytes,
    expected_size: int | None = None,
    *,
    chunk: int = CHUNK,
    window: int = WINDOW,
    progress: Progress | None = None,
) -> bytes:
    """Fetch a whole blob. Raises ServerError (NOT_FOUND: unknown or not shared with this
    user), or ClientError if the size is not ``expected_size`` or a reply does not fit.

    The caller still checks the content (for attachments: SHA-256 of the ciphertext against
    the pointer's before decrypting anything).
    """
    chunk = _fit(client, chunk, window)
    first = await client.blob_get(blob_id, 0, chunk)
    size = first.size
    if expected_size is not None and size != expected_size:
        raise ClientError(f"blob is {size} bytes, expected {expected_size}")
    out = bytearray(size)

    def place(reply: f.BlobData, offset: int) -> None:
        want = min(chunk, size - offset)
        if reply.offset != offset or reply.size != size or len(reply.data) != want:
            raise ClientError(f"unexpected BLOB_DATA at offset {offset} of {size}")
        out[offset : offset + want] = reply.data
        if progress is not None:
            progress(offset + want, size)

    place(first, 0)
    offset = len(first.data)
    pending: _Pending = deque()
    while offset < size or pending:
        if offset < size and len(pending) < window:
            frame = f.BlobGet(client.next_id(), blob_id, offset, min(chunk, size - offset))
            pending.append((frame, await client.send_request(frame)))
            offset += frame.length
            continue
        sent, recv = pending.popleft()
        reply = await client.wait_reply(sent, recv)
        assert isinstance(reply, f.BlobData) and isinstance(sent, f.BlobGet)
        place(reply, sent.offset)
    return bytes(out)
