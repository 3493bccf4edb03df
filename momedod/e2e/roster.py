"""Conversation rosters and the organisation key: encode, parse, sign, verify, diff.

Layouts (docs/E2E.md, "Conversations: rosters and organisation key")::

    Roster       = u8[16] conv_id | u64 epoch | u8[32] prev_hash | u8 kind | u8 mode
                   | u16 min_suite | list<Member> | bytes title
    Member       = u8[8] user_id | u8 role             ; strictly ascending user_id
    RosterRecord = Header(type 0x12 ROSTER, suite) | bytes roster | u8 signer_kind
                   | Addr signer | bytes sig
    sig          = Sign(k, "roster", Header | bytes roster | u8 signer_kind | Addr signer)
    prev_hash    = SHA-256(Label("roster-hash") | previous roster bytes)   (zero for epoch 1)

    OrgKeyRecord = Header(type 0x13 ORG_KEY, suite of org_pub) | u32 version
                   | bytes org_pub (UIKPub) | u8[32] prev_fp | bytes sig_prev
    sig_prev     = Sign(previous org key, "org-key",
                        Header | u32 version | bytes org_pub | u8[32] prev_fp)

``signer_kind`` 1 ORG: the HybridSig of the organisation key, ``signer`` 12 zero bytes, the
Header suite is the org key's suite. ``signer_kind`` 2 DEVICE: Ed25519 of an admin's device
key, ``signer`` that device (Header suite 0x0002 unless the caller picks another).

Parsing here is structural (the server uses :func:`parse_roster_record` to learn membership);
signatures are checked by :func:`verify_roster_signature` and the chain rules by
:func:`check_roster_successor`, because only the caller knows which keys to trust. Every
failure raises :class:`~momedod.e2e.errors.E2EError`; rosters are public to their members, so
the message says what is wrong. Everything is pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from momedod.protocol.encoding import MAX_U16, MAX_U32, USER_ID_LEN, Reader, Writer, label
from momedod.protocol.errors import ProtocolError

from .envelope import ADDR_LEN, Addr, EnvelopeType, header, read_header
from .errors import E2EError
from .identity import (
    ED25519_SIG_LEN,
    FP_LEN,
    HYBRID_SUITES,
    DeviceKey,
    HybridPublicKey,
    UserIdentityKey,
    split_hybrid_sig,
    verify_device_signature,
)
from .suites import ALL_SUITES, SUITE_XWING

__all__ = [
    "CONV_ID_LEN",
    "KIND_CHANNEL",
    "KIND_GROUP",
    "MAX_MEMBERS",
    "MAX_TITLE",
    "MODE_CHAINS",
    "MODE_MULTI",
    "ORG_KEY_LABEL",
    "ROLE_ADMIN",
    "ROLE_MEMBER",
    "ROSTER_HASH_LABEL",
    "ROSTER_LABEL",
    "SIGNER_DEVICE",
    "SIGNER_ORG",
    "ZERO_HASH",
    "OrgKeyRecord",
    "Roster",
    "RosterRecord",
    "check_roster_successor",
    "current_org_key",
    "make_org_key_record",
    "parse_org_key_record",
    "parse_roster_record",
    "roster_changes",
    "roster_hash",
    "sign_roster_device",
    "sign_roster_org",
    "verify_roster_signature",
]

ROLE_MEMBER: Final = 0
"""Role of an ordinary member."""
ROLE_ADMIN: Final = 1
"""Role of an admin: may change the roster, and is the only one who posts to a channel."""
KIND_GROUP: Final = 1
"""A group: every member posts."""
KIND_CHANNEL: Final = 2
"""A channel: only admins post."""
MODE_CHAINS: Final = 1
"""E2E mode: per-sender symmetric chains (the default)."""
MODE_MULTI: Final = 2
"""E2E mode: per-message CEK wrapped for every device (Multi envelopes)."""
SIGNER_ORG: Final = 1
"""RosterRecord signed by the organisation key."""
SIGNER_DEVICE: Final = 2
"""RosterRecord signed by an admin's device key."""
MAX_TITLE: Final = 256
"""Longest title, in UTF-8 bytes."""
MAX_MEMBERS: Final = MAX_U16
"""Most members a roster may list on the wire (the server's max_group_size is lower)."""
CONV_ID_LEN: Final = 16
"""Length of a conv_id."""
ZERO_HASH: Final = bytes(32)
"""``prev_hash`` of the first roster (epoch 1) and ``prev_fp`` of org key version 1."""

