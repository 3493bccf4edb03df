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

Several server addresses (a server that runs as several nodes, docs/PROTOCOL.md section 2):
``connect`` and ``connect_invite`` try the addresses one after the other — the one that last
worked first, then the others in the order of the invite link — and accept a certificate
whose fingerprint is any of the pins. After a full round without success they wait with a
jittered, doubling back-off (:class:`Backoff`) and try again, ``rounds`` times. A pin
mismatch is never passed over silently: it is reported through ``on_warning`` naming the
address, and if no other address answered, ``connect`` raises :class:`PinMismatch` at once.
"""

from __future__ import annotations

import hmac
import json
import math
import random
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
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
from momedod.protocol.invite import (
    Address,
    InvalidInviteLink,
    cert_fingerprint,
    check_addresses,
    check_pins,
    fingerprint_text,
    format_address,
    parse_address,
    parse_invite_link,
)

CLIENT_SOFTWARE = "momedo-py/0.1"
DEFAULT_TIMEOUT = 30.0
ADDRESS_TIMEOUT = 10.0
"""Seconds for TCP and TLS to one of several addresses before the next one is tried."""
CONNECT_ROUNDS = 3
"""Rounds over all addresses ``connect`` makes before it gives up (None: forever)."""
_FAILOVER_CODES = frozenset({ErrorCode.SERVER_BUSY, ErrorCode.SHUTTING_DOWN})
"""Server errors that send the client to the next address instead of ending the attempt."""


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
    """The server's certificate is not a pinned one (someone may be intercepting)."""

    def __init__(self, text: str, addresses: Sequence[Address] = ()) -> None:
        super().__init__(text)
        self.addresses = tuple(addresses)


@dataclass(frozen=True)
class Backoff:
    """Jittered, doubling waits between rounds over all server addresses: the n-th wait
    (from 0) is ``min(first_s * 2**n, max_s)``, times a random factor in ``1 ± jitter``,
    and never more than ``max_s``."""

    first_s: float = 0.5
    max_s: float = 30.0
    jitter: float = 0.5

    def delay(self, n: int) -> float:
        base = min(math.ldexp(self.first_s, min(n, 64)), self.max_s)
        return min(self.max_s, base * random.uniform(1 - self.jitter, 1 + self.jitter))


DEFAULT_BACKOFF = Backoff()


def _stderr_warning(text: str) -> None:
    print(f"momedo: warning: {text}", file=sys.stderr, flush=True)


warning_handler: Callable[[str], None] = _stderr_warning
"""Where ``connect`` reports a pin mismatch on one address when another one worked (unless
the call passes ``on_warning``); the command-line client prints it to stderr."""

_last_good: dict[tuple[Address, ...], Address] = {}
"""In this process: the address that last worked, per address list."""


@dataclass(frozen=True)
class Credentials:
    """What a device needs to log in again: server addresses, pins, address and transport
    key seed.

    ``host``/``port``/``fingerprint`` are the first address and pin (older profiles hold
    only these); ``addresses`` and ``fingerprints`` default to them. ``last_good`` is the
    address that last worked (tried first). ``path`` is the file the credentials were loaded
    from: ``connect`` records a changed ``last_good`` there.
    """

    host: str
    port: int
    fingerprint: bytes
    user_id: str
    device_id: int
    transport_seed: bytes  # Ed25519 private key (raw 32 bytes); never leaves the device
    addresses: tuple[Address, ...] = ()
    fingerprints: tuple[bytes, ...] = ()
    last_good: Address | None = None
    path: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        addresses = tuple((str(h), int(p)) for h, p in self.addresses)
        pins = tuple(self.fingerprints)
        # One address or pin (an older profile, or ``replace(creds, port=...)``): host/port
        # and fingerprint are it. Several: they must be the first.
        if len(addresses) <= 1:
            addresses = ((self.host, self.port),)
        if len(pins) <= 1:
            pins = (self.fingerprint,)
        if addresses[0] != (self.host, self.port) or pins[0] != self.fingerprint:
            raise ValueError("the first address and pin must be host:port and fingerprint")
        try:
            check_addresses(addresses)
            check_pins(pins)
        except InvalidInviteLink as e:
            raise ValueError(str(e)) from None
        object.__setattr__(self, "addresses", addresses)
        object.__setattr__(self, "fingerprints", pins)
        if self.last_good is not None:
            last = (str(self.last_good[0]), int(self.last_good[1]))
            object.__setattr__(self, "last_good", last if last in addresses else None)

    def save(self, path: Path) -> None:
        # A single-address profile keeps exactly the older form (older clients read it).
        data: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "fingerprint": self.fingerprint.hex(),
            "user_id": self.user_id,
            "device_id": self.device_id,
            "transport_seed": self.transport_seed.hex(),
        }
        if len(self.addresses) > 1:
            data["addresses"] = [format_address(h, p) for h, p in self.addresses]
        if len(self.fingerprints) > 1:
            data["fingerprints"] = [x.hex() for x in self.fingerprints]
        if self.last_good is not None and self.last_good != self.addresses[0]:
            data["last_good"] = format_address(*self.last_good)
        write_private(path, json.dumps(data).encode())

    @classmethod
    def load(cls, path: Path) -> Credentials:
        data = json.loads(path.read_text())
        try:
            addresses = tuple(parse_address(a) for a in data.get("addresses", ()))
            last = data.get("last_good")
            last_good = parse_address(last) if last else None
        except InvalidInviteLink as e:
            raise ValueError(str(e)) from None
        return cls(
            str(data["host"]),
            int(data["port"]),
            bytes.fromhex(data["fingerprint"]),
            str(data["user_id"]),
            int(data["device_id"]),
            bytes.fromhex(data["transport_seed"]),
            addresses,
            tuple(bytes.fromhex(x) for x in data.get("fingerprints", ())),
            last_good,
            path,
        )

    def servers(self) -> str:
        """The addresses as text, e.g. ``a.example:7443, b.example:7443``."""
        return ", ".join(format_address(h, p) for h, p in self.addresses)


