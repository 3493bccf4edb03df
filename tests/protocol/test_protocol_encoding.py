"""MBF Reader/Writer: exact layouts, strict parsing, range checks."""

from __future__ import annotations

import pytest

from momedod.protocol.encoding import Reader, Writer, label
from momedod.protocol.errors import ErrorCode, ProtocolError


def test_integers_are_big_endian_and_round_trip() -> None:
    data = Writer().u8(0xAB).u16(0x0102).u32(0x03040506).u64(0x0708090A0B0C0D0E).getvalue()
    assert data == bytes.fromhex("ab0102030405060708090a0b0c0d0e")
    r = Reader(data)
    assert (r.u8(), r.u16(), r.u32(), r.u64()) == (0xAB, 0x0102, 0x03040506, 0x0708090A0B0C0D0E)
    r.finish()


def test_bytes_string_and_lists_layout() -> None:
    w = Writer().bytes_(b"ab").string("ä").u64_list([1, 2]).u16_list([7])
    w.list_(["x", "yz"], Writer.string)
    assert w.getvalue() == bytes.fromhex(
        "00000002" "6162"
        "00000002" "c3a4"
        "00000002" "0000000000000001" "0000000000000002"
        "00000001" "0007"
        "00000002" "0000000178" "00000002797a"
    )  # fmt: skip
    r = Reader(w.getvalue())
    assert r.bytes_(10) == b"ab"
    assert r.string(10) == "ä"
    assert r.u64_list(10) == (1, 2)
    assert r.u16_list(10) == (7,)
    assert [r.string(5) for _ in range(r.count(10, 4))] == ["x", "yz"]
    r.finish()


def test_large_fields_keep_their_order_in_the_output() -> None:
    big1, big2 = b"A" * 5000, b"B" * 700
    w = Writer().u8(1).raw(big1).u8(2).bytes_(big2).u8(3)
    assert len(w) == 1 + 5000 + 1 + 4 + 700 + 1
    assert w.getvalue() == b"\x01" + big1 + b"\x02" + (700).to_bytes(4, "big") + big2 + b"\x03"
    assert w.getvalue(b"HDR") == b"HDR" + w.getvalue()


@pytest.mark.parametrize(
    "write",
    [
        lambda w: w.u8(256),
        lambda w: w.u8(-1),
        lambda w: w.u16(65536),
        lambda w: w.u32(2**32),
        lambda w: w.u64(2**64),
        lambda w: w.fixed(b"abc", 4),
        lambda w: w.bytes_(b"abcde", max_len=4),
        lambda w: w.string("ää", max_len=3),
        lambda w: w.u64_list([1, 2, 3], max_count=2),
        lambda w: w.user_id("M8N2-2HT"),
        lambda w: w.user_id("m8n22htr"),
    ],
)
def test_writer_rejects_values_out_of_range(write: object) -> None:
    with pytest.raises(ValueError):
        write(Writer())  # type: ignore[operator]


def assert_malformed(read: object, data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        r = Reader(data)
        read(r)  # type: ignore[operator]
        r.finish()
    assert info.value.code is ErrorCode.MALFORMED
    return info.value


def test_truncated_integer_is_malformed() -> None:
    assert "truncated" in assert_malformed(lambda r: r.u32("seq"), b"\x00\x00\x01").message


def test_bytes_longer_than_allowed_is_malformed_even_if_present() -> None:
    data = Writer().bytes_(b"x" * 65).getvalue()
    err = assert_malformed(lambda r: r.bytes_(64, "software"), data)
    assert "software" in err.message and "65" in err.message


def test_bytes_length_beyond_data_is_malformed() -> None:
    assert_malformed(lambda r: r.bytes_(100), b"\x00\x00\x00\x05abcd")


def test_fixed_field_truncated() -> None:
    assert_malformed(lambda r: r.fixed(16), bytes(15))


def test_invalid_utf8_is_malformed_and_not_quoted() -> None:
    data = Writer().bytes_(b"SECRET\xff").getvalue()
    err = assert_malformed(lambda r: r.string(64), data)
    assert "UTF-8" in err.message
    assert "SECRET" not in str(err)


def test_trailing_bytes_are_malformed() -> None:
    err = assert_malformed(lambda r: r.u8(), b"\x01\x02")
    assert "trailing" in err.message


def test_list_count_above_maximum() -> None:
    data = Writer().u64_list([1] * 3).getvalue()
    assert_malformed(lambda r: r.u64_list(2), data)


def test_list_count_beyond_remaining_bytes_is_rejected_before_reading_items() -> None:
    # a forged count of 4 billion entries must not make anyone loop or allocate
    assert_malformed(lambda r: r.count(2**32 - 1, 8), b"\xff\xff\xff\xff" + bytes(16))


def test_user_id_must_be_crockford_characters() -> None:
    assert Reader(b"M8N22HTR").user_id() == "M8N22HTR"
    for bad in (b"M8N22HTU", b"m8n22htr", b"M8N2-2HT", b"M8N22HT\xc3"):
        assert_malformed(lambda r: r.user_id(), bad)


def test_label() -> None:
    assert label("auth") == b"momedo/v1/auth\x00"
    with pytest.raises(ValueError):
        label("")
    with pytest.raises(ValueError):
        label("ä")
