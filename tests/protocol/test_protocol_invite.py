"""Invite links, invite codes, certificate fingerprints."""

from __future__ import annotations

import base64
import datetime
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from momedod.protocol import invite
from momedod.protocol.invite import InvalidInviteLink, InviteLink
from momedod.protocol.userid import ALPHABET

FP = hashlib.sha256(b"certificate").digest()
FP_TEXT = invite.fingerprint_text(FP)
ORG_FP = hashlib.sha256(b"organisation key").digest()
ORG_TEXT = invite.fingerprint_text(ORG_FP)
CODE = "7Z2QH4KMW9XRB3TNC8VD"


def _certificate(key: ec.EllipticCurvePrivateKey, serial: int) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "momedo test")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=serial))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_fingerprint_pins_the_public_key_not_the_certificate() -> None:
    key = ec.derive_private_key(12345, ec.SECP256R1())
    first, renewed = _certificate(key, 30), _certificate(key, 90)
    assert first != renewed
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert invite.cert_fingerprint(first) == hashlib.sha256(spki).digest()
    assert invite.cert_fingerprint(renewed) == invite.cert_fingerprint(first)
    other = _certificate(ec.derive_private_key(54321, ec.SECP256R1()), 30)
    assert invite.cert_fingerprint(other) != invite.cert_fingerprint(first)
    with pytest.raises(ValueError):
        invite.cert_fingerprint(b"not a certificate")


def test_fingerprint_text_is_unpadded_base32() -> None:
    assert len(FP_TEXT) == 52
    assert base64.b32encode(FP).decode().rstrip("=") == FP_TEXT
    assert invite.parse_fingerprint_text(FP_TEXT) == FP
    assert invite.parse_fingerprint_text(FP_TEXT.lower()) == FP


@pytest.mark.parametrize(
    "text",
    [
        FP_TEXT[:-1],
        FP_TEXT + "A",
        FP_TEXT[:-1] + "1",  # not in the RFC 4648 alphabet
        FP_TEXT[:-1] + "B",  # sets one of the unused low bits: not canonical
        "",
    ],
)
def test_bad_fingerprint_text_is_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        invite.parse_fingerprint_text(text)


@pytest.mark.parametrize(
    ("host", "text_host"),
    [("chat.example.org", "chat.example.org"), ("192.0.2.1", "192.0.2.1"), ("::1", "[::1]")],
)
def test_link_round_trip(host: str, text_host: str) -> None:
    link = InviteLink(host, 7443, CODE, FP)
    text = str(link)
    assert text == f"momedo://{text_host}:7443/invite/{CODE}#{FP_TEXT}"
    assert link.format() == text
    assert invite.parse_invite_link(text) == link


@pytest.mark.parametrize("host", ["chat.example.org", "::1"])
def test_link_with_organisation_fingerprint_round_trip(host: str) -> None:
    link = InviteLink(host, 7443, CODE, FP, ORG_FP)
    text = link.format()
    assert text.endswith(f"/invite/{CODE}#{FP_TEXT}.{ORG_TEXT}")
    parsed = invite.parse_invite_link(text)
    assert parsed == link and parsed.org_fp == ORG_FP
    assert invite.parse_invite_link(text.lower()) == link


def test_link_without_organisation_fingerprint_is_unchanged() -> None:
    link = InviteLink("chat.example.org", 7443, CODE, FP)
    assert link.org_fp is None
    assert str(link) == f"momedo://chat.example.org:7443/invite/{CODE}#{FP_TEXT}"
    assert invite.parse_invite_link(str(link)).org_fp is None


