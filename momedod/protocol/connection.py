"""The protocol v1 connection state machine, for either end of a connection.

Theory of operation
-------------------
A :class:`Connection` does no I/O and knows no clock. The caller feeds it the bytes it
received (:meth:`Connection.receive_data`) and pulls frames out (:meth:`Connection.next_event`);
to send, it hands a frame to :meth:`Connection.send` and writes the returned bytes itself.
Timeouts (handshake, idle) are the caller's business: this object only knows the order in
which frames may flow.

Both ends run the same machine: there is one connection state, and every frame, whichever
side sends it, may move it. The client's object and the server's object therefore agree on
the state at every point of the conversation (allowing for frames in flight). The whole
rule set is the tables below, read top to bottom:

* ``_SENDERS``: which side may send a frame type at all. A frame from the wrong side is
  answered as if its type did not exist (UNKNOWN_FRAME_TYPE).
* ``_HANDSHAKE``: the lock-step handshake. The client opens with HELLO (HELLO ->
  AWAIT_WELCOME), the server answers WELCOME (-> AUTH), the client sends exactly one of
  ENROLL or AUTH (-> AUTHENTICATING), the server answers AUTH_OK (-> READY). Neither side
  sends anything else meanwhile: anything out of turn is UNEXPECTED_FRAME.
* ``_READY``: what each side may send once authenticated; the state stays READY. DRAINED
  may be sent once per session.
* A fatal ERROR (code < 32), which only the server sends, is allowed in every state and
  moves to CLOSED. A non-fatal ERROR answers a request, so only in READY.
* ``request_id`` rules: client requests carry a non-zero id and the server's replies echo it
  (so they are non-zero too); frames the server sends on its own (DELIVER, DELIVER_URGENT,
  DRAINED, PUSH_DROPPED, its PING) carry 0. A PONG copies whatever its PING carried, and a
  fatal ERROR may carry either.

A received frame that breaks a rule raises :class:`ProtocolError` from ``next_event`` and
closes the connection (state CLOSED). The server then still owes the client an explanation,
so it may send exactly one fatal ERROR in CLOSED; nothing else can be sent there. Breaking a
rule on our own side raises :class:`LocalProtocolError` and changes nothing.
"""

from __future__ import annotations

from enum import Enum

from .errors import ErrorCode, LocalProtocolError, ProtocolError
from .frames import (
    DEFAULT_MAX_FRAME_BYTES,
    Accepted,
    Ack,
    Auth,
    AuthOk,
    BlobChunk,
    BlobData,
    BlobFinish,
    BlobGet,
    BlobStart,
    BlobStatus,
    ConvGet,
    ConvInfo,
    ConvList,
    ConvPut,
    Convs,
    ConvSend,
    ConvSendUrgent,
    Deliver,
    DeliverUrgent,
    Drained,
    Enroll,
    Error,
    Frame,
    FrameDecoder,
    FrameType,
    Hello,
    KeyClaim,
    KeyGet,
    KeyPut,
    Keys,
    LinkCode,
    LinkInvite,
    Ok,
    Ping,
    Pong,
    Prekey,
    PushClear,
    PushDropped,
    PushSet,
    QuietSet,
    Send,
    SendBlobs,
    SendUrgent,
    Welcome,
    encode_frame,
)

__all__ = ["Connection", "LocalProtocolError", "Role", "State"]


class Role(Enum):
    """Which end of the connection this object speaks for."""

    CLIENT = "client"
    SERVER = "server"


class State(Enum):
    """The state of a connection, shared by both ends."""

    HELLO = "hello"
    """Nothing sent yet: the client must open with HELLO."""
    AWAIT_WELCOME = "await_welcome"
    """HELLO sent: the server must answer WELCOME (or a fatal ERROR)."""
    AUTH = "auth"
    """WELCOME sent: the client must send ENROLL or AUTH."""
    AUTHENTICATING = "authenticating"
    """ENROLL/AUTH sent: the server must answer AUTH_OK (or a fatal ERROR)."""
    READY = "ready"
    """Authenticated: requests, replies, deliveries, pings."""
    CLOSED = "closed"
    """Finished (fatal ERROR or protocol violation): no more frames flow."""


