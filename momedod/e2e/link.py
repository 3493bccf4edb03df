"""Device linking: the link string, LINK_REQUEST and the LINK_PROVISION content.

Layout (docs/E2E.md, "Device linking")::

    link string   = "MOMEDO-LINK1:" invite_link ":" base32(link_secret)     ; 16-byte secret
    LINK_REQUEST  = Header(type 0x11, suite) | Addr new_device | bytes dk_pub | bytes lk_pub
                    | u8[32] mac
    mac           = HMAC-SHA256(link_secret, Label("link-req") | all preceding bytes)
    LinkProvision = UIKPub | list<PinnedContact> | u8[32] mac
    PinnedContact = u8[8] user_id | u8[32] uik_fp | u8 trust_level (0 unverified, 1 verified)
    mac           = HMAC-SHA256(link_secret, Label("link-prov") | Addr new_device
                                 | UIKPub | list<PinnedContact>)

The link secret never goes to the server; it authenticates the request (the new device's DK
and link key LK) to the existing device, and the provisioning content to the new device.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from momedod.protocol.encoding import MAX_U32, Reader, Writer, label
from momedod.protocol.errors import ProtocolError

from .envelope import Addr, EnvelopeType, header, read_header
from .errors import E2EError
from .identity import HybridPublicKey
from .suites import kem_public_from_bytes

__all__ = [
    "LINK_PREFIX",
    "LINK_REQUEST_TYPE",
    "LINK_SECRET_LEN",
    "LinkProvision",
    "LinkRequest",
    "PinnedContact",
    "format_link_string",
    "is_link_request",
    "parse_link_string",
]

LINK_PREFIX = "MOMEDO-LINK1:"
"""Prefix of the string the existing device shows to the new one."""
LINK_SECRET_LEN = 16
"""Bytes of the link secret."""
LINK_REQUEST_TYPE = EnvelopeType.LINK_REQUEST
"""Header type byte of a LINK_REQUEST."""
MAC_LEN = 32
_REQ_LABEL = label("link-req")
_PROV_LABEL = label("link-prov")
_MAX_CONTACTS = 100_000


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=")


def format_link_string(invite_link: str, link_secret: bytes) -> str:
    """``MOMEDO-LINK1:<invite link>:<base32 link_secret>`` (upper case, no padding)."""
    if len(link_secret) != LINK_SECRET_LEN:
        raise ValueError(f"the link secret is {LINK_SECRET_LEN} bytes")
    return f"{LINK_PREFIX}{invite_link}:{_b32(link_secret)}"


def parse_link_string(text: str) -> tuple[str, bytes]:
    """Return (invite link, link secret); ValueError if ``text`` is not a link string."""
    text = text.strip()
    if not text.startswith(LINK_PREFIX):
        raise ValueError(f"a link string starts with {LINK_PREFIX}")
    invite, sep, secret_text = text[len(LINK_PREFIX) :].rpartition(":")
    if not sep or not invite:
        raise ValueError("no link secret in the link string")
    s = secret_text.upper()
    try:
        secret = base64.b32decode(s + "=" * (-len(s) % 8))
    except (binascii.Error, ValueError):
        raise ValueError("the link secret is not base32") from None
    if len(secret) != LINK_SECRET_LEN or _b32(secret) != s:
        raise ValueError("the link secret is not 16 bytes in canonical base32")
    return invite, secret


def _mac(secret: bytes, data: bytes) -> bytes:
    return hmac.new(secret, data, hashlib.sha256).digest()


def is_link_request(payload: bytes) -> bool:
    """True if ``payload`` starts like a LINK_REQUEST (magic, version, type 0x11)."""
    return len(payload) >= 6 and payload[:4] == header(LINK_REQUEST_TYPE, 0)[:4]


@dataclass(frozen=True)
class LinkRequest:
    """What a new device tells the existing one: its address, DK and one-off link key."""

    suite: int
    new_device: Addr
    dk_pub: bytes
    lk_pub: bytes

    def _body(self) -> bytes:
        w = Writer()
        self.new_device.write(w)
        w.bytes_(self.dk_pub).bytes_(self.lk_pub)
        return w.getvalue(header(LINK_REQUEST_TYPE, self.suite))

    def encode(self, link_secret: bytes) -> bytes:
        body = self._body()
        return body + _mac(link_secret, _REQ_LABEL + body)

    @classmethod
    def decode(cls, data: bytes, link_secret: bytes) -> LinkRequest:
        """Parse and check the MAC; E2EError (``mac``, ``malformed``, ...) on any failure."""
        r = Reader(data)
        suite = read_header(r, LINK_REQUEST_TYPE, allow_test_suites=False)
        try:
            new_device = Addr.read(r, "new_device")
            dk_pub = r.bytes_(32, "dk_pub")
            lk_pub = r.bytes_(MAX_U32, "lk_pub")
            mac = r.fixed(MAC_LEN, "mac")
            r.finish("link request")
        except ProtocolError:
            raise E2EError(reason="malformed") from None
        if not hmac.compare_digest(mac, _mac(link_secret, _REQ_LABEL + data[:-MAC_LEN])):
            raise E2EError(reason="mac")
        if len(dk_pub) != 32:
            raise E2EError(reason="malformed")
        try:
            kem_public_from_bytes(suite, lk_pub)
        except E2EError:
            raise E2EError(reason="kem_public") from None
        return cls(suite.id, new_device, dk_pub, lk_pub)


@dataclass(frozen=True)
class PinnedContact:
    """A contact pin handed to a new device: user ID, identity fingerprint, trust level."""

    user_id: str
    uik_fp: bytes
    verified: bool


@dataclass(frozen=True)
class LinkProvision:
    """The content of the LINK_PROVISION Seal: the user's UIK public key and the pins."""

    uik: HybridPublicKey
    contacts: tuple[PinnedContact, ...]

    def _body(self) -> bytes:
        w = Writer().raw(self.uik.encode()).u32(len(self.contacts))
        for c in self.contacts:
            w.user_id(c.user_id).fixed(c.uik_fp, 32).u8(1 if c.verified else 0)
        return w.getvalue()

    def encode(self, new_device: Addr, link_secret: bytes) -> bytes:
        body = self._body()
        return body + _mac(link_secret, _PROV_LABEL + new_device.encode() + body)

    @classmethod
    def decode(cls, data: bytes, new_device: Addr, link_secret: bytes) -> LinkProvision:
        """Parse and check the MAC; E2EError on any failure."""
        try:
            r = Reader(data)
            uik = HybridPublicKey.read(r)
            contacts = []
            for _ in range(r.count(_MAX_CONTACTS, 41, "contacts")):
                uid = r.user_id("user_id")
                fp = r.fixed(32, "uik_fp")
                level = r.u8("trust_level")
                if level > 1:
                    raise E2EError(reason="malformed")
                contacts.append(PinnedContact(uid, fp, level == 1))
            mac = r.fixed(MAC_LEN, "mac")
            r.finish("link provision")
        except ProtocolError:
            raise E2EError(reason="malformed") from None
        expected = _mac(link_secret, _PROV_LABEL + new_device.encode() + data[:-MAC_LEN])
        if not hmac.compare_digest(mac, expected):
            raise E2EError(reason="mac")
        return cls(uik, tuple(contacts))