@pytest.mark.parametrize(
    ("fragment", "reason"),
    [
        (f"{FP_TEXT}.", "organisation key fingerprint: a fingerprint has 52"),
        (f"{FP_TEXT}.{ORG_TEXT[:-1]}", "organisation key fingerprint: a fingerprint has 52"),
        (f"{FP_TEXT}.{ORG_TEXT}A", "organisation key fingerprint: a fingerprint has 52"),
        (f"{FP_TEXT}.{ORG_TEXT[:-1]}B", "organisation key fingerprint: fingerprint is not in"),
        (f"{FP_TEXT}.{ORG_TEXT[:-1]}1", "organisation key fingerprint: fingerprint is not val"),
        (f"{FP_TEXT}.{ORG_TEXT}.{ORG_TEXT}", "more than two fingerprints"),
        (f".{ORG_TEXT}", "certificate fingerprint"),
        (f"{ORG_TEXT[:-1]}B.{ORG_TEXT}", "certificate fingerprint"),
    ],
)
def test_bad_organisation_fingerprint_is_named(fragment: str, reason: str) -> None:
    with pytest.raises(InvalidInviteLink) as info:
        invite.parse_invite_link(f"momedo://h:1/invite/{CODE}#{fragment}")
    assert reason in str(info.value)


def test_parse_is_forgiving_about_case_dashes_and_whitespace() -> None:
    text = f"  MOMEDO://chat.example.org:7443/invite/7z2qh-4kmw9-xrb3t-nc8vd#{FP_TEXT.lower()}\n"
    assert invite.parse_invite_link(text) == InviteLink("chat.example.org", 7443, CODE, FP)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (f"https://h:1/invite/{CODE}#{FP_TEXT}", "momedo://"),
        (f"momedo://h:1/invite/{CODE}", "fingerprint"),
        (f"momedo://h:1/invite/{CODE}#ABC", "fingerprint"),
        (f"momedo://h/invite/{CODE}#{FP_TEXT}", "port"),
        (f"momedo://h:x/invite/{CODE}#{FP_TEXT}", "port"),
        (f"momedo://h:70000/invite/{CODE}#{FP_TEXT}", "port"),
        (f"momedo://:1/invite/{CODE}#{FP_TEXT}", "host"),
        (f"momedo://bad_host:1/invite/{CODE}#{FP_TEXT}", "host"),
        (f"momedo://::1:7443/invite/{CODE}#{FP_TEXT}", "brackets"),
        (f"momedo://[::1:7443/invite/{CODE}#{FP_TEXT}", "]"),
        (f"momedo://[nothex]:7443/invite/{CODE}#{FP_TEXT}", "IPv6"),
        (f"momedo://[fe80::1%eth0]:7443/invite/{CODE}#{FP_TEXT}", "zone"),
        (f"momedo://h:1#{FP_TEXT}", "/invite/CODE"),
        (f"momedo://h:1/join/{CODE}#{FP_TEXT}", "/invite/CODE"),
        (f"momedo://h:1/invite/#{FP_TEXT}", "missing"),
        (f"momedo://h:1/invite/UUU#{FP_TEXT}", "'U'"),
    ],
)
def test_parse_errors_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(InvalidInviteLink) as info:
        invite.parse_invite_link(text)
    assert fragment in str(info.value)


def test_link_fields_are_validated_on_construction() -> None:
    with pytest.raises(InvalidInviteLink):
        InviteLink("h", 0, CODE, FP)
    with pytest.raises(InvalidInviteLink):
        InviteLink("h", 1, "7z2q", FP)
    with pytest.raises(InvalidInviteLink):
        InviteLink("h", 1, CODE, FP[:31])
    with pytest.raises(InvalidInviteLink):
        InviteLink("h h", 1, CODE, FP)
    with pytest.raises(InvalidInviteLink, match="organisation"):
        InviteLink("h", 1, CODE, FP, ORG_FP[:31])
    with pytest.raises(InvalidInviteLink, match="organisation"):
        InviteLink("h", 1, CODE, FP, b"")


def test_generate_invite_code() -> None:
    assert invite.generate_invite_code(lambda n: bytes(n)) == "0" * 20
    assert invite.generate_invite_code(lambda n: b"\xff" * n) == "Z" * 20
    codes = {invite.generate_invite_code() for _ in range(100)}
    assert len(codes) == 100
    assert all(len(c) == 20 and set(c) <= set(ALPHABET) for c in codes)


def test_normalize_invite_code() -> None:
    assert invite.normalize_invite_code("7z2qh-4kmw9 xrb3t-nc8vd") == CODE
    assert invite.normalize_invite_code("oIl") == "011"
    for bad in ("", "--", "ABCU", "A" * 65):
        with pytest.raises(ValueError):
            invite.normalize_invite_code(bad)
