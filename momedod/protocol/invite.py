"""Invite links, invite codes and the server certificate fingerprint.

An invite link carries everything a new device needs to connect safely::

    momedo://HOST:PORT/invite/CODE#FINGERPRINT
    momedo://HOST:PORT/invite/CODE#FINGERPRINT.ORGFP

``HOST`` is a DNS name, an IPv4 address or an IPv6 address in brackets; ``PORT`` is 1-65535;
``CODE`` is the invite code (Crockford base32, normally 20 characters = 100 bits);
``FINGERPRINT`` is the SHA-256 of the server certificate's public key (SubjectPublicKeyInfo,
DER) as RFC 4648 base32, upper case, without padding (52 characters). The client pins that
fingerprint: after the TLS handshake it compares it with the certificate the server
presented, and no CA is consulted. ``ORGFP``, present once the organisation has an
organisation key, is that key's 32-byte fingerprint in the same text form; the client pins
it to verify organisation-signed rosters (docs/E2E.md).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from .userid import ALPHABET, crockford_clean

__all__ = [
    "FINGERPRINT_LEN",
    "INVITE_CODE_LEN",
    "MAX_INVITE_CODE_LEN",
    "InvalidInviteLink",
    "InviteLink",
    "cert_fingerprint",
    "fingerprint_text",
    "generate_invite_code",
    "normalize_invite_code",
    "parse_fingerprint_text",
    "parse_invite_link",
]

FINGERPRINT_LEN = 32
"""Bytes in a certificate fingerprint (SHA-256)."""
INVITE_CODE_LEN = 20
"""Characters in a generated invite code (100 random bits)."""
MAX_INVITE_CODE_LEN = 64
"""Longest invite code accepted (the ENROLL field limit)."""

_FP_TEXT_LEN = 52
_SCHEME = "momedo://"
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_PORT = re.compile(r"[0-9]{1,5}")


class InvalidInviteLink(ValueError):
    """The text is not a valid invite link; the message names the part that is wrong."""


def cert_fingerprint(der: bytes) -> bytes:
    """Return the pin of a server certificate: SHA-256 of its SubjectPublicKeyInfo (DER).

    Pinning the public key rather than the whole certificate lets an operator renew the
    certificate (new validity, same key) without locking out enrolled devices. Raises
    ValueError if ``der`` is not a DER certificate.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def fingerprint_text(fp: bytes) -> str:
    """Return the text form of a fingerprint: RFC 4648 base32, upper case, no padding."""
    if len(fp) != FINGERPRINT_LEN:
        raise ValueError(f"a fingerprint is {FINGERPRINT_LEN} bytes, got {len(fp)}")
    return base64.b32encode(fp).decode("ascii").rstrip("=")


def parse_fingerprint_text(s: str) -> bytes:
    """Parse the text form of a fingerprint (case-insensitive); raise ValueError if invalid."""
    text = s.strip().upper()
    if len(text) != _FP_TEXT_LEN:
        raise ValueError(f"a fingerprint has {_FP_TEXT_LEN} base32 characters, got {len(text)}")
    try:
        fp = base64.b32decode(text + "====")
    except ValueError:
        raise ValueError("fingerprint is not valid base32 (A-Z, 2-7)") from None
    if fingerprint_text(fp) != text:  # the last character carries unused bits: must be zero
        raise ValueError("fingerprint is not in canonical base32 form")
    return fp


def generate_invite_code(randbytes: Callable[[int], bytes] = os.urandom) -> str:
    """Return a new invite code: 20 uniform Crockford base32 characters (100 bits)."""
    bits = int.from_bytes(randbytes(13), "big") >> 4  # 104 bits drawn, 100 used
    return "".join(ALPHABET[(bits >> (5 * i)) & 31] for i in reversed(range(INVITE_CODE_LEN)))


def normalize_invite_code(text: str) -> str:
    """Canonicalise a typed invite code: upper case, no dashes/spaces, O->0, I/L->1.

    Raises ValueError if the result is empty, longer than 64 characters, or contains a
    character outside the Crockford alphabet.
    """
    code = crockford_clean(text)
    if not code:
        raise ValueError("the invite code is empty")
    if len(code) > MAX_INVITE_CODE_LEN:
        raise ValueError(f"an invite code has at most {MAX_INVITE_CODE_LEN} characters")
    bad = sorted({c for c in code if c not in ALPHABET})
    if bad:
        raise ValueError(f"invalid character(s) in invite code: {''.join(bad)!r}")
    return code


def _check_host(host: str) -> None:
    if ":" in host:
        if "%" in host:
            raise InvalidInviteLink("IPv6 zone identifiers are not supported in invite links")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidInviteLink(f"invalid IPv6 address {host!r}") from None
    elif not _HOSTNAME.fullmatch(host):
        raise InvalidInviteLink(f"invalid host name {host!r}")