# Requests a client may send once authenticated, and the replies (other than OK/ERROR) that
# answer them.
_CLIENT_REQUESTS: frozenset[type[Frame]] = frozenset(
    {
        Send,
        SendBlobs,
        ConvSend,
        Ack,
        KeyPut,
        KeyGet,
        KeyClaim,
        LinkInvite,
        ConvPut,
        ConvGet,
        ConvList,
        BlobStart,
        BlobChunk,
        BlobFinish,
        BlobGet,
        PushSet,
        PushClear,
        SendUrgent,
        ConvSendUrgent,
        QuietSet,
    }
)
_SERVER_REPLIES: frozenset[type[Frame]] = frozenset(
    {Accepted, Keys, Prekey, LinkCode, ConvInfo, Convs, BlobStatus, BlobData}
)

_SENDERS: dict[Role, frozenset[type[Frame]]] = {
    Role.CLIENT: frozenset({Hello, Enroll, Auth, Ping, Pong} | _CLIENT_REQUESTS),
    Role.SERVER: frozenset(
        {Welcome, AuthOk, Error, Ok, Deliver, DeliverUrgent, Drained, PushDropped, Ping, Pong}
        | _SERVER_REPLIES
    ),
}

_HANDSHAKE: dict[tuple[Role, State, type[Frame]], State] = {
    (Role.CLIENT, State.HELLO, Hello): State.AWAIT_WELCOME,
    (Role.SERVER, State.AWAIT_WELCOME, Welcome): State.AUTH,
    (Role.CLIENT, State.AUTH, Enroll): State.AUTHENTICATING,
    (Role.CLIENT, State.AUTH, Auth): State.AUTHENTICATING,
    (Role.SERVER, State.AUTHENTICATING, AuthOk): State.READY,
}

_READY: dict[Role, frozenset[type[Frame]]] = {
    Role.CLIENT: _CLIENT_REQUESTS | {Ping, Pong},
    Role.SERVER: _SERVER_REPLIES
    | {Deliver, DeliverUrgent, Drained, PushDropped, Ok, Error, Ping, Pong},
}

# request_id must be 0 for these (frames the server sends unasked) ...
_ZERO_ID: frozenset[tuple[Role, type[Frame]]] = frozenset(
    {
        (Role.SERVER, Deliver),
        (Role.SERVER, DeliverUrgent),
        (Role.SERVER, Drained),
        (Role.SERVER, PushDropped),
        (Role.SERVER, Ping),
    }
)
# ... and non-zero for requests and their replies (a non-fatal ERROR is a reply, too).
_NONZERO_ID: frozenset[tuple[Role, type[Frame]]] = frozenset(
    {(Role.CLIENT, kind) for kind in _SENDERS[Role.CLIENT] - {Pong}}
    | {(Role.SERVER, kind) for kind in {Welcome, AuthOk, Ok, Pong} | _SERVER_REPLIES}
)

_OTHER = {Role.CLIENT: Role.SERVER, Role.SERVER: Role.CLIENT}

# request_id rule per frame class, one table per sender (see _check).
_ID_ANY, _ID_ZERO, _ID_NONZERO = 0, 1, 2


class _Rules:
    """The tables above for one sender, looked up once per connection instead of per frame
    (an Enum's ``__hash__`` is a Python-level call, so ``(role, kind)`` keys are not free).
    """

    __slots__ = ("handshake", "id_rule", "ready", "role", "senders")

    def __init__(self, role: Role) -> None:
        self.role = role
        self.senders = _SENDERS[role]
        self.ready = _READY[role]
        self.id_rule: dict[type[Frame], int] = {
            kind: _ID_ZERO
            if (role, kind) in _ZERO_ID
            else _ID_NONZERO
            if (role, kind) in _NONZERO_ID
            else _ID_ANY
            for kind in self.senders
        }
        self.handshake: dict[tuple[State, type[Frame]], State] = {
            (state, kind): new
            for (sender, state, kind), new in _HANDSHAKE.items()
            if sender is role
        }


_RULES = {role: _Rules(role) for role in Role}
_READY_STATE = State.READY
_CLOSED = State.CLOSED