ROSTER_LABEL: Final = "roster"
"""Signature label of a RosterRecord."""
ORG_KEY_LABEL: Final = "org-key"
"""Signature label of ``sig_prev`` in an OrgKeyRecord."""
ROSTER_HASH_LABEL: Final = label("roster-hash")
"""Prefix of the hashed bytes in :func:`roster_hash`."""

_ROLES = frozenset({ROLE_MEMBER, ROLE_ADMIN})
_KINDS = frozenset({KIND_GROUP, KIND_CHANNEL})
_MODES = frozenset({MODE_CHAINS, MODE_MULTI})
_SIGNERS = frozenset({SIGNER_ORG, SIGNER_DEVICE})
_MEMBER_LEN = USER_ID_LEN + 1
_MAX_ROSTER = 16 + 8 + 32 + 1 + 1 + 2 + 4 + MAX_MEMBERS * _MEMBER_LEN + 4 + MAX_TITLE
_MAX_SIG = 8192  # a HybridSig of suite 3 is 4,699 bytes
_MAX_UIK_PUB = 4096  # UIKPub of suite 3 is 2,634 bytes
_NO_SIGNER = bytes(ADDR_LEN)


def _fail(reason: str, detail: str) -> E2EError:
    return E2EError(f"invalid {reason.replace('_', ' ')}: {detail}", reason=reason)


def roster_hash(roster_bytes: bytes) -> bytes:
    """``SHA-256(Label("roster-hash") | roster_bytes)``: the next roster's ``prev_hash``."""
    return hashlib.sha256(ROSTER_HASH_LABEL + roster_bytes).digest()


