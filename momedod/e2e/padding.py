"""Length hiding: 256-byte buckets for messages, Padmé for attachments.

Messages (Seal and conversation payloads) end in ``bytes padding | bytes sig``. The sender
picks the number of zero bytes so that the whole serialised payload is a multiple of
:data:`BUCKET` (256) bytes; the receiver rejects a payload whose length is not a multiple of
256 or whose padding holds a non-zero byte. Receipts and typing indicators therefore look
like short texts on the wire.

Attachments (later) are padded to the Padmé length of Nikitin et al., "Reducing Metadata
Leakage from Encrypted Files and Communication with PURBs" (PETS 2019), Algorithm 1: the
length keeps its top ``floor(log2(E)) + 1`` bits (E = floor(log2 L)) and the rest are rounded
up, which leaks O(log log L) bits at an overhead of at most 12 %.
"""

from __future__ import annotations

__all__ = ["BUCKET", "is_zero", "padded_length", "padding_for", "padme"]

BUCKET = 256
"""Message payloads are padded to a multiple of this many bytes."""


def padded_length(n: int, block: int = BUCKET) -> int:
    """The smallest multiple of ``block`` that is >= ``n`` (0 stays 0)."""
    if n < 0 or block < 1:
        raise ValueError(f"bad length {n} or block {block}")
    return -(-n // block) * block


def padding_for(n: int, block: int = BUCKET) -> int:
    """How many zero bytes make ``n`` bytes a multiple of ``block``."""
    return padded_length(n, block) - n


def is_zero(data: bytes) -> bool:
    """True if every byte of ``data`` is 0x00 (the only padding a receiver accepts)."""
    return not any(data)


def padme(length: int) -> int:
    """The Padmé padded length of ``length`` bytes (PURBs paper, Algorithm 1).

    ``E = floor(log2 L)``, ``S = floor(log2 E) + 1``, the low ``E - S`` bits are rounded up.
    Lengths below 8 come out unchanged.
    """
    if length < 0:
        raise ValueError(f"negative length {length}")
    if length < 2:
        return length
    e = length.bit_length() - 1  # floor(log2 L)
    s = e.bit_length()  # floor(log2 E) + 1
    mask = (1 << (e - s)) - 1
    return (length + mask) & ~mask