@dataclass(frozen=True)
class InviteLink:
    """A parsed invite link. ``str(link)`` gives the canonical link text.

    ``host`` holds IPv6 addresses without brackets; ``code`` is the canonical invite code;
    ``fingerprint`` the 32-byte certificate fingerprint; ``org_fp`` the 32-byte organisation
    key fingerprint, or None if the link carries none (no organisation key yet, or an older
    server). Invalid values raise :class:`InvalidInviteLink`.
    """

    host: str
    port: int
    code: str
    fingerprint: bytes
    org_fp: bytes | None = None

    def __post_init__(self) -> None:
        _check_host(self.host)
        if not 1 <= self.port <= 65535:
            raise InvalidInviteLink(f"port must be 1-65535, got {self.port}")
        try:
            canonical = normalize_invite_code(self.code)
        except ValueError as exc:
            raise InvalidInviteLink(str(exc)) from None
        if canonical != self.code:
            raise InvalidInviteLink(f"invite code {self.code!r} is not in canonical form")
        if len(self.fingerprint) != FINGERPRINT_LEN:
            raise InvalidInviteLink(f"fingerprint must be 32 bytes, got {len(self.fingerprint)}")
        if self.org_fp is not None and len(self.org_fp) != FINGERPRINT_LEN:
            raise InvalidInviteLink(
                f"organisation key fingerprint must be 32 bytes, got {len(self.org_fp)}"
            )

    def format(self) -> str:
        """Return the link text ``momedo://HOST:PORT/invite/CODE#FINGERPRINT[.ORGFP]``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        fp = fingerprint_text(self.fingerprint)
        if self.org_fp is not None:
            fp += "." + fingerprint_text(self.org_fp)
        return f"{_SCHEME}{host}:{self.port}/invite/{self.code}#{fp}"

    def __str__(self) -> str:
        return self.format()


def parse_invite_link(text: str) -> InviteLink:
    """Parse an invite link; raise :class:`InvalidInviteLink` naming what is wrong.

    The scheme is case-insensitive, surrounding whitespace is ignored, the code is normalised
    like a typed code (so dashes and lower case are accepted), the fingerprints are
    case-insensitive. The fragment is the certificate fingerprint, optionally followed by
    ``.`` and the organisation key fingerprint.
    """
    link = text.strip()
    if link[: len(_SCHEME)].lower() != _SCHEME:
        raise InvalidInviteLink("an invite link starts with momedo://")
    rest = link[len(_SCHEME) :]
    rest, hash_sign, fp_text = rest.partition("#")
    if not hash_sign:
        raise InvalidInviteLink("the certificate fingerprint (#...) is missing")
    authority, slash, path = rest.partition("/")
    if not slash:
        raise InvalidInviteLink("the path /invite/CODE is missing")
    if authority.startswith("["):
        host, bracket, port_part = authority[1:].partition("]")
        if not bracket:
            raise InvalidInviteLink("missing ] after the IPv6 address")
        if ":" not in host:
            raise InvalidInviteLink(f"{host!r} in brackets is not an IPv6 address")
    else:
        host, colon, port_text = authority.rpartition(":")
        port_part = colon + port_text
        if not colon:
            host = authority
        if ":" in host:
            raise InvalidInviteLink("an IPv6 address must be written in brackets: [ADDR]:PORT")
    if not host:
        raise InvalidInviteLink("the host is missing")
    if not port_part.startswith(":") or not _PORT.fullmatch(port_part[1:]):
        raise InvalidInviteLink("the port is missing or not a number (HOST:PORT)")
    port = int(port_part[1:])
    kind, slash, code_text = path.partition("/")
    if kind != "invite" or not slash:
        raise InvalidInviteLink("the path must be /invite/CODE")
    if not code_text:
        raise InvalidInviteLink("the invite code is missing")
    try:
        code = normalize_invite_code(code_text)
    except ValueError as exc:
        raise InvalidInviteLink(str(exc)) from None
    cert_text, dot, org_text = fp_text.partition(".")
    try:
        fp = parse_fingerprint_text(cert_text)
    except ValueError as exc:
        raise InvalidInviteLink(f"certificate fingerprint: {exc}") from None
    org_fp = None
    if dot:
        if "." in org_text:
            raise InvalidInviteLink("the fingerprint part has more than two fingerprints")
        try:
            org_fp = parse_fingerprint_text(org_text)
        except ValueError as exc:
            raise InvalidInviteLink(f"organisation key fingerprint: {exc}") from None
    return InviteLink(host, port, code, fp, org_fp)