# -- the roster ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Roster:
    """One version (``epoch``) of a conversation's membership, title and E2E settings.

    The constructor checks every field and raises ValueError on a bad one (members must be
    strictly ascending by user_id); :meth:`decode` raises E2EError(reason="roster") instead.
    """

    conv_id: bytes
    epoch: int
    prev_hash: bytes
    kind: int
    mode: int
    min_suite: int
    members: tuple[tuple[str, int], ...]
    title: str
    _roles: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.conv_id) != CONV_ID_LEN:
            raise ValueError(f"conv_id must be {CONV_ID_LEN} bytes")
        if not 1 <= self.epoch <= 0xFFFF_FFFF_FFFF_FFFF:
            raise ValueError(f"epoch must be >= 1, got {self.epoch}")
        if len(self.prev_hash) != 32:
            raise ValueError("prev_hash must be 32 bytes")
        if self.kind not in _KINDS:
            raise ValueError(f"unknown kind {self.kind}")
        if self.mode not in _MODES:
            raise ValueError(f"unknown mode {self.mode}")
        if self.min_suite not in ALL_SUITES:
            raise ValueError(f"unknown min_suite 0x{self.min_suite:04x}")
        if not isinstance(self.members, tuple):
            raise ValueError("members must be a tuple of (user_id, role)")
        if len(self.members) > MAX_MEMBERS:
            raise ValueError(f"at most {MAX_MEMBERS} members")
        w = Writer()
        previous = ""
        for user_id, role in self.members:
            w.user_id(user_id)  # validates the alphabet and length
            if role not in _ROLES:
                raise ValueError(f"unknown role {role} for {user_id}")
            if user_id <= previous:
                raise ValueError("members must be strictly ascending by user_id")
            previous = user_id
        if len(self.title.encode("utf-8")) > MAX_TITLE:
            raise ValueError(f"title is longer than {MAX_TITLE} bytes")
        object.__setattr__(self, "_roles", dict(self.members))

    @classmethod
    def first(
        cls,
        conv_id: bytes,
        kind: int,
        members: Iterable[tuple[str, int]] | Mapping[str, int],
        title: str = "",
        *,
        mode: int = MODE_CHAINS,
        min_suite: int = SUITE_XWING,
    ) -> Roster:
        """The epoch-1 roster of a new conversation (``prev_hash`` zero, members sorted)."""
        return cls(conv_id, 1, ZERO_HASH, kind, mode, min_suite, _sorted(members), title)

    def encode(self) -> bytes:
        """The Roster bytes (the ``roster`` field of a RosterRecord)."""
        w = Writer().fixed(self.conv_id, CONV_ID_LEN).u64(self.epoch).fixed(self.prev_hash, 32)
        w.u8(self.kind).u8(self.mode).u16(self.min_suite)
        w.list_(self.members, lambda w, m: w.user_id(m[0]).u8(m[1]))
        return w.string(self.title, MAX_TITLE).getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Roster:
        """Parse Roster bytes strictly; E2EError(reason="roster") if malformed.

        Rejects truncation, trailing bytes, unknown kind/mode/role/suite, epoch 0, members
        not strictly ascending (so no duplicates), more than 65,535 members, and a title over
        256 bytes or not UTF-8.
        """
        try:
            r = Reader(data)
            conv_id = r.fixed(CONV_ID_LEN, "conv_id")
            epoch = r.u64("epoch")
            prev_hash = r.fixed(32, "prev_hash")
            kind, mode, min_suite = r.u8("kind"), r.u8("mode"), r.u16("min_suite")
            n = r.count(MAX_MEMBERS, _MEMBER_LEN, "members")
            members = tuple((r.user_id("member"), r.u8("role")) for _ in range(n))
            title = r.string(MAX_TITLE, "title")
            r.finish("Roster")
            return cls(conv_id, epoch, prev_hash, kind, mode, min_suite, members, title)
        except ProtocolError as exc:
            raise _fail("roster", exc.message) from None
        except ValueError as exc:
            raise _fail("roster", str(exc)) from None

    def role_of(self, user_id: str) -> int | None:
        """The role of ``user_id``, or None if it is not a member."""
        return self._roles.get(user_id)

    def user_ids(self) -> frozenset[str]:
        """Every member's user_id."""
        return frozenset(self._roles)

    def admins(self) -> frozenset[str]:
        """The user_ids of the admins."""
        return frozenset(u for u, role in self.members if role == ROLE_ADMIN)

    @property
    def hash(self) -> bytes:
        """:func:`roster_hash` of this roster: the successor's ``prev_hash``."""
        return roster_hash(self.encode())

    def next(
        self,
        *,
        members: Iterable[tuple[str, int]] | Mapping[str, int] | None = None,
        title: str | None = None,
        mode: int | None = None,
        min_suite: int | None = None,
    ) -> Roster:
        """The successor roster: epoch + 1, ``prev_hash`` = the hash of this one, the given
        fields replaced (members are sorted here), everything else kept."""
        return Roster(
            self.conv_id,
            self.epoch + 1,
            self.hash,
            self.kind,
            self.mode if mode is None else mode,
            self.min_suite if min_suite is None else min_suite,
            self.members if members is None else _sorted(members),
            self.title if title is None else title,
        )


def _sorted(
    members: Iterable[tuple[str, int]] | Mapping[str, int],
) -> tuple[tuple[str, int], ...]:
    items = members.items() if isinstance(members, Mapping) else members
    return tuple(sorted((str(u), int(role)) for u, role in items))


# -- the signed record -----------------------------------------------------------------------


@dataclass(frozen=True)
class RosterRecord:
    """A parsed RosterRecord (structure only; the signature is not checked by parsing).

    ``signer`` is None for an ORG signature (12 zero bytes on the wire).
    """

    suite: int
    roster: Roster
    roster_bytes: bytes = field(repr=False)
    signer_kind: int
    signer: Addr | None
    sig: bytes = field(repr=False)

    def signed_part(self) -> bytes:
        """``Header | bytes roster | u8 signer_kind | Addr signer``: what ``sig`` covers
        (after the ``Label("roster")``)."""
        return _signed_part(self.suite, self.roster_bytes, self.signer_kind, self.signer)

    def encode(self) -> bytes:
        """The RosterRecord bytes."""
        return Writer().bytes_(self.sig, _MAX_SIG).getvalue(self.signed_part())

    @property
    def hash(self) -> bytes:
        """:func:`roster_hash` of the roster: the next roster's ``prev_hash``."""
        return roster_hash(self.roster_bytes)


def _signed_part(suite: int, roster_bytes: bytes, signer_kind: int, signer: Addr | None) -> bytes:
    w = Writer().bytes_(roster_bytes).u8(signer_kind)
    w.raw(_NO_SIGNER if signer is None else signer.encode())
    return w.getvalue(header(EnvelopeType.ROSTER, suite))