class _Violation(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code = code
        self.message = message


class Connection:
    """One end of a protocol v1 connection, without I/O (see the module docstring).

    ``max_frame_bytes`` limits received frames and the frames we send; a client starts with
    the default and should call :meth:`set_max_frame_bytes` with the value from WELCOME.
    """

    def __init__(self, role: Role, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._role = role
        self._peer = _OTHER[role]
        self._our_rules = _RULES[role]
        self._peer_rules = _RULES[self._peer]
        self._state = State.HELLO
        self._decoder = FrameDecoder(max_frame_bytes)
        self._drained = False
        self._fatal_error_sent = False

    @property
    def role(self) -> Role:
        """The end this object speaks for."""
        return self._role

    @property
    def state(self) -> State:
        """The current connection state."""
        return self._state

    @property
    def max_frame_bytes(self) -> int:
        """The current frame size limit (length prefix value)."""
        return self._decoder.max_frame_bytes

    @property
    def buffered(self) -> int:
        """Received bytes not yet returned as frames; non-zero at EOF means a cut-off frame."""
        return self._decoder.buffered

    def set_max_frame_bytes(self, n: int) -> None:
        """Change the frame size limit (the client learns the server's from WELCOME)."""
        self._decoder.max_frame_bytes = n

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes received from the peer; frames come out of :meth:`next_event`.

        Data received after the connection is CLOSED is discarded.
        """
        if self._state is not State.CLOSED:
            self._decoder.feed(data)

    def next_event(self) -> Frame | None:
        """Return the next frame from the peer, or None if more data is needed or CLOSED.

        Raises :class:`ProtocolError` if the bytes do not parse or the frame is not allowed
        now (UNEXPECTED_FRAME; UNKNOWN_FRAME_TYPE if only we may send that type; MALFORMED for
        a bad request_id); the connection is CLOSED afterwards. A fatal ERROR from the server
        is returned normally and also leaves the connection CLOSED.
        """
        if self._state is State.CLOSED:
            return None
        try:
            frame = self._decoder.next_frame()
            if frame is None:
                return None
            new_state = self._check(self._peer_rules, frame)
        except ProtocolError:
            self._state = State.CLOSED
            raise
        except _Violation as exc:
            self._state = State.CLOSED
            raise ProtocolError(exc.code, exc.message) from None
        self._apply(frame, new_state)
        return frame

    def send(self, frame: Frame) -> bytes:
        """Check that we may send ``frame`` now, advance the state, and return its bytes.

        Raises :class:`LocalProtocolError` if the frame is not ours to send in this state (or
        exceeds ``max_frame_bytes``), :class:`ValueError` if a field is invalid; in both cases
        the state is unchanged.
        """
        if self._state is State.CLOSED and not (isinstance(frame, Error) and frame.is_fatal):
            raise LocalProtocolError("connection is closed")
        try:
            new_state = self._check(self._our_rules, frame)
        except _Violation as exc:
            raise LocalProtocolError(exc.message) from None
        data = encode_frame(frame)
        if len(data) - 4 > self._decoder.max_frame_bytes:
            raise LocalProtocolError(
                f"{_name(frame)} frame of {len(data) - 4} bytes exceeds max_frame_bytes"
                f" ({self._decoder.max_frame_bytes})"
            )
        self._apply(frame, new_state)
        return data

    def _check(self, rules: _Rules, frame: Frame) -> State:
        """Return the state after ``rules.role`` sends ``frame``, or raise _Violation."""
        kind = type(frame)
        if kind not in rules.senders:
            raise _Violation(
                ErrorCode.UNKNOWN_FRAME_TYPE,
                f"{_name(frame)} is never sent by the {rules.role.value}",
            )
        state = self._state
        fatal = isinstance(frame, Error) and frame.is_fatal
        if fatal:
            if self._fatal_error_sent:
                raise _Violation(ErrorCode.UNEXPECTED_FRAME, "a fatal ERROR was already sent")
            new_state = _CLOSED
        elif state is _READY_STATE and kind in rules.ready:
            if kind is Drained and self._drained:
                raise _Violation(ErrorCode.UNEXPECTED_FRAME, "DRAINED twice in one session")
            new_state = _READY_STATE
        else:
            found = rules.handshake.get((state, kind))
            if found is None:
                raise _Violation(
                    ErrorCode.UNEXPECTED_FRAME,
                    f"{_name(frame)} is not allowed in state {state.name}",
                )
            new_state = found
        rule = rules.id_rule[kind]
        if frame.request_id == 0:
            if rule == _ID_NONZERO or (kind is Error and not fatal):
                raise _Violation(ErrorCode.MALFORMED, f"{_name(frame)} needs a non-zero request_id")
        elif rule == _ID_ZERO:
            raise _Violation(ErrorCode.MALFORMED, f"{_name(frame)} must have request_id 0")
        return new_state

    def _apply(self, frame: Frame, new_state: State) -> None:
        self._state = new_state
        kind = type(frame)
        if kind is Drained:
            self._drained = True
        elif kind is Error and new_state is _CLOSED:
            self._fatal_error_sent = True


def _name(frame: Frame) -> str:
    return FrameType(frame.TYPE).name
