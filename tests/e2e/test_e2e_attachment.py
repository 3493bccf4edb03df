"""Attachments: chunked encryption round trips, the hash check, STREAM properties (truncation,
reordering, extension), streaming equals whole-buffer, and the strict pointer encoding."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest

from momedod.e2e.attachment import (
    CHUNK,
    TAG_LEN,
    AttachmentDecryptor,
    AttachmentEncryptor,
    AttachmentPointer,
    attachment_keys,
    ciphertext_size,
    decrypt_attachment,
    encrypt_attachment,
)
from momedod.e2e.errors import E2EError
from momedod.e2e.padding import padme
from momedod.protocol.encoding import label

KEY = bytes(range(32))
SEALED = CHUNK + TAG_LEN


def _reason(ciphertext: bytes, key: bytes, size: int, sha: bytes | None = None) -> str:
    digest = hashlib.sha256(ciphertext).digest() if sha is None else sha
    with pytest.raises(E2EError) as exc:
        decrypt_attachment(ciphertext, key, digest, size)
    return exc.value.reason


@pytest.mark.parametrize(
    "size",
    [0, 1, 7, 100, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5, 1_000_003],
)
def test_round_trip_sizes(size: int) -> None:
    data = os.urandom(size)
    ct, key, sha = encrypt_attachment(data)
    assert len(key) == 32 and sha == hashlib.sha256(ct).digest()
    assert len(ct) == ciphertext_size(size)
    chunks = max(1, -(-padme(size) // CHUNK))
    assert len(ct) == padme(size) + TAG_LEN * chunks
    assert decrypt_attachment(ct, key, sha, size) == data


def test_twenty_mib_round_trip() -> None:
    data = os.urandom(20 * 1024 * 1024)
    ct, key, sha = encrypt_attachment(data)
    assert decrypt_attachment(ct, key, sha, len(data)) == data


def test_key_schedule_and_first_nonce() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    okm = HKDF(hashes.SHA256(), 39, None, label("att")).derive(KEY)
    assert attachment_keys(KEY) == (okm[:32], okm[32:])
    ct, _, _ = encrypt_attachment(b"abc", KEY)
    # padme(3) = 3: one final chunk, nonce = prefix | u32 0 | 0x01
    nonce = okm[32:] + struct.pack(">I", 0) + b"\x01"
    assert ct == ChaCha20Poly1305(okm[:32]).encrypt(nonce, b"abc", None)


def test_deterministic_with_a_fixed_key() -> None:
    data = bytes(range(256)) * 1000
    assert encrypt_attachment(data, KEY) == encrypt_attachment(data, KEY)
    assert encrypt_attachment(data, KEY)[0] != encrypt_attachment(data)[0]


def test_hash_is_checked_first() -> None:
    ct, key, sha = encrypt_attachment(b"hello" * 100)
    bad_sha = bytes(32)
    assert _reason(ct, key, 500, bad_sha) == "hash"
    assert _reason(ct, bytes(32), 500, bad_sha) == "hash"  # even with a wrong key
    assert _reason(ct, key, 500, sha[:31]) == "hash"


def test_every_flipped_byte_fails() -> None:
    data = os.urandom(CHUNK + 100)
    ct, key, sha = encrypt_attachment(data)
    for i in [*range(0, len(ct), 997), len(ct) - 1]:
        bad = bytearray(ct)
        bad[i] ^= 1
        # with the hash of the tampered data the chunk AEAD catches it
        assert _reason(bytes(bad), key, len(data)) == "decrypt"
        # with the pointer's hash, the hash check catches it first
        assert _reason(bytes(bad), key, len(data), sha) == "hash"


def test_stream_properties() -> None:
    data = os.urandom(3 * CHUNK + 10)
    ct, key, _ = encrypt_attachment(data)
    chunks = [ct[i : i + SEALED] for i in range(0, len(ct), SEALED)]
    assert len(chunks) == 4
    # truncation at a chunk boundary (final chunk missing)
    assert _reason(b"".join(chunks[:3]), key, len(data)) == "decrypt"
    # truncation inside the last chunk, and a dangling partial tag
    assert _reason(ct[:-1], key, len(data)) == "decrypt"
    assert _reason(b"".join(chunks[:3]) + chunks[3][:10], key, len(data)) == "decrypt"
    # reordering
    assert _reason(b"".join([chunks[1], chunks[0], *chunks[2:]]), key, len(data)) == "decrypt"
    # extension with a copy of a chunk
    assert _reason(ct + chunks[1], key, len(data)) == "decrypt"
    # empty
    assert _reason(b"", key, 0) == "decrypt"
    # wrong key
    assert _reason(ct, bytes(32), len(data)) == "decrypt"


def test_size_must_match() -> None:
    data = os.urandom(999) + b"\x01"
    ct, key, sha = encrypt_attachment(data)
    assert padme(1000) == padme(999) == 1024
    assert _reason(ct, key, 999, sha) == "padding"  # byte 999 is not zero
    assert _reason(ct, key, 5000, sha) == "size"
    assert _reason(ct, key, 100, sha) == "size"
    assert decrypt_attachment(ct, key, sha, 1000) == data


def test_padding_must_be_zero() -> None:
    data = b"\x01" * 1024  # padme(1024) = 1024: no padding
    ct, key, sha = encrypt_attachment(data)
    assert _reason(ct, key, 1000, sha) == "padding"


@pytest.mark.parametrize("size", [0, 5, CHUNK, 2 * CHUNK + 3, 600_000])
@pytest.mark.parametrize("piece", [1000, CHUNK, 200_000])
def test_streaming_matches_whole_buffer(size: int, piece: int) -> None:
    data = os.urandom(size)
    ct, _, sha = encrypt_attachment(data, KEY)
    enc = AttachmentEncryptor(size, KEY)
    assert enc.ciphertext_size == len(ct)
    out = [enc.update(data[i : i + piece]) for i in range(0, size, piece)]
    tail, digest = enc.finish()
    assert b"".join([*out, tail]) == ct and digest == sha

    dec = AttachmentDecryptor(KEY, size, sha)
    plain = [dec.update(ct[i : i + piece]) for i in range(0, len(ct), piece)]
    assert b"".join([*plain, dec.finish()]) == data


def test_streaming_errors() -> None:
    data = os.urandom(3 * CHUNK + 10)
    ct, key, sha = encrypt_attachment(data)
    assert len(ct) > 3 * SEALED
    enc = AttachmentEncryptor(10, key)
    with pytest.raises(ValueError):
        enc.update(bytes(11))
    enc.update(bytes(5))
    with pytest.raises(ValueError):
        enc.finish()

    dec = AttachmentDecryptor(key, len(data), sha)
    dec.update(ct[: 3 * SEALED])
    with pytest.raises(E2EError) as exc:
        dec.finish()  # truncated: the final chunk is missing
    assert exc.value.reason == "hash"
    dec = AttachmentDecryptor(key, len(data))
    dec.update(ct[: 3 * SEALED])
    with pytest.raises(E2EError) as exc:
        dec.finish()  # truncated at a chunk boundary, no hash given
    assert exc.value.reason == "decrypt"
    dec = AttachmentDecryptor(key, len(data))
    dec.update(ct[:-5])
    with pytest.raises(E2EError) as exc:
        dec.finish()
    assert exc.value.reason == "decrypt"
    dec = AttachmentDecryptor(key, len(data))
    with pytest.raises(E2EError) as exc:
        dec.update(ct + b"x")
    assert exc.value.reason == "decrypt"
    dec = AttachmentDecryptor(key, len(data), bytes(32))
    dec.update(ct)
    with pytest.raises(E2EError) as exc:
        dec.finish()
    assert exc.value.reason == "hash"
    bad = bytearray(ct)
    bad[10] ^= 1
    dec = AttachmentDecryptor(key, len(data))
    with pytest.raises(E2EError) as exc:
        dec.update(bytes(bad))
    assert exc.value.reason == "decrypt"


# -- pointer ---------------------------------------------------------------------------------


def pointer(**kw: object) -> AttachmentPointer:
    args: dict[str, object] = {
        "blob_id": bytes(range(16)),
        "key": KEY,
        "sha256": bytes(range(32, 64)),
        "size": 123456,
        "mime": "image/jpeg",
        "name": "Bild 1.jpg",
        "caption": "Grüezi",
        "width": 4000,
        "height": 3000,
        "taken_ms": 1_767_225_600_000,
        "lat": 47.3769,
        "lon": -8.5417,
        "accuracy_m": 12.5,
    }
    args.update(kw)
    return AttachmentPointer(**args)  # type: ignore[arg-type]


def test_pointer_round_trip_and_layout() -> None:
    p = pointer()
    data = p.encode()
    q = AttachmentPointer.decode(data)
    assert q.encode() == data
    assert q.lat_e7 == 473_769_000 and q.lon_e7 == -85_417_000 and q.accuracy_cm == 1250
    assert q.lat == pytest.approx(47.3769) and q.lon == pytest.approx(-8.5417)
    assert data[-13:] == b"\x01" + struct.pack(">iiI", 473_769_000, -85_417_000, 1250)
    none = pointer(lat=None, lon=None, accuracy_m=0.0, mime="", name="", caption="")
    nd = none.encode()
    assert AttachmentPointer.decode(nd) == none and not none.has_location
    assert nd[-13:] == bytes(13)
    assert len(nd) == 16 + 32 + 32 + 8 + 4 * 3 + 4 + 4 + 8 + 13


def test_pointer_extremes() -> None:
    for lat, lon in [(90.0, 180.0), (-90.0, -180.0), (0.0, 0.0)]:
        p = pointer(lat=lat, lon=lon)
        assert AttachmentPointer.decode(p.encode()) == p


@pytest.mark.parametrize(
    "kw",
    [
        {"blob_id": bytes(15)},
        {"key": bytes(31)},
        {"size": -1},
        {"mime": "text/plain; charset=utf-8"},
        {"mime": "a" * 256},
        {"name": "../etc/passwd"},
        {"name": "a\\b"},
        {"name": ".."},
        {"name": "a\nb"},
        {"name": "x" * 1025},
        {"caption": "x" * 16_001},
        {"lat": 91.0},
        {"lon": -180.5},
        {"lat": None},
        {"lat": None, "lon": None},  # accuracy without a location
        {"accuracy_m": -1.0},
        {"accuracy_m": float("nan")},
        {"accuracy_m": float("inf")},
        {"lat": float("nan")},
        {"width": 1 << 32},
    ],
)
def test_pointer_constructor_rejects(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        pointer(**kw)


def test_pointer_decode_is_strict() -> None:
    good = pointer().encode()
    no_loc = pointer(lat=None, lon=None, accuracy_m=0.0).encode()
    cases = [
        good + b"\x00",
        good[:-1],
        b"",
        good[:-13] + b"\x02" + good[-12:],  # has_location 2
        no_loc[:-13] + b"\x00" + struct.pack(">iiI", 1, 0, 0),  # location without the flag
        no_loc[:-13] + b"\x00" + struct.pack(">iiI", 0, 0, 5),
        good[:-13] + b"\x01" + struct.pack(">iiI", 900_000_001, 0, 0),
        good[:-13] + b"\x01" + struct.pack(">iiI", 0, -1_800_000_001, 0),
    ]
    # a name with a slash, written by hand
    p = pointer(name="ab")
    enc = p.encode()
    cases.append(enc.replace(b"\x00\x00\x00\x02ab", b"\x00\x00\x00\x02a/"))
    cases.append(enc.replace(b"\x00\x00\x00\x02ab", b"\x00\x00\x00\x02a\xff"))
    for data in cases:
        with pytest.raises(E2EError) as exc:
            AttachmentPointer.decode(data)
        assert exc.value.reason == "pointer"
