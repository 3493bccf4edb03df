"""The signed AUTH / ENROLL messages and Ed25519 verification."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from momedod.protocol.auth import auth_message, enroll_message, verify_signature
from momedod.protocol.encoding import label

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = KEY.public_key().public_bytes_raw()
NONCE = b"\x11" * 32
CERT_FP = b"\x22" * 32


def test_auth_message_layout() -> None:
    msg = auth_message(NONCE, CERT_FP, "M8N22HTR", 258)
    assert msg == label("auth") + NONCE + CERT_FP + b"M8N22HTR" + b"\x00\x00\x01\x02"


def test_enroll_message_layout() -> None:
    msg = enroll_message(NONCE, CERT_FP, "CODE", PUB)
    assert (
        msg
        == label("enroll") + NONCE + CERT_FP + b"\x00\x00\x00\x04CODE" + b"\x00\x00\x00\x20" + PUB
    )


def test_valid_signature_verifies() -> None:
    msg = auth_message(NONCE, CERT_FP, "M8N22HTR", 1)
    assert verify_signature(PUB, KEY.sign(msg), msg)


@pytest.mark.parametrize(
    "other",
    [
        auth_message(b"\x12" * 32, CERT_FP, "M8N22HTR", 1),  # replayed for another nonce
        auth_message(NONCE, b"\x23" * 32, "M8N22HTR", 1),  # relayed through another cert
        auth_message(NONCE, CERT_FP, "49K49J00", 1),
        auth_message(NONCE, CERT_FP, "M8N22HTR", 2),
    ],
)
def test_signature_is_bound_to_every_input(other: bytes) -> None:
    sig = KEY.sign(auth_message(NONCE, CERT_FP, "M8N22HTR", 1))
    assert not verify_signature(PUB, sig, other)


def test_auth_signature_is_not_an_enroll_signature() -> None:
    sig = KEY.sign(auth_message(NONCE, CERT_FP, "M8N22HTR", 1))
    assert not verify_signature(PUB, sig, enroll_message(NONCE, CERT_FP, "M8N22HTR", PUB))


def test_enroll_signature_covers_code_and_key() -> None:
    msg = enroll_message(NONCE, CERT_FP, "CODE", PUB)
    sig = KEY.sign(msg)
    assert verify_signature(PUB, sig, msg)
    assert not verify_signature(PUB, sig, enroll_message(NONCE, CERT_FP, "CODF", PUB))
    other_pub = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert not verify_signature(PUB, sig, enroll_message(NONCE, CERT_FP, "CODE", other_pub))


@pytest.mark.parametrize(
    ("key", "sig"),
    [
        (PUB[:31], None),
        (PUB + b"\x00", None),
        (b"\xff" * 32, None),  # not a valid curve point
        (PUB, b"\x00" * 63),
        (PUB, b"\xff" * 64),
    ],
)
def test_verify_returns_false_and_never_raises(key: bytes, sig: bytes | None) -> None:
    msg = b"message"
    good = KEY.sign(msg)
    assert verify_signature(key, good if sig is None else sig, msg) is False


def test_builders_reject_wrong_sizes() -> None:
    with pytest.raises(ValueError):
        auth_message(NONCE[:31], CERT_FP, "M8N22HTR", 1)
    with pytest.raises(ValueError):
        auth_message(NONCE, CERT_FP, "m8n2-2ht", 1)
    with pytest.raises(ValueError):
        enroll_message(NONCE, CERT_FP, "CODE", PUB[:31])
