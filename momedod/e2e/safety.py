"""What people compare and scan: safety numbers, QR pin strings; and derived identifiers.

All of it is a pure function of user IDs and identity fingerprints/keys (E2E.md sections 4.4,
6.1; docs/E2E.md "Safety numbers and QR"). A ``user_id`` is always the canonical 8-character
ID, encoded as its 8 ASCII bytes (``u8[8]``).

Safety number (Signal's numeric fingerprint, over UIKPub)::

    h_1 = SHA-512(u16 1 | UIKPub | user_id)
    h_i = SHA-512(h_{i-1} | UIKPub)              for i = 2 .. 5200
    digits(party) = for j in 0..5: "%05d" % (uint40_be(h_5200[5j : 5j+5]) mod 100000)
                    (the first 30 of the 64 bytes of h_5200; 30 digits)
    safety number = the two parties' 30-digit strings, sorted (smaller first), concatenated

Both sides compute the same 60 digits; they are shown as 12 groups of 5.

QR pin string: ``MOMEDO1:<user_id>:<FP as RFC 4648 base32, upper case, no padding>`` (52
characters, as momedod.protocol.invite.fingerprint_text).

Key-view digest and 1:1 conversation ID::

    kvd       = SHA-256(Label("kvd") | (user_id | uik_fp) of every member, sorted by those
                40 bytes)[:16]
    dm_conv_id = SHA-256(Label("dm") | min(uid_a, uid_b) | max(uid_a, uid_b))[:16]
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

from momedod.protocol.encoding import Writer, label
from momedod.protocol.invite import fingerprint_text, parse_fingerprint_text
from momedod.protocol.userid import is_valid

from .identity import FP_LEN, HybridPublicKey

__all__ = [
    "QR_PREFIX",
    "SAFETY_ITERATIONS",
    "dm_conv_id",
    "format_safety_number",
    "kvd",
    "parse_qr",
    "qr_string",
    "safety_digits",
    "safety_number",
]

SAFETY_ITERATIONS: Final = 5200
"""SHA-512 invocations per party (the first included)."""
SAFETY_VERSION: Final = 1
"""The u16 that starts the first hash input."""
QR_PREFIX: Final = "MOMEDO1:"
"""The start of every QR pin string."""
KVD_LEN: Final = 16
"""Bytes in a key-view digest."""
CONV_ID_LEN: Final = 16
"""Bytes in a conversation ID."""

_KVD_LABEL = label("kvd")
_DM_LABEL = label("dm")


def _uid_bytes(user_id: str) -> bytes:
    """The u8[8] wire form (8 Crockford base32 characters; ValueError otherwise)."""
    return Writer().user_id(user_id).getvalue()


def safety_digits(user_id: str, uik: HybridPublicKey) -> str:
    """Return one party's 30 digits of the safety number."""
    key = uik.encode()
    h = hashlib.sha512(SAFETY_VERSION.to_bytes(2, "big") + key + _uid_bytes(user_id)).digest()
    for _ in range(SAFETY_ITERATIONS - 1):
        h = hashlib.sha512(h + key).digest()
    return "".join(f"{int.from_bytes(h[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def safety_number(user_a: str, uik_a: HybridPublicKey, user_b: str, uik_b: HybridPublicKey) -> str:
    """Return the 60-digit safety number of two parties (the same whichever is ``a``)."""
    return "".join(sorted((safety_digits(user_a, uik_a), safety_digits(user_b, uik_b))))


def format_safety_number(number: str) -> str:
    """Return a 60-digit safety number as 12 groups of 5 digits separated by spaces."""
    if len(number) != 60 or not number.isdigit():
        raise ValueError("a safety number has 60 digits")
    return " ".join(number[i : i + 5] for i in range(0, 60, 5))


def qr_string(user_id: str, fp: bytes) -> str:
    """Return the QR pin string ``MOMEDO1:<user_id>:<base32(FP)>``."""
    if not is_valid(user_id):
        raise ValueError(f"not a valid user ID: {user_id!r}")
    return f"{QR_PREFIX}{user_id}:{fingerprint_text(fp)}"


def parse_qr(text: str) -> tuple[str, bytes]:
    """Parse a QR pin string into ``(user_id, fp)``; raise ValueError if it is not one.

    Strict: the prefix, a canonical user ID with a valid check character, and a canonical
    base32 fingerprint (upper or lower case accepted); surrounding whitespace is ignored.
    """
    text = text.strip()
    if not text.startswith(QR_PREFIX):
        raise ValueError(f"not a momedo QR pin string (expected {QR_PREFIX}...)")
    parts = text[len(QR_PREFIX) :].split(":")
    if len(parts) != 2:
        raise ValueError("a QR pin string has the form MOMEDO1:<user_id>:<fingerprint>")
    user_id, fp_text = parts
    if not is_valid(user_id):
        raise ValueError(f"QR pin string: {user_id!r} is not a valid user ID")
    return user_id, parse_fingerprint_text(fp_text)


def kvd(members: Iterable[tuple[str, bytes]]) -> bytes:
    """Return the 16-byte key-view digest of ``(user_id, uik_fp)`` members (any order).

    A user ID may appear only once (ValueError otherwise).
    """
    items = []
    for user_id, fp in members:
        if len(fp) != FP_LEN:
            raise ValueError(f"a fingerprint is {FP_LEN} bytes, got {len(fp)}")
        items.append(_uid_bytes(user_id) + fp)
    if len({item[:8] for item in items}) != len(items):
        raise ValueError("a member appears twice in the key view")
    return hashlib.sha256(_KVD_LABEL + b"".join(sorted(items))).digest()[:KVD_LEN]


def dm_conv_id(uid_a: str, uid_b: str) -> bytes:
    """Return the 16-byte conversation ID of the 1:1 chat of two users (order-independent)."""
    a, b = sorted((_uid_bytes(uid_a), _uid_bytes(uid_b)))
    return hashlib.sha256(_DM_LABEL + a + b).digest()[:CONV_ID_LEN]
