"""What every E2E envelope shares: the ``Header``, device addresses and content types.

Layout (docs/E2E.md, "Encoding")::

    Header = u16 magic 0x4D44 ("MD") | u8 version = 1 | u8 type | u16 suite
    Addr   = u8[8] user_id | u32 device_id            (device_id >= 1)

Envelope types: 0x01 SEAL, 0x02 CHAIN, 0x03 MULTI, 0x10 RECORD, 0x11 LINK_REQUEST, 0x12 ROSTER,
0x13 ORG_KEY, 0x20 EVENT (the server's unauthenticated conversation event). A content
type says what the
decrypted ``content`` is; three of them (CHAIN_DIST, SYNC, LINK_PROVISION) carry keys or
private state and are allowed only inside a Seal, never in a conversation envelope.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from momedod.protocol.encoding import MAX_U32, USER_ID_LEN, Reader, Writer
from momedod.protocol.errors import ProtocolError

from .errors import E2EError
from .suites import Suite, find_suite

__all__ = [
    "ADDR_LEN",
    "HEADER_LEN",
    "MAGIC",
    "SEAL_ONLY_CONTENT",
    "VERSION",
    "Addr",
    "ContentType",
    "EnvelopeType",
    "header",
    "is_known_content_type",
    "read_header",
]

MAGIC = 0x4D44
"""First two bytes of every envelope: ASCII "MD"."""
VERSION = 1
"""Header version byte."""
HEADER_LEN = 6
"""Length of an encoded Header."""
ADDR_LEN = USER_ID_LEN + 4
"""Length of an encoded Addr (12 bytes)."""


class EnvelopeType(IntEnum):
    """The ``type`` byte of a Header."""

    SEAL = 0x01
    CHAIN = 0x02
    MULTI = 0x03
    RECORD = 0x10
    LINK_REQUEST = 0x11
    ROSTER = 0x12
    ORG_KEY = 0x13
    EVENT = 0x20


class ContentType(IntEnum):
    """The u16 ``content_type`` of a Seal or conversation payload."""

    TEXT = 1
    CHAIN_DIST = 2
    ROSTER_UPDATE = 3
    DEVICELIST_GOSSIP = 4
    ATTACHMENT = 5
    RECEIPT = 6
    TYPING = 7
    SYNC = 8
    LINK_PROVISION = 9
    REKEY_REQUEST = 10
    RICH_TEXT = 11


SEAL_ONLY_CONTENT = frozenset(
    {ContentType.CHAIN_DIST, ContentType.SYNC, ContentType.LINK_PROVISION}
)
"""Content types allowed only inside a Seal; a Chain (or Multi) envelope with one is rejected."""

_KNOWN_CONTENT = frozenset(int(c) for c in ContentType)


def is_known_content_type(value: int) -> bool:
    """True if ``value`` is one of the eleven defined content types."""
    return value in _KNOWN_CONTENT


@dataclass(frozen=True, order=True)
class Addr:
    """A device address: the user's ID (8 canonical characters) and the device number."""

    user_id: str
    device_id: int

    def __post_init__(self) -> None:
        # Writer.user_id validates the alphabet; checking here keeps bad Addr objects out.
        if not 1 <= self.device_id <= MAX_U32:
            raise ValueError(f"device_id must be 1..{MAX_U32}, got {self.device_id}")
        Writer().user_id(self.user_id)

    def write(self, w: Writer) -> Writer:
        """Append ``u8[8] user_id | u32 device_id``."""
        return w.user_id(self.user_id).u32(self.device_id)

    def encode(self) -> bytes:
        """The 12-byte encoding."""
        return self.write(Writer()).getvalue()

    @classmethod
    def read(cls, r: Reader, what: str = "addr") -> Addr:
        """Read an Addr; ProtocolError(MALFORMED) on a bad user_id, E2EError on device 0."""
        user_id = r.user_id(what)
        device_id = r.u32(what)
        if device_id == 0:
            raise E2EError(reason="malformed")
        return cls(user_id, device_id)

    def __str__(self) -> str:
        return f"{self.user_id}/{self.device_id}"


def header(envelope_type: EnvelopeType, suite_id: int) -> bytes:
    """Encode a Header."""
    return Writer().u16(MAGIC).u8(VERSION).u8(envelope_type).u16(suite_id).getvalue()


def read_header(r: Reader, expected: EnvelopeType, *, allow_test_suites: bool) -> Suite:
    """Read a Header of type ``expected`` and return its suite.

    Raises E2EError (reason ``"header"`` for a wrong magic, version or type, ``"suite"`` for an
    unknown suite, or the test suite when it is not allowed).
    """
    try:
        magic, version, kind, suite_id = r.u16(), r.u8(), r.u8(), r.u16()
    except ProtocolError:
        raise E2EError(reason="malformed") from None
    if magic != MAGIC or version != VERSION or kind != expected:
        raise E2EError(reason="header")
    suite = find_suite(suite_id, allow_test_suites=allow_test_suites)
    if suite is None:
        raise E2EError(reason="suite")
    return suite
