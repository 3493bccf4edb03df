"""A lean server-side TLS stream: ``ssl.SSLObject`` over memory BIOs on a plain socket.

``trio.SSLStream`` costs several scheduler round trips, a conflict detector and a retry state
machine per call. A session needs less: one reader and at most one writer at a time, which it
guarantees itself. Here reading drains the socket and decrypts every complete record in one
go, and writing encrypts everything given in one ``SSLObject.write`` and hands the ciphertext
to the kernel at once (``send_nowait``); only when the kernel's buffer is full does the
writer wait (``wait_sent``). The fast paths do not yield to the scheduler; the session decides
where to yield.

The TLS policy is the context's (see ``tls.py``); errors are raised as trio's are by
``SSLStream``: ``trio.BrokenResourceError`` with the ``ssl.SSLError``/``OSError`` as cause.
"""

from __future__ import annotations

import contextlib
import socket
import ssl

import trio

RECV_BYTES = 65536


class TLSConn:
    """One accepted TCP connection, its TLS state and the ciphertext not yet sent."""

    __slots__ = ("_closed", "_eof", "_in", "_more", "_out", "_pending", "_ssl", "sock")

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=True)
        self._pending = b""  # ciphertext the kernel has not taken yet
        self._eof = False  # the peer closed (close_notify or TCP FIN)
        self._more = True  # the last read filled its buffer: try reading before waiting
        self._closed = False

    @classmethod
    def from_stream(cls, stream: trio.SocketStream, context: ssl.SSLContext) -> TLSConn:
        """Take over the socket of an accepted trio stream (which must not be used again)."""
        return cls(socket.socket(fileno=stream.socket.detach()), context)

    # --- raw socket ---------------------------------------------------------------------------

    def _recv_nowait(self) -> bytes | None:
        """Bytes from the kernel, b"" at end of stream, None if nothing is there yet."""
        if self._closed:
            raise trio.ClosedResourceError("connection closed")
        try:
            data = self.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            self._more = False
            return None
        except OSError as e:
            raise trio.BrokenResourceError(str(e)) from e
        self._more = len(data) == RECV_BYTES
        return data

    def _send_pending(self) -> bool:
        """Hand pending ciphertext to the kernel; True when all of it was taken."""
        if self._closed:
            raise trio.ClosedResourceError("connection closed")
        pending = self._pending
        try:
            n = self.sock.send(pending)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            raise trio.BrokenResourceError(str(e)) from e
        if n == len(pending):
            self._pending = b""
            return True
        self._pending = pending[n:]
        return False

    def _take_ciphertext(self) -> None:
        if self._out.pending:
            out = self._out.read()
            self._pending = self._pending + out if self._pending else out

    # --- handshake ----------------------------------------------------------------------------

    async def do_handshake(self) -> None:
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as e:
                self._take_ciphertext()  # the alert, if any: best effort
                if self._pending:
                    with contextlib.suppress(trio.BrokenResourceError):
                        self._send_pending()
                raise trio.BrokenResourceError(f"TLS handshake failed: {e}") from e
            self._take_ciphertext()
            await self.wait_sent()
            data = self._recv_nowait()
            if data is None:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            if not data:
                raise trio.BrokenResourceError("peer closed the connection during the handshake")
            self._in.write(data)
        self._take_ciphertext()  # the server's last flight and the session tickets
        await self.wait_sent()

    # --- data ---------------------------------------------------------------------------------

    def _decrypt(self) -> bytes:
        """Every plaintext byte the records received so far hold."""
        if not self._in.pending and not self._ssl.pending():
            return b""
        chunks = []
        while True:
            try:
                chunk = self._ssl.read(RECV_BYTES)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify
                self._eof = True
                break
            except ssl.SSLError as e:
                raise trio.BrokenResourceError(f"TLS error: {e}") from e
            if not chunk:
                self._eof = True
                break
            chunks.append(chunk)
        if self._out.pending:  # e.g. a KeyUpdate reply: it goes out with the next write
            self._take_ciphertext()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def receive_nowait(self) -> bytes | None:
        """Plaintext available without waiting; b"" at end of stream, None: wait first."""
        while True:
            data = self._decrypt()
            if data:
                return data
            if self._eof:
                return b""
            if not self._more:
                return None
            raw = self._recv_nowait()
            if raw is None:
                return None
            if not raw:  # TCP FIN without close_notify: the same to us
                self._eof = True
                return b""
            self._in.write(raw)

    async def wait_readable(self) -> None:
        self._more = True
        await trio.lowlevel.wait_readable(self.sock)

    async def receive_some(self) -> bytes:
        """Plaintext (all that is available), b"" at end of stream."""
        while (data := self.receive_nowait()) is None:
            await self.wait_readable()
        return data

    def send_nowait(self, data: bytes) -> bool:
        """Encrypt ``data`` and hand it to the kernel; False if some must wait (``wait_sent``)."""
        try:
            self._ssl.write(data)
        except ssl.SSLError as e:
            raise trio.BrokenResourceError(f"TLS error: {e}") from e
        self._take_ciphertext()
        return self._send_pending()

    @property
    def unsent(self) -> int:
        """Ciphertext bytes the kernel has not taken yet."""
        return len(self._pending)

    async def wait_sent(self) -> None:
        """Wait until the kernel has taken every pending byte."""
        while self._pending and not self._send_pending():
            await trio.lowlevel.wait_writable(self.sock)

    async def send_all(self, data: bytes) -> None:
        if not self.send_nowait(data):
            await self.wait_sent()
        else:
            await trio.lowlevel.checkpoint()

    def send_eof(self) -> None:
        """Half-close: the peer reads end of stream (after everything already sent)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            raise trio.BrokenResourceError(str(e)) from e

    def close(self) -> None:
        """Close the socket at once (no close_notify), waking any task waiting on it."""
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
