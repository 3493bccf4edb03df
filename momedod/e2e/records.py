"""Key records, end-to-end side: sign them, verify them, and check their hash chains.

The wire layout and the server's format checks live in :mod:`momedod.protocol.records`; this
module adds what only clients can check (E2E.md section 4.3, docs/E2E.md "Records"):

* **Signatures.** Each SigEntry ``sig`` is ``Sign(k, "rec", Header | u16 record_type |
  u8 signer_kind | bytes body)`` (:func:`momedod.protocol.records.record_sign_message`), a
  HybridSig for UIK/SERVER/ORG, Ed25519 for DK. ``signer_fp`` is the signer's fingerprint
  (``FP`` of a hybrid key, ``dk_fp`` of a device key). A record has at most one entry per
  signer kind, and only these kinds:

  ======================  ====================  ==========================================
  record                  required              optional
  ======================  ====================  ==========================================
  IdentityRec (1)         UIK (of the body)     SERVER, ORG: verified if a pinned key is
                                                given (a wrong one is rejected), else ignored
  DeviceList (2)          UIK                   --
  Prekey (3)              DK (of the device)    --
  ======================  ====================  ==========================================

* **Identity history.** ``prev_fp`` of each IdentityRec is the ``FP`` of the one before; the
  first record of a user has 32 zero bytes. A fingerprint never comes back.
* **Device-list chain.** ``list_hash = SHA-256(Label("devlist") | Header | u16 record_type |
  bytes body)`` -- the record's bytes up to the end of the body, *without* the signature list
  (signatures authenticate the content; the randomised ML-DSA half must not fork the chain).
  Version 1 has ``prev_hash`` = 32 zero bytes; version v+1 has ``prev_hash`` = list_hash of
  version v. A chain continues across identity changes; a list is signed by the UIK current
  when it was issued, and the newest list by the newest UIK.
* **Prekeys** are signed by the DK of a device on the owner's verified device list, have a
  suite the DeviceEntry lists, and are usable while ``now_ms <= not_after_ms``.

Every failure raises :class:`~momedod.e2e.errors.E2EError` with a ``reason``; records are
public data, so the message says what is wrong.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from momedod.protocol import records as wire
from momedod.protocol.encoding import MAX_U32, Reader, label
from momedod.protocol.errors import ProtocolError
from momedod.protocol.records import (
    PREKEY_OTPK,
    PREKEY_SPK,
    RECORD_DEVICE_LIST,
    RECORD_IDENTITY,
    RECORD_PREKEY,
    SIGNER_DK,
    SIGNER_ORG,
    SIGNER_SERVER,
    SIGNER_UIK,
    DeviceEntry,
)

from .errors import E2EError
from .identity import (
    FP_LEN,
    DeviceKey,
    HybridPublicKey,
    UserIdentityKey,
    dk_fp,
    verify_ed25519,
)
from .suites import SUITE_TEST_X25519, get_suite, kem_public_from_bytes

__all__ = [
    "PREKEY_OTPK",
    "PREKEY_SPK",
    "ZERO_HASH",
    "DeviceEntry",
    "DeviceList",
    "DeviceListPin",
    "DeviceSelection",
    "DeviceTarget",
    "IdentityRecord",
    "PrekeyRecord",
    "countersign",
    "device_list_hash",
    "select_devices",
    "sign_device_list",
    "sign_identity_record",
    "sign_prekey",
    "verify_device_list",
    "verify_device_list_chain",
    "verify_identity_history",
    "verify_identity_record",
    "verify_prekey",
]

ZERO_HASH: Final = bytes(FP_LEN)
"""``prev_fp`` of a user's first IdentityRec and ``prev_hash`` of device list version 1."""

_DEVLIST_LABEL = label("devlist")
_HEADER_LEN = 6
_SIG_ENTRY_MIN = 1 + FP_LEN + 4
_DEVICE_ENTRY_MIN = 4 + 4 + 4 + 1 + 8
_SIGNER_NAMES = {SIGNER_UIK: "UIK", SIGNER_DK: "DK", SIGNER_SERVER: "SERVER", SIGNER_ORG: "ORG"}
_RECORD_NAMES = {
    RECORD_IDENTITY: "IdentityRec",
    RECORD_DEVICE_LIST: "DeviceList",
    RECORD_PREKEY: "Prekey",
}


