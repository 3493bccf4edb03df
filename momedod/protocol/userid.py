"""User IDs: 8 characters of Crockford base32, the last one a Luhn mod 32 check character.

A user ID such as ``M8N22HTR`` (shown to people as ``M8N2-2HTR``) is 7 random characters
(35 bits) plus one check character that catches every single mistyped character and most
swaps of neighbours. The protocol treats the ID as an opaque name: on the wire it is the 8
ASCII characters of the canonical form.

Check character (Luhn mod N, N = 32, code point = index in :data:`ALPHABET`): walk the 7
body characters from right to left with a factor starting at 2 and alternating 2, 1, 2, ...;
for each, ``addend = factor * code_point``, then ``addend = addend // 32 + addend % 32``;
sum the addends; the check code point is ``(32 - sum % 32) % 32``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = [
    "ALPHABET",
    "InvalidUserId",
    "check_char",
    "crockford_clean",
    "display",
    "generate",
    "is_valid",
    "normalize",
]

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
"""Crockford base32 alphabet: digits and upper-case letters without I, L, O and U."""

_N = len(ALPHABET)
_INDEX = {c: i for i, c in enumerate(ALPHABET)}
_BODY_LEN = 7
_ID_LEN = 8

# Input normalisation shared with invite codes: case-fold, then map the look-alikes.
_LOOKALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})


class InvalidUserId(ValueError):
    """The text is not a user ID; the message says why (length, character, check)."""


def crockford_clean(text: str) -> str:
    """Upper-case ``text``, drop spaces/dashes/whitespace, map O to 0 and I, L to 1.

    No validation happens here; characters outside the alphabet (such as U) remain.
    """
    return "".join(text.split()).replace("-", "").upper().translate(_LOOKALIKES)


def _luhn_sum(chars: str, factor: int) -> int:
    total = 0
    for c in reversed(chars):
        addend = factor * _INDEX[c]
        factor = 1 if factor == 2 else 2
        total += addend // _N + addend % _N
    return total


def check_char(body7: str) -> str:
    """Return the Luhn mod 32 check character for a 7-character canonical body."""
    if len(body7) != _BODY_LEN or any(c not in _INDEX for c in body7):
        raise InvalidUserId(f"user ID body must be 7 characters of {ALPHABET}, got {body7!r}")
    return ALPHABET[(_N - _luhn_sum(body7, 2) % _N) % _N]


def generate(randbytes: Callable[[int], bytes] = os.urandom) -> str:
    """Return a new random user ID (canonical form): 7 uniform characters plus the check.

    ``randbytes(n)`` must return n random bytes; five are drawn and their top 35 bits used,
    5 bits per character.
    """
    bits = int.from_bytes(randbytes(5), "big") >> 5
    body = "".join(ALPHABET[(bits >> (5 * i)) & 31] for i in reversed(range(_BODY_LEN)))
    return body + check_char(body)


def is_valid(uid: str) -> bool:
    """True if ``uid`` is a canonical user ID (8 alphabet characters, correct check)."""
    if len(uid) != _ID_LEN or any(c not in _INDEX for c in uid):
        return False
    return _luhn_sum(uid, 1) % _N == 0


def normalize(text: str) -> str:
    """Turn what a person typed into the canonical user ID, or raise :class:`InvalidUserId`.

    Accepts lower case, dashes and spaces, and O/I/L for 0/1/1 (``m8n2-2htr`` ->
    ``M8N22HTR``).
    """
    uid = crockford_clean(text)
    if len(uid) != _ID_LEN:
        raise InvalidUserId(f"a user ID has 8 characters, got {len(uid)} in {text!r}")
    for c in uid:
        if c not in _INDEX:
            raise InvalidUserId(f"{c!r} is not a user ID character (in {text!r})")
    if not is_valid(uid):
        raise InvalidUserId(f"check character does not match in {text!r}: probably a typo")
    return uid


def display(uid: str) -> str:
    """Return the display form ``XXXX-XXXX`` of a canonical user ID."""
    if len(uid) != _ID_LEN or any(c not in _INDEX for c in uid):
        raise InvalidUserId(f"not a canonical user ID: {uid!r}")
    return f"{uid[:4]}-{uid[4:]}"