def parse_roster_record(data: bytes, *, allow_test_suites: bool = False) -> RosterRecord:
    """Parse a RosterRecord strictly (no signature check); E2EError(reason="roster") if bad.

    Checks the Header (type 0x12, a known hybrid suite; 0x0001 only with
    ``allow_test_suites``), the Roster (:meth:`Roster.decode`), the signer kind, that an ORG
    record has an all-zero signer and a HybridSig of the Header suite's shape, and that a
    DEVICE record has a real device address and a 64-byte signature.
    """
    try:
        r = Reader(data)
        try:
            suite = read_header(r, EnvelopeType.ROSTER, allow_test_suites=allow_test_suites).id
        except E2EError as exc:
            raise _fail("roster", f"bad header ({exc.reason})") from None
        if suite not in HYBRID_SUITES:
            raise _fail("roster", f"suite 0x{suite:04x} cannot sign rosters")
        roster_bytes = r.bytes_(_MAX_ROSTER, "roster")
        roster = Roster.decode(roster_bytes)
        signer_kind = r.u8("signer_kind")
        signer_raw = r.fixed(ADDR_LEN, "signer")
        sig = r.bytes_(_MAX_SIG, "sig")
        r.finish("RosterRecord")
    except ProtocolError as exc:
        raise _fail("roster", exc.message) from None
    signer: Addr | None = None
    if signer_kind == SIGNER_ORG:
        if signer_raw != _NO_SIGNER:
            raise _fail("roster", "an ORG roster has an all-zero signer")
        try:
            split_hybrid_sig(sig, suite)
        except E2EError:
            raise _fail("roster", "sig is not a HybridSig of the suite") from None
    elif signer_kind == SIGNER_DEVICE:
        try:
            signer = Addr.read(Reader(signer_raw), "signer")
        except (ProtocolError, E2EError):
            raise _fail("roster", "signer is not a device address") from None
        if len(sig) != ED25519_SIG_LEN:
            raise _fail("roster", "a DEVICE signature is 64 bytes")
    else:
        raise _fail("roster", f"unknown signer_kind {signer_kind}")
    return RosterRecord(suite, roster, roster_bytes, signer_kind, signer, sig)


def sign_roster_org(roster: Roster, org_key: UserIdentityKey) -> bytes:
    """Return the RosterRecord of ``roster`` signed by the organisation key (its suite)."""
    roster_bytes = roster.encode()
    signed = _signed_part(org_key.suite, roster_bytes, SIGNER_ORG, None)
    sig = org_key.sign(ROSTER_LABEL, signed)
    return RosterRecord(org_key.suite, roster, roster_bytes, SIGNER_ORG, None, sig).encode()


def sign_roster_device(
    roster: Roster, signer: Addr, dk: DeviceKey, *, suite: int = SUITE_XWING
) -> bytes:
    """Return the RosterRecord of ``roster`` signed by the device key of ``signer``.

    The caller must be an admin (of the previous roster, or of this one at epoch 1); this is
    not checked here (see :func:`check_roster_successor`).
    """
    if suite not in HYBRID_SUITES:
        raise ValueError(f"unsupported suite 0x{suite:04x}")
    roster_bytes = roster.encode()
    sig = dk.sign(ROSTER_LABEL, _signed_part(suite, roster_bytes, SIGNER_DEVICE, signer))
    return RosterRecord(suite, roster, roster_bytes, SIGNER_DEVICE, signer, sig).encode()


def verify_roster_signature(
    rec: RosterRecord,
    *,
    org_key: HybridPublicKey | None = None,
    device_dk_public: bytes | None = None,
    allow_test_suites: bool = False,
) -> bool:
    """Check the signature of a parsed RosterRecord.

    An ORG record needs ``org_key`` (the pinned organisation key; its suite must be the
    record's), a DEVICE record ``device_dk_public`` (the DK of ``rec.signer`` from its user's
    verified device list). Returns False if the matching key is not given or does not verify.
    """
    if rec.signer_kind == SIGNER_ORG:
        if org_key is None or org_key.suite != rec.suite or rec.signer is not None:
            return False
        return org_key.verify(
            ROSTER_LABEL, rec.signed_part(), rec.sig, allow_test_suites=allow_test_suites
        )
    if rec.signer_kind == SIGNER_DEVICE:
        if device_dk_public is None or rec.signer is None:
            return False
        return verify_device_signature(device_dk_public, ROSTER_LABEL, rec.signed_part(), rec.sig)
    return False


