"""Test vectors for rosters, the organisation key, Multi envelopes and attachments.

``roster_vectors(previous)``, ``multi_vectors(previous)`` and ``attachment_vectors()`` build
the sections ``roster``, ``multi`` and ``attachment`` of docs/test-vectors/e2e.json from fixed
seeds; ``check_roster``, ``check_multi`` and ``check_attachment`` assert that the library
agrees with a loaded section. Bytes are lower-case hex.

Two things are randomised and therefore "verify only": ML-DSA signatures (the org-signed
roster and OrgKeyRecord version 2) and HPKE wraps. Regeneration takes the entries of
``previous`` (the committed file) over unchanged when they still verify over the same bytes,
so rebuilding reproduces the committed file unless something really changed. Everything else
(device-signed rosters, the Multi payload for a fixed CEK, attachment ciphertexts for a fixed
K) is compared byte for byte.
"""

from __future__ import annotations

import hashlib
from typing import Any

from vectors_crypto import (
    CONV_ID,
    KVD,
    MSG_ID,
    OTHER,
    RECIPIENT,
    SENDER,
    SENDER_DK_SEED,
    TEXT,
    TS_MS,
    addr_from_json,
    addr_json,
)

from momedod.e2e import multi as mm
from momedod.e2e.attachment import (
    CHUNK,
    TAG_LEN,
    AttachmentPointer,
    attachment_keys,
    decrypt_attachment,
    encrypt_attachment,
)
from momedod.e2e.envelope import Addr, ContentType
from momedod.e2e.errors import E2EError
from momedod.e2e.identity import DeviceKey, HybridPublicKey, UserIdentityKey
from momedod.e2e.roster import (
    KIND_GROUP,
    MODE_MULTI,
    ROLE_ADMIN,
    ROLE_MEMBER,
    Roster,
    RosterRecord,
    check_roster_successor,
    current_org_key,
    make_org_key_record,
    parse_org_key_record,
    parse_roster_record,
    roster_changes,
    sign_roster_device,
    sign_roster_org,
    verify_roster_signature,
)
from momedod.e2e.suites import (
    ALL_SUITES,
    KemPrivateKey,
    kem_keypair_from_seed,
    kem_public_from_bytes,
)
from momedod.protocol.encoding import Writer

# -- fixed inputs ----------------------------------------------------------------------------

ORG_SEED = bytes(range(0x40, 0x60))
ORG2_SEED = bytes(range(0x60, 0x80))
ADMIN = SENDER  # M8N22HTR/1, device key SENDER_DK_SEED (RFC 8032 test 1)
MEMBER = RECIPIENT.user_id  # 49K49JAC
NEWCOMER = OTHER.user_id  # 7QXW3ZC7
TITLE = "Gemeinderat"
MULTI_CEK = bytes(range(0x80, 0xA0))
MULTI_KEM_SEEDS = {2: bytes(range(0xA0, 0xC0)), 3: bytes(range(0xC0, 0xE0))}
MULTI_KEY_KIND = 1  # SPK
MULTI_KEY_ID = 7
OTHER_KEM_SEED = bytes(range(0xE0, 0x100))
ATT_KEY = bytes(range(0x10, 0x30))
ATT_SMALL = "Grüezi from the attachment".encode()
ATT_LARGE_SIZE = 70_000  # two chunks: padme(70000) = 71680


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def _large_plaintext() -> bytes:
    return bytes(i % 251 for i in range(ATT_LARGE_SIZE))


def _rosters() -> tuple[Roster, Roster]:
    r1 = Roster.first(CONV_ID, KIND_GROUP, {ADMIN.user_id: ROLE_ADMIN, MEMBER: ROLE_MEMBER}, TITLE)
    r2 = r1.next(
        members={ADMIN.user_id: ROLE_ADMIN, MEMBER: ROLE_ADMIN, NEWCOMER: ROLE_MEMBER},
        title=TITLE + " 2026",
        mode=MODE_MULTI,
    )
    return r1, r2


