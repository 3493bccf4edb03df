"""Invite links, invite codes and the server certificate fingerprint.

An invite link carries everything a new device needs to connect safely::

    momedo://HOST:PORT/invite/CODE#FINGERPRINT
    momedo://HOST:PORT/invite/CODE#FINGERPRINT.ORGFP
    momedo://HOST:PORT,HOST2:PORT2/invite/CODE#FINGERPRINT+FINGERPRINT2.ORGFP

``HOST`` is a DNS name, an IPv4 address or an IPv6 address in brackets; ``PORT`` is 1-65535;
``CODE`` is the invite code (Crockford base32, normally 20 characters = 100 bits);
``FINGERPRINT`` is the SHA-256 of the server certificate's public key (SubjectPublicKeyInfo,
DER) as RFC 4648 base32, upper case, without padding (52 characters). The client pins that
fingerprint: after the TLS handshake it compares it with the certificate the server
presented, and no CA is consulted. ``ORGFP``, present once the organisation has an
organisation key, is that key's 32-byte fingerprint in the same text form; the client pins
it to verify organisation-signed rosters (docs/E2E.md).

A server that runs as several nodes lists every node's address, separated by ``,`` (as
libpq and MongoDB connection URIs do), and every certificate pin, separated by ``+``; a
client may connect to any of the addresses and accepts any of the pins. A link with one
address and one pin is exactly the older form, so older parsers keep reading it.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .userid import ALPHABET, crockford_clean

__all__ = [
    "FINGERPRINT_LEN",
    "INVITE_CODE_LEN",
    "MAX_ADDRESSES",
    "MAX_INVITE_CODE_LEN",
    "MAX_LINK_LEN",
    "MAX_PINS",
    "Address",
    "InvalidInviteLink",
    "InviteLink",
    "cert_fingerprint",
    "check_addresses",
    "check_pins",
    "fingerprint_text",
    "format_address",
    "generate_invite_code",
    "normalize_invite_code",
    "parse_address",
    "parse_fingerprint_text",
    "parse_invite_link",
]

Address = tuple[str, int]
"""A server address: (host, port); an IPv6 host without brackets."""

FINGERPRINT_LEN = 32
"""Bytes in a certificate fingerprint (SHA-256)."""
INVITE_CODE_LEN = 20
"""Characters in a generated invite code (100 random bits)."""
MAX_INVITE_CODE_LEN = 64
"""Longest invite code accepted (the ENROLL field limit)."""
MAX_ADDRESSES = 8
"""Most server addresses in one invite link."""
MAX_PINS = 8
"""Most certificate pins in one invite link."""
MAX_LINK_LEN = 2048
"""Longest invite link in characters (a QR code holds at most 2,953 bytes)."""

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


def format_address(host: str, port: int) -> str:
    """``HOST:PORT``, an IPv6 host in brackets: ``[2001:db8::1]:7443``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> Address:
    """Parse ``HOST:PORT`` (an IPv6 host in brackets); raise :class:`InvalidInviteLink`."""
    if text.startswith("["):
        host, bracket, port_part = text[1:].partition("]")
        if not bracket:
            raise InvalidInviteLink(f"missing ] after the IPv6 address in {text!r}")
        if ":" not in host:
            raise InvalidInviteLink(f"{host!r} in brackets is not an IPv6 address")
    else:
        host, colon, port_text = text.rpartition(":")
        port_part = colon + port_text
        if not colon:
            host = text
        if ":" in host:
            raise InvalidInviteLink(
                f"an IPv6 address must be written in brackets: [ADDR]:PORT, got {text!r}"
            )
    if not host:
        raise InvalidInviteLink(f"the host is missing in {text!r}")
    if not port_part.startswith(":") or not _PORT.fullmatch(port_part[1:]):
        raise InvalidInviteLink(f"the port is missing or not a number (HOST:PORT) in {text!r}")
    port = int(port_part[1:])
    _check_address(host, port)
    return host, port


def _check_address(host: str, port: int) -> None:
    _check_host(host)
    if not 1 <= port <= 65535:
        raise InvalidInviteLink(f"port must be 1-65535, got {port}")


