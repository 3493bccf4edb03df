"""The messages a device signs to authenticate (AUTH) or to enroll (ENROLL), and their check.

Both signatures are Ed25519 by the device's *transport key* (never an end-to-end key). They
bind the server's fresh WELCOME nonce (no replay) and the fingerprint of the certificate the
client saw (a man in the middle with another certificate cannot forward the signature)::

    auth   = Label("auth")   | u8[32] nonce | u8[32] cert_fp | u8[8] user_id | u32 device_id
    enroll = Label("enroll") | u8[32] nonce | u8[32] cert_fp | bytes invite_code
             | bytes transport_pub

``bytes`` is the MBF ``u32 length | data``; the invite code is the exact string sent in the
ENROLL frame, as UTF-8.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .encoding import Writer, label
from .frames import NONCE_LEN, SIGNATURE_LEN, TRANSPORT_PUB_LEN

__all__ = ["AUTH_LABEL", "ENROLL_LABEL", "auth_message", "enroll_message", "verify_signature"]

AUTH_LABEL = label("auth")
"""``Label("auth")``: the first bytes of every AUTH signed message."""
ENROLL_LABEL = label("enroll")
"""``Label("enroll")``: the first bytes of every ENROLL signed message."""

_CERT_FP_LEN = 32


def auth_message(nonce: bytes, cert_fp: bytes, user_id: str, device_id: int) -> bytes:
    """Return the bytes an enrolled device signs in AUTH (see the module docstring)."""
    w = Writer().raw(AUTH_LABEL).fixed(nonce, NONCE_LEN).fixed(cert_fp, _CERT_FP_LEN)
    return w.user_id(user_id).u32(device_id).getvalue()


def enroll_message(nonce: bytes, cert_fp: bytes, invite_code: str, transport_pub: bytes) -> bytes:
    """Return the bytes a new device signs in ENROLL (see the module docstring)."""
    if len(transport_pub) != TRANSPORT_PUB_LEN:
        raise ValueError(f"transport_pub must be {TRANSPORT_PUB_LEN} bytes")
    w = Writer().raw(ENROLL_LABEL).fixed(nonce, NONCE_LEN).fixed(cert_fp, _CERT_FP_LEN)
    w.string(invite_code).bytes_(transport_pub)
    return w.getvalue()


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Check an Ed25519 signature; False on any failure (bad key, bad length, mismatch)."""
    if len(public_key) != TRANSPORT_PUB_LEN or len(signature) != SIGNATURE_LEN:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except Exception:  # InvalidSignature, or a key the backend rejects: all mean "no"
        return False
    return True