def _client_context() -> ssl.SSLContext:
    # No CA validation: trust comes from the pinned certificate fingerprint checked below.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Client:
    """A connected, HELLO-negotiated session. Create with ``open_client``."""

    def __init__(
        self,
        stream: trio.SSLStream[Any],
        cert_fp: bytes,
        timeout: float,
        address: Address = ("", 0),
    ) -> None:
        self._stream = stream
        self.cert_fp = cert_fp
        self.address = address  # the server address this connection went to
        self.warnings: list[str] = []  # pin mismatches on other addresses, if any
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
    host: str,
    port: int,
    fingerprint: bytes | Sequence[bytes],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float | None = None,
) -> AsyncIterator[Client]:
    """Connect, check the certificate pin (one, or any of several), and exchange
    HELLO/WELCOME. ``connect_timeout`` bounds TCP and TLS (default: ``timeout``)."""
    pins = [fingerprint] if isinstance(fingerprint, bytes) else list(fingerprint)
    where = format_address(host, port)
    limit = timeout if connect_timeout is None else connect_timeout
    try:
        with trio.fail_after(limit):
            tcp = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as e:
        raise ClientError(f"cannot connect to {where}: {e or 'timed out'}") from e
    stream = trio.SSLStream(tcp, _client_context(), server_hostname=None)
    try:
        with trio.fail_after(limit):
            await stream.do_handshake()
    except (trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError) as e:
        await trio.aclose_forcefully(stream)
        raise ClientError(f"TLS handshake with {where} failed: {e or 'timed out'}") from e
    try:
        seen = cert_fingerprint(stream.getpeercert(binary_form=True) or b"")
    except ValueError:
        seen = b""
    # Compare with every pin (no early exit): the time taken says nothing about which.
    if not sum(hmac.compare_digest(seen, pin) for pin in pins):
        await trio.aclose_forcefully(stream)
        expected = ", ".join(fingerprint_text(pin) for pin in pins)
        raise PinMismatch(
            f"{where} presented key {fingerprint_text(seen) if seen else '(none)'}, "
            f"expected {expected if len(pins) == 1 else 'one of ' + expected}: someone may "
            "be intercepting the connection to this address",
            [(host, port)],
        )
    client = Client(stream, seen, timeout, (host, port))
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


def _ordered(addresses: Sequence[Address], prefer: Address | None) -> list[Address]:
    """``prefer`` (the address that last worked) first, then the others in order."""
    if prefer is None or prefer not in addresses:
        return list(addresses)
    return [prefer, *(a for a in addresses if a != prefer)]