def _address_key(address: Address) -> Address:
    """What makes two addresses the same: DNS names are case-insensitive (a trailing dot
    changes nothing), IPv6 addresses have several spellings."""
    host, port = address
    if ":" in host:
        return ipaddress.IPv6Address(host).compressed, port
    return host.lower().rstrip("."), port


def check_addresses(addresses: Sequence[Address]) -> None:
    """Raise :class:`InvalidInviteLink` unless ``addresses`` are 1-8 valid, distinct ones."""
    if not addresses:
        raise InvalidInviteLink("at least one server address is needed")
    if len(addresses) > MAX_ADDRESSES:
        raise InvalidInviteLink(f"at most {MAX_ADDRESSES} server addresses, got {len(addresses)}")
    seen: set[Address] = set()
    for host, port in addresses:
        _check_address(host, port)
        key = _address_key((host, port))
        if key in seen:
            raise InvalidInviteLink(f"server address {format_address(host, port)} is listed twice")
        seen.add(key)


def check_pins(pins: Sequence[bytes]) -> None:
    """Raise :class:`InvalidInviteLink` unless ``pins`` are 1-8 distinct 32-byte fingerprints."""
    if not pins:
        raise InvalidInviteLink("at least one certificate fingerprint is needed")
    if len(pins) > MAX_PINS:
        raise InvalidInviteLink(f"at most {MAX_PINS} certificate fingerprints, got {len(pins)}")
    for pin in pins:
        if len(pin) != FINGERPRINT_LEN:
            raise InvalidInviteLink(f"fingerprint must be 32 bytes, got {len(pin)}")
    if len(set(pins)) != len(pins):
        raise InvalidInviteLink("a certificate fingerprint is listed twice")


@dataclass(frozen=True)
class InviteLink:
    """A parsed invite link. ``str(link)`` gives the canonical link text.

    ``host``/``port`` are the first server address and ``fingerprint`` the first certificate
    pin; ``addresses`` holds every address (``(host, port)`` first) and ``fingerprints``
    every pin (``fingerprint`` first). Leave those two out for a single-address link: they
    default to ``((host, port),)`` and ``(fingerprint,)``; :meth:`of` builds a link from
    the lists. ``host`` holds IPv6 addresses without brackets; ``code`` is the canonical
    invite code; ``org_fp`` the 32-byte organisation key fingerprint, or None if the link
    carries none (no organisation key yet, or an older server). Invalid values raise
    :class:`InvalidInviteLink`.
    """

    host: str
    port: int
    code: str
    fingerprint: bytes
    org_fp: bytes | None = None
    addresses: tuple[Address, ...] = ()
    fingerprints: tuple[bytes, ...] = ()

    @classmethod
    def of(
        cls,
        addresses: Sequence[Address],
        code: str,
        fingerprints: Sequence[bytes],
        org_fp: bytes | None = None,
    ) -> InviteLink:
        """A link to every address in ``addresses``, accepting every pin in ``fingerprints``."""
        if not addresses:
            raise InvalidInviteLink("at least one server address is needed")
        if not fingerprints:
            raise InvalidInviteLink("at least one certificate fingerprint is needed")
        host, port = addresses[0]
        return cls(host, port, code, fingerprints[0], org_fp, tuple(addresses), tuple(fingerprints))

    def __post_init__(self) -> None:
        if not self.addresses:
            object.__setattr__(self, "addresses", ((self.host, self.port),))
        elif tuple(self.addresses[0]) != (self.host, self.port):
            raise InvalidInviteLink("the first of the addresses must be host:port")
        if not self.fingerprints:
            object.__setattr__(self, "fingerprints", (self.fingerprint,))
        elif self.fingerprints[0] != self.fingerprint:
            raise InvalidInviteLink("the first of the fingerprints must be the fingerprint")
        check_addresses(self.addresses)
        try:
            canonical = normalize_invite_code(self.code)
        except ValueError as exc:
            raise InvalidInviteLink(str(exc)) from None
        if canonical != self.code:
            raise InvalidInviteLink(f"invite code {self.code!r} is not in canonical form")
        check_pins(self.fingerprints)
        if self.org_fp is not None and len(self.org_fp) != FINGERPRINT_LEN:
            raise InvalidInviteLink(
                f"organisation key fingerprint must be 32 bytes, got {len(self.org_fp)}"
            )
        if len(self.format()) > MAX_LINK_LEN:
            raise InvalidInviteLink(
                f"the invite link would be {len(self.format())} characters, "
                f"more than {MAX_LINK_LEN}: list fewer or shorter addresses"
            )

    def format(self) -> str:
        """Return the link text
        ``momedo://HOST:PORT[,HOST:PORT...]/invite/CODE#FINGERPRINT[+FINGERPRINT...][.ORGFP]``.
        """
        authority = ",".join(format_address(h, p) for h, p in self.addresses)
        fp = "+".join(fingerprint_text(x) for x in self.fingerprints)
        if self.org_fp is not None:
            fp += "." + fingerprint_text(self.org_fp)
        return f"{_SCHEME}{authority}/invite/{self.code}#{fp}"

    def __str__(self) -> str:
        return self.format()


