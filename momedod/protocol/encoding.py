"""MBF, the momedo binary format: strict big-endian encoding shared by frames and records.

Rules (E2E.md section 3, docs/PROTOCOL.md "Encoding"):

* ``u8/u16/u32/u64`` are unsigned big-endian integers; ``u8[n]`` is exactly n raw bytes.
* ``bytes`` is ``u32 length | data``; a string is UTF-8 ``bytes``.
* ``list<T>`` is ``u32 count | T...``.
* A struct is its fields in order: no tags, no optional fields, no alignment.

The :class:`Reader` is strict: truncation, trailing bytes, over-long fields, and invalid
UTF-8 raise :class:`ProtocolError` with :attr:`ErrorCode.MALFORMED`. The :class:`Writer`
range-checks everything it is given and raises :class:`ValueError` on our own mistakes.

The reader works on a ``memoryview`` and copies a variable-length field exactly once (into
the ``bytes`` object it returns); the writer keeps large byte strings by reference and
copies them once, in :meth:`Writer.getvalue`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from .errors import ErrorCode, ProtocolError
from .userid import ALPHABET

__all__ = ["MAX_U16", "MAX_U32", "MAX_U64", "USER_ID_LEN", "Reader", "Writer", "label"]

MAX_U16 = 0xFFFF
"""Largest value of a u16."""
MAX_U32 = 0xFFFF_FFFF
"""Largest value of a u32 (also the largest ``bytes`` length and list count)."""
MAX_U64 = 0xFFFF_FFFF_FFFF_FFFF
"""Largest value of a u64."""

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

# Byte strings at least this long are kept by reference in the Writer instead of being
# appended to its scratch buffer, so a large payload is copied only once.
_BY_REFERENCE = 512

_LABEL_PREFIX = b"momedo/v1/"

USER_ID_LEN = 8
"""A user_id on the wire: u8[8], the ASCII characters of the canonical ID (no dash)."""
_USER_ID_CHARS = ALPHABET.encode("ascii")

T = TypeVar("T")


def label(name: str) -> bytes:
    """Return ``Label(name)`` = ASCII ``"momedo/v1/" + name`` followed by one 0x00 byte.

    Labels separate the domains of signatures and key derivations.
    """
    if not name or not name.isascii() or "\x00" in name:
        raise ValueError(f"label name must be non-empty ASCII without NUL, got {name!r}")
    return _LABEL_PREFIX + name.encode("ascii") + b"\x00"


def _malformed(what: str, problem: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED, f"{what}: {problem}")


class Writer:
    """Builds an MBF byte string field by field.

    Every method returns the writer, so calls can be chained. Values out of range, fixed
    fields of the wrong length and over-long fields raise :class:`ValueError`.
    """

    __slots__ = ("_cur", "_flushed", "_parts")

    def __init__(self) -> None:
        self._parts: list[bytes | bytearray] = []
        self._cur = bytearray()
        self._flushed = 0

    def __len__(self) -> int:
        """Number of bytes written so far."""
        return self._flushed + len(self._cur)

    def _int(self, packer: struct.Struct, value: int, limit: int, kind: str) -> Writer:
        if not 0 <= value <= limit:
            raise ValueError(f"{kind} out of range: {value}")
        self._cur += packer.pack(value)
        return self

    def u8(self, value: int) -> Writer:
        """Append a u8."""
        return self._int(_U8, value, 0xFF, "u8")

    def u16(self, value: int) -> Writer:
        """Append a big-endian u16."""
        return self._int(_U16, value, MAX_U16, "u16")

    def u32(self, value: int) -> Writer:
        """Append a big-endian u32."""
        return self._int(_U32, value, MAX_U32, "u32")

    def u64(self, value: int) -> Writer:
        """Append a big-endian u64."""
        return self._int(_U64, value, MAX_U64, "u64")

    def user_id(self, user_id: str) -> Writer:
        """Append a user_id as u8[8]: 8 characters of the Crockford base32 alphabet."""
        raw = user_id.encode("utf-8")
        if len(raw) != USER_ID_LEN or raw.translate(None, _USER_ID_CHARS):
            raise ValueError(f"user_id must be 8 Crockford base32 characters, got {user_id!r}")
        return self.raw(raw)

    def raw(self, data: bytes) -> Writer:
        """Append bytes as they are, without a length prefix (already-encoded structures)."""
        if len(data) >= _BY_REFERENCE:
            if self._cur:
                self._parts.append(self._cur)
                self._flushed += len(self._cur)
                self._cur = bytearray()
            self._parts.append(data)
            self._flushed += len(data)
        else:
            self._cur += data
        return self

    def fixed(self, data: bytes, n: int) -> Writer:
        """Append ``u8[n]``: exactly n raw bytes, no length prefix."""
        if len(data) != n:
            raise ValueError(f"fixed field must be {n} bytes, got {len(data)}")
        return self.raw(data)

    def bytes_(self, data: bytes, max_len: int = MAX_U32) -> Writer:
        """Append ``bytes``: u32 length then the data (at most ``max_len`` bytes)."""
        if len(data) > max_len:
            raise ValueError(f"field is {len(data)} bytes, at most {max_len} allowed")
        self.u32(len(data))
        return self.raw(data)

    def string(self, text: str, max_len: int = MAX_U32) -> Writer:
        """Append a string as UTF-8 ``bytes`` (``max_len`` counts bytes, not characters)."""
        return self.bytes_(text.encode("utf-8"), max_len)

    def u16_list(self, values: Sequence[int]) -> Writer:
        """Append ``list<u16>``."""
        self.u32(len(values))
        for value in values:
            self.u16(value)
        return self

    def u64_list(self, values: Sequence[int], max_count: int = MAX_U32) -> Writer:
        """Append ``list<u64>`` of at most ``max_count`` entries."""
        if len(values) > max_count:
            raise ValueError(f"list has {len(values)} entries, at most {max_count} allowed")
        self.u32(len(values))
        for value in values:
            self.u64(value)
        return self

    def list_(self, items: Iterable[T], write_item: Callable[[Writer, T], object]) -> Writer:
        """Append ``list<T>``: the count, then ``write_item(self, item)`` for each item."""
        seq = items if isinstance(items, Sequence) else list(items)
        self.u32(len(seq))
        for item in seq:
            write_item(self, item)
        return self

    def getvalue(self, prefix: bytes = b"") -> bytes:
        """Return ``prefix`` followed by everything written (one copy of each part)."""
        if not self._parts:
            return prefix + self._cur
        return b"".join([prefix, *self._parts, self._cur])


class Reader:
    """Reads MBF fields from a byte string, strictly.

    Any problem raises :class:`ProtocolError` with :attr:`ErrorCode.MALFORMED`; the message
    names the field (``what``) and the problem, never the data. Call :meth:`finish` at the
    end to reject trailing bytes. The reader never keeps slices of ``data`` alive beyond a
    call, so the caller may release a ``memoryview`` it passed in as soon as it is done.
    """

    __slots__ = ("_end", "_pos", "_view")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view = data if isinstance(data, memoryview) else memoryview(data)
        self._pos = 0
        self._end = len(self._view)

    @property
    def remaining(self) -> int:
        """Number of bytes not read yet."""
        return self._end - self._pos

    def _take(self, n: int, what: str) -> int:
        start = self._pos
        if n > self._end - start:
            raise _malformed(what, "truncated")
        self._pos = start + n
        return start

    def u8(self, what: str = "u8") -> int:
        """Read a u8."""
        return int(self._view[self._take(1, what)])

    def u16(self, what: str = "u16") -> int:
        """Read a big-endian u16."""
        value: int = _U16.unpack_from(self._view, self._take(2, what))[0]
        return value

    def u32(self, what: str = "u32") -> int:
        """Read a big-endian u32."""
        value: int = _U32.unpack_from(self._view, self._take(4, what))[0]
        return value

    def u64(self, what: str = "u64") -> int:
        """Read a big-endian u64."""
        value: int = _U64.unpack_from(self._view, self._take(8, what))[0]
        return value

    def fixed(self, n: int, what: str = "field") -> bytes:
        """Read ``u8[n]``: exactly n raw bytes."""
        start = self._take(n, what)
        return bytes(self._view[start : start + n])

    def user_id(self, what: str = "user_id") -> str:
        """Read a user_id (u8[8]); MALFORMED unless all 8 bytes are alphabet characters.

        The check character is not verified here: the protocol treats the ID as a name.
        """
        raw = self.fixed(USER_ID_LEN, what)
        if raw.translate(None, _USER_ID_CHARS):
            raise _malformed(what, "not 8 Crockford base32 characters")
        return raw.decode("ascii")

    def bytes_(self, max_len: int, what: str = "field") -> bytes:
        """Read ``bytes`` of at most ``max_len`` bytes."""
        n = self.u32(what)
        if n > max_len:
            raise _malformed(what, f"{n} bytes, at most {max_len} allowed")
        start = self._take(n, what)
        return bytes(self._view[start : start + n])

    def string(self, max_len: int, what: str = "string") -> str:
        """Read a UTF-8 string of at most ``max_len`` bytes."""
        n = self.u32(what)
        if n > max_len:
            raise _malformed(what, f"{n} bytes, at most {max_len} allowed")
        start = self._take(n, what)
        try:
            return str(self._view[start : start + n], "utf-8")
        except UnicodeDecodeError:
            raise _malformed(what, "not valid UTF-8") from None

    def count(self, max_count: int, min_item_size: int, what: str = "list") -> int:
        """Read a ``list<T>`` count of at most ``max_count`` items of >= ``min_item_size`` bytes.

        A count that cannot fit in the remaining bytes is rejected at once, so a forged
        count never makes the caller loop or allocate.
        """
        n = self.u32(what)
        if n > max_count:
            raise _malformed(what, f"{n} entries, at most {max_count} allowed")
        if n * min_item_size > self._end - self._pos:
            raise _malformed(what, "truncated")
        return n

    def u16_list(self, max_count: int, what: str = "list") -> tuple[int, ...]:
        """Read ``list<u16>`` of at most ``max_count`` entries."""
        n = self.count(max_count, 2, what)
        start = self._take(2 * n, what)
        return struct.unpack_from(f">{n}H", self._view, start)

    def u64_list(self, max_count: int, what: str = "list") -> tuple[int, ...]:
        """Read ``list<u64>`` of at most ``max_count`` entries."""
        n = self.count(max_count, 8, what)
        start = self._take(8 * n, what)
        return struct.unpack_from(f">{n}Q", self._view, start)

    def finish(self, what: str = "body") -> None:
        """Require that every byte was read; raise MALFORMED on trailing bytes."""
        if self._pos != self._end:
            raise _malformed(what, f"{self._end - self._pos} trailing bytes")
