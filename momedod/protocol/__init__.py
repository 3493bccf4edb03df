"""momedo wire protocol v1, sans I/O: frames, the connection state machine, identifiers.

Nothing here touches sockets, trio or the clock; docs/PROTOCOL.md is the specification.
The submodules hold the details (``frames``, ``connection``, ``userid``, ``invite``, ``auth``,
``records``, ``encoding``, ``errors``); the names used most are re-exported here.
"""

from .connection import Connection, Role, State
from .encoding import Reader, Writer, label
from .errors import ErrorCode, LocalProtocolError, ProtocolError
from .frames import (
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Accepted,
    Ack,
    Auth,
    AuthOk,
    Deliver,
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
    Ok,
    Ping,
    Pong,
    Prekey,
    Recipient,
    Send,
    Welcome,
    decode_frame,
    encode_frame,
)
from .invite import InvalidInviteLink, InviteLink, parse_invite_link
from .records import RecordInfo, parse_record
from .userid import InvalidUserId

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "Accepted",
    "Ack",
    "Auth",
    "AuthOk",
    "Connection",
    "Deliver",
    "Drained",
    "Enroll",
    "Error",
    "ErrorCode",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "Hello",
    "InvalidInviteLink",
    "InvalidUserId",
    "InviteLink",
    "KeyClaim",
    "KeyGet",
    "KeyPut",
    "Keys",
    "LocalProtocolError",
    "Ok",
    "Ping",
    "Pong",
    "Prekey",
    "ProtocolError",
    "Reader",
    "Recipient",
    "RecordInfo",
    "Role",
    "Send",
    "State",
    "Welcome",
    "Writer",
    "decode_frame",
    "encode_frame",
    "label",
    "parse_invite_link",
    "parse_record",
]