@asynccontextmanager
async def open_failover(
    addresses: Sequence[Address],
    pins: Sequence[bytes],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    rounds: int | None = CONNECT_ROUNDS,
    backoff: Backoff = DEFAULT_BACKOFF,
    prefer: Address | None = None,
    setup: Callable[[Client], Awaitable[object]] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> AsyncIterator[Client]:
    """A client connected to the first of ``addresses`` that answers with one of ``pins``.

    ``setup`` (e.g. the login) runs on each connection before it counts as working; a
    failure in it (other than a server error that is final, which is raised) moves on to
    the next address. Between full rounds the client waits ``backoff``; after ``rounds``
    rounds (None: never) it raises ``ClientError`` listing every address's failure (a
    single address: that failure itself). A pin mismatch is reported through
    ``on_warning`` and, if no address worked in that round, raised as :class:`PinMismatch`.
    """
    if rounds is not None and rounds < 1:
        raise ValueError("rounds must be at least 1")
    warn = on_warning or warning_handler
    order = _ordered(addresses, prefer)
    connect_timeout = timeout if len(order) == 1 else min(timeout, ADDRESS_TIMEOUT)
    done = 0
    while True:
        failures: list[str] = []
        last: ClientError | None = None
        mismatches: list[PinMismatch] = []
        for host, port in order:
            stack = AsyncExitStack()
            try:
                client = await stack.enter_async_context(
                    open_client(host, port, pins, timeout=timeout, connect_timeout=connect_timeout)
                )
                if setup is not None:
                    await setup(client)
            except PinMismatch as e:
                await stack.aclose()
                mismatches.append(e)
                if len(order) > 1:
                    warn(str(e))
                continue
            except ServerError as e:
                await stack.aclose()
                if e.code not in _FAILOVER_CODES:
                    raise
                failures.append(f"{format_address(host, port)}: {e}")
                last = e
                continue
            except ClientError as e:
                await stack.aclose()
                text = str(e)
                where = format_address(host, port)
                failures.append(text if where in text else f"{where}: {text}")
                last = e
                continue
            except BaseException:
                await stack.aclose()
                raise
            client.warnings = [str(m) for m in mismatches]
            async with stack:
                yield client
            return
        if mismatches:
            if len(mismatches) == 1 and not failures:
                raise mismatches[0]
            raise PinMismatch(
                "; ".join([str(m) for m in mismatches] + failures),
                [a for m in mismatches for a in m.addresses],
            )
        done += 1
        if rounds is not None and done >= rounds:
            if len(order) == 1 and last is not None:
                raise last
            raise ClientError(
                f"no server address answered ({done} round{'s' if done > 1 else ''} over "
                f"{len(order)} addresses): " + "; ".join(failures)
            )
        await trio.sleep(backoff.delay(done - 1))


@asynccontextmanager
async def connect_invite(
    link: str,
    device_name: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    rounds: int | None = CONNECT_ROUNDS,
    backoff: Backoff = DEFAULT_BACKOFF,
    on_warning: Callable[[str], None] | None = None,
) -> AsyncIterator[tuple[Client, Credentials]]:
    """Enroll a new device from an invite link; yields the logged-in client and credentials.

    Connecting fails over between the link's addresses; the ENROLL itself is sent once
    (it uses the invite up), on the connection that answered."""
    inv = parse_invite_link(link)
    async with open_failover(
        inv.addresses,
        inv.fingerprints,
        timeout=timeout,
        rounds=rounds,
        backoff=backoff,
        on_warning=on_warning,
    ) as client:
        uid, did, seed = await client.enroll(inv.code, device_name)
        _last_good[inv.addresses] = client.address
        creds = Credentials(
            inv.host,
            inv.port,
            inv.fingerprint,
            uid,
            did,
            seed,
            inv.addresses,
            inv.fingerprints,
            client.address,
        )
        yield client, creds


@asynccontextmanager
async def connect(
    creds: Credentials,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    rounds: int | None = CONNECT_ROUNDS,
    backoff: Backoff = DEFAULT_BACKOFF,
    on_warning: Callable[[str], None] | None = None,
) -> AsyncIterator[Client]:
    """Connect and log in with saved credentials, failing over between their addresses
    (the one that last worked first). A changed working address is recorded in the
    credentials file they were loaded from."""

    async def login(client: Client) -> None:
        await client.login(creds.user_id, creds.device_id, creds.transport_seed)

    prefer = _last_good.get(creds.addresses, creds.last_good)
    async with open_failover(
        creds.addresses,
        creds.fingerprints,
        timeout=timeout,
        rounds=rounds,
        backoff=backoff,
        prefer=prefer,
        setup=login,
        on_warning=on_warning,
    ) as client:
        _last_good[creds.addresses] = client.address
        known = creds.last_good or creds.addresses[0]
        if len(creds.addresses) > 1 and client.address != known and creds.path is not None:
            _remember(creds, client.address)
        yield client


def _remember(creds: Credentials, address: Address) -> None:
    """Record the working address in the credentials file (best effort: the next run just
    tries the addresses in the old order if this fails)."""
    assert creds.path is not None
    try:
        current = Credentials.load(creds.path)
        if (current.user_id, current.device_id, current.addresses) != (
            creds.user_id,
            creds.device_id,
            creds.addresses,
        ):
            return
        replace(current, last_good=address).save(creds.path)
    except (OSError, ValueError, KeyError, TypeError):
        pass