def parse_invite_link(text: str) -> InviteLink:
    """Parse an invite link; raise :class:`InvalidInviteLink` naming what is wrong.

    The scheme is case-insensitive, surrounding whitespace is ignored, the code is normalised
    like a typed code (so dashes and lower case are accepted), the fingerprints are
    case-insensitive. The authority is one or more ``HOST:PORT`` separated by ``,``; the
    fragment is one or more certificate fingerprints separated by ``+``, optionally followed
    by ``.`` and the organisation key fingerprint.
    """
    link = text.strip()
    if len(link) > MAX_LINK_LEN:
        raise InvalidInviteLink(f"an invite link has at most {MAX_LINK_LEN} characters")
    if link[: len(_SCHEME)].lower() != _SCHEME:
        raise InvalidInviteLink("an invite link starts with momedo://")
    rest = link[len(_SCHEME) :]
    rest, hash_sign, fp_text = rest.partition("#")
    if not hash_sign:
        raise InvalidInviteLink("the certificate fingerprint (#...) is missing")
    authority, slash, path = rest.partition("/")
    if not slash:
        raise InvalidInviteLink("the path /invite/CODE is missing")
    entries = authority.split(",")
    if len(entries) > MAX_ADDRESSES:
        raise InvalidInviteLink(f"at most {MAX_ADDRESSES} server addresses, got {len(entries)}")
    addresses: list[Address] = []
    for i, entry in enumerate(entries):
        if not entry:
            if len(entries) == 1:
                raise InvalidInviteLink("the host is missing")
            raise InvalidInviteLink(f"server address {i + 1} of {len(entries)} is empty")
        addresses.append(_parse_link_address(entry, len(entries) > 1))
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
    pin_texts = cert_text.split("+")
    if len(pin_texts) > MAX_PINS:
        raise InvalidInviteLink(
            f"at most {MAX_PINS} certificate fingerprints, got {len(pin_texts)}"
        )
    pins: list[bytes] = []
    for i, pin_text in enumerate(pin_texts):
        what = "certificate fingerprint"
        if len(pin_texts) > 1:
            what += f" {i + 1} of {len(pin_texts)}"
            if not pin_text:
                raise InvalidInviteLink(f"{what} is empty")
        try:
            pins.append(parse_fingerprint_text(pin_text))
        except ValueError as exc:
            raise InvalidInviteLink(f"{what}: {exc}") from None
    org_fp = None
    if dot:
        if "." in org_text:
            raise InvalidInviteLink(
                "the fingerprint part has more than two fingerprints separated by '.' "
                "(certificate fingerprints are separated by '+')"
            )
        try:
            org_fp = parse_fingerprint_text(org_text)
        except ValueError as exc:
            raise InvalidInviteLink(f"organisation key fingerprint: {exc}") from None
    return InviteLink.of(addresses, code, pins, org_fp)


def _parse_link_address(entry: str, several: bool) -> Address:
    if not several:
        return parse_address(entry)
    try:
        return parse_address(entry)
    except InvalidInviteLink as exc:
        raise InvalidInviteLink(f"server address {entry!r}: {exc}") from None