def _fail(reason: str, detail: str) -> E2EError:
    return E2EError(f"invalid key record: {detail}", reason=reason)


# -- verified records ------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceListPin:
    """Where a client last accepted someone's device-list chain: version and list_hash."""

    version: int
    list_hash: bytes


@dataclass(frozen=True)
class IdentityRecord:
    """A verified IdentityRec. ``verified_signers`` holds the signer kinds whose signature was
    checked (always UIK; SERVER/ORG only when a pinned key was given)."""

    raw: bytes = field(repr=False)
    user_id: str
    uik: HybridPublicKey
    created_ms: int
    prev_fp: bytes
    verified_signers: frozenset[int]

    @property
    def suite(self) -> int:
        """The record (and UIK) suite."""
        return self.uik.suite

    @property
    def fp(self) -> bytes:
        """The fingerprint of this identity's UIK."""
        return self.uik.fp


@dataclass(frozen=True)
class DeviceList:
    """A verified DeviceList, signed by the UIK with fingerprint ``signer_fp``."""

    raw: bytes = field(repr=False)
    suite: int
    user_id: str
    version: int
    prev_hash: bytes
    issued_ms: int
    entries: tuple[DeviceEntry, ...]
    signer_fp: bytes
    list_hash: bytes

    def device(self, device_id: int) -> DeviceEntry | None:
        """Return the entry of ``device_id``, or None if it is not on the list."""
        for entry in self.entries:
            if entry.device_id == device_id:
                return entry
        return None

    @property
    def pin(self) -> DeviceListPin:
        """The chain point of this list, to pin after accepting it."""
        return DeviceListPin(self.version, self.list_hash)


@dataclass(frozen=True)
class PrekeyRecord:
    """A verified Prekey record (SPK or OTPK) of a listed device."""

    raw: bytes = field(repr=False)
    suite: int
    user_id: str
    device_id: int
    kind: int
    key_id: int
    pub: bytes
    not_after_ms: int


# -- envelope --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Envelope:
    suite: int
    record_type: int
    body: bytes
    signed_prefix: bytes  # Header | u16 record_type | bytes body
    sigs: tuple[tuple[int, bytes, bytes], ...]


def _open(data: bytes, record_type: int | None, allow_test_suites: bool) -> _Envelope:
    """Check the wire format (momedod.protocol.records.parse_record) and split the record."""
    try:
        info = wire.parse_record(data)
    except ProtocolError as exc:
        raise _fail("format", exc.message) from None
    if record_type is not None and info.record_type != record_type:
        raise _fail("record_type", f"expected {_RECORD_NAMES[record_type]}")
    if info.suite == SUITE_TEST_X25519 and not allow_test_suites:
        raise _fail("suite", "suite 0x0001 is for tests only")
    r = Reader(data)
    r.fixed(_HEADER_LEN + 2)
    body = r.bytes_(MAX_U32)
    prefix = data[: len(data) - r.remaining]
    sigs = tuple(
        (r.u8(), r.fixed(FP_LEN), r.bytes_(MAX_U32))
        for _ in range(r.count(MAX_U32, _SIG_ENTRY_MIN))
    )
    return _Envelope(info.suite, info.record_type, body, prefix, sigs)


def _signatures(
    env: _Envelope, allowed: frozenset[int], required: int
) -> dict[int, tuple[bytes, bytes]]:
    """Enforce the signer rules: only ``allowed`` kinds, each at most once, ``required`` present."""
    found: dict[int, tuple[bytes, bytes]] = {}
    for kind, fp, sig in env.sigs:
        if kind not in allowed:
            raise _fail("signer", f"{_SIGNER_NAMES[kind]} may not sign a {_name(env)}")
        if kind in found:
            raise _fail("signer", f"two {_SIGNER_NAMES[kind]} signatures")
        found[kind] = (fp, sig)
    if required not in found:
        raise _fail("signer", f"{_name(env)} lacks its {_SIGNER_NAMES[required]} signature")
    return found


