"""Test vectors of the identity layer (docs/test-vectors/e2e.json, section by section).

``vectors()`` builds them from fixed seeds; ``check(v)`` asserts that the library agrees with
every entry. Bytes are lower-case hex.

Everything is deterministic except ML-DSA signatures (pyca signs with hedged randomness):
entries holding one say ``"verify_only": true`` and are checked by verifying, not by
comparing. Pass the committed vectors as ``vectors(previous)`` and every ML-DSA signature that
still verifies over the same bytes is taken over unchanged, so regenerating reproduces the
committed file byte for byte unless something really changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from momedod.e2e.errors import E2EError
from momedod.e2e.identity import DeviceKey, HybridPublicKey, TransportKey, UserIdentityKey
from momedod.e2e.records import (
    PREKEY_OTPK,
    PREKEY_SPK,
    ZERO_HASH,
    DeviceEntry,
    DeviceList,
    IdentityRecord,
    countersign,
    sign_device_list,
    sign_identity_record,
    sign_prekey,
    verify_device_list,
    verify_identity_history,
    verify_identity_record,
    verify_prekey,
)
from momedod.e2e.safety import (
    dm_conv_id,
    format_safety_number,
    kvd,
    parse_qr,
    qr_string,
    safety_digits,
    safety_number,
)
from momedod.e2e.suites import ALL_SUITES, kem_keypair_from_seed
from momedod.protocol import auth, userid
from momedod.protocol import records as wire
from momedod.protocol.encoding import MAX_U32, Reader, Writer, label
from momedod.protocol.invite import fingerprint_text

# -- fixed inputs ----------------------------------------------------------------------------

ALICE = "A1CE0005"
BOB = "B0BB0B0Y"
CAROL = "C4R0100H"

UIK_SEED_A = bytes(range(0x00, 0x20))
"""Alice's UIK master seed: 00 01 02 ... 1f."""
UIK_SEED_A2 = bytes(range(0x20, 0x40))
"""Alice's second identity (after a reset)."""
UIK_SEED_B = bytes(range(0x40, 0x60))
UIK_SEED_C = bytes(range(0x60, 0x80))
ORG_SEED = bytes(range(0x80, 0xA0))
DK_SEED_A1 = bytes([0xA1]) * 32
DK_SEED_A2 = bytes([0xA2]) * 32
TK_SEED_A1 = bytes([0x7A]) * 32
KEM_SEED_SPK = bytes([0x5B]) * 32
KEM_SEED_OTPK = bytes([0x07]) * 32

T0 = 1_700_000_000_000
"""A fixed time in ms: created_ms, issued_ms, added_ms are derived from it."""
NOT_AFTER = T0 + 35 * 86_400_000
HYBRID_MESSAGE = b"momedo identity vector"
HYBRID_LABEL = "test-vector"
NONCE = bytes(range(32))
CERT_FP = hashlib.sha256(b"momedo test certificate (not real DER)").digest()

DESCRIPTION = (
    "Identity layer (docs/E2E.md 'Identity', 'Records', 'Safety numbers'). Bytes are hex. "
    "UIK halves: HKDF-SHA256(seed, salt empty, info Label('uik-ed25519'|'uik-mldsa') | u16 "
    "suite). Entries with verify_only hold randomised ML-DSA signatures: verify them, do not "
    "compare. must_fail: verifying 'hex' (with the named context) fails with 'reason'."
)


# -- helpers ---------------------------------------------------------------------------------


def split_record(data: bytes) -> tuple[int, int, bytes, list[tuple[int, bytes, bytes]]]:
    """(suite, record_type, body, sig entries) of a well-formed SignedRecord."""
    wire.parse_record(data)
    r = Reader(data)
    r.u16(), r.u8(), r.u8()
    suite, record_type, body = r.u16(), r.u16(), r.bytes_(MAX_U32)
    sigs = [(r.u8(), r.fixed(32), r.bytes_(MAX_U32)) for _ in range(r.u32())]
    return suite, record_type, body, sigs


def _rebuild(data: bytes, edit: Callable[[int, bytes, bytes], tuple[int, bytes, bytes]]) -> bytes:
    suite, record_type, body, sigs = split_record(data)
    return wire.build_record(suite, record_type, body, [edit(*s) for s in sigs])


