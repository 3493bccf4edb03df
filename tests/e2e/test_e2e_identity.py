"""Identity keys: hybrid signatures need both halves, keys come from seeds, labels separate
domains, and a transport-key signature is never a device-key signature."""

from __future__ import annotations

import hashlib
import json

import pytest
import vectors_identity
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from momedod.e2e.errors import E2EError
from momedod.e2e.identity import (
    DeviceKey,
    HybridPublicKey,
    TransportKey,
    UserIdentityKey,
    dk_fp,
    split_hybrid_sig,
    verify_device_signature,
    verify_ed25519,
)
from momedod.protocol import auth
from momedod.protocol.encoding import Writer, label

SEED = bytes(range(32))
OTHER_SEED = bytes(range(1, 33))
MSG = b"a message"

SIZES = {1: (0, 0), 2: (1952, 3309), 3: (2592, 4627)}  # suite -> (mldsa_pk, mldsa_sig)


@pytest.fixture(scope="module", params=[2, 3])
def uik(request: pytest.FixtureRequest) -> UserIdentityKey:
    return UserIdentityKey(SEED, request.param)


def halves(sig: bytes, suite: int) -> tuple[bytes, bytes]:
    return split_hybrid_sig(sig, suite)


def hybrid(ed: bytes, ml: bytes) -> bytes:
    return Writer().bytes_(ed).bytes_(ml).getvalue()


# -- keys from seeds --------------------------------------------------------------------------


@pytest.mark.parametrize("suite", [1, 2, 3])
def test_uik_is_a_function_of_seed_and_suite(suite: int) -> None:
    k = UserIdentityKey(SEED, suite)
    assert k.public == UserIdentityKey(SEED, suite).public
    assert k.public != UserIdentityKey(OTHER_SEED, suite).public
    pub = k.public.encode()
    assert len(k.public.ed25519_pk) == 32 and len(k.public.mldsa_pk) == SIZES[suite][0]
    assert pub[:2] == suite.to_bytes(2, "big")
    assert k.fp == hashlib.sha256(label("fp") + pub).digest()


def test_same_seed_gives_unrelated_keys_per_suite_and_half() -> None:
    s2, s3 = UserIdentityKey(SEED, 2).public, UserIdentityKey(SEED, 3).public
    assert s2.ed25519_pk != s3.ed25519_pk
    raw_seed_key = Ed25519PrivateKey.from_private_bytes(SEED).public_key().public_bytes_raw()
    assert raw_seed_key not in (s2.ed25519_pk, s3.ed25519_pk)


@pytest.mark.parametrize("suite", [1, 2, 3])
def test_uik_pub_round_trips_and_parses_strictly(suite: int) -> None:
    pub = UserIdentityKey(SEED, suite).public
    data = pub.encode()
    assert HybridPublicKey.parse(data, allow_test_suites=True) == pub
    for bad in (data[:-1], data + b"\x00"):
        with pytest.raises(E2EError):
            HybridPublicKey.parse(bad, allow_test_suites=True)


def test_uik_pub_with_the_wrong_mldsa_size_or_suite_is_rejected() -> None:
    p2, p3 = UserIdentityKey(SEED, 2).public, UserIdentityKey(SEED, 3).public
    mixed = Writer().u16(2).bytes_(p2.ed25519_pk).bytes_(p3.mldsa_pk).getvalue()
    with pytest.raises(E2EError) as exc:
        HybridPublicKey.parse(mixed)
    assert exc.value.reason == "format"
    unknown = Writer().u16(4).bytes_(p2.ed25519_pk).bytes_(b"").getvalue()
    with pytest.raises(E2EError) as exc:
        HybridPublicKey.parse(unknown)
    assert exc.value.reason == "suite"


def test_production_rejects_the_test_suite() -> None:
    k = UserIdentityKey(SEED, 1)
    sig = k.sign("rec", MSG)
    assert halves(sig, 1)[1] == b""  # suite 0x0001: empty ML-DSA half
    assert k.public.verify("rec", MSG, sig, allow_test_suites=True)
    assert not k.public.verify("rec", MSG, sig)
    with pytest.raises(E2EError) as exc:
        HybridPublicKey.parse(k.public.encode())
    assert exc.value.reason == "suite"


# -- HybridSig: both halves required ----------------------------------------------------------


def test_hybrid_signature_verifies_with_both_halves(uik: UserIdentityKey) -> None:
    sig = uik.sign("rec", MSG)
    ed, ml = halves(sig, uik.suite)
    assert (len(ed), len(ml)) == (64, SIZES[uik.suite][1])
    assert uik.public.verify("rec", MSG, sig)
    assert not uik.public.verify("rec", MSG + b"!", sig)


def test_stripping_either_half_fails(uik: UserIdentityKey) -> None:
    ed, ml = halves(uik.sign("rec", MSG), uik.suite)
    for sig in (
        hybrid(ed, b""),
        hybrid(b"", ml),
        hybrid(ed, bytes(len(ml))),
        hybrid(bytes(64), ml),
    ):
        assert not uik.public.verify("rec", MSG, sig)


