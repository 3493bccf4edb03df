"""Asymmetric conversation mode (MULTI): one content key per message, wrapped for every device.

Theory of operation (docs/E2E.md, "Asymmetric mode (Multi)"). The sender picks a fresh random
32-byte content key CEK for each message, encrypts the signed ConvPayload once under it, and
wraps the CEK with HPKE for each recipient device's prekey. The server stores the payload once
and hands each device its own Wrap::

    Multi      = Header(type 0x03) | u8[32] cek_commit | bytes body_ct      ; the SEND payload
    cek_commit = HMAC-SHA256(CEK, Label("cek-commit"))
    body_ct    = AEAD_suite(key = HKDF_suite(ikm = CEK, salt = "", info = Label("body") | u16 suite,
                                             L = 32),
                            nonce = 0^12, aad = Header | cek_commit, pt = ConvPayload)
    Wrap       = Addr rcpt | u8 key_kind (1 SPK, 2 OTPK) | u32 key_id | bytes hpke_ct
    hpke_ct    = HPKE_suite.Seal(pk = prekey, info = Label("wrap") | Header | cek_commit
                                 | Addr rcpt | u8 key_kind | u32 key_id, aad = "", pt = CEK)
    ConvPayload: as for chains (momedod.e2e.chain), with
    sig        = Ed25519(DK_sender, Label("conv") | Header | cek_commit
                                    | ConvPayload up to and including the padding field)

The all-zero nonce is safe because every CEK encrypts exactly one body. ``cek_commit`` makes
the body and every wrap commit to one CEK: a sender cannot give two members different CEKs
(and so different plaintexts) for one payload, since a receiver recomputes the commitment from
the CEK it unwrapped and rejects a mismatch before decrypting. The wrap's ``info`` binds the
Header, the commitment, the recipient address and the prekey, so a wrap cannot be moved to
another payload, device or key.

Opening checks, in order, each failing with E2EError("cannot open envelope", reason=...):
the Multi header and suite (``header``, ``suite``); strict framing of Multi and Wrap and a
Wrap of at most 4,096 bytes (``malformed``); the wrap is for ``me`` (``recipient``); key_kind
1 or 2 (``key_kind``); a private key of the suite for it (``unknown_key``, ``key_suite``);
HPKE decryption of a 32-byte CEK (``decrypt``); the commitment (``cek_commit``); the body AEAD
(``decrypt``); the ConvPayload: length a multiple of 256 (``padding``), strict parse
(``malformed``), a known sender device key (``unknown_sender``), zero padding (``padding``),
a conversation content type (``content_type``), the signature (``signature``). The caller
then checks ``conv_id``, ``epoch`` and that the sender may post under the verified roster.
Nothing here keeps state, so a failure changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from momedod.protocol.encoding import MAX_U32, Reader, Writer, label
from momedod.protocol.errors import ProtocolError
from momedod.protocol.records import PREKEY_OTPK, PREKEY_SPK

from .chain import (
    CONV_ID_LEN,
    CONV_LABEL,
    KVD_LEN,
    OpenedConv,
    check_conv_payload,
    conv_payload_body,
    parse_conv_payload,
)
from .envelope import (
    ADDR_LEN,
    HEADER_LEN,
    SEAL_ONLY_CONTENT,
    Addr,
    EnvelopeType,
    header,
    is_known_content_type,
    read_header,
)
from .errors import E2EError
from .identity import DeviceKey
from .padding import BUCKET
from .seal import MSG_ID_LEN
from .suites import KemPrivateKey, Suite, kem_public_from_bytes, require_allowed

__all__ = [
    "BODY_LABEL",
    "CEK_COMMIT_LABEL",
    "CEK_LEN",
    "MAX_WRAP",
    "WRAP_LABEL",
    "Recipient",
    "cek_commit",
    "multi_body_key",
    "multi_encrypt",
    "multi_open",
]

CEK_LEN: Final = 32
"""Length of a content key."""
MAX_WRAP: Final = 4096
"""Largest Wrap accepted (suite 0x0002: 1,189 bytes; 0x0003: 1,734)."""
CEK_COMMIT_LABEL: Final = label("cek-commit")
"""HMAC message of the CEK commitment."""
BODY_LABEL: Final = label("body")
"""HKDF info prefix of the body key."""
WRAP_LABEL: Final = label("wrap")
"""HPKE info prefix of a Wrap."""

_COMMIT_LEN = 32
_AAD_LEN = HEADER_LEN + _COMMIT_LEN
_KEY_KINDS = (PREKEY_SPK, PREKEY_OTPK)

Recipient = tuple[Addr, int, int, bytes]
"""``(device, key_kind, key_id, prekey public bytes)`` of one recipient of a Multi."""


def _fail(reason: str) -> E2EError:
    return E2EError(reason=reason)


def cek_commit(cek: bytes) -> bytes:
    """``HMAC-SHA256(CEK, Label("cek-commit"))``."""
    return hmac.digest(cek, CEK_COMMIT_LABEL, hashlib.sha256)


def multi_body_key(suite: Suite, cek: bytes) -> bytes:
    """The body AEAD key: ``HKDF_suite(ikm=CEK, salt="", info=Label("body") | u16 suite, 32)``."""
    return suite.hkdf(cek, b"", BODY_LABEL + suite.id.to_bytes(2, "big"), suite.key_size)


def _wrap_prefix(rcpt: Addr, key_kind: int, key_id: int) -> bytes:
    return Writer().u8(key_kind).u32(key_id).getvalue(rcpt.encode())


def multi_encrypt(
    suite: Suite,
    sender: Addr,
    dk: DeviceKey | Ed25519PrivateKey,
    conv_id: bytes,
    epoch: int,
    ts_ms: int,
    msg_id: bytes,
    kvd: bytes,
    content_type: int,
    content: bytes,
    recipients: Sequence[Recipient],
    *,
    allow_test_suites: bool = False,
    cek: bytes | None = None,
) -> tuple[bytes, dict[Addr, bytes]]:
    """Encrypt one conversation message as a Multi payload plus one Wrap per recipient.

    ``recipients`` are ``(device, key_kind, key_id, kem_public)`` with the serialised prekey of
    ``suite`` from each device's DK-signed Prekey record. Returns ``(payload, {device: wrap})``.
    ``cek`` is for test vectors only (default: 32 fresh random bytes). Raises ValueError for a
    content type that is unknown or Seal-only, wrong field lengths, a duplicate recipient or a
    bad key_kind, and E2EError(reason="kem_public") for an invalid prekey.
    """
    require_allowed(suite, allow_test_suites)
    if not is_known_content_type(content_type) or content_type in SEAL_ONLY_CONTENT:
        raise ValueError(f"content_type {content_type} may not be sent in a conversation")
    if len(conv_id) != CONV_ID_LEN or len(msg_id) != MSG_ID_LEN or len(kvd) != KVD_LEN:
        raise ValueError("conv_id, msg_id and kvd must be 16 bytes")
    if len({r[0] for r in recipients}) != len(recipients):
        raise ValueError("a device may be a recipient only once")
    for _, key_kind, key_id, _ in recipients:
        if key_kind not in _KEY_KINDS or not 0 <= key_id <= MAX_U32:
            raise ValueError(f"bad prekey ({key_kind}, {key_id})")
    publics = [kem_public_from_bytes(suite, r[3]) for r in recipients]
    if cek is None:
        cek = os.urandom(CEK_LEN)
    elif len(cek) != CEK_LEN:
        raise ValueError(f"cek must be {CEK_LEN} bytes")

    commit = cek_commit(cek)
    aad = header(EnvelopeType.MULTI, suite.id) + commit
    body = conv_payload_body(conv_id, epoch, sender, ts_ms, msg_id, kvd, content_type, content)
    if isinstance(dk, DeviceKey):
        sig = dk.sign_labelled(CONV_LABEL + aad + body)
    else:
        sig = dk.sign(CONV_LABEL + aad + body)
    payload = Writer().bytes_(sig).getvalue(body)
    nonce = bytes(suite.nonce_size)
    body_ct = suite.aead_cipher(multi_body_key(suite, cek)).encrypt(nonce, payload, aad)
    envelope = Writer().bytes_(body_ct).getvalue(aad)

    wraps: dict[Addr, bytes] = {}
    for (rcpt, key_kind, key_id, _), public in zip(recipients, publics, strict=True):
        prefix = _wrap_prefix(rcpt, key_kind, key_id)
        hpke_ct = suite.hpke.encrypt(cek, public, WRAP_LABEL + aad + prefix)
        wraps[rcpt] = Writer().bytes_(hpke_ct).getvalue(prefix)
    return envelope, wraps


def multi_open(
    payload: bytes,
    wrap: bytes,
    me: Addr,
    my_kem_private_for: Callable[[int, int, int], KemPrivateKey | None],
    sender_dk_public_for: Callable[[Addr], bytes | None],
    *,
    allow_test_suites: bool = False,
) -> OpenedConv:
    """Open and verify a Multi payload with our Wrap.

    ``my_kem_private_for(suite_id, key_kind, key_id)`` returns our private prekey object or
    None; ``sender_dk_public_for(sender)`` the raw Ed25519 key of the sender device from its
    verified device list, or None. Returns the payload fields (``chain_id`` empty, ``n`` 0).
    Any failure raises E2EError("cannot open envelope") with the failed check as ``reason``
    (see the module docstring). The caller checks conv_id, epoch and the sender's right to
    post, and deletes a used OTPK.
    """
    r = Reader(payload)
    suite = read_header(r, EnvelopeType.MULTI, allow_test_suites=allow_test_suites)
    try:
        commit = r.fixed(_COMMIT_LEN, "cek_commit")
        body_ct = r.bytes_(MAX_U32, "body_ct")
        r.finish("multi")
        if len(wrap) > MAX_WRAP:
            raise _fail("malformed")
        w = Reader(wrap)
        rcpt = Addr.read(w, "rcpt")
        key_kind, key_id = w.u8("key_kind"), w.u32("key_id")
        hpke_ct = w.bytes_(MAX_WRAP, "hpke_ct")
        w.finish("wrap")
    except ProtocolError:
        raise _fail("malformed") from None
    if len(body_ct) < BUCKET + suite.tag_size:
        raise _fail("malformed")
    if rcpt != me:
        raise _fail("recipient")
    if key_kind not in _KEY_KINDS:
        raise _fail("key_kind")
    private = my_kem_private_for(suite.id, key_kind, key_id)
    if private is None:
        raise _fail("unknown_key")
    if not suite.owns(private):
        raise _fail("key_suite")
    aad = bytes(payload[:_AAD_LEN])
    info = WRAP_LABEL + aad + bytes(wrap[: ADDR_LEN + 5])
    try:
        cek = suite.hpke.decrypt(hpke_ct, private, info)
    except (InvalidTag, ValueError):
        raise _fail("decrypt") from None
    if len(cek) != CEK_LEN:
        raise _fail("decrypt")
    if not hmac.compare_digest(cek_commit(cek), commit):
        raise _fail("cek_commit")
    try:
        body = suite.aead_cipher(multi_body_key(suite, cek)).decrypt(
            bytes(suite.nonce_size), body_ct, aad
        )
    except InvalidTag:
        raise _fail("decrypt") from None
    fields = parse_conv_payload(body)
    dk = sender_dk_public_for(fields.sender)
    if dk is None:
        raise _fail("unknown_sender")
    check_conv_payload(fields, aad, body, dk)
    return OpenedConv(
        fields.conv_id,
        fields.epoch,
        fields.sender,
        fields.ts_ms,
        fields.msg_id,
        fields.kvd,
        fields.content_type,
        fields.content,
        b"",
        0,
    )
