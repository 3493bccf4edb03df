"""Cipher suites and the KEM keys of each suite, derived from 32-byte seeds.

==========  ==================================  ===========  ==================  ==========
suite       HPKE KEM (id)                       HPKE KDF     AEAD                use
==========  ==================================  ===========  ==================  ==========
0x0001      DHKEM(X25519, HKDF-SHA256) (0x0020)  HKDF-SHA256  ChaCha20-Poly1305   tests only
0x0002      X-Wing = MLKEM768-X25519 (0x647A)   HKDF-SHA256  ChaCha20-Poly1305   default
0x0003      MLKEM1024-P384 (0x0051)             HKDF-SHA384  AES-256-GCM         optional
==========  ==================================  ===========  ==================  ==========

The suite fixes everything: the HPKE algorithms of a Seal, and the HKDF hash and AEAD of a
Chain (``Suite.hkdf``, ``Suite.aead``). A suite's keys are never used with another suite.

Key forms (interoperable with the HPKE-PQ drafts; a private key is always a 32-byte seed):

* 0x0001: private = the seed as an X25519 scalar; public = X25519 public (32 bytes).
* 0x0002: ``e = SHAKE256(seed, 96)``; ML-KEM-768 from ``e[0:64]`` (FIPS 203 ``d || z``), X25519
  private = ``e[64:96]``; public = ML-KEM-768 encapsulation key (1184) || X25519 public (32) =
  1216 bytes (draft-connolly-cfrg-xwing-kem, draft-ietf-hpke-pq).
* 0x0003: ML-KEM-1024 from ``SHAKE256(seed)[0:64]``; the P-384 scalar is the first 48-byte
  big-endian block of the same SHAKE256 output after byte 64 that lies in ``[1, n-1]``
  (``n`` = the P-384 group order); a block outside that range (probability < 2^-190) is
  skipped and the next 48 bytes are tried, so normally ``e = SHAKE256(seed, 112)`` and the
  scalar is ``e[64:112]`` (draft-irtf-cfrg-concrete-hybrid-kems, Group.RandomScalar). Public =
  ML-KEM-1024 encapsulation key (1568) || uncompressed P-384 point (97) = 1665 bytes.

Suite 0x0001 exists for fast tests only: every function that picks a suite refuses it unless
the caller passes ``allow_test_suites=True``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TypeAlias

from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import E2EError

__all__ = [
    "ALL_SUITES",
    "P384_ORDER",
    "SEED_LEN",
    "SUITE_MLKEM1024_P384",
    "SUITE_TEST_X25519",
    "SUITE_XWING",
    "KemPrivateKey",
    "KemPublicKey",
    "Suite",
    "find_suite",
    "get_suite",
    "kem_keypair_from_seed",
    "kem_public_from_bytes",
    "p384_scalar_from_stream",
    "require_allowed",
]

SUITE_TEST_X25519 = 0x0001
"""Suite id of DHKEM-X25519 (tests only, refused in production)."""
SUITE_XWING = 0x0002
"""Suite id of X-Wing (ML-KEM-768 + X25519): the default and the one every client supports."""
SUITE_MLKEM1024_P384 = 0x0003
"""Suite id of ML-KEM-1024 + P-384 with HKDF-SHA384 and AES-256-GCM."""

SEED_LEN = 32
"""Every KEM private key is a 32-byte seed."""

P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    16,
)
"""The order n of the P-384 group."""

_MLKEM_SEED = 64
_P384_SCALAR = 48

KemPrivateKey: TypeAlias = (
    x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey | hpke.MLKEM1024P384PrivateKey
)
"""A KEM private key object of one of the suites."""
KemPublicKey: TypeAlias = (
    x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey | hpke.MLKEM1024P384PublicKey
)
"""A KEM public key object of one of the suites."""

AeadCipher: TypeAlias = ChaCha20Poly1305 | AESGCM


@dataclass(frozen=True, eq=False)
class Suite:
    """One cipher suite: its id, HPKE suite, AEAD, HKDF hash and the sizes that go with them.

    ``kem_public_size`` is the length of a public key in its serialised form; ``enc_size`` is
    the length of the KEM ciphertext at the front of every HPKE output. ``production`` is False
    for the test suite 0x0001.
    """

    id: int
    name: str
    hpke: hpke.Suite
    aead: type[ChaCha20Poly1305] | type[AESGCM]
    hash: hashes.HashAlgorithm
    kem_public_size: int
    enc_size: int
    production: bool
    key_size: int = 32
    nonce_size: int = 12
    tag_size: int = 16

    def hkdf(self, ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
        """HKDF (RFC 5869) with this suite's hash."""
        return HKDF(algorithm=self.hash, length=length, salt=salt, info=info).derive(ikm)

    def aead_cipher(self, key: bytes) -> AeadCipher:
        """This suite's AEAD keyed with ``key`` (``key_size`` bytes)."""
        return self.aead(key)

    def owns(self, private_key: object) -> bool:
        """True if ``private_key`` is a KEM private key object of this suite."""
        return isinstance(private_key, _PRIVATE_TYPES[self.id])

    def __repr__(self) -> str:
        return f"Suite(0x{self.id:04x} {self.name})"


