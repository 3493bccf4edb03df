"""One client connection: TLS handshake, authentication, requests and mailbox delivery.

At most two tasks per session, in one nursery:
- the session's own task reads: it feeds received bytes to the sans-IO ``Connection`` and
  handles each request in order (a SEND is answered only after the store has committed it);
- pump (after authentication): streams the device's mailbox from the store in seq order, then
  delivers live messages as presence offers them. An offer is used only if it continues the
  seq sequence exactly; any gap (offers arrive in the order the senders' tasks resume, not in
  commit order) or overflow falls back to reading the store, which is always complete.

There is no writer task: a task with a frame to send queues it in the bounded outbox and, if
no write is in progress, writes the outbox itself (``_flush``: one TLS write and one socket
send for everything queued); while a write is in progress others only queue, and wait when
OUTBOX_FRAMES are queued. A write the kernel cannot take at once waits, shielded, for at most
``write_timeout``. The handshake deadline, the ping after half the idle timeout and the idle
timeout are checked by one timer task shared by all sessions (``timers.py``).

A fatal condition calls ``_fatal``: it records the ERROR frame to send last and cancels the
nursery; ``run`` then sends that frame (unless a write was cut off mid-way, which leaves the
TLS stream unusable) and closes the transport.
"""

from __future__ import annotations

import contextlib
import secrets
import ssl
import time
from dataclasses import dataclass, field
from itertools import count

import structlog
import trio

from momedod.config import AttachmentsConfig
from momedod.e2e.event import EVENT_HELD, ConvEvent, is_conv_event
from momedod.observability import metrics
from momedod.protocol import frames as f
from momedod.protocol.auth import auth_message, enroll_message, verify_signature
from momedod.protocol.connection import Connection, Role
from momedod.protocol.errors import ErrorCode, ProtocolError
from momedod.protocol.invite import normalize_invite_code
from momedod.protocol.records import (
    PREKEY_OTPK,
    RECORD_DEVICE_LIST,
    RECORD_IDENTITY,
    RECORD_PREKEY,
    parse_record,
)
from momedod.protocol.userid import display
from momedod.server import blobs, conversations
from momedod.server.abuse import Abuse
from momedod.server.blobstore import BlobFiles
from momedod.server.clock import now_ms
from momedod.server.presence import Presence
from momedod.server.push import Pusher
from momedod.server.quiethours import USER_PREFIX, QuietHours, user_spec
from momedod.server.timers import Timers
from momedod.server.tlsstream import TLSConn
from momedod.store import (
    BlobNotFound,
    EnqueueResult,
    InviteExpired,
    InviteInvalid,
    MailboxEntry,
    MailboxFull,
    NotFound,
    Recipient,
    RecordStale,
    StorageFull,
    Store,
    StoreError,
    UnknownRecipient,
    UserDisabled,
)

log = structlog.get_logger("momedod.session")

PROTOCOL_VERSION = 1
OUTBOX_FRAMES = 64
DELIVERY_WINDOW = 256  # DELIVER frames in flight before the client must ACK (sent in WELCOME)
LIVE_MAX = 1024  # offered entries held in memory; beyond that the pump reads the store
LIVE_MAX_BYTES = 4 << 20  # ... and at most this many payload bytes of them
LINK_TTL_MIN = 60  # seconds a LINK_INVITE code may live, at least ...
LINK_TTL_MAX = 3600  # ... and at most
FETCH_BATCH = 256  # = DELIVERY_WINDOW: one store read (thread hop) per window of DELIVERs
YIELD_EVERY = 16  # reads served without waiting before the reader lets other tasks run
FINAL_SEND_TIMEOUT = 2.0
LINGER_SECONDS = 1.0
LINGER_BYTES = 1 << 20
QUIET_TICK = 0.5  # seconds between looks at the clock while delivery to a phone is deferred

_ids = count(1)

EVENT_FORGED = "the payload starts like a server event; only the server sends those"
URGENT_FORBIDDEN = (
    "you may not send urgent messages here; the operator allows senders and channels"
    " (momedoctl urgent)"
)


@dataclass
class SessionContext:
    """What every session of one listener shares."""

    store: Store
    presence: Presence
    server_name: str
    max_frame_bytes: int
    handshake_timeout: float
    idle_timeout: float
    write_timeout: float
    max_recipients: int
    max_record_bytes: int
    mailbox_max_messages: int
    sessions: set[Session] = field(default_factory=set)  # every open session, for shutdown
    attachments: AttachmentsConfig = field(default_factory=AttachmentsConfig)
    blob_files: BlobFiles | None = None  # STATE/blobs; None: attachments are refused
    users_create_groups: bool = True  # [policy]
    max_group_size: int = 5000
    pusher: Pusher | None = None  # wake-ups for devices that are not connected
    quiet: QuietHours | None = None  # quiet-hours policies
    abuse: Abuse = field(default_factory=Abuse)  # [abuse] limits, shared by all listeners
    timers: Timers = field(default_factory=Timers)  # deadlines of every session


