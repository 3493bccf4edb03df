"""Trio client for the momedo wire protocol: pinned TLS, enrollment, auth, send/receive/ack.

This is the transport layer the end-to-end layer builds on; payloads are opaque bytes here.

    async with open_client(host, port, fingerprint) as client:
        creds = await client.enroll(invite_code, "phone")      # or: await client.login(creds)
        await client.send(message_id, payload, [Recipient(...)])
        event = await client.receive()                          # Deliver or Drained
        await client.ack([event.seq])

One background task reads frames: replies are matched to requests by request_id, DELIVER and
DRAINED go to an inbox, and a server PING is answered at once. A fatal ERROR from the server
fails every waiting call with ``ServerError``.
"""

from __future__ import annotations

import hmac
import json
import math
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from itertools import count
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from momedod.client.files import write_private
from momedod.protocol import frames as f
from momedod.protocol.auth import auth_message, enroll_message
from momedod.protocol.connection import Connection, Role
from momedod.protocol.errors import ErrorCode, LocalProtocolError, ProtocolError
from momedod.protocol.invite import cert_fingerprint, fingerprint_text, parse_invite_link

CLIENT_SOFTWARE = "momedo-py/0.1"
DEFAULT_TIMEOUT = 30.0


class ClientError(Exception):
    """A transport-level failure (connection, TLS pin, timeout)."""


class ServerError(ClientError):
    """The server answered with an ERROR frame."""

    def __init__(self, code: int, message: str) -> None:
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = str(code)
        super().__init__(f"{name}: {message}")
        self.code = code
        self.message = message


class PinMismatch(ClientError):
    """The server's certificate is not the pinned one."""


@dataclass(frozen=True)
class Credentials:
    """What a device needs to log in again: server, pin, address and transport key seed."""

    host: str
    port: int
    fingerprint: bytes
    user_id: str
    device_id: int
    transport_seed: bytes  # Ed25519 private key (raw 32 bytes); never leaves the device

    def save(self, path: Path) -> None:
        data = asdict(self)
        data["fingerprint"] = self.fingerprint.hex()
        data["transport_seed"] = self.transport_seed.hex()
        write_private(path, json.dumps(data).encode())

    @classmethod
    def load(cls, path: Path) -> Credentials:
        data = json.loads(path.read_text())
        data["fingerprint"] = bytes.fromhex(data["fingerprint"])
        data["transport_seed"] = bytes.fromhex(data["transport_seed"])
        return cls(**data)


