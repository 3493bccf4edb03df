"""Suites and KEM keys: seeds give the published public keys, keys load back, HPKE works."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import vectors_crypto
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from momedod.e2e import suites
from momedod.e2e.errors import E2EError
from momedod.e2e.suites import (
    ALL_SUITES,
    P384_ORDER,
    SUITE_MLKEM1024_P384,
    SUITE_TEST_X25519,
    SUITE_XWING,
    find_suite,
    get_suite,
    kem_keypair_from_seed,
    kem_public_from_bytes,
)

ALL = [pytest.param(ALL_SUITES[i], id=f"suite{i}") for i in (1, 2, 3)]

# Known answers from draft-ietf-hpke-pq (skRm is the 32-byte seed, pkRm the public key):
# MLKEM768-X25519 from the draft's vectors as published in filippo.io/hpke testdata/hpke-pq.json
# (whole key pinned by its SHA-256), MLKEM1024-P384 from draft-ietf-hpke-pq-05 appendix A.6.
XWING_SEED = bytes.fromhex("447cfc23de31102101a1b5aec0897a31f24670946f8e67345df7099b7c26e626")
XWING_PK_SHA256 = "52d1a8113f889dafc850daeaf843911ce9d47a29cd8b359abd36b223341c2453"
XWING_PK_HEAD = "d9ac25bc9b3516188ead3a40cfe439f4143090900cf1875fd60b5ba4e381948b"
XWING_PK_TAIL = "71904a4b462022f8fdaf6fec20e80222d89e91788afe88208fb423c3ef8cda69"
P384_SEED = bytes.fromhex("0ba4a1ff718a4444da0016d59f449e28d8abdeac107ee105e5ac0dc1e8219b37")
P384_PK_HEAD = "dd5407b4430e39f3416a6bc8e7d43b2a72c4f7480b1fd19e0c552af07b8f5bba"
P384_PK_POINT = (
    "04a70238ee7c3f7e7d364957e5f4e32fa6747c811fb22b7efde99966fd0da372"
    "510c6e1fce1b25ce287707e5b3b0a2384e884cc6a3ac281fa6f5705d09ef0a82"
    "3bfed3af81d8e5a38bb914d2269de2a4e47a1d7cdc6d85cbc009ea787f2eefed4b"
)


def test_xwing_seed_gives_the_published_public_key() -> None:
    _, public = kem_keypair_from_seed(ALL_SUITES[SUITE_XWING], XWING_SEED)
    assert len(public) == 1216
    assert public[:32].hex() == XWING_PK_HEAD
    assert public[-32:].hex() == XWING_PK_TAIL
    assert hashlib.sha256(public).hexdigest() == XWING_PK_SHA256


def test_mlkem1024_p384_seed_gives_the_published_public_key() -> None:
    _, public = kem_keypair_from_seed(ALL_SUITES[SUITE_MLKEM1024_P384], P384_SEED)
    assert len(public) == 1665
    assert public[:32].hex() == P384_PK_HEAD
    assert public[1568:].hex() == P384_PK_POINT


@pytest.mark.parametrize("suite", ALL)
def test_seed_derivation_is_deterministic_and_public_key_round_trips(suite: suites.Suite) -> None:
    seed = bytes(range(7, 39))
    private, public = kem_keypair_from_seed(suite, seed)
    _, again = kem_keypair_from_seed(suite, seed)
    assert public == again
    assert len(public) == suite.kem_public_size
    _, other = kem_keypair_from_seed(suite, bytes(32))
    assert other != public
    assert suite.owns(private)
    assert [s.id for s in ALL_SUITES.values() if s.owns(private)] == [suite.id]
    # HPKE through the re-loaded public key opens with the seed's private key.
    loaded = kem_public_from_bytes(suite, public)
    ct = suite.hpke.encrypt(b"payload", loaded, b"info")
    assert len(ct) == suite.enc_size + len(b"payload") + suite.tag_size
    assert suite.hpke.decrypt(ct, private, b"info") == b"payload"


@pytest.mark.parametrize("suite", ALL)
def test_kem_public_from_bytes_rejects_wrong_lengths(suite: suites.Suite) -> None:
    _, public = kem_keypair_from_seed(suite, bytes(32))
    for bad in (public[:-1], public + b"\x00", b""):
        with pytest.raises(E2EError) as exc:
            kem_public_from_bytes(suite, bad)
        assert exc.value.reason == "kem_public"


def test_p384_public_key_must_be_an_uncompressed_point_on_the_curve() -> None:
    suite = ALL_SUITES[SUITE_MLKEM1024_P384]
    _, public = kem_keypair_from_seed(suite, bytes(32))
    off_curve = public[:-1] + bytes([public[-1] ^ 1])
    point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), public[1568:])
    compressed = point.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    # Same length as an uncompressed point, but starts with 0x02/0x03.
    padded_compressed = public[:1568] + compressed + bytes(97 - len(compressed))
    for bad in (off_curve, padded_compressed):
        with pytest.raises(E2EError):
            kem_public_from_bytes(suite, bad)


def test_p384_scalar_skips_blocks_outside_the_group_order(monkeypatch: pytest.MonkeyPatch) -> None:
    # Feed SHAKE output whose first P-384 block is >= n and second block is 0: the third
    # block is the first valid one.
    valid = (12345).to_bytes(48, "big")
    stream = bytes(64) + P384_ORDER.to_bytes(48, "big") + bytes(48) + valid

    class FakeShake:
        def __init__(self, _seed: bytes) -> None:
            pass

        def digest(self, n: int) -> bytes:
            return stream[:n]

    monkeypatch.setattr(suites.hashlib, "shake_256", FakeShake)
    assert suites.p384_scalar_from_stream(b"x" * 32) == 12345


def test_p384_scalar_is_the_first_block_in_the_normal_case() -> None:
    seed = bytes(range(32))
    e = hashlib.shake_256(seed).digest(112)
    assert suites.p384_scalar_from_stream(seed) == int.from_bytes(e[64:], "big")


def test_test_suite_is_refused_unless_explicitly_allowed() -> None:
    assert find_suite(SUITE_TEST_X25519) is None
    assert find_suite(SUITE_TEST_X25519, allow_test_suites=True) is ALL_SUITES[1]
    with pytest.raises(E2EError) as exc:
        get_suite(SUITE_TEST_X25519)
    assert exc.value.reason == "suite"
    assert get_suite(SUITE_XWING).production and get_suite(SUITE_MLKEM1024_P384).production
    assert find_suite(0x0004, allow_test_suites=True) is None
    assert find_suite(0x0101, allow_test_suites=True) is None


def test_suite_parameters_match_the_design() -> None:
    s1, s2, s3 = ALL_SUITES[1], ALL_SUITES[2], ALL_SUITES[3]
    assert (s1.enc_size, s2.enc_size, s3.enc_size) == (32, 1120, 1665)
    assert (s1.kem_public_size, s2.kem_public_size, s3.kem_public_size) == (32, 1216, 1665)
    assert s2.hash.name == "sha256" and s3.hash.name == "sha384"
    assert s2.aead.__name__ == "ChaCha20Poly1305" and s3.aead.__name__ == "AESGCM"
    assert s1.production is False


def test_seed_must_be_32_bytes() -> None:
    with pytest.raises(ValueError):
        kem_keypair_from_seed(ALL_SUITES[SUITE_XWING], bytes(31))


# -- the vectors module ---------------------------------------------------------------------


def test_crypto_vectors_are_deterministic_and_pass_after_a_json_round_trip() -> None:
    v = vectors_crypto.vectors()
    assert v == vectors_crypto.vectors()
    vectors_crypto.check(json.loads(json.dumps(v)))
    assert {m["kind"] for m in v["must_fail"]} == {"seal", "chain"}


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ("kem_keys", "public"),
        ("chain_kdf", "mk"),
        ("chain_keys", "nonce"),
        ("chain_envelopes", "envelope"),
        ("seals", "envelope"),
    ],
)
def test_vector_check_detects_a_changed_value(section: str, field: str) -> None:
    v = copy.deepcopy(vectors_crypto.vectors())
    entry = v[section][-1]
    value = bytes.fromhex(entry[field])
    entry[field] = (value[:-1] + bytes([value[-1] ^ 1])).hex()
    with pytest.raises((AssertionError, E2EError)):
        vectors_crypto.check(v)


def test_vector_check_detects_a_must_fail_that_passes() -> None:
    v = copy.deepcopy(vectors_crypto.vectors())
    valid_seal = v["seals"][1]
    v["must_fail"].append(
        {
            "name": "actually valid",
            "kind": "seal",
            "suite": valid_seal["suite"],
            "me": valid_seal["recipient"],
            "hex": valid_seal["envelope"],
            "reason": "decrypt",
        }
    )
    with pytest.raises(AssertionError, match="accepted"):
        vectors_crypto.check(v)