def test_a_half_from_another_message_fails(uik: UserIdentityKey) -> None:
    ed, ml = halves(uik.sign("rec", MSG), uik.suite)
    ed_other, ml_other = halves(uik.sign("rec", b"another message"), uik.suite)
    assert not uik.public.verify("rec", MSG, hybrid(ed_other, ml))
    assert not uik.public.verify("rec", MSG, hybrid(ed, ml_other))


def test_a_half_from_another_key_fails(uik: UserIdentityKey) -> None:
    other = UserIdentityKey(OTHER_SEED, uik.suite)
    ed, ml = halves(uik.sign("rec", MSG), uik.suite)
    ed_o, ml_o = halves(other.sign("rec", MSG), uik.suite)
    assert not uik.public.verify("rec", MSG, hybrid(ed_o, ml))
    assert not uik.public.verify("rec", MSG, hybrid(ed, ml_o))
    assert not other.public.verify("rec", MSG, hybrid(ed, ml))


def test_malformed_hybrid_signatures_are_rejected(uik: UserIdentityKey) -> None:
    sig = uik.sign("rec", MSG)
    for bad in (sig + b"\x00", sig[:-1], b"", sig[:68]):
        assert not uik.public.verify("rec", MSG, bad)
        with pytest.raises(E2EError):
            split_hybrid_sig(bad, uik.suite)


def test_mldsa_half_uses_the_empty_context() -> None:
    k = UserIdentityKey(SEED, 2)
    _, ml = halves(k.sign("rec", MSG), 2)
    mpk = mldsa.MLDSA65PublicKey.from_public_bytes(k.public.mldsa_pk)
    mpk.verify(ml, label("rec") + MSG)  # raises if not the empty context


# -- domain separation ------------------------------------------------------------------------


def test_hybrid_signature_for_one_label_fails_for_another(uik: UserIdentityKey) -> None:
    sig = uik.sign("rec", MSG)
    assert not uik.public.verify("roster", MSG, sig)
    assert not uik.public.verify_labelled(MSG, sig)  # no label at all


def test_device_signature_does_not_verify_under_another_label() -> None:
    dk = DeviceKey(SEED)
    sig = dk.sign("rec", MSG)
    assert verify_device_signature(dk.public_bytes, "rec", MSG, sig)
    for other in ("seal", "conv", "roster"):
        assert not verify_device_signature(dk.public_bytes, other, MSG, sig)


def test_transport_key_signature_is_never_a_device_signature() -> None:
    tk = TransportKey(SEED)
    msg = auth.auth_message(bytes(32), bytes(32), "M8N22HTR", 1)
    sig = tk.sign_labelled(msg)
    assert auth.verify_signature(tk.public_bytes, sig, msg)  # what the server checks
    body = msg[len(label("auth")) :]
    assert not verify_device_signature(tk.public_bytes, "auth", body, sig)
    for x in ("rec", "seal", "conv"):
        assert not verify_device_signature(tk.public_bytes, x, body, sig)
    with pytest.raises(ValueError):
        tk.sign("rec", MSG)
    with pytest.raises(ValueError):
        tk.sign_labelled(MSG)


def test_device_key_refuses_transport_labels() -> None:
    dk = DeviceKey(SEED)
    with pytest.raises(ValueError):
        dk.sign("auth", MSG)
    with pytest.raises(ValueError):
        dk.sign_labelled(auth.enroll_message(bytes(32), bytes(32), "CODE", bytes(32)))
    with pytest.raises(ValueError):
        dk.sign_labelled(b"no label here")


def test_transport_key_matches_the_existing_client_key_form() -> None:
    seed = bytes([7]) * 32
    raw = Ed25519PrivateKey.from_private_bytes(seed)
    msg = auth.auth_message(bytes(32), bytes(32), "M8N22HTR", 1)
    assert TransportKey(seed).sign_labelled(msg) == raw.sign(msg)


def test_ed25519_signatures_are_deterministic_and_labelled() -> None:
    dk = DeviceKey(SEED)
    raw = Ed25519PrivateKey.from_private_bytes(SEED)
    assert dk.sign("seal", MSG) == raw.sign(label("seal") + MSG)
    assert (
        dk.fp == dk_fp(dk.public_bytes) == hashlib.sha256(label("dk-fp") + dk.public_bytes).digest()
    )
    assert not verify_ed25519(dk.public_bytes, label("seal") + MSG, dk.sign("seal", MSG)[:-1])


def test_seeds_must_be_32_bytes() -> None:
    for cls in (DeviceKey, TransportKey, UserIdentityKey):
        with pytest.raises(ValueError):
            cls(bytes(31))


# -- vectors ---------------------------------------------------------------------------------


def test_identity_vectors_hold_and_regenerate_identically() -> None:
    v = json.loads(json.dumps(vectors_identity.vectors()))
    vectors_identity.check(v)
    assert json.loads(json.dumps(vectors_identity.vectors(v))) == v
    names = {e["name"] for e in v["must_fail"]}
    assert {"identity_stripped_mldsa", "device_list_signer_server", "prekey_expired"} <= names