def _strip_mldsa(sig: bytes) -> bytes:
    ed = Reader(sig).bytes_(64)
    return Writer().bytes_(ed).bytes_(b"").getvalue()


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


class _SigCache:
    """Previous hybrid signatures by (signer FP, signed message); see the module docstring."""

    def __init__(self, previous: dict[str, Any] | None) -> None:
        self.sigs: dict[tuple[bytes, bytes], bytes] = {}
        if not previous:
            return
        for e in previous.get("hybrid_sig", []):
            msg = label(e["label"]) + bytes.fromhex(e["message"])
            self.sigs[(_pub(e["uik_pub"]).fp, msg)] = bytes.fromhex(e["sig"])
        for e in previous.get("records", []):
            suite, record_type, body, sigs = split_record(bytes.fromhex(e["hex"]))
            for kind, fp, sig in sigs:
                msg = wire.record_sign_message(suite, record_type, kind, body)
                self.sigs[(fp, msg)] = sig


class _ReusingUIK(UserIdentityKey):
    """A UIK that returns a cached signature for a message when that signature verifies."""

    __slots__ = ("_cache",)

    def __init__(self, seed: bytes, suite: int, cache: _SigCache) -> None:
        super().__init__(seed, suite)
        self._cache = cache

    def sign_labelled(self, message: bytes) -> bytes:
        old = self._cache.sigs.get((self.fp, message))
        if old is not None and self.public.verify_labelled(message, old, allow_test_suites=True):
            return old
        return super().sign_labelled(message)


def _hkdf(seed: bytes, name: str, suite: int) -> bytes:
    info = label(name) + suite.to_bytes(2, "big")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(seed)


def _entries() -> tuple[DeviceEntry, DeviceEntry]:
    a1 = DeviceEntry(1, DeviceKey(DK_SEED_A1).public_bytes, (2, 3), 0x01, T0)
    a2 = DeviceEntry(2, DeviceKey(DK_SEED_A2).public_bytes, (2,), 0x00, T0 + 60_000)
    return a1, a2


# -- generation ------------------------------------------------------------------------------


