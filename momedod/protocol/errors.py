"""Error codes of wire protocol v1 and the exceptions of the protocol layer.

Two kinds of mistakes exist in a protocol conversation, and they get two exceptions:

* :class:`ProtocolError` -- the *peer* broke the protocol (or a request cannot be served).
  It carries the :class:`ErrorCode` that goes on the wire in an ERROR frame, and a short
  message a person can read. The message never contains payload bytes.
* :class:`LocalProtocolError` -- *our own* code tried something the protocol does not allow
  (sending SEND before AUTH_OK, say). That is a bug in the caller, never the peer's fault.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["FATAL_LIMIT", "ErrorCode", "LocalProtocolError", "ProtocolError"]

FATAL_LIMIT = 32
"""Error codes below this value are fatal: the server sends ERROR and closes the connection."""


class ErrorCode(IntEnum):
    """The u16 error codes of wire protocol v1 (see docs/PROTOCOL.md, "Errors")."""

    MALFORMED = 1
    FRAME_TOO_LARGE = 2
    UNKNOWN_FRAME_TYPE = 3
    UNSUPPORTED_VERSION = 4
    UNEXPECTED_FRAME = 5
    AUTH_FAILED = 6
    INVITE_INVALID = 7
    INVITE_EXPIRED = 8
    USER_DISABLED = 9
    DEVICE_REVOKED = 10
    TIMEOUT = 11
    SERVER_BUSY = 12
    SHUTTING_DOWN = 13
    SESSION_REPLACED = 14
    TOO_MANY_ATTEMPTS = 15
    UNKNOWN_RECIPIENT = 32
    MAILBOX_FULL = 33
    TOO_MANY_RECIPIENTS = 34
    RECORD_INVALID = 35
    RECORD_FORBIDDEN = 36
    RECORD_TOO_LARGE = 37
    RECORD_STALE = 38
    NOT_FOUND = 39
    BAD_REQUEST = 40
    FORBIDDEN = 41
    TOO_LARGE = 42
    QUOTA_EXCEEDED = 43
    CONFLICT = 44
    RATE_LIMITED = 45
    INTERNAL = 63

    @property
    def is_fatal(self) -> bool:
        """True for codes < 32: the connection is closed after the ERROR frame."""
        return self.value < FATAL_LIMIT


class ProtocolError(Exception):
    """The peer violated the protocol, or a request failed with a wire error code.

    ``code`` is what goes into the ERROR frame; ``message`` is short, human readable and
    safe to log (it never quotes payload bytes).
    """

    code: ErrorCode
    message: str

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class LocalProtocolError(Exception):
    """Our own side tried to send a frame the protocol does not allow at this point.

    This signals a bug in the calling code; nothing has been sent and the connection state
    is unchanged.
    """