ALL_SUITES: dict[int, Suite] = {
    s.id: s
    for s in (
        Suite(
            id=SUITE_TEST_X25519,
            name="DHKEM-X25519/HKDF-SHA256/ChaCha20-Poly1305 (tests only)",
            hpke=hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305),
            aead=ChaCha20Poly1305,
            hash=hashes.SHA256(),
            kem_public_size=32,
            enc_size=32,
            production=False,
        ),
        Suite(
            id=SUITE_XWING,
            name="X-Wing/HKDF-SHA256/ChaCha20-Poly1305",
            hpke=hpke.Suite(
                hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305
            ),
            aead=ChaCha20Poly1305,
            hash=hashes.SHA256(),
            kem_public_size=1184 + 32,
            enc_size=1088 + 32,
            production=True,
        ),
        Suite(
            id=SUITE_MLKEM1024_P384,
            name="MLKEM1024-P384/HKDF-SHA384/AES-256-GCM",
            hpke=hpke.Suite(hpke.KEM.MLKEM1024_P384, hpke.KDF.HKDF_SHA384, hpke.AEAD.AES_256_GCM),
            aead=AESGCM,
            hash=hashes.SHA384(),
            kem_public_size=1568 + 97,
            enc_size=1568 + 97,
            production=True,
        ),
    )
}
"""Every suite this implementation knows, by id (including the test suite)."""

_PRIVATE_TYPES: dict[int, type] = {
    SUITE_TEST_X25519: x25519.X25519PrivateKey,
    SUITE_XWING: hpke.MLKEM768X25519PrivateKey,
    SUITE_MLKEM1024_P384: hpke.MLKEM1024P384PrivateKey,
}


def find_suite(suite_id: int, *, allow_test_suites: bool = False) -> Suite | None:
    """The suite with this id, or None if unknown (or the test suite when not allowed)."""
    suite = ALL_SUITES.get(suite_id)
    if suite is None or (not suite.production and not allow_test_suites):
        return None
    return suite


def get_suite(suite_id: int, *, allow_test_suites: bool = False) -> Suite:
    """Like :func:`find_suite`, but raise E2EError(reason="suite") instead of returning None."""
    suite = find_suite(suite_id, allow_test_suites=allow_test_suites)
    if suite is None:
        raise E2EError(f"unsupported suite 0x{suite_id:04x}", reason="suite")
    return suite


def require_allowed(suite: Suite, allow_test_suites: bool) -> None:
    """Raise ValueError if the caller tries to use the test suite without allowing it."""
    if not suite.production and not allow_test_suites:
        raise ValueError(f"suite 0x{suite.id:04x} is for tests only")


def p384_scalar_from_stream(seed: bytes) -> int:
    """The P-384 private scalar of a suite-0x0003 seed (see the module docstring)."""
    offset = _MLKEM_SEED
    while True:
        block = hashlib.shake_256(seed).digest(offset + _P384_SCALAR)[offset:]
        scalar = int.from_bytes(block, "big")
        if 0 < scalar < P384_ORDER:
            return scalar
        offset += _P384_SCALAR  # probability < 2^-190 per block


def kem_keypair_from_seed(suite: Suite, seed: bytes) -> tuple[KemPrivateKey, bytes]:
    """Derive a suite's KEM key pair from a 32-byte seed: (private key object, public bytes)."""
    if len(seed) != SEED_LEN:
        raise ValueError(f"KEM seed must be {SEED_LEN} bytes, got {len(seed)}")
    if suite.id == SUITE_TEST_X25519:
        x = x25519.X25519PrivateKey.from_private_bytes(seed)
        return x, x.public_key().public_bytes_raw()
    if suite.id == SUITE_XWING:
        e = hashlib.shake_256(seed).digest(_MLKEM_SEED + 32)
        m768 = mlkem.MLKEM768PrivateKey.from_seed_bytes(e[:_MLKEM_SEED])
        xk = x25519.X25519PrivateKey.from_private_bytes(e[_MLKEM_SEED:])
        public = m768.public_key().public_bytes_raw() + xk.public_key().public_bytes_raw()
        return hpke.MLKEM768X25519PrivateKey(m768, xk), public
    if suite.id == SUITE_MLKEM1024_P384:
        e = hashlib.shake_256(seed).digest(_MLKEM_SEED)
        m1024 = mlkem.MLKEM1024PrivateKey.from_seed_bytes(e)
        pk = ec.derive_private_key(p384_scalar_from_stream(seed), ec.SECP384R1())
        point = pk.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        public = m1024.public_key().public_bytes_raw() + point
        return hpke.MLKEM1024P384PrivateKey(m1024, pk), public
    raise ValueError(f"no KEM for suite 0x{suite.id:04x}")


def kem_public_from_bytes(suite: Suite, data: bytes) -> KemPublicKey:
    """Load a suite's serialised KEM public key; E2EError(reason="kem_public") if invalid."""
    try:
        if len(data) != suite.kem_public_size:
            raise ValueError("wrong length")
        if suite.id == SUITE_TEST_X25519:
            return x25519.X25519PublicKey.from_public_bytes(data)
        if suite.id == SUITE_XWING:
            return hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(data[:1184]),
                x25519.X25519PublicKey.from_public_bytes(data[1184:]),
            )
        if suite.id == SUITE_MLKEM1024_P384:
            point = data[1568:]
            if point[0] != 0x04:  # uncompressed points only: one encoding per key
                raise ValueError("compressed point")
            return hpke.MLKEM1024P384PublicKey(
                mlkem.MLKEM1024PublicKey.from_public_bytes(data[:1568]),
                ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), point),
            )
    except ValueError:
        pass
    raise E2EError("invalid KEM public key", reason="kem_public")