def _name(env: _Envelope) -> str:
    return _RECORD_NAMES[env.record_type]


def _message(env: _Envelope, kind: int) -> bytes:
    return wire.record_sign_message(env.suite, env.record_type, kind, env.body)


def _check_hybrid(
    env: _Envelope,
    kind: int,
    entry: tuple[bytes, bytes],
    key: HybridPublicKey,
    allow_test_suites: bool,
) -> None:
    fp, sig = entry
    who = _SIGNER_NAMES[kind]
    if fp != key.fp:
        raise _fail("signer", f"{who} signer_fp is not the expected key")
    if not key.verify_labelled(_message(env, kind), sig, allow_test_suites=allow_test_suites):
        raise _fail("signature", f"{who} signature does not verify")


# -- IdentityRec -----------------------------------------------------------------------------


def verify_identity_record(
    data: bytes,
    *,
    user_id: str | None = None,
    server_key: HybridPublicKey | None = None,
    org_key: HybridPublicKey | None = None,
    allow_test_suites: bool = False,
) -> IdentityRecord:
    """Verify an IdentityRec: its format, its UIK signature by the UIK in its body, and the
    SERVER/ORG signatures for which a pinned key is given (others are ignored).

    ``user_id``, if given, must be the record's user.
    """
    env = _open(data, RECORD_IDENTITY, allow_test_suites)
    sigs = _signatures(env, frozenset({SIGNER_UIK, SIGNER_SERVER, SIGNER_ORG}), SIGNER_UIK)
    try:
        r = Reader(env.body)
        uid = r.user_id()
        uik = HybridPublicKey.read(r, allow_test_suites=allow_test_suites)
        created_ms = r.u64()
        prev_fp = r.fixed(FP_LEN)
        r.finish()
    except ProtocolError as exc:  # unreachable after parse_record; kept for safety
        raise _fail("format", exc.message) from None
    except E2EError as exc:
        raise _fail(exc.reason, str(exc)) from None
    _check_user(uid, user_id)
    _check_hybrid(env, SIGNER_UIK, sigs[SIGNER_UIK], uik, allow_test_suites)
    verified = {SIGNER_UIK}
    for kind, key in ((SIGNER_SERVER, server_key), (SIGNER_ORG, org_key)):
        if kind in sigs and key is not None:
            _check_hybrid(env, kind, sigs[kind], key, allow_test_suites)
            verified.add(kind)
    return IdentityRecord(data, uid, uik, created_ms, prev_fp, frozenset(verified))


def verify_identity_history(
    records: Sequence[bytes],
    *,
    user_id: str | None = None,
    server_key: HybridPublicKey | None = None,
    org_key: HybridPublicKey | None = None,
    allow_test_suites: bool = False,
) -> list[IdentityRecord]:
    """Verify a user's identity records, oldest first: each verifies, all have the same user,
    each ``prev_fp`` is the previous record's FP, and no FP appears twice.

    The first record normally has a zero ``prev_fp``; a non-zero one means the server left
    out older history, which is accepted (the caller compares the newest FP with its pin).
    """
    if not records:
        raise _fail("identity_empty", "no identity record")
    out: list[IdentityRecord] = []
    for data in records:
        rec = verify_identity_record(
            data,
            user_id=user_id,
            server_key=server_key,
            org_key=org_key,
            allow_test_suites=allow_test_suites,
        )
        user_id = rec.user_id
        if out and rec.prev_fp != out[-1].fp:
            raise _fail("identity_link", "prev_fp is not the FP of the previous identity")
        if any(old.fp == rec.fp for old in out):
            raise _fail("identity_repeat", "an identity key comes back")
        out.append(rec)
    return out


def _check_user(found: str, expected: str | None) -> None:
    if expected is not None and found != expected:
        raise _fail("user", f"record is for user {found}, expected {expected}")


# -- DeviceList ------------------------------------------------------------------------------


def device_list_hash(record: bytes) -> bytes:
    """Return ``list_hash`` of a DeviceList record (format-checked; signatures not checked)."""
    env = _open(record, RECORD_DEVICE_LIST, allow_test_suites=True)
    return _list_hash(env)