def check_roster_successor(prev: Roster | None, rec: RosterRecord) -> None:
    """Check that ``rec`` may follow ``prev`` (None: ``rec`` must be the first roster).

    Raises E2EError with reason ``"conv_id"`` (another conversation), ``"epoch"`` (not
    prev.epoch + 1, or not 1 without ``prev``), ``"prev_hash"`` (not the hash of ``prev``, or
    not zero at epoch 1), ``"kind"`` (changed) or ``"signer"`` (a DEVICE signer whose user is
    not an ADMIN of ``prev`` -- at epoch 1, of the roster itself). The signature is checked
    separately (:func:`verify_roster_signature`), as is "the signer of epoch 1 is the
    creator" and "the signer's device is on its user's verified device list".
    """
    new = rec.roster
    if prev is None:
        if new.epoch != 1:
            raise _fail("epoch", f"the first roster has epoch 1, not {new.epoch}")
        if new.prev_hash != ZERO_HASH:
            raise _fail("prev_hash", "the first roster has a zero prev_hash")
        authority = new
    else:
        if new.conv_id != prev.conv_id:
            raise _fail("conv_id", "the roster is for another conversation")
        if new.epoch != prev.epoch + 1:
            raise _fail("epoch", f"expected epoch {prev.epoch + 1}, got {new.epoch}")
        if new.prev_hash != prev.hash:
            raise _fail("prev_hash", "prev_hash is not the hash of the previous roster")
        if new.kind != prev.kind:
            raise _fail("kind", "the kind of a conversation never changes")
        authority = prev
    if rec.signer_kind == SIGNER_DEVICE and (
        rec.signer is None or authority.role_of(rec.signer.user_id) != ROLE_ADMIN
    ):
        raise _fail("signer", "the signing device's user is not an admin")


def roster_changes(old: Roster | None, new: Roster) -> list[tuple[str, str]]:
    """What changed from ``old`` to ``new``, for notices.

    Returns ``("added" | "removed" | "admin" | "unadmin", user_id)`` in user_id order (a
    user added as admin gives ``("added", u)`` then ``("admin", u)``; a removed admin only
    ``("removed", u)``), then ``("title", new.title)`` if the title changed. With ``old``
    None every member is added and a non-empty title counts as changed.
    """
    old_roles: dict[str, int] = dict(old.members) if old is not None else {}
    new_roles = dict(new.members)
    out: list[tuple[str, str]] = []
    for user_id in sorted(old_roles.keys() | new_roles.keys()):
        before, after = old_roles.get(user_id), new_roles.get(user_id)
        if before is None:
            out.append(("added", user_id))
            if after == ROLE_ADMIN:
                out.append(("admin", user_id))
        elif after is None:
            out.append(("removed", user_id))
        elif before != after:
            out.append(("admin" if after == ROLE_ADMIN else "unadmin", user_id))
    if new.title != (old.title if old is not None else ""):
        out.append(("title", new.title))
    return out


# -- the organisation key --------------------------------------------------------------------


@dataclass(frozen=True)
class OrgKeyRecord:
    """A parsed OrgKeyRecord (structure only; :func:`current_org_key` verifies the chain)."""

    version: int
    org_pub: HybridPublicKey
    prev_fp: bytes
    sig_prev: bytes = field(repr=False)

    @property
    def fp(self) -> bytes:
        """The fingerprint of ``org_pub``."""
        return self.org_pub.fp

    def signed_part(self) -> bytes:
        """``Header | u32 version | bytes org_pub | u8[32] prev_fp``: what ``sig_prev`` covers
        (after the ``Label("org-key")``)."""
        w = Writer().u32(self.version).bytes_(self.org_pub.encode()).fixed(self.prev_fp, FP_LEN)
        return w.getvalue(header(EnvelopeType.ORG_KEY, self.org_pub.suite))

    def encode(self) -> bytes:
        """The OrgKeyRecord bytes."""
        return Writer().bytes_(self.sig_prev, _MAX_SIG).getvalue(self.signed_part())


