"""The server's conversation event (ConvEvent): a hint that a conversation changed.

Layout (docs/E2E.md; delivered as an ordinary DELIVER payload with a random message_id)::

    ConvEvent = Header(type 0x20 EVENT, suite 0) | u8 what | u8[16] conv_id | u64 epoch
    what: 1 ROSTER_CHANGED, 2 REMOVED, 3 DELETED,
          4 HELD (conv_id is then the message_id of a message you sent, epoch the time in
          ms when its recipients' quiet hours end and their phones get it)

It is not authenticated: the server makes it, and a client treats it only as a reason to
fetch the conversation (CONV_GET) and verify the signed rosters it gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from momedod.protocol.encoding import Reader, Writer
from momedod.protocol.errors import ProtocolError

from .envelope import HEADER_LEN, MAGIC, VERSION, EnvelopeType, header
from .errors import E2EError

__all__ = [
    "CONV_EVENT_LEN",
    "EVENT_DELETED",
    "EVENT_HELD",
    "EVENT_REMOVED",
    "EVENT_ROSTER_CHANGED",
    "ConvEvent",
    "is_conv_event",
    "parse_conv_event",
]

EVENT_ROSTER_CHANGED: Final = 1
"""The roster changed: fetch it (CONV_GET) and verify."""
EVENT_REMOVED: Final = 2
"""You are no longer a member."""
EVENT_DELETED: Final = 3
"""The operator deleted the conversation."""
EVENT_HELD: Final = 4
"""Your message reached recipients in quiet hours: their phones get it when those end."""
CONV_EVENT_LEN: Final = HEADER_LEN + 1 + 16 + 8
"""Length of an encoded ConvEvent."""

_WHATS = frozenset({EVENT_ROSTER_CHANGED, EVENT_REMOVED, EVENT_DELETED, EVENT_HELD})
_PREFIX = header(EnvelopeType.EVENT, 0)


@dataclass(frozen=True)
class ConvEvent:
    """One conversation event: ``what`` happened to ``conv_id`` (now at ``epoch``)."""

    what: int
    conv_id: bytes
    epoch: int

    def __post_init__(self) -> None:
        if self.what not in _WHATS:
            raise ValueError(f"unknown event {self.what}")
        if len(self.conv_id) != 16:
            raise ValueError("conv_id must be 16 bytes")
        if not 0 <= self.epoch <= 0xFFFF_FFFF_FFFF_FFFF:
            raise ValueError(f"epoch out of range: {self.epoch}")

    def encode(self) -> bytes:
        """The ConvEvent bytes."""
        return Writer().u8(self.what).fixed(self.conv_id, 16).u64(self.epoch).getvalue(_PREFIX)


def is_conv_event(payload: bytes) -> bool:
    """True if ``payload`` starts with the EVENT Header (a cheap check before parsing)."""
    return payload[:HEADER_LEN] == _PREFIX


def parse_conv_event(payload: bytes) -> ConvEvent:
    """Parse a ConvEvent strictly; E2EError(reason="event") if malformed."""
    try:
        r = Reader(payload)
        magic, version, kind, suite = r.u16(), r.u8(), r.u8(), r.u16()
        if (magic, version, kind, suite) != (MAGIC, VERSION, EnvelopeType.EVENT, 0):
            raise E2EError("invalid event: not an EVENT header", reason="event")
        what = r.u8("what")
        conv_id = r.fixed(16, "conv_id")
        epoch = r.u64("epoch")
        r.finish("ConvEvent")
        return ConvEvent(what, conv_id, epoch)
    except ProtocolError as exc:
        raise E2EError(f"invalid event: {exc.message}", reason="event") from None
    except ValueError as exc:
        raise E2EError(f"invalid event: {exc}", reason="event") from None
