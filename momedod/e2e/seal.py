"""Seal: one device to one device (docs/E2E.md, "Seal").

Theory of operation. A Seal is HPKE (RFC 9180, base mode, single shot) to one prekey of the
recipient device, with a payload signed by the sender's device key (DK, Ed25519)::

    Seal        = Header(type 0x01) | u8 key_kind (1 SPK, 2 OTPK, 3 LINK) | u32 key_id
                  | bytes hpke_ct
    hpke_ct     = HPKE.Seal(pk = prekey, info, aad = empty, pt = SealPayload)   ; enc || ct
    info        = Label("seal") | Header | u8 key_kind | u32 key_id | Addr recipient
    SealPayload = Addr sender | Addr recipient | u64 ts_ms | u8[16] msg_id | u16 content_type
                  | bytes content | bytes padding | bytes sig
    sig         = Ed25519(DK_sender, Label("seal") | Header | u8 key_kind | u32 key_id
                                     | SealPayload up to and including the padding field)

pyca's single-shot HPKE has no AAD parameter, so everything the envelope must bind goes into
``info`` (RFC 9180 section 8.1): the suite (in the Header), the prekey, and the recipient.
Key kind 3 (LINK) is the one-off link key of a device being linked (docs/E2E.md, "Device
linking"); it is accepted only by an opener that asks for it (``key_kinds``), so an ordinary
receiver still rejects it with ``key_kind``. ``padding`` is zero bytes that make the whole
SealPayload (sig field included) a multiple of 256 bytes. ``sig`` is exactly 64 bytes.

Opening checks, in order, each failing with E2EError("cannot open envelope", reason=...):
Header magic/version/type and a known suite (``header``, ``suite``); strict framing with no
trailing bytes (``malformed``); key_kind 1 or 2 (``key_kind``); a private key for (suite,
kind, id) that belongs to that suite (``unknown_key``, ``key_suite``); HPKE decryption with
the ``info`` rebuilt for *our own* address (``decrypt``); a payload length that is a multiple
of 256 (``padding``) and parses strictly (``malformed``); ``recipient`` is us (``recipient``);
the padding is all zero (``padding``); a known content type (``content_type``); a known
sender device key (``unknown_sender``); a valid signature (``signature``).

Replay protection is separate (:class:`SealReplayGuard`), because the caller decides when a
message counts as processed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from momedod.protocol.encoding import MAX_U32, Reader, Writer, label
from momedod.protocol.errors import ProtocolError
from momedod.protocol.records import PREKEY_OTPK, PREKEY_SPK

from .envelope import ADDR_LEN, HEADER_LEN, Addr, EnvelopeType, header, read_header
from .envelope import is_known_content_type as _known_content
from .errors import E2EError
from .padding import BUCKET, is_zero, padding_for
from .suites import KemPrivateKey, Suite, kem_public_from_bytes, require_allowed

__all__ = [
    "DAY_MS",
    "KEY_KIND_LINK",
    "MSG_ID_LEN",
    "SEAL_LABEL",
    "SIG_LEN",
    "OpenedSeal",
    "SealReplayGuard",
    "open_seal",
    "seal",
]

SEAL_LABEL = label("seal")
"""Label("seal"): the HPKE info prefix and the signature context of a Seal."""
MSG_ID_LEN = 16
"""Length of a msg_id."""
SIG_LEN = 64
"""Length of an Ed25519 signature."""

_PREFIX_LEN = HEADER_LEN + 1 + 4  # Header | u8 key_kind | u32 key_id
_SIG_TAIL = 4 + SIG_LEN  # the encoded ``bytes sig`` field
_KEY_KINDS = (PREKEY_SPK, PREKEY_OTPK)
KEY_KIND_LINK = 3
"""key_kind of a Seal to the one-off link key LK of a device being linked."""
_ALL_KEY_KINDS = (PREKEY_SPK, PREKEY_OTPK, KEY_KIND_LINK)

DAY_MS = 86_400_000
"""One day in milliseconds."""


@dataclass(frozen=True)
class OpenedSeal:
    """The verified contents of a Seal."""

    sender: Addr
    recipient: Addr
    ts_ms: int
    msg_id: bytes
    content_type: int
    content: bytes
    key_kind: int
    key_id: int
    suite: int


def _fail(reason: str) -> E2EError:
    return E2EError(reason=reason)


def seal(
    suite: Suite,
    sender: Addr,
    sender_dk: Ed25519PrivateKey,
    recipient: Addr,
    key_kind: int,
    key_id: int,
    recipient_kem_public: bytes,
    ts_ms: int,
    msg_id: bytes,
    content_type: int,
    content: bytes,
    *,
    allow_test_suites: bool = False,
) -> bytes:
    """Build a Seal from ``sender`` to the prekey (``key_kind``, ``key_id``) of ``recipient``.

    ``recipient_kem_public`` is the serialised prekey public key of ``suite`` (from the
    recipient's DK-signed Prekey record). Raises ValueError on arguments out of range and
    E2EError(reason="kem_public") if the prekey is not a valid key of the suite.
    """
    require_allowed(suite, allow_test_suites)
    if key_kind not in _ALL_KEY_KINDS:
        raise ValueError(f"key_kind must be 1 (SPK), 2 (OTPK) or 3 (LINK), got {key_kind}")
    if len(msg_id) != MSG_ID_LEN:
        raise ValueError(f"msg_id must be {MSG_ID_LEN} bytes")
    if not _known_content(content_type):
        raise ValueError(f"unknown content_type {content_type}")
    public = kem_public_from_bytes(suite, recipient_kem_public)
    prefix = Writer().u8(key_kind).u32(key_id).getvalue(header(EnvelopeType.SEAL, suite.id))
    w = Writer()
    sender.write(w)
    recipient.write(w)
    w.u64(ts_ms).fixed(msg_id, MSG_ID_LEN).u16(content_type).bytes_(content)
    pad = padding_for(len(w) + 4 + _SIG_TAIL)
    w.bytes_(bytes(pad))
    signed = w.getvalue()
    sig = sender_dk.sign(SEAL_LABEL + prefix + signed)
    payload = Writer().bytes_(sig).getvalue(signed)
    info = SEAL_LABEL + prefix + recipient.encode()
    hpke_ct = suite.hpke.encrypt(payload, public, info)
    return Writer().bytes_(hpke_ct).getvalue(prefix)


def open_seal(
    data: bytes,
    me: Addr,
    my_kem_private_for: Callable[[int, int, int], KemPrivateKey | None],
    sender_dk_public_for: Callable[[Addr], bytes | None],
    *,
    allow_test_suites: bool = False,
    key_kinds: tuple[int, ...] = _KEY_KINDS,
) -> OpenedSeal:
    """Open and verify a Seal addressed to ``me``.

    ``my_kem_private_for(suite_id, key_kind, key_id)`` returns our private prekey object or
    None; ``sender_dk_public_for(sender)`` returns the raw Ed25519 public key (32 bytes) of the
    sender's device from its verified device list, or None if the device is not on it.
    Any failure raises E2EError("cannot open envelope"); ``reason`` says which check failed.
    The caller then applies :class:`SealReplayGuard` and deletes a used OTPK.
    ``key_kinds`` are the accepted key kinds (default SPK and OTPK; a device being linked
    passes ``(KEY_KIND_LINK,)``).
    """
    r = Reader(data)
    suite = read_header(r, EnvelopeType.SEAL, allow_test_suites=allow_test_suites)
    try:
        key_kind = r.u8("key_kind")
        key_id = r.u32("key_id")
        hpke_ct = r.bytes_(MAX_U32, "hpke_ct")
        r.finish("seal")
    except ProtocolError:
        raise _fail("malformed") from None
    if key_kind not in key_kinds or key_kind not in _ALL_KEY_KINDS:
        raise _fail("key_kind")
    if len(hpke_ct) < suite.enc_size + suite.tag_size + BUCKET:
        raise _fail("malformed")
    private = my_kem_private_for(suite.id, key_kind, key_id)
    if private is None:
        raise _fail("unknown_key")
    if not suite.owns(private):
        raise _fail("key_suite")
    prefix = bytes(data[:_PREFIX_LEN])
    try:
        payload = suite.hpke.decrypt(hpke_ct, private, SEAL_LABEL + prefix + me.encode())
    except (InvalidTag, ValueError):
        raise _fail("decrypt") from None
    if len(payload) % BUCKET:
        raise _fail("padding")
    try:
        p = Reader(payload)
        sender = Addr.read(p, "sender")
        recipient = Addr.read(p, "recipient")
        ts_ms = p.u64("ts_ms")
        msg_id = p.fixed(MSG_ID_LEN, "msg_id")
        content_type = p.u16("content_type")
        content = p.bytes_(MAX_U32, "content")
        padding = p.bytes_(MAX_U32, "padding")
        sig = p.bytes_(SIG_LEN, "sig")
        p.finish("payload")
    except ProtocolError:
        raise _fail("malformed") from None
    if len(sig) != SIG_LEN:
        raise _fail("malformed")
    if recipient != me:
        raise _fail("recipient")
    if not is_zero(padding):
        raise _fail("padding")
    if not _known_content(content_type):
        raise _fail("content_type")
    dk = sender_dk_public_for(sender)
    if dk is None:
        raise _fail("unknown_sender")
    try:
        Ed25519PublicKey.from_public_bytes(dk).verify(
            sig, SEAL_LABEL + prefix + payload[:-_SIG_TAIL]
        )
    except (InvalidSignature, ValueError):
        raise _fail("signature") from None
    return OpenedSeal(
        sender, recipient, ts_ms, msg_id, content_type, content, key_kind, key_id, suite.id
    )


class SealReplayGuard:
    """Seal replay rules (docs/E2E.md, "Replay"): a pure, serialisable cache.

    * ``ts_ms`` older than 30 days or more than 24 h in the future is rejected (``stale``,
      ``future``);
    * a ``msg_id`` already accepted from the same sender device is rejected (``replay``);
      accepted ids are remembered for 35 days after they were accepted.

    35 > 30 + 1 days: a replayed Seal was accepted at ``r >= ts - 24 h``, so by the time its
    id is forgotten (``r + 35 d``) its ``ts`` is more than 30 days old and the age rule rejects
    it. Persist :meth:`to_bytes` with the message store so duplicates are dropped after a
    restart too.

    Clock jumps: forgetting is driven by ``now_ms``, so a clock that ran far ahead (pruning at
    the future time) and was then set back would re-open the forgotten ids to replay. The guard
    therefore keeps a floor: when it forgets ids accepted before ``cutoff``, any replay of one
    of them carries ``ts < cutoff + 24 h``, and such a ``ts`` is rejected as ``stale`` from then
    on. With a steady clock the floor is 34 days in the past and never matters; after a jump
    back it rejects messages older than the (future) forget point until real time passes it.
    """

    MAX_AGE_MS = 30 * DAY_MS
    MAX_FUTURE_MS = DAY_MS
    REMEMBER_MS = 35 * DAY_MS
    _VERSION = 2

    def __init__(self) -> None:
        self._seen: dict[Addr, dict[bytes, int]] = {}
        self._floor_ms = 0  # reject ts_ms below this: ids that old may have been forgotten

    def __len__(self) -> int:
        """Number of remembered msg_ids."""
        return sum(len(ids) for ids in self._seen.values())

    def check(self, sender: Addr, msg_id: bytes, ts_ms: int, now_ms: int) -> None:
        """Raise E2EError if the message must be dropped; change nothing."""
        if ts_ms < now_ms - self.MAX_AGE_MS or ts_ms < self._floor_ms:
            raise _fail("stale")
        if ts_ms > now_ms + self.MAX_FUTURE_MS:
            raise _fail("future")
        seen = self._seen.get(sender)
        if seen is not None and msg_id in seen:
            raise _fail("replay")

    def accept(self, sender: Addr, msg_id: bytes, ts_ms: int, now_ms: int) -> None:
        """:meth:`check` the message, then remember its msg_id (and forget expired ones)."""
        self.check(sender, msg_id, ts_ms, now_ms)
        seen = self._seen.setdefault(sender, {})
        cutoff = now_ms - self.REMEMBER_MS
        old = [m for m, t in seen.items() if t < cutoff]
        if old:
            self._raise_floor(cutoff)
        for m in old:
            del seen[m]
        seen[msg_id] = now_ms

    def _raise_floor(self, cutoff_ms: int) -> None:
        self._floor_ms = max(self._floor_ms, cutoff_ms + self.MAX_FUTURE_MS)

    def prune(self, now_ms: int) -> None:
        """Forget msg_ids accepted more than 35 days before ``now_ms``."""
        cutoff = now_ms - self.REMEMBER_MS
        for sender in list(self._seen):
            kept = {m: t for m, t in self._seen[sender].items() if t >= cutoff}
            if len(kept) < len(self._seen[sender]):
                self._raise_floor(cutoff)
            if kept:
                self._seen[sender] = kept
            else:
                del self._seen[sender]

    def to_bytes(self) -> bytes:
        """Serialise: ``u8 version=2 | list<Addr sender | list<u8[16] msg_id | u64 seen_ms>>
        | u64 floor_ms`` (version 1, without ``floor_ms``, is still read)."""
        w = Writer().u8(self._VERSION).u32(len(self._seen))
        for sender in sorted(self._seen):
            sender.write(w)
            ids = self._seen[sender]
            w.u32(len(ids))
            for msg_id, seen_ms in ids.items():
                w.fixed(msg_id, MSG_ID_LEN).u64(seen_ms)
        return w.u64(self._floor_ms).getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SealReplayGuard:
        """Restore a guard saved with :meth:`to_bytes`; E2EError(reason="state") if corrupt."""
        guard = cls()
        try:
            r = Reader(data)
            version = r.u8("version")
            if version not in (1, cls._VERSION):
                raise _fail("state")
            for _ in range(r.count(MAX_U32, ADDR_LEN + 4, "senders")):
                sender = Addr.read(r, "sender")
                if sender in guard._seen:
                    raise _fail("state")
                ids: dict[bytes, int] = {}
                for _ in range(r.count(MAX_U32, MSG_ID_LEN + 8, "msg_ids")):
                    msg_id = r.fixed(MSG_ID_LEN, "msg_id")
                    ids[msg_id] = r.u64("seen_ms")
                guard._seen[sender] = ids
            if version >= 2:
                guard._floor_ms = r.u64("floor_ms")
            r.finish("replay guard")
        except (ProtocolError, E2EError):
            raise E2EError("corrupt replay guard state", reason="state") from None
        return guard
