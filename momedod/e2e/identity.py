"""Signing keys of the end-to-end layer: the hybrid identity key, device keys, transport keys.

Theory of operation (E2E.md sections 2 and 4.2; byte layouts in docs/E2E.md):

* Every signature covers ``Label(x) | m`` -- ``Sign(k, x, m)`` -- with one label per signed
  structure ("rec", "seal", "conv", "roster", ...), so a signature made for one structure
  never verifies as another. Labels are prefix-free (NUL-terminated).
* The **user identity key** (UIK) is a *hybrid* key: Ed25519 plus ML-DSA (suite 0x0002:
  ML-DSA-65, 0x0003: ML-DSA-87), both derived from one 32-byte master seed::

      ed25519_seed = HKDF-SHA256(ikm=seed, salt="", info=Label("uik-ed25519") | u16 suite, L=32)
      mldsa_seed   = HKDF-SHA256(ikm=seed, salt="", info=Label("uik-mldsa")   | u16 suite, L=32)

  (an empty salt is the RFC 5869 default, HashLen zero bytes). The suite is in ``info``, so
  one seed never yields the same key for two suites. Its public form and fingerprint::

      UIKPub    = u16 suite | bytes ed25519_pk (32) | bytes mldsa_pk (1952 / 2592 / 0)
      FP        = SHA-256(Label("fp") | UIKPub)
      HybridSig = bytes ed25519_sig (64) | bytes mldsa_sig (3309 / 4627 / 0)

  Both halves sign the same bytes ``Label(x) | m`` (ML-DSA with the empty context) and both
  must verify. Suite 0x0001 (tests only) has no ML-DSA half: ``mldsa_pk`` and ``mldsa_sig``
  are empty; verifiers refuse it unless called with ``allow_test_suites=True``. SERVER and ORG
  keys use the same public form and signature (:class:`HybridPublicKey`).
* The **device key** (DK) and the **transport key** (TK) are separate Ed25519 keys, each the
  RFC 8032 private key given directly by its own 32-byte seed. The TK signs only the
  transport labels ("auth", "enroll", see momedod.protocol.auth); the DK never signs them, and
  :func:`verify_device_signature` refuses them, so a TK signature is never a DK signature.
* A DK is named in SigEntries by ``dk_fp = SHA-256(Label("dk-fp") | dk_pub)``.

Private keys are held as seeds (store the seed, never a generated key object).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from momedod.protocol.encoding import Reader, Writer, label
from momedod.protocol.errors import ProtocolError

from .errors import E2EError
from .suites import SUITE_MLKEM1024_P384, SUITE_TEST_X25519, SUITE_XWING

__all__ = [
    "ED25519_PUB_LEN",
    "ED25519_SIG_LEN",
    "FP_LEN",
    "HYBRID_SUITES",
    "SEED_LEN",
    "TRANSPORT_LABELS",
    "DeviceKey",
    "HybridPublicKey",
    "TransportKey",
    "UserIdentityKey",
    "dk_fp",
    "label_name",
    "split_hybrid_sig",
    "verify_device_signature",
    "verify_ed25519",
]

SEED_LEN: Final = 32
"""Bytes in every private-key seed."""
FP_LEN: Final = 32
"""Bytes in a fingerprint (SHA-256)."""
ED25519_PUB_LEN: Final = 32
"""Bytes in an Ed25519 public key."""
ED25519_SIG_LEN: Final = 64
"""Bytes in an Ed25519 signature."""

TRANSPORT_LABELS: Final = frozenset({"auth", "enroll"})
"""Labels only the transport key signs (server authentication), never a device key."""

_LABEL_PREFIX = b"momedo/v1/"
_FP_LABEL = label("fp")
_DK_FP_LABEL = label("dk-fp")


@dataclass(frozen=True)
class _MLDSA:
    """The ML-DSA parameter set of a suite."""

    name: str
    pk_len: int
    sig_len: int
    from_seed: Callable[[bytes], mldsa.MLDSA65PrivateKey | mldsa.MLDSA87PrivateKey]
    from_public: Callable[[bytes], mldsa.MLDSA65PublicKey | mldsa.MLDSA87PublicKey]


_SUITE_MLDSA: Final[dict[int, _MLDSA | None]] = {
    SUITE_TEST_X25519: None,
    SUITE_XWING: _MLDSA(
        "ML-DSA-65",
        1952,
        3309,
        mldsa.MLDSA65PrivateKey.from_seed_bytes,
        mldsa.MLDSA65PublicKey.from_public_bytes,
    ),
    SUITE_MLKEM1024_P384: _MLDSA(
        "ML-DSA-87",
        2592,
        4627,
        mldsa.MLDSA87PrivateKey.from_seed_bytes,
        mldsa.MLDSA87PublicKey.from_public_bytes,
    ),
}

HYBRID_SUITES: Final = frozenset(_SUITE_MLDSA)
"""Suites a hybrid key may have: 0x0001 (tests, Ed25519 only), 0x0002, 0x0003."""


def _fail(reason: str, detail: str) -> E2EError:
    return E2EError(detail, reason=reason)


def _check_seed(seed: bytes) -> None:
    if len(seed) != SEED_LEN:
        raise ValueError(f"a seed is {SEED_LEN} bytes, got {len(seed)}")


def _check_suite(suite: int, allow_test_suites: bool) -> _MLDSA | None:
    if suite not in _SUITE_MLDSA:
        raise _fail("suite", f"unsupported suite 0x{suite:04x}")
    if suite == SUITE_TEST_X25519 and not allow_test_suites:
        raise _fail("suite", "suite 0x0001 is for tests only")
    return _SUITE_MLDSA[suite]


def label_name(message: bytes) -> str | None:
    """Return x if ``message`` starts with a well-formed ``Label(x)``, else None."""
    if not message.startswith(_LABEL_PREFIX):
        return None
    end = message.find(b"\x00", len(_LABEL_PREFIX))
    if end <= len(_LABEL_PREFIX):
        return None
    name = message[len(_LABEL_PREFIX) : end]
    return name.decode("ascii") if name.isascii() else None


def _labelled(x: str, m: bytes) -> bytes:
    return label(x) + m


def _hkdf(seed: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=SEED_LEN, salt=None, info=info).derive(seed)


def dk_fp(dk_pub: bytes) -> bytes:
    """Return the SigEntry ``signer_fp`` of a device key: SHA-256(Label("dk-fp") | dk_pub)."""
    if len(dk_pub) != ED25519_PUB_LEN:
        raise ValueError(f"a device key is {ED25519_PUB_LEN} bytes, got {len(dk_pub)}")
    return hashlib.sha256(_DK_FP_LABEL + dk_pub).digest()


def verify_ed25519(pub: bytes, message: bytes, sig: bytes) -> bool:
    """Check a plain Ed25519 signature over ``message``; False on any failure."""
    if len(pub) != ED25519_PUB_LEN or len(sig) != ED25519_SIG_LEN:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_device_signature(dk_pub: bytes, x: str, m: bytes, sig: bytes) -> bool:
    """Check ``Sign(DK, x, m)``; always False for the transport labels ("auth", "enroll")."""
    if x in TRANSPORT_LABELS:
        return False
    return verify_ed25519(dk_pub, _labelled(x, m), sig)


# -- hybrid keys -----------------------------------------------------------------------------


def split_hybrid_sig(sig: bytes, suite: int) -> tuple[bytes, bytes]:
    """Parse a HybridSig strictly for ``suite``: return ``(ed25519_sig, mldsa_sig)``.

    Raises E2EError on a wrong half length, truncation or trailing bytes.
    """
    params = _SUITE_MLDSA.get(suite)
    if suite not in _SUITE_MLDSA:
        raise _fail("suite", f"unsupported suite 0x{suite:04x}")
    ml_len = params.sig_len if params else 0
    try:
        r = Reader(sig)
        ed = r.bytes_(ED25519_SIG_LEN, "ed25519_sig")
        ml = r.bytes_(ml_len, "mldsa_sig")
        r.finish("HybridSig")
    except ProtocolError as exc:
        raise _fail("format", f"HybridSig: {exc.message}") from None
    if len(ed) != ED25519_SIG_LEN or len(ml) != ml_len:
        raise _fail("format", "HybridSig: a half has the wrong length")
    return ed, ml


@dataclass(frozen=True)
class HybridPublicKey:
    """A hybrid public key (UIK, SERVER or ORG): ``UIKPub = u16 suite | bytes ed25519_pk |
    bytes mldsa_pk``. Build it with :meth:`parse`/:meth:`read` (which validate) or from a
    :class:`UserIdentityKey`."""

    suite: int
    ed25519_pk: bytes
    mldsa_pk: bytes

    @classmethod
    def read(cls, r: Reader, *, allow_test_suites: bool = False) -> HybridPublicKey:
        """Read a UIKPub from ``r`` (inside a larger structure) and validate it.

        ProtocolError (truncation) passes through; key problems raise E2EError.
        """
        suite = r.u16("uik suite")
        params = _check_suite(suite, allow_test_suites)
        ed = r.bytes_(ED25519_PUB_LEN, "ed25519_pk")
        ml = r.bytes_(params.pk_len if params else 0, "mldsa_pk")
        key = cls(suite, ed, ml)
        key._validate()
        return key

    @classmethod
    def parse(cls, data: bytes, *, allow_test_suites: bool = False) -> HybridPublicKey:
        """Parse an encoded UIKPub strictly; raise E2EError if it is not a valid key."""
        try:
            r = Reader(data)
            key = cls.read(r, allow_test_suites=allow_test_suites)
            r.finish("UIKPub")
        except ProtocolError as exc:
            raise _fail("format", f"UIKPub: {exc.message}") from None
        return key

    def _validate(self) -> None:
        params = _SUITE_MLDSA.get(self.suite)
        if self.suite not in _SUITE_MLDSA:
            raise _fail("suite", f"unsupported suite 0x{self.suite:04x}")
        if len(self.ed25519_pk) != ED25519_PUB_LEN:
            raise _fail("key", "UIKPub: ed25519_pk must be 32 bytes")
        if len(self.mldsa_pk) != (params.pk_len if params else 0):
            raise _fail("key", "UIKPub: mldsa_pk has the wrong length for its suite")
        try:
            Ed25519PublicKey.from_public_bytes(self.ed25519_pk)
            if params:
                params.from_public(self.mldsa_pk)
        except ValueError:
            raise _fail("key", "UIKPub: not a valid public key") from None

    def encode(self) -> bytes:
        """Return the UIKPub bytes."""
        return Writer().u16(self.suite).bytes_(self.ed25519_pk).bytes_(self.mldsa_pk).getvalue()

    @cached_property
    def fp(self) -> bytes:
        """The 32-byte fingerprint ``SHA-256(Label("fp") | UIKPub)``."""
        return hashlib.sha256(_FP_LABEL + self.encode()).digest()

    def verify_labelled(
        self, message: bytes, sig: bytes, *, allow_test_suites: bool = False
    ) -> bool:
        """Check a HybridSig over ``message`` (which already starts with its Label).

        True only if both halves verify; False for a malformed signature, a message without a
        label, or the test suite when ``allow_test_suites`` is False.
        """
        if label_name(message) is None:
            return False
        try:
            params = _check_suite(self.suite, allow_test_suites)
            ed, ml = split_hybrid_sig(sig, self.suite)
        except E2EError:
            return False
        if not verify_ed25519(self.ed25519_pk, message, ed):
            return False
        if params is None:
            return True
        try:
            params.from_public(self.mldsa_pk).verify(ml, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    def verify(self, x: str, m: bytes, sig: bytes, *, allow_test_suites: bool = False) -> bool:
        """Check a HybridSig ``Sign(k, x, m)``: both halves over ``Label(x) | m``."""
        return self.verify_labelled(_labelled(x, m), sig, allow_test_suites=allow_test_suites)


class UserIdentityKey:
    """The private hybrid identity key (Ed25519 + ML-DSA of the suite), from a 32-byte seed.

    The same construction serves for SERVER and ORG keys. Signing never checks whether the
    suite is allowed in production; verifiers do.
    """

    __slots__ = ("_ed", "_ml", "public", "seed")

    seed: bytes
    """The 32-byte master seed: the only thing to store."""
    public: HybridPublicKey
    """The public key (UIKPub)."""

    def __init__(self, seed: bytes, suite: int = SUITE_XWING) -> None:
        """Derive the key halves from ``seed`` for ``suite`` (see the module docstring)."""
        _check_seed(seed)
        if suite not in _SUITE_MLDSA:
            raise ValueError(f"unsupported suite 0x{suite:04x}")
        params = _SUITE_MLDSA[suite]
        tag = Writer().u16(suite).getvalue()
        self.seed = bytes(seed)
        self._ed = Ed25519PrivateKey.from_private_bytes(_hkdf(seed, label("uik-ed25519") + tag))
        self._ml = params.from_seed(_hkdf(seed, label("uik-mldsa") + tag)) if params else None
        ml_pk = self._ml.public_key().public_bytes_raw() if self._ml else b""
        self.public = HybridPublicKey(suite, self._ed.public_key().public_bytes_raw(), ml_pk)

    @property
    def suite(self) -> int:
        """The suite of this key."""
        return self.public.suite

    @property
    def fp(self) -> bytes:
        """The fingerprint of the public key."""
        return self.public.fp

    def sign_labelled(self, message: bytes) -> bytes:
        """Return the HybridSig of ``message``, which must start with a Label."""
        if label_name(message) is None:
            raise ValueError("refusing to sign a message without a Label")
        ml = self._ml.sign(message) if self._ml else b""
        return Writer().bytes_(self._ed.sign(message)).bytes_(ml).getvalue()

    def sign(self, x: str, m: bytes) -> bytes:
        """Return the HybridSig ``Sign(UIK, x, m)``."""
        return self.sign_labelled(_labelled(x, m))


# -- Ed25519 device and transport keys -------------------------------------------------------


class _Ed25519Key:
    __slots__ = ("_key", "public_bytes", "seed")

    seed: bytes
    public_bytes: bytes

    def __init__(self, seed: bytes) -> None:
        _check_seed(seed)
        self.seed = bytes(seed)
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_bytes = self._key.public_key().public_bytes_raw()

    def _allowed(self, name: str) -> bool:
        raise NotImplementedError

    def sign_labelled(self, message: bytes) -> bytes:
        """Return the Ed25519 signature of ``message``, which must start with an allowed Label."""
        name = label_name(message)
        if name is None or not self._allowed(name):
            raise ValueError(f"{type(self).__name__} does not sign label {name!r}")
        return self._key.sign(message)

    def sign(self, x: str, m: bytes) -> bytes:
        """Return ``Sign(k, x, m)``: Ed25519 over ``Label(x) | m``."""
        return self.sign_labelled(_labelled(x, m))


class DeviceKey(_Ed25519Key):
    """A device key (DK): Ed25519 from a 32-byte seed; signs records, Seals, messages, rosters.

    It refuses the transport labels, so it can never produce a server-authentication signature.
    """

    __slots__ = ()

    def _allowed(self, name: str) -> bool:
        return name not in TRANSPORT_LABELS

    @property
    def fp(self) -> bytes:
        """``dk_fp`` of this key, its SigEntry signer_fp."""
        return dk_fp(self.public_bytes)


class TransportKey(_Ed25519Key):
    """A transport key (TK): Ed25519 from a 32-byte seed; signs only "auth" and "enroll".

    The seed is the ``transport_seed`` of momedod.client.transport (raw Ed25519 private key).
    """

    __slots__ = ()

    def _allowed(self, name: str) -> bool:
        return name in TRANSPORT_LABELS
