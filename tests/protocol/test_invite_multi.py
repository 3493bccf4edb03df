"""Invite links with several server addresses and certificate pins (issue 10, client side)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from momedod.protocol import invite
from momedod.protocol.invite import InvalidInviteLink, InviteLink, parse_invite_link

CODE = "7Z2QH4KMW9XRB3TNC8VD"
FP1 = hashlib.sha256(b"node 1").digest()
FP2 = hashlib.sha256(b"node 2").digest()
ORG = hashlib.sha256(b"org").digest()
T1, T2, TORG = (invite.fingerprint_text(x) for x in (FP1, FP2, ORG))
ROOT = Path(__file__).resolve().parents[2]


def test_single_address_link_is_the_older_form_byte_for_byte():
    old_form = f"momedo://chat.example.org:7443/invite/{CODE}#{T1}.{TORG}"
    link = InviteLink("chat.example.org", 7443, CODE, FP1, ORG)
    assert str(link) == old_form
    assert link.addresses == (("chat.example.org", 7443),)
    assert link.fingerprints == (FP1,)
    assert InviteLink.of([("chat.example.org", 7443)], CODE, [FP1], ORG) == link
    assert parse_invite_link(old_form) == link


@pytest.mark.parametrize(
    ("addresses", "pins", "org", "text"),
    [
        (
            [("a.example", 7443), ("b.example", 7443)],
            [FP1],
            None,
            f"momedo://a.example:7443,b.example:7443/invite/{CODE}#{T1}",
        ),
        (
            [("a.example", 1), ("192.0.2.1", 443), ("2001:db8::1", 7443)],
            [FP1, FP2],
            ORG,
            f"momedo://a.example:1,192.0.2.1:443,[2001:db8::1]:7443/invite/{CODE}#{T1}+{T2}.{TORG}",
        ),
        ([("::1", 7443)], [FP2, FP1], None, f"momedo://[::1]:7443/invite/{CODE}#{T2}+{T1}"),
    ],
)
def test_round_trip(addresses, pins, org, text):
    link = InviteLink.of(addresses, CODE, pins, org)
    assert str(link) == text
    parsed = parse_invite_link(text)
    assert parsed == link
    assert (parsed.host, parsed.port) == addresses[0]
    assert parsed.fingerprint == pins[0]
    assert parsed.addresses == tuple(addresses)
    assert parsed.fingerprints == tuple(pins)
    assert parsed.org_fp == org
    # lower-case fingerprints, scheme in capitals and a typed code are accepted too
    typed = text.replace("momedo://", "MOMEDO://").replace(CODE, "7z2qh-4kmw9-xrb3t-nc8vd")
    head, _, frag = typed.partition("#")
    assert parse_invite_link(f"  {head}#{frag.lower()}\n") == link


def test_eight_addresses_and_eight_pins_are_the_most():
    addresses = [(f"n{i}.example", 7443) for i in range(8)]
    pins = [hashlib.sha256(bytes([i])).digest() for i in range(8)]
    link = InviteLink.of(addresses, CODE, pins)
    assert parse_invite_link(str(link)) == link
    with pytest.raises(InvalidInviteLink, match="at most 8 server addresses, got 9"):
        InviteLink.of([*addresses, ("n8.example", 1)], CODE, pins)
    with pytest.raises(InvalidInviteLink, match="at most 8 certificate fingerprints, got 9"):
        InviteLink.of(addresses, CODE, [*pins, FP1])


@pytest.mark.parametrize(
    ("authority", "fragment", "reason"),
    [
        ("a.example:1,,b.example:1", T1, "server address 2 of 3 is empty"),
        ("a.example:1,", T1, "server address 2 of 2 is empty"),
        (",a.example:1", T1, "server address 1 of 2 is empty"),
        ("a.example:1,a.example:1", T1, "a.example:1 is listed twice"),
        ("a.example:1,A.Example.:1", T1, "listed twice"),
        ("[2001:db8::1]:1,[2001:db8:0:0::1]:1", T1, "listed twice"),
        ("a.example:1,b.example", T1, "server address 'b.example': the port is missing"),
        ("a.example:1,b.example:0", T1, "port must be 1-65535"),
        ("a.example:1,b_x.example:1", T1, "invalid host name 'b_x.example'"),
        ("a.example:1,2001:db8::1:1", T1, "must be written in brackets"),
        ("a.example:1,[fe80::1%eth0]:1", T1, "zone identifiers"),
        ("a.example:1", f"{T1}+", "certificate fingerprint 2 of 2 is empty"),
        ("a.example:1", f"+{T1}", "certificate fingerprint 1 of 2 is empty"),
        ("a.example:1", f"{T1}+{T1}", "listed twice"),
        ("a.example:1", f"{T1}+{T2[:-1]}", "certificate fingerprint 2 of 2: a fingerprint has 52"),
        ("a.example:1", f"{T1}+{T2[:-1]}B", "not in canonical base32 form"),
        ("a.example:1", f"{T1}.{TORG}+{T2}", "organisation key fingerprint"),
        ("a.example:1", f"{T1},{T2}", "certificate fingerprint"),
    ],
)
def test_must_fail_names_the_wrong_entry(authority, fragment, reason):
    with pytest.raises(InvalidInviteLink) as info:
        parse_invite_link(f"momedo://{authority}/invite/{CODE}#{fragment}")
    assert reason in str(info.value)


def test_links_longer_than_2048_characters_are_refused_both_ways():
    host = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 57])  # 249 characters
    addresses = [(f"{host}.e{i}", 65535) for i in range(8)]  # valid names, 252 characters
    with pytest.raises(InvalidInviteLink, match="more than 2048"):
        InviteLink.of(addresses, CODE, [FP1])
    text = "momedo://" + ",".join(f"{h}:{p}" for h, p in addresses) + f"/invite/{CODE}#{T1}"
    assert len(text) > invite.MAX_LINK_LEN
    with pytest.raises(InvalidInviteLink, match="at most 2048 characters"):
        parse_invite_link(text)
    # five of them fit
    assert parse_invite_link(str(InviteLink.of(addresses[:5], CODE, [FP1]))).addresses == tuple(
        addresses[:5]
    )


def test_constructor_keeps_host_port_fingerprint_first():
    with pytest.raises(InvalidInviteLink, match="first of the addresses"):
        InviteLink("a.example", 1, CODE, FP1, None, (("b.example", 1), ("a.example", 1)))
    with pytest.raises(InvalidInviteLink, match="first of the fingerprints"):
        InviteLink("a.example", 1, CODE, FP1, None, (), (FP2, FP1))
    with pytest.raises(InvalidInviteLink, match="32 bytes"):
        InviteLink.of([("a.example", 1)], CODE, [FP1, b"short"])
    with pytest.raises(InvalidInviteLink, match="at least one server address"):
        InviteLink.of([], CODE, [FP1])


def test_address_helpers():
    assert invite.parse_address("[2001:db8::1]:7443") == ("2001:db8::1", 7443)
    assert invite.format_address("2001:db8::1", 7443) == "[2001:db8::1]:7443"
    assert invite.parse_address("chat.example.org:443") == ("chat.example.org", 443)
    for bad in ("chat.example.org", "[2001:db8::1]", "h:70000", "2001:db8::1:7443", ":1"):
        with pytest.raises(InvalidInviteLink):
            invite.parse_address(bad)


def test_protocol_doc_names_the_second_pin_of_its_example():
    vectors = json.loads((ROOT / "docs" / "test-vectors" / "frames.json").read_text("utf-8"))
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text("utf-8")
    shown = set(re.findall(r"^momedo://\S+$", doc, flags=re.MULTILINE))
    multi = [v for v in vectors["invite_links"] if len(v["fingerprints"]) > 1]
    assert multi and all(v["link"] in shown for v in multi)
    for v in multi:
        for pin in v["fingerprints"][1:]:
            assert f"`{pin}`" in doc
    names = {v["name"] for v in vectors["invite_links_must_fail"]}
    assert {"empty_address", "duplicate_address", "nine_addresses", "duplicate_pin"} <= names
