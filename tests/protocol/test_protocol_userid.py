"""User IDs: Crockford base32 with a Luhn mod 32 check character."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from momedod.protocol import userid
from momedod.protocol.userid import ALPHABET, InvalidUserId

EXAMPLE = "M8N22HTR"


def sample_ids(n: int) -> list[str]:
    rng = random.Random(7)
    return [userid.generate(rng.randbytes) for _ in range(n)]


def test_documented_example() -> None:
    assert userid.check_char("M8N22HT") == "R"
    assert userid.is_valid(EXAMPLE)
    assert userid.display(EXAMPLE) == "M8N2-2HTR"


def test_every_single_character_substitution_is_detected() -> None:
    for uid in [EXAMPLE, *sample_ids(20)]:
        assert userid.is_valid(uid)
        for pos in range(8):
            for c in ALPHABET:
                if c != uid[pos]:
                    typo = uid[:pos] + c + uid[pos + 1 :]
                    assert not userid.is_valid(typo), (uid, typo)


def test_almost_all_neighbour_swaps_are_detected() -> None:
    swaps = detected = 0
    for uid in sample_ids(2000):
        for pos in range(7):
            if uid[pos] != uid[pos + 1]:
                swapped = uid[:pos] + uid[pos + 1] + uid[pos] + uid[pos + 2 :]
                swaps += 1
                detected += not userid.is_valid(swapped)
    assert detected / swaps > 0.99


def test_generate_uses_the_given_randomness() -> None:
    assert userid.generate(lambda n: b"\x00" * n) == "0000000" + userid.check_char("0000000")
    assert userid.generate(lambda n: b"\xff" * n) == "ZZZZZZZ" + userid.check_char("ZZZZZZZ")
    uid = userid.generate()
    assert len(uid) == 8 and userid.is_valid(uid)


def test_generated_characters_are_uniform() -> None:
    counts: Counter[str] = Counter()
    for uid in sample_ids(6400):
        counts.update(uid[:7])
    expected = 6400 * 7 / 32
    assert set(counts) == set(ALPHABET)
    assert all(0.85 * expected < n < 1.15 * expected for n in counts.values()), counts


@pytest.mark.parametrize(
    "typed",
    ["M8N22HTR", "m8n2-2htr", " M8N2 2HTR ", "m8n2--2htr", "M8N2-\t2HTR"],
)
def test_normalize_accepts_what_people_type(typed: str) -> None:
    assert userid.normalize(typed) == EXAMPLE


def test_normalize_maps_look_alike_letters() -> None:
    uid = userid.generate(lambda n: bytes([0b00001000, 0b01000010] + [0] * (n - 2)))
    assert "0" in uid and "1" in uid
    typed = uid.replace("0", "o").replace("1", "l", 1).replace("1", "I")
    assert userid.normalize(typed) == uid


@pytest.mark.parametrize(
    ("typed", "fragment"),
    [
        ("M8N2-2HT", "8 characters"),
        ("M8N22HTRX", "8 characters"),
        ("", "8 characters"),
        ("M8N22HTU", "'U'"),
        ("M8N22HT*", "'*'"),
        ("M8N22HTS", "check character"),
    ],
)
def test_normalize_explains_what_is_wrong(typed: str, fragment: str) -> None:
    with pytest.raises(InvalidUserId) as info:
        userid.normalize(typed)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_is_valid_wants_the_canonical_form() -> None:
    assert not userid.is_valid("m8n22htr")
    assert not userid.is_valid("M8N2-2HTR")
    assert not userid.is_valid("M8N22HT")


def test_display_and_check_char_reject_non_canonical_input() -> None:
    with pytest.raises(InvalidUserId):
        userid.display("M8N2-2HTR")
    with pytest.raises(InvalidUserId):
        userid.check_char("M8N22H")
    with pytest.raises(InvalidUserId):
        userid.check_char("M8N22HU")