# Metric label of each frame class, e.g. KeyPut -> "key_put".
_KIND: dict[type, str] = {
    cls: "".join("_" + c.lower() if c.isupper() else c for c in cls.__name__).lstrip("_")
    for cls in f.FRAME_CLASSES.values()
}


# Failures that count against the source address (guessing); revoked or disabled do not.
_GUESSES = {"bad_signature", "unknown_device", "invite_invalid", "invite_expired"}


class Session:
    """Serve one accepted TLS stream until it closes."""

    def __init__(self, ctx: SessionContext, stream: TLSConn, peer: str, cert_fp: bytes) -> None:
        self.ctx = ctx
        self.stream = stream
        self.peer = peer
        self.id = next(_ids)
        self.conn = Connection(Role.SERVER, ctx.max_frame_bytes)
        self.addr: tuple[str, int] = ("", 0)
        self.authenticated = False
        self._cert_fp = cert_fp  # the pin of the certificate this connection is served with
        self._busy = False  # handling a request (a drain waits for it to finish)
        self._draining = False
        self._nonce = secrets.token_bytes(32)
        self._out: list[bytes] = []  # encoded frames queued to send
        self._writing = False  # a task is in _flush
        self._room: trio.Event | None = None  # set when a full outbox has been taken
        self._wake_event = trio.Event()
        self._inflight: set[int] = set()  # seqs delivered in this session and not yet acked
        self._live: dict[int, MailboxEntry] = {}  # offered by presence, by seq
        self._live_bytes = 0  # payload bytes held in _live
        self._cursor = 0  # highest seq delivered in this session
        self._pump_idle = False  # the pump waits for offers, everything before is delivered
        self._live_overflow = False
        self._mobile = False  # declared with PUSH_SET; quiet hours may defer its delivery
        self._deferred_from: int | None = None  # lowest seq held back by quiet hours
        self._acked = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._final: bytes | None = None
        self._write_cut = False
        self._last_rx = trio.current_time()
        self._auth_deadline = 0.0
        self._ping_sent = False
        self._closed = False
        self.host = peer.rpartition(":")[0]  # the source address the abuse limits key on
        self._frames = ctx.abuse.frame_bucket()
        self._log = log.bind(conn=self.id, peer=peer)

    # --- hooks used by presence -------------------------------------------------------------

    def offer(self, entry: MailboxEntry) -> None:
        if (
            self._pump_idle
            and entry.seq == self._cursor + 1
            and not self._writing
            and self._final is None
            and len(self._inflight) < DELIVERY_WINDOW
            and not self._deferring()
        ):
            # The pump has delivered everything before this entry and waits: deliver it from
            # here (the sender's task) instead of waking the pump for it.
            self._cursor = entry.seq
            self._inflight.add(entry.seq)
            self._queue_deliver(entry)
            self._flush_nowait()
            return
        size = len(entry.payload) + len(entry.part)
        if len(self._live) < LIVE_MAX and self._live_bytes + size <= LIVE_MAX_BYTES:
            self._live[entry.seq] = entry
            self._live_bytes += size
        else:
            self._live_overflow = True
        self._wake_event.set()

    def kick(self, code: ErrorCode, message: str) -> None:
        self._fatal(code, message)

    def poke(self) -> None:
        """Another node committed messages for this device: read the mailbox from the cursor."""
        self._live_overflow = True
        self._wake_event.set()

    def drain(self) -> None:
        """Shutdown: close after the request being handled (if any) has been answered."""
        self._draining = True
        if not self._busy:
            self._fatal(ErrorCode.SHUTTING_DOWN, "server is shutting down")

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        self.ctx.sessions.add(self)
        counted = False
        try:
            if not await self._tls_handshake():
                return
            counted = self.ctx.abuse.connect(self.host)
            if not counted:
                self._fatal(ErrorCode.SERVER_BUSY, "too many connections from your address")
            else:
                now = trio.current_time()
                self._auth_deadline = now + self.ctx.handshake_timeout
                self.ctx.timers.schedule(self._auth_deadline, self)
                async with trio.open_nursery() as nursery:
                    self._scope = nursery.cancel_scope
                    self._nursery = nursery
                    await self._reader()
            if self._final and not self._write_cut:
                with trio.move_on_after(FINAL_SEND_TIMEOUT):
                    # What was queued before the end goes first (e.g. the reply to the request
                    # a drain waited for), then the final ERROR.
                    await self.stream.send_all(b"".join(self._out) + self._final)
                    await self._linger()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as e:
            self._log.debug("connection.lost", reason=type(e).__name__)
        finally:
            self._closed = True
            self.ctx.timers.cancel(self)
            self._out.clear()
            self._live.clear()
            if counted:
                self.ctx.abuse.disconnect(self.host)
            self.ctx.sessions.discard(self)
            if self.authenticated:
                self.ctx.presence.unregister(self)
            self.stream.close()
            self._log.debug("connection.closed")

    async def _tls_handshake(self) -> bool:
        handshakes = self.ctx.abuse.handshakes
        try:
            # The whole wait, for a handshake slot and the handshake, is under one deadline.
            with trio.move_on_after(self.ctx.handshake_timeout) as hs:
                if handshakes.available_tokens == 0:
                    metrics.ABUSE_REFUSED.labels("tls_handshakes").inc()
                async with handshakes:
                    await self.stream.do_handshake()
        except trio.BrokenResourceError as e:
            metrics.HANDSHAKE_FAILURES.labels("error").inc()
            self._log.debug("tls.handshake_failed", reason=str(e.__cause__ or e))
            return False
        if hs.cancelled_caught:
            metrics.HANDSHAKE_FAILURES.labels("timeout").inc()
            self._log.info("tls.handshake_timeout")
            return False
        return True

    async def _linger(self) -> None:
        # Closing with unread input makes the kernel send a TCP RST, which can overtake the
        # ERROR frame we just sent (e.g. the rest of an oversized frame is still arriving).
        # Read and discard until the peer closes, for a bounded time and amount.
        # Half-close first, so the peer sees the end of the stream at once.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.stream.send_eof()
        discarded = 0
        with trio.move_on_after(LINGER_SECONDS):
            while discarded < LINGER_BYTES:
                data = await self.stream.receive_some()
                if not data:
                    return
                discarded += len(data)

    def _fatal(self, code: ErrorCode, message: str) -> None:
        if self._final is None:
            metrics.PROTOCOL_ERRORS.labels(code.name).inc()
            try:
                self._final = self.conn.send(f.Error(0, int(code), message))
            except Exception:
                self._final = b""
            self._log.info("connection.error", error=code.name, reason=message)
        if self._scope is not None:
            self._scope.cancel()

    # --- tasks ------------------------------------------------------------------------------

    def on_timer(self, now: float) -> float | None:
        """Called by the shared timer when this session's check is due; returns the next."""
        if self._closed or self._final is not None:
            return None
        if not self.authenticated:
            if now >= self._auth_deadline:
                metrics.AUTH_FAILURES.labels("timeout").inc()
                self._fatal(ErrorCode.TIMEOUT, "authentication not completed in time")
                return None
            return self._auth_deadline
        idle = self.ctx.idle_timeout
        silent = now - self._last_rx
        if silent >= idle:
            self._fatal(ErrorCode.TIMEOUT, "idle timeout")
            return None
        if silent >= idle / 2 and not self._ping_sent:
            self._ping_sent = True
            self._queue(f.Ping(0, secrets.randbits(64)))
            self._flush_nowait()
        if self._ping_sent:
            return self._last_rx + idle
        return self._last_rx + idle / 2

    async def _reader(self) -> None:
        stream = self.stream
        served = 0  # reads in a row that did not wait
        while True:
            try:
                data = stream.receive_nowait()
                if data is None:
                    served = 0
                    await stream.wait_readable()
                    continue
                served += 1
                if served >= YIELD_EVERY:
                    served = 0
                    await trio.lowlevel.checkpoint()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:  # the peer went away; nothing more to say to it
                self._final = b""
                assert self._scope is not None
                self._scope.cancel()
                return
            self._last_rx = trio.current_time()
            self._ping_sent = False
            try:
                self.conn.receive_data(data)
                while (frame := self.conn.next_event()) is not None:
                    metrics.frame_received(_KIND[type(frame)]).inc()
                    if self.authenticated and (wait := self.ctx.abuse.frame_wait(self._frames)):
                        # Over the frame rate: read this connection no faster than the rate
                        # (TCP back-pressure slows the sender; nothing is refused).
                        await trio.sleep(wait)
                        self._frames.tokens = 0.0
                        self._frames.stamp = trio.current_time()
                    self._busy = True
                    try:
                        await self._handle(frame)
                    except StoreError as e:
                        # Disk full is the operator's to fix; nothing was stored, and the
                        # client retries (INTERNAL) until space returns.
                        what = (
                            "server storage full"
                            if isinstance(e, StorageFull)
                            else "storage failure"
                        )
                        if not self.authenticated:
                            raise ProtocolError(ErrorCode.SERVER_BUSY, what) from e
                        metrics.STORE_ERRORS.inc()
                        self._log.error("store.failed", request=type(frame).__name__, error=str(e))
                        await self._error(
                            frame.request_id, ErrorCode.INTERNAL, f"{what}; retry later"
                        )
                    finally:
                        self._busy = False
                    if self._draining:
                        self._fatal(ErrorCode.SHUTTING_DOWN, "server is shutting down")
                        return
            except ProtocolError as e:
                self._fatal(e.code, e.message)
                return

    async def _pump(self) -> None:
        store, (uid, did) = self.ctx.store, self.addr
        drained = False
        read_store = True
        while True:
            wake = self._wake_event = trio.Event()
            defer = self._deferring()
            if not defer and self._deferred_from is not None:  # quiet hours ended: catch up
                self._cursor = min(self._cursor, self._deferred_from - 1)
                self._deferred_from = None
                read_store = True
            if read_store or self._live_overflow:
                self._live_overflow = False
                entries = await store.fetch(uid, did, self._cursor, FETCH_BATCH)
                await self._deliver_all(entries, defer)
                await self._flush()
                if len(entries) == FETCH_BATCH:
                    continue
                read_store = False
                if not drained:
                    drained = True
                    await self._send(f.Drained(0, self._cursor))
            live = self._live
            while self._cursor + 1 in live:
                # Take at most what the window and the outbox have room for (at least one),
                # so no more entries are out of the bounded live buffer than before.
                room = min(
                    DELIVERY_WINDOW - len(self._inflight), OUTBOX_FRAMES - 1 - len(self._out)
                )
                run: list[MailboxEntry] = []
                while (e := live.get(self._cursor + 1 + len(run))) is not None:
                    del live[e.seq]
                    self._live_bytes -= len(e.payload) + len(e.part)
                    run.append(e)
                    if len(run) >= room:
                        break
                await self._deliver_all(run, defer)
            await self._flush()
            for seq in [s for s in live if s <= self._cursor]:
                e = live.pop(seq)
                self._live_bytes -= len(e.payload) + len(e.part)
            if live:  # a gap before the next offered seq: the store has the whole sequence
                read_store = True
                continue
            if self._deferred_from is None:
                self._pump_idle = True  # offers that continue the sequence go out directly
                try:
                    await wake.wait()
                finally:
                    self._pump_idle = False
            else:
                with trio.move_on_after(QUIET_TICK):
                    await wake.wait()

    def _deferring(self) -> bool:
        """Quiet hours with defer_delivery hold back non-urgent messages to this phone."""
        quiet = self.ctx.quiet
        return self._mobile and quiet is not None and quiet.state(self.addr[0]).defer

    def _defer(self, seq: int) -> None:
        if self._deferred_from is None:
            self._deferred_from = seq
            self._log.debug("delivery.deferred", seq=seq)

    async def _deliver_all(self, entries: list[MailboxEntry], defer: bool) -> None:
        """Deliver (or defer) ``entries`` in seq order, advancing the cursor; queued, not
        flushed. Per entry this is only encoding and queueing while the delivery window and
        the outbox have room; the waits of :meth:`_deliver` only when one of them is full."""
        inflight, out = self._inflight, self._out
        now = time.time()
        for e in entries:
            if defer and not e.urgent:
                self._defer(e.seq)
            elif len(inflight) < DELIVERY_WINDOW and len(out) < OUTBOX_FRAMES - 1:
                inflight.add(e.seq)
                if self._final is None:
                    self._queue_deliver(e, now)
            else:
                await self._deliver(e, flush=False)
                now = time.time()
            self._cursor = e.seq

    async def _deliver(self, e: MailboxEntry, flush: bool = True) -> None:
        while len(self._inflight) >= DELIVERY_WINDOW:
            await self._flush()  # what the client must see before it can ACK
            self._acked = trio.Event()
            await self._acked.wait()
        self._inflight.add(e.seq)
        if self._final is not None:
            return
        self._queue_deliver(e)
        if self._writing:
            await self._send_wait()
        elif flush or len(self._out) >= OUTBOX_FRAMES:
            await self._flush()

    def _queue_deliver(self, e: MailboxEntry, now: float | None = None) -> None:
        kind = f.DeliverUrgent if e.urgent else f.Deliver
        self._queue(kind(0, e.seq, e.message_id, e.server_ts_ms, e.payload, e.part))
        metrics.MESSAGES_DELIVERED.inc()
        if now is None:
            now = time.time()
        metrics.DELIVERY_LATENCY.observe(max(0.0, now - e.server_ts_ms / 1000))

    def _queue(self, frame: f.Frame) -> None:
        self._out.append(self.conn.send(frame))
        metrics.frame_sent(_KIND[type(frame)]).inc()

    async def _send(self, frame: f.Frame, flush: bool = True) -> None:
        """Queue ``frame``; write the outbox now unless ``flush`` is False (more will follow)."""
        if self._final is not None:  # closing: only the final ERROR goes out now
            return
        self._queue(frame)
        if self._writing:
            await self._send_wait()
        elif flush or len(self._out) >= OUTBOX_FRAMES:
            await self._flush()

    async def _send_wait(self) -> None:
        """A write is in progress and takes what is queued; wait only if the outbox is full."""
        while self._writing and len(self._out) >= OUTBOX_FRAMES and self._final is None:
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()

    def _flush_nowait(self) -> None:
        """Write the outbox if the kernel takes it at once; else a task finishes the write."""
        if self._writing or not self._out or self._closed:
            return
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._write_cut = True
        try:
            if self.stream.send_nowait(data):
                self._write_cut = False
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._drop()
            return
        self._writing = True
        try:
            assert self._nursery is not None
            self._nursery.start_soon(self._finish_write)
        except RuntimeError:  # the session is ending
            self._writing = False
            self._drop()

    async def _finish_write(self) -> None:
        try:
            done = await self._wait_sent()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            done = False
            self._drop()
        self._writing = False
        if done:
            self._write_cut = False
            await self._flush()  # what was queued meanwhile
        elif self._room is not None:
            self._room.set()
            self._room = None

    async def _wait_sent(self) -> bool:
        """Wait for a write the kernel could not take at once; False (dropped) on timeout."""
        # Shielded: the final ERROR of a closing session must still get through, and this
        # write must finish before it. The timeout bounds it.
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.ctx.write_timeout
            await self.stream.wait_sent()
        if scope.cancelled_caught:
            self._log.info("connection.write_timeout")
            self._drop()
            return False
        return True

    async def _flush(self) -> None:
        """Write everything queued (and what others queue meanwhile); one writer at a time."""
        if self._writing:
            return
        self._writing = True
        stream, out = self.stream, self._out
        try:
            while out and not self._closed:
                data = out[0] if len(out) == 1 else b"".join(out)
                out.clear()
                if self._room is not None:
                    self._room.set()
                    self._room = None
                self._write_cut = True
                if not stream.send_nowait(data) and not await self._wait_sent():
                    return
                self._write_cut = False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._drop()
        finally:
            self._writing = False
            if self._room is not None:
                self._room.set()
                self._room = None

    def _drop(self) -> None:
        """The connection cannot be written to: close without a final frame."""
        self._final = b""
        self._out.clear()
        if self._scope is not None:
            self._scope.cancel()

    async def _rate_limited(self, frame: f.Frame, what: str, wait: float) -> None:
        """Refuse a request over a rate limit (non-fatal)."""
        await self._error(
            frame.request_id,
            ErrorCode.RATE_LIMITED,
            f"too many {what}; retry in {max(1, round(wait + 0.5))} s",
        )

    async def _error(self, request_id: int, code: ErrorCode, message: str) -> None:
        metrics.PROTOCOL_ERRORS.labels(code.name).inc()
        await self._send(f.Error(request_id, int(code), message))

    # --- requests ---------------------------------------------------------------------------

    async def _handle(self, frame: f.Frame) -> None:
        if isinstance(frame, f.Send):
            await self._on_send(frame)
        elif isinstance(frame, f.Ack):
            await self.ctx.store.ack(*self.addr, frame.seqs)
            self._inflight.difference_update(frame.seqs)
            self._acked.set()
            await self._send(f.Ok(frame.request_id))
        elif isinstance(frame, f.Ping):
            await self._send(f.Pong(frame.request_id, frame.opaque))
        elif isinstance(frame, f.Pong):
            pass
        elif isinstance(frame, f.KeyPut):
            await self._on_key_put(frame)
        elif isinstance(frame, f.KeyGet | f.KeyClaim) and (
            wait := self.ctx.abuse.key_lookups.take(self.addr)
        ):
            await self._rate_limited(frame, "key lookups", wait)
        elif isinstance(frame, f.KeyGet):
            try:
                records = await self.ctx.store.get_records(frame.user_id)
            except NotFound:
                await self._error(
                    frame.request_id, ErrorCode.NOT_FOUND, f"no user {display(frame.user_id)}"
                )
                return
            await self._send(self._fit_keys(frame.request_id, frame.user_id, records))
        elif isinstance(frame, f.KeyClaim):
            try:
                record = await self.ctx.store.claim_prekey(
                    frame.user_id, frame.device_id, frame.suite
                )
            except NotFound:
                await self._error(
                    frame.request_id,
                    ErrorCode.NOT_FOUND,
                    f"no device {display(frame.user_id)}/{frame.device_id}",
                )
                return
            await self._send(f.Prekey(frame.request_id, record or b""))
        elif isinstance(frame, f.LinkInvite):
            await self._on_link_invite(frame)
        elif isinstance(frame, f.ConvSend | f.ConvPut | f.ConvGet | f.ConvList):
            await conversations.handle(self, frame)
        elif isinstance(frame, f.SendBlobs | f.BlobStart | f.BlobChunk | f.BlobFinish | f.BlobGet):
            await blobs.handle(self, frame)
        elif isinstance(frame, f.PushSet | f.PushClear):
            await self._on_push(frame)
        elif isinstance(frame, f.QuietSet):
            await self._on_quiet_set(frame)
        elif isinstance(frame, f.Hello):
            await self._on_hello(frame)
        elif isinstance(frame, f.Auth | f.Enroll):
            failures = self.ctx.abuse.auth_failures
            if wait := failures.blocked(self.host):
                metrics.AUTH_FAILURES.labels("too_many_attempts").inc()
                raise ProtocolError(
                    ErrorCode.TOO_MANY_ATTEMPTS,
                    f"too many failed attempts from your address; retry in {int(wait) + 1} s",
                )
            if isinstance(frame, f.Auth):
                await self._on_auth(frame)
            else:
                await self._on_enroll(frame)
        else:  # the state machine admits nothing else from a client
            raise ProtocolError(ErrorCode.UNEXPECTED_FRAME, f"unexpected {type(frame).__name__}")

    def _fit_keys(self, request_id: int, user_id: str, records: list[bytes]) -> f.Keys:
        """KEYS within max_frame_bytes: drop the oldest history, keep the newest and SPKs."""
        limit = self.ctx.max_frame_bytes + 4
        size = len(f.encode_frame(f.Keys(request_id, user_id, ())))
        size += sum(4 + len(r) for r in records)
        if size > limit:
            kinds = [parse_record(r).record_type for r in records]
            for kind in (RECORD_IDENTITY, RECORD_DEVICE_LIST):
                idx = [i for i, k in enumerate(kinds) if k == kind][:-1]  # keep the newest
                for i in idx:
                    if size <= limit:
                        break
                    size -= 4 + len(records[i])
                    records[i] = b""
            records = [r for r in records if r]
        return f.Keys(request_id, user_id, tuple(records))

    async def _on_hello(self, frame: f.Hello) -> None:
        if not frame.min_version <= PROTOCOL_VERSION <= frame.max_version:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"server speaks protocol version {PROTOCOL_VERSION} only",
            )
        await self._send(
            f.Welcome(
                frame.request_id,
                PROTOCOL_VERSION,
                self.ctx.server_name,
                self._nonce,
                self.ctx.max_frame_bytes,
                int(self.ctx.idle_timeout * 1000),
                self.ctx.max_recipients,
                DELIVERY_WINDOW,
            )
        )

    def _refused(self, reason: str, code: ErrorCode, message: str) -> ProtocolError:
        """A failed enrollment or login: counted by reason, answered with ``code``."""
        metrics.AUTH_FAILURES.labels(reason).inc()
        if reason in _GUESSES:
            self.ctx.abuse.auth_failures.charge(self.host)
        return ProtocolError(code, message)

    async def _on_auth(self, frame: f.Auth) -> None:
        device = await self.ctx.store.get_device(frame.user_id, frame.device_id)
        msg = auth_message(self._nonce, self._cert_fp, frame.user_id, frame.device_id)
        if device is None:
            raise self._refused(
                "unknown_device", ErrorCode.AUTH_FAILED, "unknown device or bad signature"
            )
        if not verify_signature(device.transport_pub, frame.signature, msg):
            raise self._refused(
                "bad_signature", ErrorCode.AUTH_FAILED, "unknown device or bad signature"
            )
        if device.revoked_ms is not None:
            raise self._refused(
                "device_revoked", ErrorCode.DEVICE_REVOKED, "this device has been revoked"
            )
        user = await self.ctx.store.get_user(frame.user_id)
        if user is None:
            raise self._refused(
                "unknown_device", ErrorCode.AUTH_FAILED, "unknown device or bad signature"
            )
        if user.disabled:
            raise self._refused(
                "user_disabled", ErrorCode.USER_DISABLED, "this account is disabled"
            )
        await self._authenticated(frame.request_id, frame.user_id, frame.device_id)

    async def _on_enroll(self, frame: f.Enroll) -> None:
        msg = enroll_message(self._nonce, self._cert_fp, frame.invite_code, frame.transport_pub)
        if not verify_signature(frame.transport_pub, frame.signature, msg):
            raise self._refused("bad_signature", ErrorCode.AUTH_FAILED, "bad enrollment signature")
        try:
            code = normalize_invite_code(frame.invite_code)
        except ValueError:
            raise self._refused(
                "invite_invalid", ErrorCode.INVITE_INVALID, "unknown or already used invite"
            ) from None
        try:
            device = await self.ctx.store.redeem_invite(
                code, frame.transport_pub, frame.device_name, now_ms()
            )
        except InviteExpired:
            raise self._refused(
                "invite_expired", ErrorCode.INVITE_EXPIRED, "invite has expired"
            ) from None
        except InviteInvalid:
            raise self._refused(
                "invite_invalid", ErrorCode.INVITE_INVALID, "unknown or already used invite"
            ) from None
        except UserDisabled:
            raise self._refused(
                "user_disabled", ErrorCode.USER_DISABLED, "this account is disabled"
            ) from None
        self._log.info("device.enrolled", user=display(device.user_id), device=device.device_id)
        await self._authenticated(frame.request_id, device.user_id, device.device_id)

    async def _authenticated(self, request_id: int, user_id: str, device_id: int) -> None:
        self.addr = (user_id, device_id)
        await self._send(f.AuthOk(request_id, user_id, device_id, now_ms()))
        self.authenticated = True
        self.ctx.timers.schedule(self._last_rx + self.ctx.idle_timeout / 2, self)
        self._log = self._log.bind(user=display(user_id), device=device_id)
        self._log.info("session.authenticated")
        metrics.AUTHENTICATED.inc()
        self.ctx.presence.register(self)
        await self.ctx.store.touch_device(user_id, device_id, now_ms())
        pusher = self.ctx.pusher
        if pusher is not None:
            self._mobile = pusher.device_kind(self.addr) == f.DEVICE_MOBILE
        if pusher is not None and self.addr in pusher.dropped:
            pusher.dropped.discard(self.addr)
            report = await self.ctx.store.take_push_dropped(user_id, device_id)
            if report is not None:
                await self._send(f.PushDropped(0, *report))
        assert self._nursery is not None
        self._nursery.start_soon(self._pump)

    async def _on_send(self, frame: f.Send | f.SendBlobs) -> None:
        rid = frame.request_id
        n = len(frame.recipients)
        if not 1 <= n <= self.ctx.max_recipients:
            await self._error(
                rid,
                ErrorCode.TOO_MANY_RECIPIENTS,
                f"{n} recipients; allowed 1-{self.ctx.max_recipients}",
            )
            return
        addrs = {(r.user_id, r.device_id) for r in frame.recipients}
        if len(addrs) != n:
            await self._error(rid, ErrorCode.BAD_REQUEST, "a recipient device is named twice")
            return
        if is_conv_event(frame.payload):
            await self._error(rid, ErrorCode.BAD_REQUEST, EVENT_FORGED)
            return
        urgent = isinstance(frame, f.SendUrgent)
        if urgent and not await self.ctx.store.may_send_urgent(self.addr[0], None):
            await self._error(rid, ErrorCode.FORBIDDEN, URGENT_FORBIDDEN)
            return
        try:
            result = await self.ctx.store.enqueue(
                self.addr,
                frame.message_id,
                frame.payload,
                [Recipient(r.user_id, r.device_id, r.part) for r in frame.recipients],
                now_ms(),
                self.ctx.mailbox_max_messages,
                frame.blob_ids if isinstance(frame, f.SendBlobs) else (),
                urgent=urgent,
            )
        except BlobNotFound as e:
            await self._error(rid, ErrorCode.NOT_FOUND, str(e))
            return
        except UnknownRecipient as e:
            await self._error(
                rid,
                ErrorCode.UNKNOWN_RECIPIENT,
                f"unknown recipient {display(e.user_id)}/{e.device_id}",
            )
            return
        except MailboxFull as e:
            await self._error(
                rid,
                ErrorCode.MAILBOX_FULL,
                f"mailbox of {display(e.user_id)}/{e.device_id} is full",
            )
            return
        await self._send(f.Accepted(rid, frame.message_id, result.server_ts_ms, result.duplicate))
        if result.duplicate:  # stored and offered the first time already
            metrics.MESSAGES_DUPLICATE.inc()
            return
        metrics.MESSAGES_ACCEPTED.inc()
        metrics.MAILBOX_ENTRIES_ADDED.inc(len(result.deliveries))
        self.ctx.presence.deliver(
            result, frame.message_id, frame.payload, [r.part for r in frame.recipients], urgent
        )
        if not urgent:
            await self.report_held(frame.message_id, result)

    async def report_held(self, message_id: bytes, result: EnqueueResult) -> None:
        """Tell the sender's devices (a HELD event) if recipients are in quiet hours."""
        quiet, uid = self.ctx.quiet, self.addr[0]
        if quiet is None:
            return
        ends = [
            st.opens_at
            for st in (quiet.state(u) for u in {d[0] for d in result.deliveries} - {uid})
            if st.quiet
        ]
        if not ends:
            return
        store = self.ctx.store
        event = ConvEvent(EVENT_HELD, message_id, int(max(ends) * 1000)).encode()
        event_id = secrets.token_bytes(16)
        try:
            devices = [d.device_id for d in await store.list_devices(uid) if d.active]
            held = await store.enqueue(
                (uid, 0),  # device 0 never exists: the server's own sender address
                event_id,
                event,
                [Recipient(uid, d, b"") for d in devices],
                now_ms(),
                self.ctx.mailbox_max_messages,
            )
        except StoreError as e:  # a status, not a message: never fail the send for it
            self._log.info("quiet.held_event_failed", error=str(e))
            return
        metrics.MAILBOX_ENTRIES_ADDED.inc(len(held.deliveries))
        self.ctx.presence.deliver(held, event_id, event, [b""] * len(held.deliveries))

    async def _on_quiet_set(self, frame: f.QuietSet) -> None:
        quiet, uid, rid = self.ctx.quiet, self.addr[0], frame.request_id
        if quiet is None:
            await self._error(rid, ErrorCode.FORBIDDEN, "quiet hours are not available here")
            return
        name = USER_PREFIX + uid
        if frame.days == 0:
            await self.ctx.store.delete_quiet_policy(name)
        else:
            try:
                spec = user_spec(
                    uid, frame.days, frame.start, frame.end, frame.timezone, frame.defer
                )
            except ValueError as e:
                shown = str(e).encode()[: f.MAX_ERROR_MESSAGE].decode(errors="ignore")
                await self._error(rid, ErrorCode.BAD_REQUEST, shown)
                return
            await self.ctx.store.put_quiet_policy(name, spec, now_ms())
        await quiet.refresh()
        self._log.info("quiet.own_setting", cleared=frame.days == 0)
        self._wake_event.set()  # deferral may start or end
        await self._send(f.Ok(rid))

    async def _on_push(self, frame: f.PushSet | f.PushClear) -> None:
        pusher, rid = self.ctx.pusher, frame.request_id
        if pusher is None:
            await self._error(rid, ErrorCode.FORBIDDEN, "push wake-ups are disabled on this server")
            return
        if isinstance(frame, f.PushClear):
            await self.ctx.store.clear_push_target(*self.addr)
            pusher.registered(self.addr, None)
            self._mobile = False
            self._wake_event.set()
            self._log.info("push.cleared")
            await self._send(f.Ok(rid))
            return
        refusal = pusher.check_target(frame.kind, frame.target)
        if refusal is not None:
            self._log.info("push.refused", reason=refusal)
            shown = refusal.encode()[: f.MAX_ERROR_MESSAGE].decode(errors="ignore")
            await self._error(rid, ErrorCode.FORBIDDEN, shown)
            return
        await self.ctx.store.set_push_target(
            *self.addr, frame.kind, frame.device_kind, frame.target, now_ms()
        )
        pusher.registered(self.addr, frame.kind, frame.device_kind)
        self._mobile = frame.device_kind == f.DEVICE_MOBILE
        self._wake_event.set()  # deferral may start or end
        self._log.info("push.registered", kind=frame.kind, device_kind=frame.device_kind)
        await self._send(f.Ok(rid))

    async def _on_link_invite(self, frame: f.LinkInvite) -> None:
        # A device invites a further device of its own user (the end-to-end layer then links
        # it with a signed device list); the code replaces the user's older unused invites.
        ttl = min(max(frame.ttl_seconds, LINK_TTL_MIN), LINK_TTL_MAX)
        invite = await self.ctx.store.new_invite(self.addr[0], now_ms(), ttl * 1000)
        self._log.info("device.link_invite", ttl_s=ttl)
        await self._send(f.LinkCode(frame.request_id, invite.code, invite.expires_ms))

    async def _on_key_put(self, frame: f.KeyPut) -> None:
        rid, (uid, did) = frame.request_id, self.addr
        if len(frame.record) > self.ctx.max_record_bytes:
            await self._error(
                rid,
                ErrorCode.RECORD_TOO_LARGE,
                f"record of {len(frame.record)} bytes; limit {self.ctx.max_record_bytes}",
            )
            return
        try:
            info = parse_record(frame.record)
        except ProtocolError as e:
            await self._error(rid, e.code, e.message)
            return
        if info.user_id != uid or (info.record_type == RECORD_PREKEY and info.device_id != did):
            await self._error(
                rid,
                ErrorCode.RECORD_FORBIDDEN,
                "records may only be published for your own user and device",
            )
            return
        store, ts = self.ctx.store, now_ms()
        try:
            if info.record_type == RECORD_IDENTITY:
                await store.put_identity(uid, frame.record, ts)
            elif info.record_type == RECORD_DEVICE_LIST:
                assert info.version is not None
                await store.put_device_list(uid, info.version, frame.record, ts)
            else:
                assert info.prekey_kind is not None and info.key_id is not None
                cap = self.ctx.abuse.cfg.max_prekeys_per_device
                if info.prekey_kind == PREKEY_OTPK and (
                    await store.count_prekeys(uid, did, info.suite) >= cap
                ):
                    metrics.ABUSE_REFUSED.labels("prekeys").inc()
                    await self._error(
                        rid, ErrorCode.QUOTA_EXCEEDED, f"{cap} one-time prekeys stored already"
                    )
                    return
                await store.put_prekey(
                    uid, did, info.suite, info.prekey_kind, info.key_id, frame.record, ts
                )
        except RecordStale as e:
            await self._error(rid, ErrorCode.RECORD_STALE, str(e))
            return
        await self._send(f.Ok(rid))
