"""Attachments: chunked encryption of files and the pointer a message carries (docs/E2E.md,
"Attachments").

Theory of operation. The sender encrypts the file under a fresh random 32-byte key K, uploads
the ciphertext as a blob and sends an :class:`AttachmentPointer` (blob_id, K, the ciphertext's
SHA-256, the size and display metadata) as the content (type 5 ATTACHMENT) of an ordinary
end-to-end message. The server only ever sees the ciphertext::

    okm       = HKDF-SHA256(ikm = K, salt = "", info = Label("att"), L = 39)
    k, prefix = okm[0:32], okm[32:39]
    padded    = plaintext | zero bytes up to padme(len(plaintext))
    chunk i   = padded[65536 i : 65536 (i+1)]      (at least one chunk, possibly empty)
    sealed i  = ChaCha20-Poly1305(k, nonce = prefix | u32 i | u8 last, aad = "", chunk i)
    ciphertext = sealed 0 | sealed 1 | ...          (each chunk + 16 bytes of tag)

``last`` is 1 only for the final chunk, so the stream is STREAM-like (Hoang, Reyhanitabar,
Rogaway, Vizár 2015): a reordered, truncated (even at a chunk boundary) or extended stream
does not decrypt. Padmé (:func:`momedod.e2e.padding.padme`) hides the exact size in the
ciphertext length (at most 12 % overhead).

The receiver checks ``SHA-256(ciphertext)`` against the pointer before decrypting anything
(``hash``), decrypts chunk by chunk (``decrypt``), then checks that the padded length is
``padme(size)`` (``size``) and that the padding is zero (``padding``), and truncates to
``size``. :class:`AttachmentEncryptor` and :class:`AttachmentDecryptor` do the same piece by
piece for large files; everything here is pure (no I/O, no clock).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from momedod.protocol.encoding import MAX_U32, MAX_U64, Reader, Writer, label
from momedod.protocol.errors import ProtocolError

from .errors import E2EError
from .padding import is_zero, padme

__all__ = [
    "ATT_LABEL",
    "BLOB_ID_LEN",
    "CHUNK",
    "KEY_LEN",
    "MAX_CAPTION",
    "MAX_MIME",
    "MAX_NAME",
    "TAG_LEN",
    "AttachmentDecryptor",
    "AttachmentEncryptor",
    "AttachmentPointer",
    "attachment_keys",
    "ciphertext_size",
    "decrypt_attachment",
    "encrypt_attachment",
]

CHUNK: Final = 65_536
"""Plaintext bytes per chunk (the last one may be shorter)."""
TAG_LEN: Final = 16
"""ChaCha20-Poly1305 tag added to each chunk."""
KEY_LEN: Final = 32
"""Length of the attachment key K."""
BLOB_ID_LEN: Final = 16
"""Length of a blob_id."""
ATT_LABEL: Final = label("att")
"""HKDF info of the attachment key schedule."""
MAX_MIME: Final = 255
"""Longest MIME type (ASCII bytes)."""
MAX_NAME: Final = 1024
"""Longest file name (UTF-8 bytes)."""
MAX_CAPTION: Final = 16_000
"""Longest caption (UTF-8 bytes; the same limit as a text message)."""

_PREFIX_LEN = 7
_SEALED = CHUNK + TAG_LEN
_LAT_MAX = 900_000_000
_LON_MAX = 1_800_000_000


def _fail(reason: str) -> E2EError:
    return E2EError("cannot open attachment", reason=reason)


def attachment_keys(key: bytes) -> tuple[bytes, bytes]:
    """``(k, prefix7)`` = HKDF-SHA256(ikm=K, salt="", info=Label("att"), L=39) split 32 + 7."""
    if len(key) != KEY_LEN:
        raise ValueError(f"an attachment key is {KEY_LEN} bytes, got {len(key)}")
    okm = HKDF(
        algorithm=hashes.SHA256(), length=KEY_LEN + _PREFIX_LEN, salt=None, info=ATT_LABEL
    ).derive(key)
    return okm[:KEY_LEN], okm[KEY_LEN:]


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _chunks(padded_len: int) -> int:
    return max(1, math.ceil(padded_len / CHUNK))


def ciphertext_size(size: int) -> int:
    """The ciphertext length of a ``size``-byte plaintext: padme(size) + 16 per chunk."""
    if not 0 <= size <= MAX_U64:
        raise ValueError(f"bad size {size}")
    padded = padme(size)
    chunks = _chunks(padded)
    if chunks > MAX_U32 + 1:
        raise ValueError("attachment too large")
    return padded + TAG_LEN * chunks


def encrypt_attachment(data: bytes, key: bytes | None = None) -> tuple[bytes, bytes, bytes]:
    """Encrypt a whole file in memory: return ``(ciphertext, K, SHA-256(ciphertext))``.

    ``key`` is for tests and vectors only (default: 32 fresh random bytes). For large files
    prefer :class:`AttachmentEncryptor`, which holds one chunk at a time.
    """
    key = os.urandom(KEY_LEN) if key is None else key
    k, prefix = attachment_keys(key)
    aead = ChaCha20Poly1305(k)
    size = len(data)
    padded = padme(size)
    chunks = _chunks(padded)
    view = memoryview(data)
    sealed: list[bytes] = []
    for i in range(chunks):
        start = i * CHUNK
        end = min(start + CHUNK, padded)
        piece: bytes | memoryview = view[start:end]
        if end > size:  # the last chunks carry the padding
            piece = bytes(view[start:size]) + bytes(end - max(start, size))
        sealed.append(aead.encrypt(_nonce(prefix, i, i == chunks - 1), piece, None))
    del view
    ciphertext = b"".join(sealed)
    return ciphertext, key, hashlib.sha256(ciphertext).digest()


def decrypt_attachment(ciphertext: bytes, key: bytes, sha256: bytes, size: int) -> bytes:
    """Check and decrypt a whole ciphertext; return the ``size``-byte plaintext.

    Raises E2EError (reason ``hash``: SHA-256 mismatch, checked first; ``decrypt``: a chunk
    fails, the stream is truncated/reordered/extended or has a dangling partial tag;
    ``size``: the padded length is not padme(size); ``padding``: non-zero padding).
    """
    if len(sha256) != 32 or not hmac.compare_digest(hashlib.sha256(ciphertext).digest(), sha256):
        raise _fail("hash")
    if len(key) != KEY_LEN:
        raise _fail("decrypt")
    n = len(ciphertext)
    chunks = max(1, math.ceil(n / _SEALED))
    if n - (chunks - 1) * _SEALED < TAG_LEN or chunks > MAX_U32 + 1:
        raise _fail("decrypt")
    if not 0 <= size <= MAX_U64:
        raise _fail("size")
    k, prefix = attachment_keys(key)
    aead = ChaCha20Poly1305(k)
    view = memoryview(ciphertext)
    parts: list[bytes] = []
    padding_ok = True
    for i in range(chunks):
        pos = i * _SEALED
        try:
            chunk = aead.decrypt(
                _nonce(prefix, i, i == chunks - 1), view[pos : pos + _SEALED], None
            )
        except InvalidTag:
            raise _fail("decrypt") from None
        keep = min(len(chunk), max(0, size - i * CHUNK))
        if keep < len(chunk):
            padding_ok = padding_ok and is_zero(chunk[keep:])
            chunk = chunk[:keep]
        parts.append(chunk)
    del view
    if n - TAG_LEN * chunks != padme(size):
        raise _fail("size")
    if not padding_ok:
        raise _fail("padding")
    return b"".join(parts)


class AttachmentEncryptor:
    """Encrypt a file of known ``size`` piece by piece (for large files).

    Feed the plaintext with :meth:`update` (any piece sizes; exactly ``size`` bytes in all),
    writing out what it returns, then call :meth:`finish` for the final chunk and the
    ciphertext's SHA-256. Holds at most one chunk of plaintext.
    """

    def __init__(self, size: int, key: bytes | None = None) -> None:
        """Start encrypting ``size`` bytes under ``key`` (default: fresh random)."""
        self.size = size
        """Plaintext bytes expected."""
        self.ciphertext_size = ciphertext_size(size)
        """Ciphertext bytes this will produce (the blob size to announce)."""
        self.key = os.urandom(KEY_LEN) if key is None else bytes(key)
        """The attachment key K (goes into the pointer)."""
        k, self._prefix = attachment_keys(self.key)
        self._aead = ChaCha20Poly1305(k)
        self._padded = padme(size)
        self._chunks = _chunks(self._padded)
        self._buf = bytearray()
        self._index = 0
        self._received = 0
        self._hash = hashlib.sha256()
        self._done = False

    def _seal(self, chunk: bytes | bytearray, last: bool) -> bytes:
        sealed = self._aead.encrypt(_nonce(self._prefix, self._index, last), bytes(chunk), None)
        self._index += 1
        self._hash.update(sealed)
        return sealed

    def update(self, data: bytes) -> bytes:
        """Take more plaintext; return the ciphertext of the chunks completed by it (maybe b"").

        Raises ValueError if more than ``size`` bytes are given or after :meth:`finish`.
        """
        if self._done:
            raise ValueError("finish() was already called")
        if self._received + len(data) > self.size:
            raise ValueError("more plaintext than the announced size")
        self._received += len(data)
        self._buf += data
        out = []
        # A full chunk is sealed at once unless it is the last chunk of the stream.
        while len(self._buf) >= CHUNK and self._index < self._chunks - 1:
            out.append(self._seal(self._buf[:CHUNK], last=False))
            del self._buf[:CHUNK]
        return b"".join(out)

    def finish(self) -> tuple[bytes, bytes]:
        """Seal the rest (padding included): return ``(final ciphertext, SHA-256 of all)``.

        Raises ValueError if fewer than ``size`` bytes were given.
        """
        if self._done:
            raise ValueError("finish() was already called")
        if self._received != self.size:
            raise ValueError(f"got {self._received} of {self.size} plaintext bytes")
        self._done = True
        self._buf += bytes(self._padded - (self._index * CHUNK + len(self._buf)))
        out = []
        while self._index < self._chunks:
            piece = self._buf[:CHUNK]
            del self._buf[:CHUNK]
            out.append(self._seal(piece, last=self._index == self._chunks - 1))
        return b"".join(out), self._hash.digest()


class AttachmentDecryptor:
    """Decrypt a ciphertext of a known plaintext ``size`` piece by piece (for large files).

    Check the SHA-256 of the whole ciphertext first (e.g. while downloading it, or over the
    stored file): pass it as ``sha256`` and :meth:`finish` checks it again. Plaintext returned
    by :meth:`update` is authentic per chunk but the *stream* is known complete only when
    :meth:`finish` returns: write it to a temporary file and discard that on any E2EError.
    """

    def __init__(self, key: bytes, size: int, sha256: bytes | None = None) -> None:
        """Start decrypting the ciphertext of a ``size``-byte plaintext under ``key``."""
        if len(key) != KEY_LEN:
            raise _fail("decrypt")
        try:
            self.ciphertext_size = ciphertext_size(size)
            """Ciphertext bytes expected."""
        except ValueError:
            raise _fail("size") from None
        self.size = size
        k, self._prefix = attachment_keys(key)
        self._aead = ChaCha20Poly1305(k)
        self._padded = padme(size)
        self._chunks = _chunks(self._padded)
        self._sha256 = sha256
        self._hash = hashlib.sha256()
        self._buf = bytearray()
        self._index = 0
        self._received = 0
        self._emitted = 0
        self._done = False

    def _open(self, sealed: bytes | bytearray) -> bytes:
        last = self._index == self._chunks - 1
        try:
            chunk = self._aead.decrypt(_nonce(self._prefix, self._index, last), bytes(sealed), None)
        except InvalidTag:
            raise _fail("decrypt") from None
        self._index += 1
        # Keep only real bytes; the padding must be zero.
        keep = max(0, min(len(chunk), self.size - self._emitted))
        if not is_zero(chunk[keep:]):
            raise _fail("padding")
        self._emitted += keep
        return chunk[:keep]

    def update(self, data: bytes) -> bytes:
        """Take more ciphertext; return the plaintext of the chunks it completed (maybe b"").

        Raises E2EError(``decrypt``) if the stream is longer than expected or a chunk fails.
        """
        if self._done:
            raise ValueError("finish() was already called")
        if self._received + len(data) > self.ciphertext_size:
            raise _fail("decrypt")
        self._received += len(data)
        self._hash.update(data)
        self._buf += data
        out = []
        while len(self._buf) >= _SEALED and self._index < self._chunks - 1:
            out.append(self._open(self._buf[:_SEALED]))
            del self._buf[:_SEALED]
        return b"".join(out)

    def finish(self) -> bytes:
        """Decrypt the final chunk and return its plaintext; raise E2EError (``decrypt``) if the
        stream was truncated, (``hash``) if ``sha256`` was given and does not match."""
        if self._done:
            raise ValueError("finish() was already called")
        self._done = True
        if self._sha256 is not None and not hmac.compare_digest(self._hash.digest(), self._sha256):
            raise _fail("hash")
        if self._received != self.ciphertext_size or self._index != self._chunks - 1:
            raise _fail("decrypt")
        return self._open(self._buf)


# -- the pointer -----------------------------------------------------------------------------


def _to_i32(value: int) -> int:
    return value & 0xFFFF_FFFF


def _from_i32(value: int) -> int:
    return value - (1 << 32) if value & 0x8000_0000 else value


def _check_mime(mime: str) -> bool:
    return len(mime) <= MAX_MIME and all(0x21 <= ord(c) <= 0x7E for c in mime)


def _check_name(name: str) -> bool:
    if len(name.encode("utf-8")) > MAX_NAME or name in (".", ".."):
        return False
    return not any(ord(c) < 0x20 or ord(c) == 0x7F or c in "/\\" for c in name)


@dataclass(frozen=True)
class AttachmentPointer:
    """The content of an ATTACHMENT message::

        u8[16] blob_id | u8[32] K | u8[32] sha256 | u64 size | bytes mime | bytes name
        | bytes caption | u32 width | u32 height | u64 taken_ms | u8 has_location
        | i32 lat_e7 | i32 lon_e7 | u32 accuracy_cm

    ``sha256`` is the SHA-256 of the ciphertext and ``size`` the plaintext length (unpadded).
    ``mime`` is printable ASCII without spaces (≤ 255 bytes, may be empty = unknown); ``name``
    a bare file name (≤ 1,024 UTF-8 bytes, no control characters, ``/`` or ``\\``, not ``.``
    or ``..``; may be empty); ``caption`` ≤ 16,000 UTF-8 bytes. ``width``/``height`` are pixels
    (0 = not an image or unknown); ``taken_ms`` 0 = unknown. The location is given in degrees
    (``lat`` -90..90, ``lon`` -180..180, both None = no location) and metres of accuracy; on
    the wire it is 1e-7 degrees (i32, two's complement) and centimetres (u32). Without a
    location all three wire fields are zero. The constructor raises ValueError on a bad
    field, :meth:`decode` E2EError(reason="pointer").
    """

    blob_id: bytes
    key: bytes
    sha256: bytes
    size: int
    mime: str = "application/octet-stream"
    name: str = ""
    caption: str = ""
    width: int = 0
    height: int = 0
    taken_ms: int = 0
    lat: float | None = None
    lon: float | None = None
    accuracy_m: float = 0.0

    def __post_init__(self) -> None:
        if (len(self.blob_id), len(self.key), len(self.sha256)) != (BLOB_ID_LEN, KEY_LEN, 32):
            raise ValueError("blob_id is 16 bytes, key and sha256 32 bytes")
        if not 0 <= self.size <= MAX_U64 or not 0 <= self.taken_ms <= MAX_U64:
            raise ValueError("size and taken_ms must fit a u64")
        if not (0 <= self.width <= MAX_U32 and 0 <= self.height <= MAX_U32):
            raise ValueError("width and height must fit a u32")
        if not _check_mime(self.mime):
            raise ValueError("mime must be printable ASCII without spaces, at most 255 bytes")
        if not _check_name(self.name):
            raise ValueError("name must be a bare file name of at most 1024 bytes")
        if len(self.caption.encode("utf-8")) > MAX_CAPTION:
            raise ValueError(f"caption longer than {MAX_CAPTION} bytes")
        if (self.lat is None) != (self.lon is None):
            raise ValueError("give both lat and lon, or neither")
        if self.lat is None and self.accuracy_m:
            raise ValueError("accuracy without a location")
        if (
            self.lat is not None
            and self.lon is not None
            and not (-90.0 <= self.lat <= 90.0 and -180.0 <= self.lon <= 180.0)
        ):
            raise ValueError("lat must be -90..90 and lon -180..180 degrees")
        if not (math.isfinite(self.accuracy_m) and self.accuracy_m >= 0.0) or (
            round(self.accuracy_m * 100) > MAX_U32
        ):
            raise ValueError("accuracy_m must be 0..42,949,672 metres")

    @property
    def has_location(self) -> bool:
        """True if the pointer carries a location."""
        return self.lat is not None

    @property
    def lat_e7(self) -> int:
        """The latitude on the wire (1e-7 degrees; 0 without a location)."""
        return round(self.lat * 10_000_000) if self.lat is not None else 0

    @property
    def lon_e7(self) -> int:
        """The longitude on the wire (1e-7 degrees; 0 without a location)."""
        return round(self.lon * 10_000_000) if self.lon is not None else 0

    @property
    def accuracy_cm(self) -> int:
        """The accuracy on the wire (centimetres)."""
        return round(self.accuracy_m * 100)

    def encode(self) -> bytes:
        """The AttachmentPointer bytes."""
        w = Writer().fixed(self.blob_id, BLOB_ID_LEN).fixed(self.key, KEY_LEN)
        w.fixed(self.sha256, 32).u64(self.size)
        w.string(self.mime, MAX_MIME).string(self.name, MAX_NAME)
        w.string(self.caption, MAX_CAPTION)
        w.u32(self.width).u32(self.height).u64(self.taken_ms)
        w.u8(1 if self.has_location else 0)
        w.u32(_to_i32(self.lat_e7)).u32(_to_i32(self.lon_e7)).u32(self.accuracy_cm)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> AttachmentPointer:
        """Parse strictly; E2EError(reason="pointer") on truncation, trailing bytes, an
        over-long or invalid field, has_location not 0/1, coordinates out of range, or
        location fields that are not all zero without a location."""
        try:
            r = Reader(data)
            blob_id, key = r.fixed(BLOB_ID_LEN, "blob_id"), r.fixed(KEY_LEN, "key")
            sha256, size = r.fixed(32, "sha256"), r.u64("size")
            mime = r.string(MAX_MIME, "mime")
            name = r.string(MAX_NAME, "name")
            caption = r.string(MAX_CAPTION, "caption")
            width, height, taken_ms = r.u32("width"), r.u32("height"), r.u64("taken_ms")
            has_location = r.u8("has_location")
            lat_e7, lon_e7 = _from_i32(r.u32("lat_e7")), _from_i32(r.u32("lon_e7"))
            accuracy_cm = r.u32("accuracy_cm")
            r.finish("AttachmentPointer")
        except ProtocolError:
            raise E2EError("invalid attachment pointer", reason="pointer") from None
        if has_location not in (0, 1):
            raise E2EError("invalid attachment pointer", reason="pointer")
        if has_location == 0 and (lat_e7 or lon_e7 or accuracy_cm):
            raise E2EError("invalid attachment pointer", reason="pointer")
        if abs(lat_e7) > _LAT_MAX or abs(lon_e7) > _LON_MAX:
            raise E2EError("invalid attachment pointer", reason="pointer")
        location = has_location == 1
        try:
            return cls(
                blob_id,
                key,
                sha256,
                size,
                mime,
                name,
                caption,
                width,
                height,
                taken_ms,
                lat_e7 / 10_000_000 if location else None,
                lon_e7 / 10_000_000 if location else None,
                accuracy_cm / 100,
            )
        except ValueError:
            raise E2EError("invalid attachment pointer", reason="pointer") from None
