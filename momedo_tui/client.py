"""An asyncio client for the daemon's admin socket (used by momedo-tui).

One connection, one request at a time: requests are serialised by a lock, each is written as
one line and answered by one line (``momedod.admin.protocol``). A request that fails halfway
(timeout, lost connection, cancellation) drops the connection, so that a late reply can never
be read as the answer to the next request; the next request connects again, which also
recovers from a restart of the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from momedod.admin.locate import connect_error
from momedod.admin.protocol import (
    AdminError,
    AdminErrorCode,
    Event,
    Request,
    decode_line,
    decode_response,
    encode_request,
)

__all__ = [
    "READ_LIMIT",
    "AdminClient",
    "AdminError",
    "ConnectionProblem",
    "subscribe",
]

READ_LIMIT = 2**22
"""Longest reply line read (asyncio's default of 64 KiB is too short for ``user.list``)."""

REPLY_TIMEOUT_S = 30.0


class ConnectionProblem(Exception):
    """momedod cannot be reached or stopped answering; the message is one line for the operator."""


class AdminClient:
    """A connection to the admin socket at ``path``, opened on the first request."""

    def __init__(self, path: Path, *, timeout: float = REPLY_TIMEOUT_S) -> None:
        self.path = path
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one request and return its ``result``.

        Raises ConnectionProblem if momedod cannot be reached or does not answer, AdminError if
        it answers with an error (or with a malformed reply).
        """
        async with self._lock:
            reader, writer = await self._connect()
            request_id = next(self._ids)
            try:
                async with asyncio.timeout(self.timeout):
                    writer.write(encode_request(Request(cmd=cmd, args=args, id=request_id)))
                    await writer.drain()
                    line = await reader.readline()
            except TimeoutError:
                self._drop()
                raise ConnectionProblem(
                    f"momedod at {self.path} did not answer within {self.timeout:g} s"
                ) from None
            except ValueError:  # readline: the line is longer than READ_LIMIT
                self._drop()
                raise ConnectionProblem(
                    f"reply from momedod at {self.path} longer than {READ_LIMIT} bytes"
                ) from None
            except OSError as e:
                self._drop()
                raise ConnectionProblem(
                    f"lost the connection to momedod at {self.path}: {e.strerror or e}"
                ) from None
            except BaseException:  # cancelled mid-request: the reply would arrive out of step
                self._drop()
                raise
            if not line.endswith(b"\n"):
                self._drop()
                raise ConnectionProblem(f"momedod at {self.path} closed the connection")
            response = decode_response(line)
            if response.id != request_id:
                self._drop()
                raise AdminError(
                    AdminErrorCode.INTERNAL,
                    f"malformed reply from momedod: id {response.id!r}, expected {request_id}",
                )
            if response.error is not None:
                raise response.error
            return response.result or {}

    async def aclose(self) -> None:
        """Close the connection (a later request would open a new one)."""
        writer = self._writer
        self._drop()
        if writer is not None:
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            try:
                async with asyncio.timeout(self.timeout):
                    self._reader, self._writer = await asyncio.open_unix_connection(
                        os.fspath(self.path), limit=READ_LIMIT
                    )
            except TimeoutError:
                raise ConnectionProblem(
                    f"cannot reach momedod at {self.path}: no connection within {self.timeout:g} s"
                ) from None
            except OSError as e:
                raise ConnectionProblem(connect_error(self.path, e)) from None
        return self._reader, self._writer

    def _drop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def subscribe(path: Path, interval: float = 1.0) -> AsyncIterator[Event]:
    """Open a connection of its own, send ``subscribe`` and yield its events.

    Raises ConnectionProblem when momedod cannot be reached or the stream ends, AdminError when
    it refuses the subscription or sends a malformed line. The connection is closed on exit.
    """
    try:
        reader, writer = await asyncio.open_unix_connection(os.fspath(path), limit=READ_LIMIT)
    except OSError as e:
        raise ConnectionProblem(connect_error(path, e)) from None
    try:
        try:
            writer.write(
                encode_request(Request(cmd="subscribe", args={"interval": interval}, id=1))
            )
            await writer.drain()
            while True:
                # stats arrive every interval; silence for much longer means a stuck daemon
                async with asyncio.timeout(max(10.0, 5 * interval)):
                    line = await reader.readline()
                if not line.endswith(b"\n"):
                    raise ConnectionProblem(f"momedod at {path} closed the event stream")
                item = decode_line(line)
                if isinstance(item, Event):
                    yield item
                elif item.error is not None:
                    raise item.error
        except TimeoutError:
            raise ConnectionProblem(f"momedod at {path} sent no events for a while") from None
        except ValueError:
            raise ConnectionProblem(
                f"event line from momedod longer than {READ_LIMIT} bytes"
            ) from None
        except OSError as e:
            raise ConnectionProblem(
                f"lost the event stream from {path}: {e.strerror or e}"
            ) from None
    finally:
        writer.close()