def vectors(previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the identity vectors (reusing still-valid ML-DSA signatures of ``previous``)."""
    cache = _SigCache(previous)

    def uik(seed: bytes, suite: int = 2) -> UserIdentityKey:
        return _ReusingUIK(seed, suite, cache)

    a, a2, b, c, org = (
        uik(UIK_SEED_A),
        uik(UIK_SEED_A2),
        uik(UIK_SEED_B),
        uik(UIK_SEED_C),
        uik(ORG_SEED),
    )
    a_s1 = uik(UIK_SEED_A, 1)
    dk1, tk = DeviceKey(DK_SEED_A1), TransportKey(TK_SEED_A1)
    e1, e2 = _entries()

    uiks: list[dict[str, Any]] = []
    for suite in (1, 2, 3):
        k = uik(UIK_SEED_A, suite)
        uiks.append(
            {
                "suite": suite,
                "seed": UIK_SEED_A.hex(),
                "ed25519_seed": _hkdf(UIK_SEED_A, "uik-ed25519", suite).hex(),
                "mldsa_seed": _hkdf(UIK_SEED_A, "uik-mldsa", suite).hex() if suite > 1 else None,
                "uik_pub": k.public.encode().hex(),
                "fp": k.fp.hex(),
                "fp_base32": fingerprint_text(k.fp),
            }
        )

    hybrid: list[dict[str, Any]] = []
    for suite in (1, 2, 3):
        k = uik(UIK_SEED_A, suite)
        hybrid.append(
            {
                "suite": suite,
                "uik_pub": k.public.encode().hex(),
                "label": HYBRID_LABEL,
                "message": HYBRID_MESSAGE.hex(),
                "sig": k.sign(HYBRID_LABEL, HYBRID_MESSAGE).hex(),
                "verify_only": suite != 1,
            }
        )

    auth_msg = auth.auth_message(NONCE, CERT_FP, ALICE, 1)
    ed25519 = [
        {
            "key": "DK",
            "seed": DK_SEED_A1.hex(),
            "pub": dk1.public_bytes.hex(),
            "dk_fp": dk1.fp.hex(),
            "label": "seal",
            "message": HYBRID_MESSAGE.hex(),
            "signed": (label("seal") + HYBRID_MESSAGE).hex(),
            "sig": dk1.sign("seal", HYBRID_MESSAGE).hex(),
        },
        {
            "key": "TK",
            "seed": TK_SEED_A1.hex(),
            "pub": tk.public_bytes.hex(),
            "label": "auth",
            "message": auth_msg[len(label("auth")) :].hex(),
            "signed": auth_msg.hex(),
            "sig": tk.sign_labelled(auth_msg).hex(),
        },
    ]

    # records
    id_a = sign_identity_record(a, ALICE, T0)
    id_a_org = countersign(id_a, wire.SIGNER_ORG, org)
    id_a2 = sign_identity_record(a2, ALICE, T0 + 86_400_000, prev_fp=a.fp)
    id_s1 = sign_identity_record(a_s1, ALICE, T0)
    dl1 = sign_device_list(a, ALICE, 1, ZERO_HASH, T0, [e1])
    dl1_v = verify_device_list(dl1, a.public)
    dl2 = sign_device_list(a, ALICE, 2, dl1_v.list_hash, T0 + 60_000, [e1, e2])
    dl2_v = verify_device_list(dl2, a.public)
    dl_s1 = sign_device_list(a_s1, ALICE, 1, ZERO_HASH, T0, [e1])
    _, spk_pub = kem_keypair_from_seed(ALL_SUITES[2], KEM_SEED_SPK)
    _, otpk_pub = kem_keypair_from_seed(ALL_SUITES[3], KEM_SEED_OTPK)
    spk = sign_prekey(dk1, ALICE, 1, 2, PREKEY_SPK, 1, spk_pub, NOT_AFTER)
    otpk = sign_prekey(dk1, ALICE, 1, 3, PREKEY_OTPK, 1001, otpk_pub, NOT_AFTER)

    def identity(name: str, data: bytes, suite: int, **extra: Any) -> dict[str, Any]:
        rec = verify_identity_record(data, allow_test_suites=True)
        return {
            "name": name,
            "type": "identity",
            "hex": data.hex(),
            "user_id": rec.user_id,
            "uik_pub": rec.uik.encode().hex(),
            "fp": rec.fp.hex(),
            "created_ms": rec.created_ms,
            "prev_fp": rec.prev_fp.hex(),
            "verify_only": suite != 1,
            **extra,
        }

    def device_list(name: str, data: bytes, key: UserIdentityKey) -> dict[str, Any]:
        dl = verify_device_list(data, key.public, allow_test_suites=True)
        return {
            "name": name,
            "type": "device_list",
            "hex": data.hex(),
            "uik_pub": key.public.encode().hex(),
            "user_id": dl.user_id,
            "version": dl.version,
            "prev_hash": dl.prev_hash.hex(),
            "issued_ms": dl.issued_ms,
            "devices": [
                {
                    "device_id": d.device_id,
                    "dk_pub": d.dk_pub.hex(),
                    "suites": list(d.suites),
                    "flags": d.flags,
                    "added_ms": d.added_ms,
                }
                for d in dl.entries
            ],
            "list_hash": dl.list_hash.hex(),
            "verify_only": dl.suite != 1,
        }

    def prekey(name: str, data: bytes, dl: DeviceList) -> dict[str, Any]:
        rec = verify_prekey(data, dl, T0)
        return {
            "name": name,
            "type": "prekey",
            "hex": data.hex(),
            "device_list": "device_list_v2",
            "now_ms": T0,
            "user_id": rec.user_id,
            "device_id": rec.device_id,
            "suite": rec.suite,
            "kind": rec.kind,
            "key_id": rec.key_id,
            "kem_seed": (KEM_SEED_SPK if rec.kind == PREKEY_SPK else KEM_SEED_OTPK).hex(),
            "pub": rec.pub.hex(),
            "not_after_ms": rec.not_after_ms,
            "verify_only": False,
        }

    records = [
        identity("identity", id_a, 2),
        identity(
            "identity_org_signed",
            id_a_org,
            2,
            org_pub=org.public.encode().hex(),
            verified_signers=[wire.SIGNER_UIK, wire.SIGNER_ORG],
        ),
        identity("identity_next", id_a2, 2, history=["identity", "identity_next"]),
        identity("identity_suite1", id_s1, 1),
        device_list("device_list_v1", dl1, a),
        device_list("device_list_v2", dl2, a),
        device_list("device_list_suite1", dl_s1, a_s1),
        prekey("spk", spk, dl2_v),
        prekey("otpk", otpk, dl2_v),
    ]

    # safety numbers, QR, KVD, conversation IDs, user IDs
    safety = {
        "user_a": ALICE,
        "uik_pub_a": a.public.encode().hex(),
        "user_b": BOB,
        "uik_pub_b": b.public.encode().hex(),
        "digits_a": safety_digits(ALICE, a.public),
        "digits_b": safety_digits(BOB, b.public),
        "safety_number": safety_number(ALICE, a.public, BOB, b.public),
        "display": format_safety_number(safety_number(ALICE, a.public, BOB, b.public)),
    }
    qr = [
        {"user_id": u, "fp": k.fp.hex(), "qr": qr_string(u, k.fp)}
        for u, k in ((ALICE, a), (BOB, b))
    ]
    members = [(CAROL, c.fp), (ALICE, a.fp), (BOB, b.fp)]
    kvd_v = {"members": [[u, fp.hex()] for u, fp in members], "kvd": kvd(members).hex()}
    dm = [
        {"user_a": x, "user_b": y, "conv_id": dm_conv_id(x, y).hex()}
        for x, y in ((BOB, ALICE), (ALICE, CAROL))
    ]
    ids = [
        {"body": u[:7], "check": u[7], "user_id": u, "display": userid.display(u)}
        for u in ("M8N22HTR", ALICE, BOB, CAROL, "00000000", "ZZZZZZZ7")
    ]

    # must-fail cases
    def sig_edit(kind: int | None = None, sig: Callable[[bytes], bytes] | None = None) -> Any:
        def edit(k: int, fp: bytes, s: bytes) -> tuple[int, bytes, bytes]:
            return (kind if kind is not None else k, fp, sig(s) if sig else s)

        return edit

    def fail(name: str, typ: str, data: bytes, reason: str, **ctx: Any) -> dict[str, Any]:
        return {"name": name, "type": typ, "hex": data.hex(), "reason": reason, **ctx}

    other_ed = a.sign(HYBRID_LABEL, b"another message")[:68]
    swapped = other_ed + bytes.fromhex(hybrid[1]["sig"])[68:]
    a_pub = a.public.encode().hex()
    must_fail = [
        fail("identity_flipped_byte", "identity", _flip(id_a, len(id_a) - 100), "signature"),
        fail("identity_flipped_mldsa_pk", "identity", _flip(id_a, 100), "signer"),
        fail("identity_truncated", "identity", id_a[:-1], "format"),
        fail("identity_trailing_byte", "identity", id_a + b"\x00", "format"),
        fail("identity_signer_dk", "identity", _rebuild(id_a, sig_edit(kind=2)), "signer"),
        fail(
            "identity_stripped_mldsa",
            "identity",
            _rebuild(id_a, sig_edit(sig=_strip_mldsa)),
            "signature",
        ),
        fail("identity_suite1_in_production", "identity", id_s1, "suite"),
        fail(
            "identity_wrong_org_key",
            "identity",
            id_a_org,
            "signer",
            org_pub=b.public.encode().hex(),
        ),
        fail("device_list_flipped_byte", "device_list", _flip(dl2, 60), "signature", uik_pub=a_pub),
        fail("device_list_truncated", "device_list", dl2[:-1], "format", uik_pub=a_pub),
        fail("device_list_trailing_byte", "device_list", dl2 + b"\x00", "format", uik_pub=a_pub),
        fail(
            "device_list_signer_server",
            "device_list",
            _rebuild(dl2, sig_edit(kind=3)),
            "signer",
            uik_pub=a_pub,
        ),
        fail(
            "device_list_stripped_mldsa",
            "device_list",
            _rebuild(dl2, sig_edit(sig=_strip_mldsa)),
            "signature",
            uik_pub=a_pub,
        ),
        fail(
            "device_list_other_uik",
            "device_list",
            dl2,
            "signer",
            uik_pub=b.public.encode().hex(),
        ),
        fail(
            "prekey_flipped_byte",
            "prekey",
            _flip(spk, 200),
            "signature",
            device_list="device_list_v2",
            now_ms=T0,
        ),
        fail(
            "prekey_signer_uik",
            "prekey",
            _rebuild(spk, sig_edit(kind=1)),
            "signer",
            device_list="device_list_v2",
            now_ms=T0,
        ),
        fail(
            "prekey_expired",
            "prekey",
            spk,
            "expired",
            device_list="device_list_v2",
            now_ms=NOT_AFTER + 1,
        ),
        fail(
            "hybrid_sig_stripped_mldsa",
            "hybrid_sig",
            _strip_mldsa(bytes.fromhex(hybrid[1]["sig"])),
            "signature",
            uik_pub=a_pub,
            label=HYBRID_LABEL,
            message=HYBRID_MESSAGE.hex(),
        ),
        fail(
            "hybrid_sig_stripped_ed25519",
            "hybrid_sig",
            Writer().bytes_(b"").raw(bytes.fromhex(hybrid[1]["sig"])[68:]).getvalue(),
            "signature",
            uik_pub=a_pub,
            label=HYBRID_LABEL,
            message=HYBRID_MESSAGE.hex(),
        ),
        fail(
            "hybrid_sig_swapped_ed25519",
            "hybrid_sig",
            swapped,
            "signature",
            uik_pub=a_pub,
            label=HYBRID_LABEL,
            message=HYBRID_MESSAGE.hex(),
        ),
    ]

    return {
        "description": DESCRIPTION,
        "uik": uiks,
        "hybrid_sig": hybrid,
        "ed25519": ed25519,
        "records": records,
        "safety_number": safety,
        "qr": qr,
        "kvd": kvd_v,
        "dm_conv_id": dm,
        "user_id_check": ids,
        "must_fail": must_fail,
    }


# -- checking --------------------------------------------------------------------------------


def _pub(hex_: str) -> HybridPublicKey:
    return HybridPublicKey.parse(bytes.fromhex(hex_), allow_test_suites=True)


def _verify_record(e: dict[str, Any], by_name: dict[str, dict[str, Any]]) -> object:
    data = bytes.fromhex(e["hex"])
    if e["type"] == "identity":
        org = _pub(e["org_pub"]) if "org_pub" in e else None
        return verify_identity_record(data, org_key=org, allow_test_suites=True)
    if e["type"] == "device_list":
        return verify_device_list(data, _pub(e["uik_pub"]), allow_test_suites=True)
    ctx = by_name[e["device_list"]]
    dl = verify_device_list(bytes.fromhex(ctx["hex"]), _pub(ctx["uik_pub"]))
    return verify_prekey(data, dl, e["now_ms"])


def check(v: dict[str, Any]) -> None:
    """Assert that the library agrees with every vector in ``v`` (see the module docstring)."""
    for e in v["uik"]:
        seed, suite = bytes.fromhex(e["seed"]), e["suite"]
        k = UserIdentityKey(seed, suite)
        pub = bytes.fromhex(e["uik_pub"])
        assert k.public.encode() == pub
        assert k.fp.hex() == e["fp"] == hashlib.sha256(label("fp") + pub).hexdigest()
        assert fingerprint_text(k.fp) == e["fp_base32"]
        ed_seed = _hkdf(seed, "uik-ed25519", suite)
        assert ed_seed.hex() == e["ed25519_seed"]
        ed_pub = Ed25519PrivateKey.from_private_bytes(ed_seed).public_key().public_bytes_raw()
        assert k.public.ed25519_pk == ed_pub
        if suite > 1:
            assert _hkdf(seed, "uik-mldsa", suite).hex() == e["mldsa_seed"]

    for e in v["hybrid_sig"]:
        key, msg, sig = _pub(e["uik_pub"]), bytes.fromhex(e["message"]), bytes.fromhex(e["sig"])
        assert key.verify(e["label"], msg, sig, allow_test_suites=True)
        assert not key.verify(e["label"], msg + b"x", sig, allow_test_suites=True)
        if not e["verify_only"]:
            seed = bytes.fromhex(next(u["seed"] for u in v["uik"] if u["suite"] == e["suite"]))
            assert UserIdentityKey(seed, e["suite"]).sign(e["label"], msg) == sig

    for e in v["ed25519"]:
        seed = bytes.fromhex(e["seed"])
        ek = DeviceKey(seed) if e["key"] == "DK" else TransportKey(seed)
        signed = bytes.fromhex(e["signed"])
        assert signed == label(e["label"]) + bytes.fromhex(e["message"])
        assert ek.public_bytes.hex() == e["pub"]
        assert ek.sign_labelled(signed).hex() == e["sig"]
        if isinstance(ek, DeviceKey):
            assert ek.fp.hex() == e["dk_fp"]

    by_name = {e["name"]: e for e in v["records"]}
    for e in v["records"]:
        rec = _verify_record(e, by_name)
        for field in ("user_id", "created_ms", "version", "issued_ms", "device_id", "key_id"):
            if field in e:
                assert getattr(rec, field) == e[field], (e["name"], field)
        for field in ("fp", "prev_fp", "prev_hash", "list_hash", "pub"):
            if field in e:
                assert getattr(rec, field).hex() == e[field], (e["name"], field)
        if "verified_signers" in e:
            assert isinstance(rec, IdentityRecord)
            assert sorted(rec.verified_signers) == e["verified_signers"]
        if "history" in e:
            hist = [bytes.fromhex(by_name[n]["hex"]) for n in e["history"]]
            assert verify_identity_history(hist)[-1].fp.hex() == e["fp"]
        if e["type"] == "prekey":
            suite = ALL_SUITES[e["suite"]]
            assert kem_keypair_from_seed(suite, bytes.fromhex(e["kem_seed"]))[1].hex() == e["pub"]
    regenerated = {r["name"]: r for r in vectors(v)["records"]}
    for e in v["records"]:
        if not e["verify_only"]:
            assert regenerated[e["name"]]["hex"] == e["hex"], e["name"]

    s = v["safety_number"]
    pa, pb = _pub(s["uik_pub_a"]), _pub(s["uik_pub_b"])
    assert safety_digits(s["user_a"], pa) == s["digits_a"]
    assert safety_digits(s["user_b"], pb) == s["digits_b"]
    assert safety_number(s["user_a"], pa, s["user_b"], pb) == s["safety_number"]
    assert safety_number(s["user_b"], pb, s["user_a"], pa) == s["safety_number"]
    assert format_safety_number(s["safety_number"]) == s["display"]

    for e in v["qr"]:
        assert qr_string(e["user_id"], bytes.fromhex(e["fp"])) == e["qr"]
        assert parse_qr(e["qr"]) == (e["user_id"], bytes.fromhex(e["fp"]))
    members = [(u, bytes.fromhex(fp)) for u, fp in v["kvd"]["members"]]
    assert kvd(members).hex() == v["kvd"]["kvd"]
    for e in v["dm_conv_id"]:
        assert dm_conv_id(e["user_a"], e["user_b"]).hex() == e["conv_id"]
    for e in v["user_id_check"]:
        assert userid.check_char(e["body"]) == e["check"]
        assert userid.is_valid(e["user_id"]) and userid.display(e["user_id"]) == e["display"]

    for e in v["must_fail"]:
        _check_must_fail(e, by_name)


def _check_must_fail(e: dict[str, Any], by_name: dict[str, dict[str, Any]]) -> None:
    data = bytes.fromhex(e["hex"])
    if e["type"] == "hybrid_sig":
        key = _pub(e["uik_pub"])
        assert not key.verify(e["label"], bytes.fromhex(e["message"]), data), e["name"]
        return
    try:
        if e["type"] == "identity":
            org = _pub(e["org_pub"]) if "org_pub" in e else None
            verify_identity_record(data, org_key=org)
        elif e["type"] == "device_list":
            verify_device_list(data, _pub(e["uik_pub"]))
        else:
            ctx = by_name[e["device_list"]]
            dl = verify_device_list(bytes.fromhex(ctx["hex"]), _pub(ctx["uik_pub"]))
            verify_prekey(data, dl, e["now_ms"])
    except E2EError as exc:
        assert exc.reason == e["reason"], (e["name"], exc.reason, str(exc))
    else:
        raise AssertionError(f"must_fail vector {e['name']} verified")