def _list_hash(env: _Envelope) -> bytes:
    return hashlib.sha256(_DEVLIST_LABEL + env.signed_prefix).digest()


def verify_device_list(
    data: bytes,
    uik: HybridPublicKey | Sequence[HybridPublicKey],
    *,
    user_id: str | None = None,
    allow_test_suites: bool = False,
) -> DeviceList:
    """Verify one DeviceList: format, a single UIK signature by ``uik`` (or by one of the keys
    of a user's identity history) in the record's suite, and the version-1 rule."""
    keys = (uik,) if isinstance(uik, HybridPublicKey) else tuple(uik)
    env = _open(data, RECORD_DEVICE_LIST, allow_test_suites)
    fp, sig = _signatures(env, frozenset({SIGNER_UIK}), SIGNER_UIK)[SIGNER_UIK]
    try:
        r = Reader(env.body)
        uid = r.user_id()
        version = r.u64()
        prev_hash = r.fixed(FP_LEN)
        issued_ms = r.u64()
        entries = tuple(
            DeviceEntry(r.u32(), r.bytes_(32), r.u16_list(MAX_U32), r.u8(), r.u64())
            for _ in range(r.count(MAX_U32, _DEVICE_ENTRY_MIN))
        )
        r.finish()
    except ProtocolError as exc:  # unreachable after parse_record; kept for safety
        raise _fail("format", exc.message) from None
    _check_user(uid, user_id)
    if version == 0:
        raise _fail("format", "device list version 0")
    if (version == 1) != (prev_hash == ZERO_HASH):
        raise _fail("chain_link", "only version 1 has (and must have) a zero prev_hash")
    key = next((k for k in keys if k.fp == fp), None)
    if key is None:
        raise _fail("signer", "device list is not signed by the user's identity key")
    if key.suite != env.suite:
        raise _fail("suite", "device list suite differs from its identity key's suite")
    _check_hybrid(env, SIGNER_UIK, (fp, sig), key, allow_test_suites)
    return DeviceList(
        data, env.suite, uid, version, prev_hash, issued_ms, entries, fp, _list_hash(env)
    )


def verify_device_list_chain(
    records: Sequence[bytes],
    uiks: Sequence[HybridPublicKey],
    pinned: DeviceListPin | None = None,
    *,
    user_id: str | None = None,
    allow_test_suites: bool = False,
) -> list[DeviceList]:
    """Verify a user's device-list history, oldest first, against the identity history
    ``uiks`` (oldest first) and the caller's pinned point.

    Checks: every list verifies; versions rise by exactly 1 and each ``prev_hash`` is the
    list_hash of the list before (so no gap, fork, reordering or duplicate); a list is never
    signed by an older UIK than the list before it, and the newest list is signed by the newest
    UIK; with a pin, the chain reaches back to it (reason ``chain_gap``), contains it unchanged
    (``chain_fork``) and does not end before it (``chain_rollback``). Without a pin the chain
    may start at any version (trust on first use; the server may leave out old history).
    Returns the verified lists; pin ``result[-1].pin`` afterwards.
    """
    if not records or not uiks:
        raise _fail("chain_empty", "no device list or no identity key")
    order = {k.fp: i for i, k in enumerate(uiks)}
    lists: list[DeviceList] = []
    for data in records:
        dl = verify_device_list(data, uiks, user_id=user_id, allow_test_suites=allow_test_suites)
        user_id = dl.user_id
        if lists:
            prev = lists[-1]
            if dl.version != prev.version + 1:
                if dl.version == prev.version:
                    raise _fail("chain_fork", f"two device lists with version {dl.version}")
                if dl.version < prev.version:
                    raise _fail("chain_order", "device lists out of order")
                raise _fail("chain_gap", f"version {dl.version} follows {prev.version}")
            if dl.prev_hash != prev.list_hash:
                raise _fail("chain_fork", f"version {dl.version} does not link to the one before")
            if order[dl.signer_fp] < order[prev.signer_fp]:
                raise _fail("chain_signer", "device list signed by a replaced identity key")
        lists.append(dl)
    if lists[-1].signer_fp != uiks[-1].fp:
        raise _fail("chain_signer", "newest device list is not signed by the current identity")
    if pinned is not None:
        _check_pin(lists, pinned)
    return lists


