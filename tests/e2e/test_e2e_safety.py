"""Safety numbers, QR pin strings, key-view digests and 1:1 conversation IDs: what two people
compare must come out the same on both phones."""

from __future__ import annotations

import base64
import hashlib

import pytest

from momedod.e2e.identity import UserIdentityKey
from momedod.e2e.safety import (
    dm_conv_id,
    format_safety_number,
    kvd,
    parse_qr,
    qr_string,
    safety_digits,
    safety_number,
)
from momedod.protocol.encoding import label

ALICE, BOB, CAROL = "A1CE0005", "B0BB0B0Y", "C4R0100H"
A = UserIdentityKey(bytes(range(32)))
B = UserIdentityKey(bytes(range(32, 64)))
C = UserIdentityKey(bytes(range(64, 96)))


def reference_digits(user_id: str, uik: UserIdentityKey) -> str:
    """E2E.md section 4.4 read literally, with the hash count written out."""
    key = uik.public.encode()
    h = hashlib.sha512(b"\x00\x01" + key + user_id.encode()).digest()
    count = 1
    while count < 5200:
        h = hashlib.sha512(h + key).digest()
        count += 1
    first30 = h[:30]
    groups = [int.from_bytes(first30[i : i + 5], "big") % 100_000 for i in range(0, 30, 5)]
    return "".join(f"{g:05d}" for g in groups)


def test_safety_digits_follow_the_specification() -> None:
    digits = safety_digits(ALICE, A.public)
    assert len(digits) == 30 and digits.isdigit()
    assert digits == reference_digits(ALICE, A)


def test_safety_number_is_the_same_on_both_sides_and_stable() -> None:
    ab = safety_number(ALICE, A.public, BOB, B.public)
    assert ab == safety_number(BOB, B.public, ALICE, A.public)
    assert len(ab) == 60 and ab.isdigit()
    da, db = safety_digits(ALICE, A.public), safety_digits(BOB, B.public)
    assert ab == min(da, db) + max(da, db)
    assert ab == safety_number(ALICE, A.public, BOB, B.public)  # no randomness


def test_safety_number_changes_with_either_key_or_id() -> None:
    ab = safety_number(ALICE, A.public, BOB, B.public)
    assert safety_number(ALICE, A.public, BOB, C.public) != ab
    assert safety_number(ALICE, C.public, BOB, B.public) != ab
    assert safety_number(CAROL, A.public, BOB, B.public) != ab


def test_safety_number_display() -> None:
    shown = format_safety_number("0123456789" * 6)
    assert shown == "01234 56789 " * 5 + "01234 56789"
    with pytest.raises(ValueError):
        format_safety_number("123")


def test_qr_string_round_trip() -> None:
    qr = qr_string(ALICE, A.fp)
    b32 = base64.b32encode(A.fp).decode().rstrip("=")
    assert qr == f"MOMEDO1:{ALICE}:{b32}" and len(b32) == 52
    assert parse_qr(qr) == (ALICE, A.fp)
    lower_fp = f"MOMEDO1:{ALICE}:{b32.lower()}"
    assert parse_qr(f"  {lower_fp}\n") == (ALICE, A.fp)


@pytest.mark.parametrize(
    "text",
    [
        "MOMEDO2:A1CE0005:" + "A" * 52,
        "MOMEDO1:A1CE0006:" + "A" * 52,  # check character wrong
        "MOMEDO1:A1CE-0005:" + "A" * 52,  # not canonical
        "MOMEDO1:A1CE0005:" + "A" * 51,
        "MOMEDO1:A1CE0005:" + "A" * 51 + "B",  # unused bits set
        "MOMEDO1:A1CE0005:" + "A" * 52 + ":x",
        "MOMEDO1:A1CE0005",
        "",
    ],
)
def test_qr_parsing_is_strict(text: str) -> None:
    with pytest.raises(ValueError):
        parse_qr(text)


def test_kvd_is_order_independent_and_binds_every_key() -> None:
    members = [(ALICE, A.fp), (BOB, B.fp), (CAROL, C.fp)]
    digest = kvd(members)
    assert len(digest) == 16
    assert kvd(reversed(members)) == kvd([members[1], members[2], members[0]]) == digest
    body = b"".join(sorted(u.encode() + fp for u, fp in members))
    assert digest == hashlib.sha256(label("kvd") + body).digest()[:16]
    assert kvd([(ALICE, A.fp), (BOB, C.fp), (CAROL, C.fp)]) != digest
    assert kvd(members[:2]) != digest
    with pytest.raises(ValueError):
        kvd([(ALICE, A.fp), (ALICE, B.fp)])


def test_dm_conv_id_is_symmetric() -> None:
    ab = dm_conv_id(ALICE, BOB)
    assert ab == dm_conv_id(BOB, ALICE)
    assert ab == hashlib.sha256(label("dm") + ALICE.encode() + BOB.encode()).digest()[:16]
    assert dm_conv_id(ALICE, CAROL) != ab
    with pytest.raises(ValueError):
        dm_conv_id(ALICE, "alice")