def _client_context() -> ssl.SSLContext:
    # No CA validation: trust comes from the pinned certificate fingerprint checked below.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Client:
    """A connected, HELLO-negotiated session. Create with ``open_client``."""

    def __init__(self, stream: trio.SSLStream[Any], cert_fp: bytes, timeout: float) -> None:
        self._stream = stream
        self.cert_fp = cert_fp
        self.timeout = timeout
        self.conn = Connection(Role.CLIENT, 64 * 1024 * 1024)
        self.welcome: f.Welcome | None = None
        self.push_dropped: f.PushDropped | None = None  # the server gave up on our push target
        self.user_id = ""
        self.device_id = 0
        self._ids = count(1)
        self._pending: dict[int, trio.MemorySendChannel[f.Frame]] = {}
        # Unbounded on purpose: the server's delivery window (WELCOME) bounds what can be in
        # here, and a reader that blocked on a full inbox could never see the reply to an ACK.
        self._inbox_send, self._inbox = trio.open_memory_channel[f.Frame](math.inf)
        self._send_lock = trio.Lock()
        self._failure: ClientError | None = None

    # --- plumbing ---------------------------------------------------------------------------

    async def _reader(self) -> None:
        try:
            while True:
                data = await self._stream.receive_some(65536)
                if not data:
                    raise ClientError("server closed the connection")
                self.conn.receive_data(data)
                while (frame := self.conn.next_event()) is not None:
                    await self._dispatch(frame)
        except (
            ProtocolError,
            ClientError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            ssl.SSLError,
            OSError,
        ) as e:
            self._fail(e if isinstance(e, ClientError) else ClientError(f"connection lost: {e}"))

    def _fail(self, err: ClientError) -> None:
        if self._failure is None:
            self._failure = err
        for chan in self._pending.values():
            chan.close()
        self._pending.clear()
        self._inbox_send.close()

    async def _dispatch(self, frame: f.Frame) -> None:
        if isinstance(frame, f.Ping):
            await self._write(f.Pong(frame.request_id, frame.opaque))
            return
        if isinstance(frame, f.Error) and (
            frame.request_id == 0 or frame.request_id not in self._pending
        ):
            self._fail(ServerError(frame.code, frame.message))
            return
        if isinstance(frame, f.Deliver | f.Drained):
            await self._inbox_send.send(frame)
            return
        if isinstance(frame, f.PushDropped):
            self.push_dropped = frame
            return
        chan = self._pending.pop(frame.request_id, None)
        if chan is not None:
            chan.send_nowait(frame)
            chan.close()

    async def _write(self, frame: f.Frame) -> None:
        async with self._send_lock:
            # The lock is a checkpoint: the reader may have seen the end meanwhile.
            if self._failure is not None:
                raise self._failure
            try:
                data = self.conn.send(frame)
            except LocalProtocolError as e:
                raise self._failure or ClientError(f"cannot send: {e}") from None
            await self._stream.send_all(data)

    async def request(self, frame: f.Frame) -> f.Frame:
        """Send a request and wait for its reply; an ERROR reply raises ``ServerError``."""
        return await self.wait_reply(frame, await self.send_request(frame))

    async def send_request(self, frame: f.Frame) -> trio.MemoryReceiveChannel[f.Frame]:
        """Send a request without waiting (pipelining: the server answers in order); pass
        the returned channel to ``wait_reply``."""
        if self._failure is not None:
            raise self._failure
        send, recv = trio.open_memory_channel[f.Frame](1)
        self._pending[frame.request_id] = send
        try:
            await self._write(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise self._failure or ClientError(f"connection lost: {e}") from e
        return recv

    async def wait_reply(self, frame: f.Frame, recv: trio.MemoryReceiveChannel[f.Frame]) -> f.Frame:
        """The reply to ``frame`` sent with ``send_request``; an ERROR raises ``ServerError``."""
        with trio.move_on_after(self.timeout) as scope:
            try:
                reply = await recv.receive()
            except trio.EndOfChannel:
                raise self._failure or ClientError("connection closed") from None
        if scope.cancelled_caught:
            self._pending.pop(frame.request_id, None)
            raise ClientError(f"no reply to {type(frame).__name__} within {self.timeout}s")
        if isinstance(reply, f.Error):
            raise ServerError(reply.code, reply.message)
        return reply

    def next_id(self) -> int:
        return next(self._ids)

    # --- protocol steps ---------------------------------------------------------------------

    async def hello(self) -> f.Welcome:
        reply = await self.request(f.Hello(self.next_id(), 1, 1, CLIENT_SOFTWARE))
        assert isinstance(reply, f.Welcome)
        self.welcome = reply
        return reply

    async def enroll(self, invite_code: str, device_name: str) -> tuple[str, int, bytes]:
        """Redeem an invite; returns (user_id, device_id, transport_seed) and is then logged in."""
        assert self.welcome is not None
        key = Ed25519PrivateKey.generate()
        pub = key.public_key().public_bytes_raw()
        sig = key.sign(enroll_message(self.welcome.nonce, self.cert_fp, invite_code, pub))
        reply = await self.request(f.Enroll(self.next_id(), invite_code, pub, device_name, sig))
        assert isinstance(reply, f.AuthOk)
        self.user_id, self.device_id = reply.user_id, reply.device_id
        return reply.user_id, reply.device_id, key.private_bytes_raw()

    async def login(self, user_id: str, device_id: int, transport_seed: bytes) -> f.AuthOk:
        """Authenticate an enrolled device by signing the server's challenge."""
        assert self.welcome is not None
        key = Ed25519PrivateKey.from_private_bytes(transport_seed)
        sig = key.sign(auth_message(self.welcome.nonce, self.cert_fp, user_id, device_id))
        reply = await self.request(f.Auth(self.next_id(), user_id, device_id, sig))
        assert isinstance(reply, f.AuthOk)
        self.user_id, self.device_id = reply.user_id, reply.device_id
        return reply

    async def send(
        self,
        message_id: bytes,
        payload: bytes,
        recipients: Sequence[f.Recipient],
        *,
        urgent: bool = False,
    ) -> f.Accepted:
        """Store-and-forward one envelope; returns once the server has committed it.
        ``urgent`` (SEND_URGENT) passes quiet hours if the operator allows this sender."""
        kind = f.SendUrgent if urgent else f.Send
        reply = await self.request(kind(self.next_id(), message_id, payload, tuple(recipients)))
        assert isinstance(reply, f.Accepted)
        return reply

    async def receive(self, timeout: float | None = None) -> f.Deliver | f.Drained:
        """The next DELIVER or DRAINED; raises the connection's failure once it is gone."""
        with trio.fail_after(timeout if timeout is not None else math.inf):
            try:
                frame = await self._inbox.receive()
            except trio.EndOfChannel:
                raise self._failure or ClientError("connection closed") from None
        assert isinstance(frame, f.Deliver | f.Drained)
        return frame

    async def ack(self, seqs: Sequence[int]) -> None:
        await self.request(f.Ack(self.next_id(), tuple(seqs)))

    async def push_set(self, kind: int, target: str, device_kind: int = f.DEVICE_DESKTOP) -> None:
        """Register this device's push target (replacing an earlier one)."""
        await self.request(f.PushSet(self.next_id(), kind, device_kind, target))

    async def push_clear(self) -> None:
        """Remove this device's push target."""
        await self.request(f.PushClear(self.next_id()))

    async def quiet_set(
        self, days: int, start: int, end: int, timezone: str, *, defer: bool = False
    ) -> None:
        """Set this user's own working window (``days`` a Mon=bit 0 mask; 0 removes it)."""
        await self.request(f.QuietSet(self.next_id(), days, defer, start, end, timezone))

    async def ping(self) -> None:
        await self.request(f.Ping(self.next_id(), 0x6D6F6D65646F))

    async def key_put(self, record: bytes) -> None:
        await self.request(f.KeyPut(self.next_id(), record))

    async def key_get(self, user_id: str) -> list[bytes]:
        reply = await self.request(f.KeyGet(self.next_id(), user_id))
        assert isinstance(reply, f.Keys)
        return list(reply.records)

    async def key_claim(self, user_id: str, device_id: int, suite: int) -> bytes | None:
        reply = await self.request(f.KeyClaim(self.next_id(), user_id, device_id, suite))
        assert isinstance(reply, f.Prekey)
        return reply.record or None

    async def link_invite(self, ttl_seconds: int) -> tuple[str, int]:
        """A one-time invite code for a further device of this user: (code, expires_ms)."""
        reply = await self.request(f.LinkInvite(self.next_id(), ttl_seconds))
        assert isinstance(reply, f.LinkCode)
        return reply.invite_code, reply.expires_ms

    # --- conversations (groups and channels) -----------------------------------------------

    async def conv_send(
        self,
        message_id: bytes,
        conv_id: bytes,
        payload: bytes,
        parts: Sequence[f.Recipient],
        blob_ids: Sequence[bytes] = (),
        *,
        urgent: bool = False,
    ) -> f.Accepted:
        """Post one envelope to a conversation (fanned out by the server to every member
        device); ``parts`` name only devices with a non-empty part. ``urgent``: as for send."""
        kind = f.ConvSendUrgent if urgent else f.ConvSend
        reply = await self.request(
            kind(self.next_id(), message_id, conv_id, payload, tuple(parts), tuple(blob_ids))
        )
        assert isinstance(reply, f.Accepted)
        return reply

    async def conv_put(self, conv_id: bytes, roster_record: bytes) -> None:
        """Create a user group (epoch 1) or publish its next roster."""
        await self.request(f.ConvPut(self.next_id(), conv_id, roster_record))

    async def conv_get(self, conv_id: bytes, since_epoch: int = 0) -> f.ConvInfo:
        """The server's membership, the rosters after ``since_epoch`` and the org key records."""
        reply = await self.request(f.ConvGet(self.next_id(), conv_id, since_epoch))
        assert isinstance(reply, f.ConvInfo)
        return reply

    async def conv_list(self) -> list[f.ConvSummary]:
        """Every conversation this user is a member of (as the server sees it)."""
        reply = await self.request(f.ConvList(self.next_id()))
        assert isinstance(reply, f.Convs)
        return list(reply.convs)

    # --- attachment blobs (momedod.client.blobs drives these) -------------------------------

    async def send_blobs(
        self,
        message_id: bytes,
        payload: bytes,
        recipients: Sequence[f.Recipient],
        blob_ids: Sequence[bytes],
    ) -> f.Accepted:
        """SEND an envelope that references uploaded attachments (its readers get access)."""
        reply = await self.request(
            f.SendBlobs(self.next_id(), message_id, payload, tuple(recipients), tuple(blob_ids))
        )
        assert isinstance(reply, f.Accepted)
        return reply

    async def blob_start(self, blob_id: bytes, size: int) -> f.BlobStatus:
        """Begin or resume an upload; the status says how many bytes the server holds."""
        reply = await self.request(f.BlobStart(self.next_id(), blob_id, size))
        assert isinstance(reply, f.BlobStatus)
        return reply

    async def blob_chunk(self, blob_id: bytes, offset: int, data: bytes) -> f.BlobStatus:
        """Upload ``data`` at ``offset`` (which must be what the server has received)."""
        reply = await self.request(f.BlobChunk(self.next_id(), blob_id, offset, data))
        assert isinstance(reply, f.BlobStatus)
        return reply

    async def blob_finish(self, blob_id: bytes, sha256: bytes) -> f.BlobStatus:
        """Complete an upload; the server checks ``sha256`` of everything it received."""
        reply = await self.request(f.BlobFinish(self.next_id(), blob_id, sha256))
        assert isinstance(reply, f.BlobStatus)
        return reply

    async def blob_get(self, blob_id: bytes, offset: int, length: int) -> f.BlobData:
        """Read up to ``length`` bytes of a blob from ``offset``."""
        reply = await self.request(f.BlobGet(self.next_id(), blob_id, offset, length))
        assert isinstance(reply, f.BlobData)
        return reply

    @property
    def failure(self) -> ClientError | None:
        return self._failure


@asynccontextmanager
async def open_client(
    host: str, port: int, fingerprint: bytes, *, timeout: float = DEFAULT_TIMEOUT
) -> AsyncIterator[Client]:
    """Connect, check the certificate pin, and exchange HELLO/WELCOME."""
    try:
        with trio.fail_after(timeout):
            tcp = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as e:
        raise ClientError(f"cannot connect to {host}:{port}: {e}") from e
    stream = trio.SSLStream(tcp, _client_context(), server_hostname=None)
    try:
        with trio.fail_after(timeout):
            await stream.do_handshake()
    except (trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError) as e:
        await trio.aclose_forcefully(stream)
        raise ClientError(f"TLS handshake with {host}:{port} failed: {e}") from e
    try:
        seen = cert_fingerprint(stream.getpeercert(binary_form=True) or b"")
    except ValueError:
        seen = b""
    if not hmac.compare_digest(seen, fingerprint):
        await trio.aclose_forcefully(stream)
        raise PinMismatch(
            f"{host}:{port} presented key {fingerprint_text(seen) if seen else '(none)'}, "
            f"expected {fingerprint_text(fingerprint)}"
        )
    client = Client(stream, seen, timeout)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._reader)
            await client.hello()
            yield client
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The reader task records its failures instead of raising, so a group here carries
        # only the caller's own exception: hand it back unwrapped.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        await trio.aclose_forcefully(stream)


@asynccontextmanager
async def connect_invite(
    link: str, device_name: str, *, timeout: float = DEFAULT_TIMEOUT
) -> AsyncIterator[tuple[Client, Credentials]]:
    """Enroll a new device from an invite link; yields the logged-in client and credentials."""
    inv = parse_invite_link(link)
    async with open_client(inv.host, inv.port, inv.fingerprint, timeout=timeout) as client:
        uid, did, seed = await client.enroll(inv.code, device_name)
        yield client, Credentials(inv.host, inv.port, inv.fingerprint, uid, did, seed)


@asynccontextmanager
async def connect(creds: Credentials, *, timeout: float = DEFAULT_TIMEOUT) -> AsyncIterator[Client]:
    """Connect and log in with saved credentials."""
    async with open_client(creds.host, creds.port, creds.fingerprint, timeout=timeout) as client:
        await client.login(creds.user_id, creds.device_id, creds.transport_seed)
        yield client