def _check_pin(lists: list[DeviceList], pinned: DeviceListPin) -> None:
    first, last = lists[0], lists[-1]
    if pinned.version > last.version:
        raise _fail("chain_rollback", f"newest version {last.version} < pinned {pinned.version}")
    if pinned.version < first.version - 1:
        raise _fail("chain_gap", "device-list history does not reach the pinned version")
    if pinned.version == first.version - 1:
        linked = first.prev_hash == pinned.list_hash
    else:
        linked = lists[pinned.version - first.version].list_hash == pinned.list_hash
    if not linked:
        raise _fail("chain_fork", f"device list version {pinned.version} differs from the pin")


# -- Prekey ----------------------------------------------------------------------------------


def verify_prekey(
    data: bytes,
    device_list: DeviceList,
    now_ms: int,
    *,
    kind: int | None = None,
    allow_test_suites: bool = False,
) -> PrekeyRecord:
    """Verify a Prekey record of a device on the verified ``device_list``: the single DK
    signature by that device's key, a suite the device lists, a valid KEM public key of that
    suite (:func:`.suites.kem_public_from_bytes`), ``kind`` if given, and
    ``now_ms <= not_after_ms`` (reason ``expired``)."""
    env = _open(data, RECORD_PREKEY, allow_test_suites)
    fp, sig = _signatures(env, frozenset({SIGNER_DK}), SIGNER_DK)[SIGNER_DK]
    try:
        r = Reader(env.body)
        uid = r.user_id()
        device_id = r.u32()
        suite = r.u16()
        rec = PrekeyRecord(data, suite, uid, device_id, r.u8(), r.u32(), r.bytes_(MAX_U32), r.u64())
        r.finish()
    except ProtocolError as exc:  # unreachable after parse_record; kept for safety
        raise _fail("format", exc.message) from None
    _check_user(uid, device_list.user_id)
    entry = device_list.device(device_id)
    if entry is None:
        raise _fail("device", f"device {device_id} is not on the signed device list")
    if fp != dk_fp(entry.dk_pub):
        raise _fail("signer", "prekey signer_fp is not the device's key")
    if not verify_ed25519(entry.dk_pub, _message(env, SIGNER_DK), sig):
        raise _fail("signature", "DK signature does not verify")
    if suite not in entry.suites:
        raise _fail("suite", f"device {device_id} does not list suite 0x{suite:04x}")
    try:
        kem_public_from_bytes(get_suite(suite, allow_test_suites=allow_test_suites), rec.pub)
    except E2EError as exc:
        raise _fail(exc.reason, f"prekey {rec.key_id}: {exc}") from None
    if kind is not None and rec.kind != kind:
        raise _fail("prekey_kind", f"expected prekey kind {kind}, got {rec.kind}")
    if now_ms > rec.not_after_ms:
        raise _fail("expired", f"prekey {rec.key_id} of device {device_id} has expired")
    return rec


@dataclass(frozen=True)
class DeviceTarget:
    """A device to encrypt to, with the verified SPK of the suite chosen for it."""

    device: DeviceEntry
    prekey: PrekeyRecord

    @property
    def suite(self) -> int:
        """The suite to use for this device."""
        return self.prekey.suite


@dataclass(frozen=True)
class DeviceSelection:
    """The result of :func:`select_devices`: the targets and the listed devices left out,
    each with the reason (no common suite, no valid unexpired SPK)."""

    targets: tuple[DeviceTarget, ...]
    unreachable: tuple[tuple[int, str], ...]