def make_org_key_record(version: int, key: UserIdentityKey, prev: UserIdentityKey | None) -> bytes:
    """Return OrgKeyRecord ``version`` for ``key``; ``prev`` is the key of version - 1 (which
    signs it), None for version 1."""
    if not 1 <= version <= MAX_U32:
        raise ValueError(f"version must be 1..{MAX_U32}, got {version}")
    if (version == 1) != (prev is None):
        raise ValueError("version 1 has no previous key; every later version needs one")
    prev_fp = ZERO_HASH if prev is None else prev.fp
    unsigned = OrgKeyRecord(version, key.public, prev_fp, b"")
    if prev is None:
        return unsigned.encode()
    sig = prev.sign(ORG_KEY_LABEL, unsigned.signed_part())
    return OrgKeyRecord(version, key.public, prev_fp, sig).encode()


def parse_org_key_record(data: bytes, *, allow_test_suites: bool = False) -> OrgKeyRecord:
    """Parse an OrgKeyRecord strictly (no signature check); E2EError(reason="org_key") if bad.

    Version 1 must have a zero ``prev_fp`` and an empty ``sig_prev``; later versions a
    non-zero ``prev_fp`` and a non-empty ``sig_prev``. The Header suite is ``org_pub``'s.
    """
    try:
        r = Reader(data)
        try:
            suite = read_header(r, EnvelopeType.ORG_KEY, allow_test_suites=allow_test_suites).id
        except E2EError as exc:
            raise _fail("org_key", f"bad header ({exc.reason})") from None
        version = r.u32("version")
        pub_bytes = r.bytes_(_MAX_UIK_PUB, "org_pub")
        prev_fp = r.fixed(FP_LEN, "prev_fp")
        sig_prev = r.bytes_(_MAX_SIG, "sig_prev")
        r.finish("OrgKeyRecord")
    except ProtocolError as exc:
        raise _fail("org_key", exc.message) from None
    try:
        org_pub = HybridPublicKey.parse(pub_bytes, allow_test_suites=allow_test_suites)
    except E2EError as exc:
        raise _fail("org_key", f"org_pub: {exc.reason}") from None
    if org_pub.suite != suite:
        raise _fail("org_key", "the Header suite is not the key's suite")
    if version == 0:
        raise _fail("org_key", "versions start at 1")
    if version == 1 and (prev_fp != ZERO_HASH or sig_prev):
        raise _fail("org_key", "version 1 has a zero prev_fp and no sig_prev")
    if version > 1 and (prev_fp == ZERO_HASH or not sig_prev):
        raise _fail("org_key", f"version {version} needs prev_fp and sig_prev")
    return OrgKeyRecord(version, org_pub, prev_fp, sig_prev)


def current_org_key(
    records: Sequence[bytes], pinned_fp: bytes | None, *, allow_test_suites: bool = False
) -> HybridPublicKey:
    """Verify a chain of OrgKeyRecords and return the newest key.

    ``records`` are all records in ascending version, starting at version 1: each version is
    the previous + 1, its ``prev_fp`` the previous key's fingerprint and its ``sig_prev`` a
    valid signature of the previous key; no key appears twice. If ``pinned_fp`` is given it
    must be the fingerprint of one key of the chain (a client accepts a newer key only
    through an unbroken chain from the one it pinned). Raises E2EError(reason="org_key").
    """
    if not records:
        raise _fail("org_key", "no organisation key")
    chain = [parse_org_key_record(b, allow_test_suites=allow_test_suites) for b in records]
    seen: set[bytes] = set()
    for i, rec in enumerate(chain):
        if rec.version != i + 1:
            raise _fail("org_key", f"expected version {i + 1}, got {rec.version}")
        if rec.fp in seen:
            raise _fail("org_key", "a key appears twice in the chain")
        seen.add(rec.fp)
        if i == 0:
            continue
        prev = chain[i - 1].org_pub
        if rec.prev_fp != prev.fp:
            raise _fail("org_key", f"version {rec.version}: prev_fp is not the previous key")
        if not prev.verify(
            ORG_KEY_LABEL, rec.signed_part(), rec.sig_prev, allow_test_suites=allow_test_suites
        ):
            raise _fail("org_key", f"version {rec.version}: bad signature of the previous key")
    if pinned_fp is not None and pinned_fp not in seen:
        raise _fail("org_key", "the pinned organisation key is not in the chain")
    return chain[-1].org_pub
