"""momedod.client.blobs: pipelined, resumable uploads and downloads against the real daemon."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from momedod.client.blobs import download_blob, upload_blob
from momedod.client.transport import Client, ClientError, connect
from momedod.protocol import frames as f

CHUNK = f.MAX_BLOB_CHUNK


class InFlight:
    """Counts requests sent but not yet answered on one client."""

    def __init__(self, client: Client) -> None:
        self.now = self.most = self.chunks = 0
        send, wait = client.send_request, client.wait_reply

        async def send_request(frame: f.Frame) -> Any:
            self.now += 1
            self.most = max(self.most, self.now)
            self.chunks += isinstance(frame, f.BlobChunk)
            return await send(frame)

        async def wait_reply(frame: f.Frame, recv: Any) -> f.Frame:
            try:
                return await wait(frame, recv)
            finally:
                self.now -= 1

        client.send_request = send_request  # type: ignore[method-assign]
        client.wait_reply = wait_reply  # type: ignore[method-assign]


async def test_upload_and_download_keep_a_window_of_requests_in_flight(server):
    creds = await server.enroll("Alice")
    data = secrets.token_bytes(20 * CHUNK + 7)
    blob_id = secrets.token_bytes(16)
    async with connect(creds) as client:
        flight = InFlight(client)
        await upload_blob(client, blob_id, data, window=4)
        assert flight.most == 4 and flight.chunks == 21
        flight.most = 0
        assert await download_blob(client, blob_id, window=6) == data
        assert flight.most == 6


async def test_small_chunks_and_a_window_of_one(server):
    creds = await server.enroll("Alice")
    data = secrets.token_bytes(10_000)
    blob_id = secrets.token_bytes(16)
    async with connect(creds) as client:
        flight = InFlight(client)
        await upload_blob(client, blob_id, data, chunk=1024, window=1)
        assert flight.most == 1 and flight.chunks == 10
        assert await download_blob(client, blob_id, chunk=999, window=1) == data


async def test_progress_runs_up_to_the_size(server):
    creds = await server.enroll("Alice")
    data = secrets.token_bytes(5 * CHUNK)
    seen: list[tuple[int, int]] = []
    fetched: list[int] = []
    blob_id = secrets.token_bytes(16)
    async with connect(creds) as client:
        await upload_blob(
            client, blob_id, data, progress=lambda got, size: seen.append((got, size))
        )
        await download_blob(client, blob_id, progress=lambda got, size: fetched.append(got))
    assert seen[0] == (0, len(data)) and seen[-1] == (len(data), len(data))
    assert [got for got, _ in seen] == sorted(got for got, _ in seen)
    assert fetched == [CHUNK * n for n in range(1, 6)]


async def test_uploading_a_complete_blob_again_sends_nothing(server):
    creds = await server.enroll("Alice")
    data = secrets.token_bytes(3 * CHUNK)
    blob_id = secrets.token_bytes(16)
    async with connect(creds) as client:
        await upload_blob(client, blob_id, data)
        flight = InFlight(client)
        await upload_blob(client, blob_id, data)
        assert flight.chunks == 0


async def test_download_refuses_an_unexpected_size(server):
    creds = await server.enroll("Alice")
    blob_id = secrets.token_bytes(16)
    async with connect(creds) as client:
        await upload_blob(client, blob_id, b"x" * 100)
        with pytest.raises(ClientError, match="100 bytes, expected 99"):
            await download_blob(client, blob_id, expected_size=99)


async def test_bad_chunk_or_window_arguments(server):
    creds = await server.enroll("Alice")
    async with connect(creds) as client:
        with pytest.raises(ValueError):
            await upload_blob(client, secrets.token_bytes(16), b"x", chunk=CHUNK + 1)
        with pytest.raises(ValueError):
            await download_blob(client, secrets.token_bytes(16), window=0)


async def test_chunks_shrink_to_the_servers_frame_limit(start_server):
    server = await start_server(max_frame_bytes=65536)
    creds = await server.enroll("Alice")
    data = secrets.token_bytes(300_000)
    blob_id = secrets.token_bytes(16)
    async with connect(creds) as client:
        flight = InFlight(client)
        await upload_blob(client, blob_id, data)
        assert flight.chunks == 5  # 65,472 bytes each
        assert await download_blob(client, blob_id) == data