def select_devices(
    device_list: DeviceList,
    spk_records: Iterable[bytes],
    now_ms: int,
    preferred_suites: Sequence[int],
    *,
    exclude: Collection[int] = (),
    allow_test_suites: bool = False,
) -> DeviceSelection:
    """Choose the devices of a verified device list to encrypt to (E2E.md sections 6.1, 11).

    Only devices on ``device_list`` count, whatever else the server sends. For each listed
    device (except ``exclude``, e.g. the sender's own device) the suite is the first of
    ``preferred_suites`` that the device lists *and* for which a valid, unexpired SPK signed by
    its DK is present; of several such SPKs the one with the latest ``not_after_ms`` (then the
    highest ``key_id``) wins. Invalid SPK records are skipped: a bad record from the server only
    makes a device unreachable.
    """
    best: dict[tuple[int, int], PrekeyRecord] = {}
    for data in spk_records:
        try:
            rec = verify_prekey(
                data, device_list, now_ms, kind=PREKEY_SPK, allow_test_suites=allow_test_suites
            )
        except E2EError:
            continue
        key = (rec.device_id, rec.suite)
        old = best.get(key)
        if old is None or (rec.not_after_ms, rec.key_id) > (old.not_after_ms, old.key_id):
            best[key] = rec
    targets: list[DeviceTarget] = []
    unreachable: list[tuple[int, str]] = []
    for entry in device_list.entries:
        if entry.device_id in exclude:
            continue
        common = [s for s in preferred_suites if s in entry.suites]
        chosen = next(
            (best[(entry.device_id, s)] for s in common if (entry.device_id, s) in best), None
        )
        if chosen is not None:
            targets.append(DeviceTarget(entry, chosen))
        elif not common:
            unreachable.append((entry.device_id, "no common suite"))
        else:
            unreachable.append((entry.device_id, "no valid signed prekey"))
    return DeviceSelection(tuple(targets), tuple(unreachable))


# -- building and signing --------------------------------------------------------------------


def _sign(
    suite: int,
    record_type: int,
    body: bytes,
    signers: Sequence[tuple[int, DeviceKey | UserIdentityKey]],
) -> bytes:
    sigs = [
        (kind, key.fp, key.sign_labelled(wire.record_sign_message(suite, record_type, kind, body)))
        for kind, key in signers
    ]
    return wire.build_record(suite, record_type, body, sigs)


def sign_identity_record(
    uik: UserIdentityKey, user_id: str, created_ms: int, prev_fp: bytes = ZERO_HASH
) -> bytes:
    """Return an IdentityRec for ``uik``, signed by it.

    ``prev_fp`` is the FP of the user's previous identity (zero for the first). A SERVER or ORG
    signature is added with :func:`countersign`.
    """
    pub = uik.public
    body = wire.identity_body(user_id, pub.suite, pub.ed25519_pk, pub.mldsa_pk, created_ms, prev_fp)
    return _sign(pub.suite, RECORD_IDENTITY, body, [(SIGNER_UIK, uik)])


def sign_device_list(
    uik: UserIdentityKey,
    user_id: str,
    version: int,
    prev_hash: bytes,
    issued_ms: int,
    entries: Sequence[DeviceEntry],
) -> bytes:
    """Return a DeviceList signed by the UIK (the record suite is the UIK's suite).

    For the next list of a chain use ``version = previous.version + 1`` and
    ``prev_hash = previous.list_hash``; the first list is version 1 with :data:`ZERO_HASH`.
    """
    body = wire.device_list_body(user_id, version, prev_hash, issued_ms, entries)
    return _sign(uik.suite, RECORD_DEVICE_LIST, body, [(SIGNER_UIK, uik)])


def sign_prekey(
    dk: DeviceKey,
    user_id: str,
    device_id: int,
    suite: int,
    kind: int,
    key_id: int,
    pub: bytes,
    not_after_ms: int,
) -> bytes:
    """Return a Prekey record (SPK or OTPK public key ``pub`` of ``suite``) signed by the DK."""
    body = wire.prekey_body(user_id, device_id, suite, kind, key_id, pub, not_after_ms)
    return _sign(suite, RECORD_PREKEY, body, [(SIGNER_DK, dk)])


def countersign(record: bytes, signer_kind: int, key: UserIdentityKey) -> bytes:
    """Return ``record`` with one more SigEntry by ``key`` as ``signer_kind`` (e.g. ORG on an
    IdentityRec). The existing signatures are kept as they are; nothing is verified."""
    env = _open(record, None, allow_test_suites=True)
    msg = wire.record_sign_message(env.suite, env.record_type, signer_kind, env.body)
    sigs = [*env.sigs, (signer_kind, key.fp, key.sign_labelled(msg))]
    return wire.build_record(env.suite, env.record_type, env.body, sigs)
