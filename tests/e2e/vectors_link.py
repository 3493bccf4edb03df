"""Deterministic vectors for device linking: link string, LINK_REQUEST, provisioning content.

Everything here is deterministic (HMAC-SHA256 and seed-derived keys), so ``vectors()`` gives
the same bytes every time; ``check()`` re-derives them with the library and also checks the
must-fail cases.
"""

from __future__ import annotations

from typing import Any

from momedod.e2e.envelope import Addr
from momedod.e2e.errors import E2EError
from momedod.e2e.identity import DeviceKey, UserIdentityKey
from momedod.e2e.link import (
    LinkProvision,
    LinkRequest,
    PinnedContact,
    format_link_string,
    parse_link_string,
)
from momedod.e2e.suites import get_suite, kem_keypair_from_seed

LINK_SECRET = bytes(range(16))
WRONG_SECRET = bytes(range(1, 17))
INVITE = (
    "momedo://127.0.0.1:7443/invite/7Z2QH4KMW9XRB3TNC8VD"
    "#LF6Q3QN6JAKOYVBUPPLVUMXMJCRIKEAFY6XR5LMVPAB7GYYNQCJA"
)
NEW_DEVICE = Addr("M8N22HTR", 2)
DK_SEED = bytes([0x21]) * 32
LK_SEED = bytes([0x42]) * 32
UIK_SEED = bytes([0x17]) * 32
CONTACT = PinnedContact("49K49J00", bytes([0x99]) * 32, True)


def _request() -> LinkRequest:
    _, lk_pub = kem_keypair_from_seed(get_suite(2), LK_SEED)
    dk_pub = DeviceKey(DK_SEED).public_bytes
    return LinkRequest(2, NEW_DEVICE, dk_pub, lk_pub)


def _provision() -> LinkProvision:
    return LinkProvision(UserIdentityKey(UIK_SEED, 2).public, (CONTACT,))


def _flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]


def vectors() -> dict[str, Any]:
    """The linking vectors as a JSON-ready dict."""
    request = _request().encode(LINK_SECRET)
    provision = _provision().encode(NEW_DEVICE, LINK_SECRET)
    return {
        "link_string": {
            "invite_link": INVITE,
            "link_secret": LINK_SECRET.hex(),
            "text": format_link_string(INVITE, LINK_SECRET),
        },
        "link_request": {
            "suite": 2,
            "new_device": {"user_id": NEW_DEVICE.user_id, "device_id": NEW_DEVICE.device_id},
            "dk_seed": DK_SEED.hex(),
            "lk_seed": LK_SEED.hex(),
            "link_secret": LINK_SECRET.hex(),
            "hex": request.hex(),
        },
        "link_provision": {
            "uik_seed": UIK_SEED.hex(),
            "uik_suite": 2,
            "contacts": [
                {"user_id": CONTACT.user_id, "uik_fp": CONTACT.uik_fp.hex(), "verified": True}
            ],
            "new_device": {"user_id": NEW_DEVICE.user_id, "device_id": NEW_DEVICE.device_id},
            "link_secret": LINK_SECRET.hex(),
            "hex": provision.hex(),
        },
        "must_fail": [
            {
                "name": "request_wrong_secret",
                "what": "link_request",
                "hex": request.hex(),
                "secret": WRONG_SECRET.hex(),
            },
            {
                "name": "request_flipped_mac",
                "what": "link_request",
                "hex": _flip(request, len(request) - 1).hex(),
                "secret": LINK_SECRET.hex(),
            },
            {
                "name": "request_flipped_dk",
                "what": "link_request",
                "hex": _flip(request, 20).hex(),
                "secret": LINK_SECRET.hex(),
            },
            {
                "name": "request_truncated",
                "what": "link_request",
                "hex": request[:-1].hex(),
                "secret": LINK_SECRET.hex(),
            },
            {
                "name": "provision_wrong_secret",
                "what": "link_provision",
                "hex": provision.hex(),
                "secret": WRONG_SECRET.hex(),
            },
            {
                "name": "provision_trailing_byte",
                "what": "link_provision",
                "hex": (provision + b"\0").hex(),
                "secret": LINK_SECRET.hex(),
            },
        ],
    }


def check(v: dict[str, Any]) -> None:
    """Assert that the library produces and accepts exactly these vectors."""
    ls = v["link_string"]
    assert format_link_string(ls["invite_link"], bytes.fromhex(ls["link_secret"])) == ls["text"]
    assert parse_link_string(ls["text"]) == (ls["invite_link"], bytes.fromhex(ls["link_secret"]))
    req = bytes.fromhex(v["link_request"]["hex"])
    assert _request().encode(LINK_SECRET) == req
    assert LinkRequest.decode(req, LINK_SECRET) == _request()
    prov = bytes.fromhex(v["link_provision"]["hex"])
    assert _provision().encode(NEW_DEVICE, LINK_SECRET) == prov
    assert LinkProvision.decode(prov, NEW_DEVICE, LINK_SECRET) == _provision()
    for case in v["must_fail"]:
        data, secret = bytes.fromhex(case["hex"]), bytes.fromhex(case["secret"])
        try:
            if case["what"] == "link_request":
                LinkRequest.decode(data, secret)
            else:
                LinkProvision.decode(data, NEW_DEVICE, secret)
        except E2EError:
            continue
        raise AssertionError(f"must_fail case {case['name']} was accepted")
