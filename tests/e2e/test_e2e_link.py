"""Device-linking encodings (LINK_REQUEST, LinkProvision, link string) and LINK Seals."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from momedod.e2e.envelope import Addr, ContentType
from momedod.e2e.errors import E2EError
from momedod.e2e.identity import UserIdentityKey
from momedod.e2e.link import (
    LinkProvision,
    LinkRequest,
    PinnedContact,
    format_link_string,
    is_link_request,
    parse_link_string,
)
from momedod.e2e.seal import KEY_KIND_LINK, open_seal, seal
from momedod.e2e.suites import SUITE_XWING, get_suite, kem_keypair_from_seed
from momedod.protocol.encoding import label

SECRET = bytes(range(16))
NEW = Addr("A1CE0005", 2)
P = Addr("A1CE0005", 1)
LINK = "momedo://127.0.0.1:7443/invite/ABCDEFGHJKMNPQRSTVWX#" + "A" * 52


def _lk() -> tuple[object, bytes]:
    return kem_keypair_from_seed(get_suite(SUITE_XWING), bytes([7]) * 32)


def test_link_string_round_trip_and_rejects() -> None:
    text = format_link_string(LINK, SECRET)
    assert text.startswith("MOMEDO-LINK1:momedo://") and text.endswith(
        ":AAAQEAYEAUDAOCAJBIFQYDIOB4"
    )
    assert parse_link_string(text) == (LINK, SECRET)
    assert parse_link_string(text.lower().replace("momedo-link1", "MOMEDO-LINK1"))[1] == SECRET
    for bad in ("MOMEDO1:" + text[13:], text + "A", text[:-1], "MOMEDO-LINK1:AAAA"):
        with pytest.raises(ValueError):
            parse_link_string(bad)


def test_link_request_layout_and_mac() -> None:
    _, lk_pub = _lk()
    dk_pub = bytes(32)
    req = LinkRequest(SUITE_XWING, NEW, dk_pub, lk_pub)
    data = req.encode(SECRET)
    assert is_link_request(data)
    body = (
        bytes.fromhex("4d4401110002")
        + NEW.encode()
        + (32).to_bytes(4, "big")
        + dk_pub
        + len(lk_pub).to_bytes(4, "big")
        + lk_pub
    )
    mac = hmac.new(SECRET, label("link-req") + body, hashlib.sha256).digest()
    assert data == body + mac
    assert LinkRequest.decode(data, SECRET) == req
    with pytest.raises(E2EError) as exc:
        LinkRequest.decode(data, bytes(16))
    assert exc.value.reason == "mac"
    for i in (7, 30, len(data) - 1):
        bad = bytearray(data)
        bad[i] ^= 1
        with pytest.raises(E2EError):
            LinkRequest.decode(bytes(bad), SECRET)
    with pytest.raises(E2EError):
        LinkRequest.decode(data + b"\0", SECRET)


def test_link_provision_binds_device_and_secret() -> None:
    uik = UserIdentityKey(bytes(32), SUITE_XWING)
    prov = LinkProvision(uik.public, (PinnedContact("B0BB0B0Y", bytes([9]) * 32, True),))
    data = prov.encode(NEW, SECRET)
    assert data[: len(uik.public.encode())] == uik.public.encode()
    assert LinkProvision.decode(data, NEW, SECRET) == prov
    for addr, secret in ((P, SECRET), (NEW, bytes(16))):
        with pytest.raises(E2EError) as exc:
            LinkProvision.decode(data, addr, secret)
        assert exc.value.reason == "mac"


def test_link_seal_only_for_a_link_opener() -> None:
    lk_priv, lk_pub = _lk()
    dk = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
    env = seal(
        get_suite(SUITE_XWING),
        P,
        dk,
        NEW,
        KEY_KIND_LINK,
        0,
        lk_pub,
        1_700_000_000_000,
        bytes(16),
        ContentType.LINK_PROVISION,
        b"x",
    )
    dk_pub = dk.public_key().public_bytes_raw()
    with pytest.raises(E2EError) as exc:  # an ordinary receiver refuses key_kind 3
        open_seal(env, NEW, lambda *_: lk_priv, lambda _s: dk_pub)  # type: ignore[arg-type,return-value]
    assert exc.value.reason == "key_kind"
    opened = open_seal(
        env,
        NEW,
        lambda *_: lk_priv,  # type: ignore[arg-type,return-value]
        lambda _s: dk_pub,
        key_kinds=(KEY_KIND_LINK,),
    )
    assert (opened.key_kind, opened.content_type, opened.content) == (3, 9, b"x")
