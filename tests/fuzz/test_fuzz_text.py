"""Text a person pastes or types -- invite links, link strings, user IDs, QR pins, invite codes,
fingerprints: what is generated parses back to itself, and anything else raises the one
documented exception (a ValueError subclass) with a message, never another exception."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from momedod.e2e.link import format_link_string, parse_link_string
from momedod.e2e.safety import parse_qr, qr_string
from momedod.protocol import userid
from momedod.protocol.invite import (
    InvalidInviteLink,
    InviteLink,
    normalize_invite_code,
    parse_fingerprint_text,
    parse_invite_link,
)
from momedod.protocol.userid import ALPHABET

# Characters that matter to these parsers, plus anything at all.
_SPECIAL = "momedo:/[]#.@%-_ MOMEDO-LINK1" + ALPHABET + "ß١²ǅİıＡ\u200b\n\t"
hostile_text = st.one_of(
    st.text(st.sampled_from(_SPECIAL), max_size=120),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=120),
)
fingerprints = st.binary(min_size=32, max_size=32)
hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{1,5}){0,2}", fullmatch=True),
    st.ip_addresses().map(str),
)
invite_links = st.builds(
    InviteLink,
    hosts,
    st.integers(1, 65535),
    st.text(ALPHABET, min_size=1, max_size=64),
    fingerprints,
    st.one_of(st.none(), fingerprints),
)


def rejects_with(exc_type: type[ValueError], fn, text: str):  # type: ignore[no-untyped-def]
    try:
        return fn(text)
    except exc_type as exc:
        assert str(exc)
        return None


@given(invite_links)
def test_invite_link_round_trips(link: InviteLink) -> None:
    assert parse_invite_link(str(link)) == link
    assert parse_invite_link(f"  {str(link).replace('momedo://', 'MOMEDO://')}\n") == link


@given(hostile_text)
def test_invite_link_parser_rejects_with_invalid_invite_link(text: str) -> None:
    link = rejects_with(InvalidInviteLink, parse_invite_link, text)
    if link is not None:
        assert parse_invite_link(str(link)) == link


@given(invite_links, st.data())
def test_invite_link_parser_mutated(link: InviteLink, data: st.DataObject) -> None:
    text = str(link)
    i = data.draw(st.integers(0, len(text)))
    j = data.draw(st.integers(i, len(text)))
    edited = text[:i] + data.draw(hostile_text) + text[j:]
    parsed = rejects_with(InvalidInviteLink, parse_invite_link, edited)
    if parsed is not None:
        assert parse_invite_link(str(parsed)) == parsed


@given(invite_links, st.binary(min_size=16, max_size=16))
def test_link_string_round_trips(link: InviteLink, secret: bytes) -> None:
    assert parse_link_string(format_link_string(str(link), secret)) == (str(link), secret)


@given(hostile_text)
def test_text_parsers_raise_only_their_value_errors(text: str) -> None:
    rejects_with(ValueError, parse_link_string, text)
    rejects_with(ValueError, parse_qr, text)
    rejects_with(ValueError, parse_fingerprint_text, text)
    rejects_with(ValueError, normalize_invite_code, text)
    uid = rejects_with(userid.InvalidUserId, userid.normalize, text)
    if uid is not None:
        assert userid.is_valid(uid) and userid.normalize(userid.display(uid)) == uid


@given(st.binary(min_size=5, max_size=5), fingerprints)
def test_user_id_and_qr_round_trip(random5: bytes, fp: bytes) -> None:
    uid = userid.generate(lambda n: random5[:n])
    assert userid.normalize(userid.display(uid).lower()) == uid
    assert parse_qr(qr_string(uid, fp)) == (uid, fp)


@given(st.text(ALPHABET, min_size=8, max_size=8), st.integers(0, 7), st.sampled_from(ALPHABET))
def test_every_single_typo_in_a_user_id_is_caught(uid: str, pos: int, char: str) -> None:
    if not userid.is_valid(uid) or uid[pos] == char:
        return
    typo = uid[:pos] + char + uid[pos + 1 :]
    assert rejects_with(userid.InvalidUserId, userid.normalize, typo) is None