def _roster_json(r: Roster) -> dict[str, Any]:
    return {
        "conv_id": r.conv_id.hex(),
        "epoch": r.epoch,
        "prev_hash": r.prev_hash.hex(),
        "kind": r.kind,
        "mode": r.mode,
        "min_suite": r.min_suite,
        "members": [[u, role] for u, role in r.members],
        "title": r.title,
        "hex": r.encode().hex(),
        "hash": r.hash.hex(),
    }


def _roster_from_json(d: dict[str, Any]) -> Roster:
    return Roster(
        bytes.fromhex(d["conv_id"]),
        d["epoch"],
        bytes.fromhex(d["prev_hash"]),
        d["kind"],
        d["mode"],
        d["min_suite"],
        tuple((u, role) for u, role in d["members"]),
        d["title"],
    )


def _previous_hex(previous: dict[str, Any] | None, section: str, name: str) -> bytes | None:
    if not previous:
        return None
    for e in previous.get(section, []):
        if e.get("name") == name:
            return bytes.fromhex(e["hex"])
    return None


# -- rosters and the org key -----------------------------------------------------------------


def roster_vectors(previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``roster`` section (reusing still-valid ML-DSA signatures of ``previous``)."""
    org, org2 = UserIdentityKey(ORG_SEED), UserIdentityKey(ORG2_SEED)
    dk = DeviceKey(SENDER_DK_SEED)
    r1, r2 = _rosters()

    org_record = sign_roster_org(r1, org)
    old = _previous_hex(previous, "records", "org epoch 1")
    if old is not None:
        try:
            rec = parse_roster_record(old)
            if rec.roster_bytes == r1.encode() and verify_roster_signature(rec, org_key=org.public):
                org_record = old
        except E2EError:
            pass

    v1 = make_org_key_record(1, org, None)
    v2 = make_org_key_record(2, org2, org)
    old = _previous_hex(previous, "org_keys", "version 2")
    if old is not None:
        try:
            if current_org_key([v1, old], org.fp) == org2.public:
                v2 = old
        except E2EError:
            pass

    dev1 = sign_roster_device(r1, ADMIN, dk)
    dev2 = sign_roster_device(r2, ADMIN, dk)
    records = [
        {"name": "device epoch 1", "roster": 0, "signer_kind": 2, "hex": dev1.hex()},
        {"name": "device epoch 2", "roster": 1, "signer_kind": 2, "hex": dev2.hex()},
        {
            "name": "org epoch 1",
            "roster": 0,
            "signer_kind": 1,
            "verify_only": True,
            "hex": org_record.hex(),
        },
    ]

    def fail(name: str, kind: str, reason: str, **ctx: Any) -> dict[str, Any]:
        return {"name": name, "kind": kind, "reason": reason, **ctx}

    rec1 = parse_roster_record(dev1)
    bob = Addr(MEMBER, 2)
    bob_sig = sign_roster_device(r2, bob, DeviceKey(bytes(range(100, 132))))
    rekind = Roster(CONV_ID, 2, r1.hash, 2, 1, 2, r1.members, "")
    must_fail = [
        fail("trailing byte", "parse", "roster", hex=(dev1 + b"\x00").hex()),
        fail("truncated", "parse", "roster", hex=dev1[:-1].hex()),
        fail("OrgKeyRecord type", "parse", "roster", hex=(dev1[:3] + b"\x13" + dev1[4:]).hex()),
        fail(
            "members not ascending",
            "parse",
            "roster",
            hex=_swap_members(dev1, r1).hex(),
        ),
        fail("unknown signer kind", "parse", "roster", hex=_with_signer_kind(rec1, 3).hex()),
        fail(
            "flipped signature byte", "signature", "signature", hex=_flip(dev1, len(dev1) - 1).hex()
        ),
        fail("flipped title byte", "signature", "signature", hex=_flip(dev1, len(dev1) - 82).hex()),
        fail(
            "flipped signer byte", "signature", "signature", hex=_flip(dev1, len(dev1) - 73).hex()
        ),
        fail(
            "org signature checked with another org key",
            "signature",
            "signature",
            hex=org_record.hex(),
            org_pub=org2.public.encode().hex(),
        ),
        fail("epoch 2 without a previous roster", "successor", "epoch", hex=dev2.hex()),
        fail("epoch 1 after epoch 1", "successor", "epoch", hex=dev1.hex(), prev=0),
        fail(
            "signed by a non-admin of the previous roster",
            "successor",
            "signer",
            hex=bob_sig.hex(),
            prev=0,
        ),
        fail(
            "kind changed",
            "successor",
            "kind",
            hex=sign_roster_device(rekind, ADMIN, dk).hex(),
            prev=0,
        ),
        fail(
            "org key chain: pinned key not in the chain",
            "org_key",
            "org_key",
            records=[v1.hex(), v2.hex()],
            pinned_fp=UserIdentityKey(bytes(32)).fp.hex(),
        ),
        fail(
            "org key chain: version 2 without version 1",
            "org_key",
            "org_key",
            records=[v2.hex()],
            pinned_fp=None,
        ),
        fail(
            "org key chain: flipped sig_prev",
            "org_key",
            "org_key",
            records=[v1.hex(), _flip(v2, len(v2) - 1).hex()],
            pinned_fp=org.fp.hex(),
        ),
    ]
    return {
        "description": "Roster = conv_id | u64 epoch | prev_hash | kind | mode | u16 min_suite "
        "| list<Member> | bytes title; RosterRecord = Header(0x12) | bytes roster | signer_kind "
        "| Addr signer | bytes sig; OrgKeyRecord = Header(0x13) | u32 version | bytes org_pub "
        "| prev_fp | bytes sig_prev. Entries with verify_only hold ML-DSA signatures.",
        "org_seed": ORG_SEED.hex(),
        "org_pub": org.public.encode().hex(),
        "org_fp": org.fp.hex(),
        "org2_seed": ORG2_SEED.hex(),
        "org2_pub": org2.public.encode().hex(),
        "org2_fp": org2.fp.hex(),
        "device_dk_seed": SENDER_DK_SEED.hex(),
        "device_dk_public": dk.public_bytes.hex(),
        "signer": addr_json(ADMIN),
        "rosters": [_roster_json(r1), _roster_json(r2)],
        "changes": [list(c) for c in roster_changes(r1, r2)],
        "records": records,
        "org_keys": [
            {"name": "version 1", "hex": v1.hex()},
            {"name": "version 2", "verify_only": True, "hex": v2.hex()},
        ],
        "must_fail": must_fail,
    }


def _swap_members(record: bytes, r: Roster) -> bytes:
    rec = parse_roster_record(record)
    rb = bytearray(rec.roster_bytes)
    start = 16 + 8 + 32 + 4 + 4
    a, b = rb[start : start + 9], rb[start + 9 : start + 18]
    rb[start : start + 18] = b + a
    w = Writer().u16(0x4D44).u8(1).u8(0x12).u16(rec.suite).bytes_(bytes(rb))
    return w.u8(2).raw(ADMIN.encode()).bytes_(rec.sig).getvalue()


def _with_signer_kind(rec: RosterRecord, kind: int) -> bytes:
    w = Writer().u16(0x4D44).u8(1).u8(0x12).u16(rec.suite).bytes_(rec.roster_bytes)
    return w.u8(kind).raw(ADMIN.encode()).bytes_(rec.sig).getvalue()


def check_roster(v: dict[str, Any]) -> None:
    """Verify the ``roster`` section against the library."""
    org, org2 = (
        UserIdentityKey(bytes.fromhex(v["org_seed"])),
        UserIdentityKey(bytes.fromhex(v["org2_seed"])),
    )
    assert org.public.encode().hex() == v["org_pub"] and org.fp.hex() == v["org_fp"]
    assert org2.public.encode().hex() == v["org2_pub"] and org2.fp.hex() == v["org2_fp"]
    dk = DeviceKey(bytes.fromhex(v["device_dk_seed"]))
    assert dk.public_bytes.hex() == v["device_dk_public"]
    signer = addr_from_json(v["signer"])

    rosters = []
    for d in v["rosters"]:
        r = _roster_from_json(d)
        assert r.encode().hex() == d["hex"], f"roster epoch {d['epoch']}"
        assert Roster.decode(bytes.fromhex(d["hex"])) == r
        assert r.hash.hex() == d["hash"]
        rosters.append(r)
    assert rosters[1].prev_hash == rosters[0].hash
    assert [list(c) for c in roster_changes(rosters[0], rosters[1])] == v["changes"]

    prev: Roster | None = None
    for e in v["records"]:
        data = bytes.fromhex(e["hex"])
        rec = parse_roster_record(data)
        r = rosters[e["roster"]]
        assert rec.roster == r and rec.encode() == data and rec.signer_kind == e["signer_kind"]
        if e["signer_kind"] == 2:
            assert sign_roster_device(r, signer, dk) == data, e["name"]
            assert verify_roster_signature(rec, device_dk_public=dk.public_bytes), e["name"]
            check_roster_successor(prev, rec)
            prev = r
        else:
            assert verify_roster_signature(rec, org_key=org.public), e["name"]
            assert not verify_roster_signature(rec, org_key=org2.public)
            check_roster_successor(None, rec)

    keys = [bytes.fromhex(k["hex"]) for k in v["org_keys"]]
    assert make_org_key_record(1, org, None) == keys[0]
    assert parse_org_key_record(keys[1]).encode() == keys[1]
    assert current_org_key(keys, org.fp) == org2.public
    assert current_org_key(keys, None) == org2.public

    for m in v["must_fail"]:
        try:
            if m["kind"] == "org_key":
                pinned = bytes.fromhex(m["pinned_fp"]) if m["pinned_fp"] else None
                current_org_key([bytes.fromhex(h) for h in m["records"]], pinned)
            else:
                rec = parse_roster_record(bytes.fromhex(m["hex"]))
                if m["kind"] == "signature":
                    key = (
                        HybridPublicKey.parse(bytes.fromhex(m["org_pub"]))
                        if "org_pub" in m
                        else None
                    )
                    ok = verify_roster_signature(
                        rec, org_key=key, device_dk_public=None if key else dk.public_bytes
                    )
                    if not ok:
                        raise E2EError(reason="signature")
                elif m["kind"] == "successor":
                    p = rosters[m["prev"]] if "prev" in m else None
                    check_roster_successor(p, rec)
        except E2EError as exc:
            assert exc.reason == m["reason"], f"{m['name']}: reason {exc.reason}"
        else:
            raise AssertionError(f"must_fail vector was accepted: {m['name']}")


# -- Multi -----------------------------------------------------------------------------------


def _multi_encrypt(suite_id: int) -> tuple[bytes, dict[Addr, bytes]]:
    suite = ALL_SUITES[suite_id]
    _, public = kem_keypair_from_seed(suite, MULTI_KEM_SEEDS[suite_id])
    return mm.multi_encrypt(
        suite,
        SENDER,
        DeviceKey(SENDER_DK_SEED),
        CONV_ID,
        3,
        TS_MS,
        MSG_ID,
        KVD,
        ContentType.TEXT,
        TEXT,
        [(RECIPIENT, MULTI_KEY_KIND, MULTI_KEY_ID, public)],
        cek=MULTI_CEK,
    )


def _open_multi(v: dict[str, Any], payload: bytes, wrap: bytes, me: Addr) -> Any:
    suite = ALL_SUITES[v["suite"]]
    private, _ = kem_keypair_from_seed(suite, bytes.fromhex(v["recipient_kem_seed"]))
    dk_pub = bytes.fromhex(v["sender_dk_public"])
    sender = addr_from_json(v["opened"]["sender"])

    def lookup(_suite: int, kind: int, key_id: int) -> KemPrivateKey | None:
        return private if (kind, key_id) == (v["key_kind"], v["key_id"]) else None

    return mm.multi_open(payload, wrap, me, lookup, lambda a: dk_pub if a == sender else None)


def _forged_wrap(suite_id: int, payload: bytes, cek: bytes) -> bytes:
    """A wrap of another CEK, bound to ``payload``'s header and commitment (a lying sender)."""
    suite = ALL_SUITES[suite_id]
    _, public = kem_keypair_from_seed(suite, MULTI_KEM_SEEDS[suite_id])
    prefix = Writer().u8(MULTI_KEY_KIND).u32(MULTI_KEY_ID).getvalue(RECIPIENT.encode())
    pk = kem_public_from_bytes(suite, public)
    ct = suite.hpke.encrypt(cek, pk, mm.WRAP_LABEL + payload[:38] + prefix)
    return Writer().bytes_(ct).getvalue(prefix)


def multi_vectors(previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``multi`` section (reusing the wraps of ``previous`` while they still open)."""
    entries = []
    must_fail = []
    old_by_suite = {e["suite"]: e for e in (previous or {}).get("envelopes", [])}
    old_fail = {m["name"]: m for m in (previous or {}).get("must_fail", [])}
    for suite_id in (2, 3):
        suite = ALL_SUITES[suite_id]
        payload, wraps = _multi_encrypt(suite_id)
        wrap = wraps[RECIPIENT]
        entry: dict[str, Any] = {
            "suite": suite_id,
            "sender_dk_seed": SENDER_DK_SEED.hex(),
            "sender_dk_public": DeviceKey(SENDER_DK_SEED).public_bytes.hex(),
            "recipient": addr_json(RECIPIENT),
            "recipient_kem_seed": MULTI_KEM_SEEDS[suite_id].hex(),
            "key_kind": MULTI_KEY_KIND,
            "key_id": MULTI_KEY_ID,
            "cek": MULTI_CEK.hex(),
            "cek_commit": mm.cek_commit(MULTI_CEK).hex(),
            "body_key": mm.multi_body_key(suite, MULTI_CEK).hex(),
            "payload": payload.hex(),
        }
        old = old_by_suite.get(suite_id)
        if old is not None and old["payload"] == payload.hex():
            try:
                _open_multi(
                    entry | {"opened": old["opened"]},
                    payload,
                    bytes.fromhex(old["wrap"]),
                    RECIPIENT,
                )
                wrap = bytes.fromhex(old["wrap"])
            except E2EError:
                pass
        entry["wrap"] = wrap.hex()
        entry["wrap_verify_only"] = True
        entry["opened"] = {
            "conv_id": CONV_ID.hex(),
            "epoch": 3,
            "sender": addr_json(SENDER),
            "ts_ms": TS_MS,
            "msg_id": MSG_ID.hex(),
            "kvd": KVD.hex(),
            "content_type": int(ContentType.TEXT),
            "content": TEXT.hex(),
        }
        entries.append(entry)

        name = f"multi suite {suite_id}: wrap of a different CEK (cek_commit mismatch)"
        forged = _forged_wrap(suite_id, payload, bytes(32))
        if name in old_fail and old_fail[name]["payload"] == payload.hex():
            forged = bytes.fromhex(old_fail[name]["wrap"])
        cases: list[tuple[str, bytes, bytes, Addr, str]] = [
            (
                "flipped byte in body_ct",
                _flip(payload, len(payload) - 40),
                wrap,
                RECIPIENT,
                "decrypt",
            ),
            ("flipped byte in cek_commit", _flip(payload, 10), wrap, RECIPIENT, "decrypt"),
            ("flipped byte in hpke_ct", payload, _flip(wrap, 30), RECIPIENT, "decrypt"),
            ("key_id changed", payload, _flip(wrap, 16), RECIPIENT, "unknown_key"),
            ("wrap opened by another device", payload, wrap, OTHER, "recipient"),
            ("truncated payload", payload[:-1], wrap, RECIPIENT, "malformed"),
            ("trailing byte in wrap", payload, wrap + b"\x00", RECIPIENT, "malformed"),
            ("Chain type", payload[:3] + b"\x02" + payload[4:], wrap, RECIPIENT, "header"),
            (
                "wrap of a different CEK (cek_commit mismatch)",
                payload,
                forged,
                RECIPIENT,
                "cek_commit",
            ),
        ]
        for cname, p, w, me, reason in cases:
            must_fail.append(
                {
                    "name": f"multi suite {suite_id}: {cname}",
                    "suite": suite_id,
                    "me": addr_json(me),
                    "payload": p.hex(),
                    "wrap": w.hex(),
                    "reason": reason,
                }
            )
    return {
        "description": "Multi = Header(0x03) | cek_commit | bytes body_ct; Wrap = Addr rcpt | "
        "u8 key_kind | u32 key_id | bytes hpke_ct. The payload is exact for the given CEK; the "
        "wrap is HPKE-randomised (open it with recipient_kem_seed).",
        "envelopes": entries,
        "must_fail": must_fail,
    }


def check_multi(v: dict[str, Any]) -> None:
    """Verify the ``multi`` section against the library."""
    by_suite = {}
    for e in v["envelopes"]:
        suite = ALL_SUITES[e["suite"]]
        cek = bytes.fromhex(e["cek"])
        assert mm.cek_commit(cek).hex() == e["cek_commit"]
        assert mm.multi_body_key(suite, cek).hex() == e["body_key"]
        payload, _ = _multi_encrypt(e["suite"])
        assert payload.hex() == e["payload"], f"Multi payload of suite {e['suite']}"
        opened = _open_multi(e, payload, bytes.fromhex(e["wrap"]), addr_from_json(e["recipient"]))
        o = e["opened"]
        got = {
            "conv_id": opened.conv_id.hex(),
            "epoch": opened.epoch,
            "sender": addr_json(opened.sender),
            "ts_ms": opened.ts_ms,
            "msg_id": opened.msg_id.hex(),
            "kvd": opened.kvd.hex(),
            "content_type": opened.content_type,
            "content": opened.content.hex(),
        }
        assert got == o, f"opened Multi of suite {e['suite']}"
        by_suite[e["suite"]] = e
    for m in v["must_fail"]:
        try:
            _open_multi(
                by_suite[m["suite"]],
                bytes.fromhex(m["payload"]),
                bytes.fromhex(m["wrap"]),
                addr_from_json(m["me"]),
            )
        except E2EError as exc:
            assert str(exc) == "cannot open envelope", m["name"]
            assert exc.reason == m["reason"], f"{m['name']}: reason {exc.reason}"
        else:
            raise AssertionError(f"must_fail vector was accepted: {m['name']}")


# -- attachments -----------------------------------------------------------------------------


def _pointer() -> AttachmentPointer:
    _, key, sha = encrypt_attachment(ATT_SMALL, ATT_KEY)
    return AttachmentPointer(
        blob_id=bytes(range(0xF0, 0x100)),
        key=key,
        sha256=sha,
        size=len(ATT_SMALL),
        mime="text/plain",
        name="grüezi.txt",
        caption="Protokoll",
        taken_ms=TS_MS,
        lat=47.3769,
        lon=8.5417,
        accuracy_m=12.5,
    )


def attachment_vectors() -> dict[str, Any]:
    """The ``attachment`` section (all deterministic for the fixed K)."""
    k, prefix = attachment_keys(ATT_KEY)
    small_ct, _, small_sha = encrypt_attachment(ATT_SMALL, ATT_KEY)
    empty_ct, _, empty_sha = encrypt_attachment(b"", ATT_KEY)
    large = _large_plaintext()
    large_ct, _, large_sha = encrypt_attachment(large, ATT_KEY)
    sealed = CHUNK + TAG_LEN
    p = _pointer()
    no_loc = AttachmentPointer(bytes(16), ATT_KEY, small_sha, len(ATT_SMALL))

    def fail(
        name: str, ct: bytes, size: int, reason: str, sha: bytes | None = None
    ) -> dict[str, Any]:
        return {
            "name": name,
            "ciphertext": ct.hex(),
            "sha256": (hashlib.sha256(ct).digest() if sha is None else sha).hex(),
            "size": size,
            "reason": reason,
        }

    large_head = large_ct[:sealed]
    return {
        "description": "okm = HKDF-SHA256(K, salt='', info=Label('att'), 39): k = okm[:32], "
        "prefix = okm[32:]; Padmé padding; 64 KiB chunks, nonce = prefix | u32 i | u8 last. "
        "The large case's plaintext is byte i = i mod 251.",
        "key": ATT_KEY.hex(),
        "k": k.hex(),
        "nonce_prefix": prefix.hex(),
        "cases": [
            {
                "name": "empty",
                "plaintext": "",
                "ciphertext": empty_ct.hex(),
                "sha256": empty_sha.hex(),
            },
            {
                "name": "small",
                "plaintext": ATT_SMALL.hex(),
                "ciphertext": small_ct.hex(),
                "sha256": small_sha.hex(),
            },
            {
                "name": "large (two chunks)",
                "plaintext_size": ATT_LARGE_SIZE,
                "ciphertext_size": len(large_ct),
                "sha256": large_sha.hex(),
                "first_chunk_tag": large_ct[sealed - TAG_LEN : sealed].hex(),
            },
        ],
        "pointers": [
            {
                "name": "with location",
                "blob_id": p.blob_id.hex(),
                "key": p.key.hex(),
                "sha256": p.sha256.hex(),
                "size": p.size,
                "mime": p.mime,
                "name_field": p.name,
                "caption": p.caption,
                "width": p.width,
                "height": p.height,
                "taken_ms": p.taken_ms,
                "lat_e7": p.lat_e7,
                "lon_e7": p.lon_e7,
                "accuracy_cm": p.accuracy_cm,
                "hex": p.encode().hex(),
            },
            {"name": "minimal", "hex": no_loc.encode().hex()},
        ],
        "must_fail": [
            fail(
                "hash mismatch (flipped byte, pointer hash)",
                _flip(small_ct, 3),
                len(ATT_SMALL),
                "hash",
                small_sha,
            ),
            fail("flipped byte (matching hash)", _flip(small_ct, 3), len(ATT_SMALL), "decrypt"),
            fail("final chunk missing", large_head, ATT_LARGE_SIZE, "decrypt"),
            fail("first chunk dropped", large_ct[sealed:], ATT_LARGE_SIZE, "decrypt"),
            fail("truncated by one byte", small_ct[:-1], len(ATT_SMALL), "decrypt"),
            fail("wrong size", small_ct, 1000, "size"),
        ],
    }


def check_attachment(v: dict[str, Any]) -> None:
    """Verify the ``attachment`` section against the library."""
    key = bytes.fromhex(v["key"])
    k, prefix = attachment_keys(key)
    assert (k.hex(), prefix.hex()) == (v["k"], v["nonce_prefix"])
    for c in v["cases"]:
        if "plaintext" in c:
            pt = bytes.fromhex(c["plaintext"])
            ct, _, sha = encrypt_attachment(pt, key)
            assert (ct.hex(), sha.hex()) == (c["ciphertext"], c["sha256"]), c["name"]
            assert decrypt_attachment(ct, key, sha, len(pt)) == pt
        else:
            pt = _large_plaintext()
            assert len(pt) == c["plaintext_size"]
            ct, _, sha = encrypt_attachment(pt, key)
            assert (len(ct), sha.hex()) == (c["ciphertext_size"], c["sha256"]), c["name"]
            assert ct[CHUNK : CHUNK + TAG_LEN].hex() == c["first_chunk_tag"]
            assert decrypt_attachment(ct, key, sha, len(pt)) == pt
    for p in v["pointers"]:
        data = bytes.fromhex(p["hex"])
        ptr = AttachmentPointer.decode(data)
        assert ptr.encode() == data, p["name"]
        if "lat_e7" in p:
            assert ptr == _pointer()
            assert (ptr.lat_e7, ptr.lon_e7, ptr.accuracy_cm) == (
                p["lat_e7"],
                p["lon_e7"],
                p["accuracy_cm"],
            )
    for m in v["must_fail"]:
        try:
            decrypt_attachment(
                bytes.fromhex(m["ciphertext"]), key, bytes.fromhex(m["sha256"]), m["size"]
            )
        except E2EError as exc:
            assert exc.reason == m["reason"], f"{m['name']}: reason {exc.reason}"
        else:
            raise AssertionError(f"must_fail vector was accepted: {m['name']}")
