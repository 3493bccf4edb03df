"""Per-sender symmetric chains: the default conversation mode (docs/E2E.md, "Conversations").

Theory of operation. Every sending device keeps one chain per conversation. It hands the
current chain key to each recipient device in a ``CHAIN_DIST`` Seal and then sends one
``Chain`` envelope per message, which the server fans out to all members::

    ChainDist   = u8[16] conv_id | u64 epoch | u8[16] chain_id | u32 n | u8[32] CK_n
                  | u8[16] prev_chain_id | u32 prev_final_n
    MK_n        = HMAC-SHA256(CK_n, 0x01)          CK_{n+1} = HMAC-SHA256(CK_n, 0x02)
    key | nonce = HKDF_suite(ikm = MK_n, salt = chain_id, info = Label("chain-msg") | u16 suite,
                             L = 32 + 12)
    Chain       = Header(type 0x02) | u8[16] chain_id | u32 n
                  | bytes AEAD_suite(key, nonce, aad = Header | chain_id | u32 n, ConvPayload)
    ConvPayload = u8[16] conv_id | u64 epoch | Addr sender | u64 ts_ms | u8[16] msg_id
                  | u8[16] kvd | u16 content_type | bytes content | bytes padding | bytes sig
    sig         = Ed25519(DK_sender, Label("conv") | Header | chain_id | u32 n
                                     | ConvPayload up to and including the padding field)

There is no ``cek_commit`` in a Chain envelope (that belongs to Multi mode): the signed
prefix is exactly the AAD. ``padding`` works as in a Seal (payload a multiple of 256 bytes,
all zero). The chain KDF always uses HMAC-SHA256; HKDF and the AEAD follow the suite
(suites 1/2: HKDF-SHA256 + ChaCha20-Poly1305, suite 3: HKDF-SHA384 + AES-256-GCM).

ChainDist does not name the suite or the owner: a receiver takes both from the Seal that
carried it (its header suite and its signed ``sender``), so a chain is bound to one suite
and one device. ``prev_chain_id``/``prev_final_n`` name the sender's previous chain in this
conversation and the index it would have used next (all zero for the first chain), so a
receiver can tell "messages missing" from "chain rotated".

Forward secrecy: the sender replaces CK_n by CK_{n+1} as soon as it has used MK_n; the
receiver does the same and keeps a message key only for an index it skipped (out-of-order
delivery), at most :data:`MAX_SKIPPED` of them, each stamped with the time it was stored so
the caller can drop keys older than 14 days (:meth:`ReceivingChain.expire_skipped`). A
repeated ``(chain_id, n)`` finds no key and is rejected. Python cannot wipe memory, so
"deleted" means "no longer referenced and absent from the serialised state".

Failure atomicity: :meth:`ReceivingChain.decrypt` derives everything into local variables
and changes the chain only after decryption, parsing and the signature have all succeeded.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from momedod.protocol.encoding import MAX_U32, Reader, Writer, label
from momedod.protocol.errors import ProtocolError

from .envelope import (
    HEADER_LEN,
    MAGIC,
    SEAL_ONLY_CONTENT,
    VERSION,
    Addr,
    EnvelopeType,
    header,
    is_known_content_type,
)
from .errors import E2EError
from .padding import BUCKET, is_zero, padding_for
from .seal import DAY_MS, MSG_ID_LEN, SIG_LEN
from .suites import Suite, find_suite, require_allowed

__all__ = [
    "CHAIN_ID_LEN",
    "CHAIN_MSG_LABEL",
    "CK_LEN",
    "CONV_ID_LEN",
    "CONV_LABEL",
    "KVD_LEN",
    "MAX_SKIPPED",
    "ROTATE_AFTER_MESSAGES",
    "ROTATE_AFTER_MS",
    "SKIPPED_KEY_TTL_MS",
    "ChainDist",
    "ConvFields",
    "OpenedConv",
    "ReceivingChain",
    "SendingChain",
    "chain_step",
    "check_conv_payload",
    "conv_payload_body",
    "message_key_nonce",
    "needs_rotation",
    "parse_conv_payload",
    "peek_chain",
]

CHAIN_MSG_LABEL = label("chain-msg")
"""HKDF info prefix for a message's AEAD key and nonce."""
CONV_LABEL = label("conv")
"""Signature context of a conversation payload."""

CONV_ID_LEN = 16
"""Length of a conv_id."""
CHAIN_ID_LEN = 16
"""Length of a chain_id."""
CK_LEN = 32
"""Length of a chain key (and of a message key)."""
KVD_LEN = 16
"""Length of the key-view digest carried in every conversation payload."""

MAX_SKIPPED = 1000
"""At most this many skipped message keys are kept per receiving chain."""
SKIPPED_KEY_TTL_MS = 14 * DAY_MS
"""Skipped message keys older than this are dropped by :meth:`ReceivingChain.expire_skipped`."""
ROTATE_AFTER_MS = 7 * DAY_MS
"""A sending chain is replaced after this long ..."""
ROTATE_AFTER_MESSAGES = 1000
"""... or after this many messages."""

_NO_CHAIN = bytes(CHAIN_ID_LEN)
_AAD_LEN = HEADER_LEN + CHAIN_ID_LEN + 4
_SIG_TAIL = 4 + SIG_LEN
_STATE_SENDING = 1
_STATE_RECEIVING = 2
_STATE_VERSION = 1


def _fail(reason: str) -> E2EError:
    return E2EError(reason=reason)


def chain_step(ck: bytes) -> tuple[bytes, bytes]:
    """One step of the chain KDF: ``(MK_n, CK_{n+1})`` from ``CK_n``."""
    return (
        hmac.digest(ck, b"\x01", hashlib.sha256),
        hmac.digest(ck, b"\x02", hashlib.sha256),
    )


def message_key_nonce(suite: Suite, mk: bytes, chain_id: bytes) -> tuple[bytes, bytes]:
    """The AEAD key and nonce of a message: HKDF_suite(MK_n, chain_id, Label("chain-msg")|suite)."""
    info = CHAIN_MSG_LABEL + suite.id.to_bytes(2, "big")
    okm = suite.hkdf(mk, chain_id, info, suite.key_size + suite.nonce_size)
    return okm[: suite.key_size], okm[suite.key_size :]


@dataclass(frozen=True)
class ChainDist:
    """The CHAIN_DIST content: what a recipient needs to read a sender's chain from index n."""

    conv_id: bytes
    epoch: int
    chain_id: bytes
    n: int
    ck: bytes
    prev_chain_id: bytes = _NO_CHAIN
    prev_final_n: int = 0

    def __post_init__(self) -> None:
        sizes = (len(self.conv_id), len(self.chain_id), len(self.ck), len(self.prev_chain_id))
        if sizes != (CONV_ID_LEN, CHAIN_ID_LEN, CK_LEN, CHAIN_ID_LEN):
            raise ValueError("ChainDist: conv_id/chain_id/prev_chain_id 16 bytes, ck 32 bytes")

    def encode(self) -> bytes:
        """The 96-byte encoding."""
        return (
            Writer()
            .fixed(self.conv_id, CONV_ID_LEN)
            .u64(self.epoch)
            .fixed(self.chain_id, CHAIN_ID_LEN)
            .u32(self.n)
            .fixed(self.ck, CK_LEN)
            .fixed(self.prev_chain_id, CHAIN_ID_LEN)
            .u32(self.prev_final_n)
            .getvalue()
        )

    @classmethod
    def decode(cls, data: bytes) -> ChainDist:
        """Parse strictly; E2EError(reason="chain_dist") if malformed or chain_id is all zero."""
        try:
            r = Reader(data)
            dist = cls(
                conv_id=r.fixed(CONV_ID_LEN),
                epoch=r.u64(),
                chain_id=r.fixed(CHAIN_ID_LEN),
                n=r.u32(),
                ck=r.fixed(CK_LEN),
                prev_chain_id=r.fixed(CHAIN_ID_LEN),
                prev_final_n=r.u32(),
            )
            r.finish("chain_dist")
        except ProtocolError:
            raise _fail("chain_dist") from None
        if dist.chain_id == _NO_CHAIN or dist.n == MAX_U32:
            raise _fail("chain_dist")
        return dist


@dataclass(frozen=True)
class OpenedConv:
    """The verified contents of a Chain envelope (or of a Multi envelope, see
    :mod:`momedod.e2e.multi`, where ``chain_id`` is empty and ``n`` is 0)."""

    conv_id: bytes
    epoch: int
    sender: Addr
    ts_ms: int
    msg_id: bytes
    kvd: bytes
    content_type: int
    content: bytes
    chain_id: bytes
    n: int


def conv_payload_body(
    conv_id: bytes,
    epoch: int,
    sender: Addr,
    ts_ms: int,
    msg_id: bytes,
    kvd: bytes,
    content_type: int,
    content: bytes,
) -> bytes:
    """A ConvPayload up to and including its padding field: what the ``sig`` covers after the
    signature prefix (Chain and Multi envelopes share this layout)."""
    w = Writer().fixed(conv_id, CONV_ID_LEN).u64(epoch)
    sender.write(w)
    w.u64(ts_ms).fixed(msg_id, MSG_ID_LEN).fixed(kvd, KVD_LEN).u16(content_type).bytes_(content)
    w.bytes_(bytes(padding_for(len(w) + 4 + _SIG_TAIL)))
    return w.getvalue()


@dataclass(frozen=True)
class ConvFields:
    """The fields of a parsed (not yet verified) ConvPayload."""

    conv_id: bytes
    epoch: int
    sender: Addr
    ts_ms: int
    msg_id: bytes
    kvd: bytes
    content_type: int
    content: bytes
    padding: bytes
    sig: bytes


def parse_conv_payload(payload: bytes) -> ConvFields:
    """Parse a decrypted ConvPayload strictly.

    E2EError reason ``padding`` if its length is not a multiple of 256, ``malformed`` if it
    does not parse or the sig is not 64 bytes. Nothing is verified yet: see
    :func:`check_conv_payload`.
    """
    if len(payload) % BUCKET:
        raise _fail("padding")
    try:
        p = Reader(payload)
        conv_id, epoch = p.fixed(CONV_ID_LEN, "conv_id"), p.u64("epoch")
        sender = Addr.read(p, "sender")
        ts_ms, msg_id = p.u64("ts_ms"), p.fixed(MSG_ID_LEN, "msg_id")
        kvd, content_type = p.fixed(KVD_LEN, "kvd"), p.u16("content_type")
        content = p.bytes_(MAX_U32, "content")
        padding = p.bytes_(MAX_U32, "padding")
        sig = p.bytes_(SIG_LEN, "sig")
        p.finish("payload")
    except ProtocolError:
        raise _fail("malformed") from None
    if len(sig) != SIG_LEN:
        raise _fail("malformed")
    return ConvFields(
        conv_id, epoch, sender, ts_ms, msg_id, kvd, content_type, content, padding, sig
    )


def check_conv_payload(
    fields: ConvFields, prefix: bytes, payload: bytes, sender_dk_public: bytes
) -> None:
    """Check a parsed ConvPayload: all-zero padding (``padding``), a content type allowed in a
    conversation (``content_type``), and ``sig`` = Ed25519 of the sender's DK over
    ``Label("conv") | prefix | payload up to the sig field`` (``signature``)."""
    if not is_zero(fields.padding):
        raise _fail("padding")
    if not is_known_content_type(fields.content_type) or fields.content_type in SEAL_ONLY_CONTENT:
        raise _fail("content_type")
    try:
        Ed25519PublicKey.from_public_bytes(sender_dk_public).verify(
            fields.sig, CONV_LABEL + prefix + payload[:-_SIG_TAIL]
        )
    except (InvalidSignature, ValueError):
        raise _fail("signature") from None


def peek_chain(envelope: bytes) -> tuple[int, bytes, int]:
    """``(suite_id, chain_id, n)`` of a Chain envelope, unauthenticated: to find its chain.

    Raises E2EError(reason="header"/"malformed") if it does not start like a Chain envelope.
    """
    try:
        r = Reader(envelope)
        magic, version, kind, suite_id = r.u16(), r.u8(), r.u8(), r.u16()
        chain_id, n = r.fixed(CHAIN_ID_LEN), r.u32()
    except ProtocolError:
        raise _fail("malformed") from None
    if magic != MAGIC or version != VERSION or kind != EnvelopeType.CHAIN:
        raise _fail("header")
    return suite_id, chain_id, n


def _build_envelope(
    suite: Suite,
    chain_id: bytes,
    n: int,
    mk: bytes,
    *,
    conv_id: bytes,
    epoch: int,
    sender: Addr,
    sender_dk: Ed25519PrivateKey,
    ts_ms: int,
    msg_id: bytes,
    kvd: bytes,
    content_type: int,
    content: bytes,
) -> bytes:
    """Sign, pad and encrypt one ConvPayload under MK_n (no policy checks: see SendingChain)."""
    hdr = header(EnvelopeType.CHAIN, suite.id)
    aad = Writer().fixed(chain_id, CHAIN_ID_LEN).u32(n).getvalue(hdr)
    signed = conv_payload_body(conv_id, epoch, sender, ts_ms, msg_id, kvd, content_type, content)
    payload = Writer().bytes_(sender_dk.sign(CONV_LABEL + aad + signed)).getvalue(signed)
    key, nonce = message_key_nonce(suite, mk, chain_id)
    ciphertext = suite.aead_cipher(key).encrypt(nonce, payload, aad)
    return Writer().bytes_(ciphertext).getvalue(aad)


class SendingChain:
    """This device's chain in one conversation: encrypts messages and produces ChainDist.

    ``n`` is the index of the next message and the chain holds CK_n; both advance with every
    :meth:`encrypt`. Create one with :meth:`new` (the constructor is for restoring state and
    for test vectors); persist it with :meth:`to_bytes`.
    """

    __slots__ = (
        "_ck",
        "chain_id",
        "conv_id",
        "created_ms",
        "epoch",
        "n",
        "owner",
        "prev_chain_id",
        "prev_final_n",
        "start_n",
        "suite",
    )

    def __init__(
        self,
        *,
        suite: Suite,
        owner: Addr,
        conv_id: bytes,
        epoch: int,
        chain_id: bytes,
        ck: bytes,
        created_ms: int,
        n: int = 0,
        start_n: int = 0,
        prev_chain_id: bytes = _NO_CHAIN,
        prev_final_n: int = 0,
    ) -> None:
        if len(conv_id) != CONV_ID_LEN or len(chain_id) != CHAIN_ID_LEN or len(ck) != CK_LEN:
            raise ValueError("conv_id/chain_id must be 16 bytes and ck 32 bytes")
        if chain_id == _NO_CHAIN or len(prev_chain_id) != CHAIN_ID_LEN:
            raise ValueError("chain_id must not be all zero; prev_chain_id must be 16 bytes")
        if not 0 <= start_n <= n <= MAX_U32:
            raise ValueError("need 0 <= start_n <= n <= 2^32-1")
        self.suite = suite
        self.owner = owner
        self.conv_id = conv_id
        self.epoch = epoch
        self.chain_id = chain_id
        self._ck = ck
        self.n = n
        self.start_n = start_n
        self.prev_chain_id = prev_chain_id
        self.prev_final_n = prev_final_n
        self.created_ms = created_ms

    @classmethod
    def new(
        cls,
        suite: Suite,
        owner: Addr,
        conv_id: bytes,
        epoch: int,
        now_ms: int,
        previous: SendingChain | None = None,
        *,
        allow_test_suites: bool = False,
    ) -> SendingChain:
        """A fresh chain (random chain_id and CK_0) that follows ``previous``, if any."""
        require_allowed(suite, allow_test_suites)
        chain_id = _NO_CHAIN
        while chain_id == _NO_CHAIN:
            chain_id = os.urandom(CHAIN_ID_LEN)
        return cls(
            suite=suite,
            owner=owner,
            conv_id=conv_id,
            epoch=epoch,
            chain_id=chain_id,
            ck=os.urandom(CK_LEN),
            created_ms=now_ms,
            prev_chain_id=previous.chain_id if previous else _NO_CHAIN,
            prev_final_n=previous.n if previous else 0,
        )

    @property
    def messages_sent(self) -> int:
        """Messages encrypted with this chain so far."""
        return self.n - self.start_n

    def encrypt(
        self,
        sender_dk: Ed25519PrivateKey,
        ts_ms: int,
        msg_id: bytes,
        kvd: bytes,
        content_type: int,
        content: bytes,
    ) -> bytes:
        """Encrypt one message as a Chain envelope with index ``n``, then advance to n+1.

        Raises ValueError (and changes nothing) for a content type that is unknown or allowed
        only in a Seal, wrong field lengths, or an exhausted chain.
        """
        if not is_known_content_type(content_type) or content_type in SEAL_ONLY_CONTENT:
            raise ValueError(f"content_type {content_type} may not be sent in a Chain")
        if len(msg_id) != MSG_ID_LEN or len(kvd) != KVD_LEN:
            raise ValueError("msg_id and kvd must be 16 bytes")
        if self.n >= MAX_U32:
            raise ValueError("chain exhausted; rotate it")
        mk, next_ck = chain_step(self._ck)
        envelope = _build_envelope(
            self.suite,
            self.chain_id,
            self.n,
            mk,
            conv_id=self.conv_id,
            epoch=self.epoch,
            sender=self.owner,
            sender_dk=sender_dk,
            ts_ms=ts_ms,
            msg_id=msg_id,
            kvd=kvd,
            content_type=content_type,
            content=content,
        )
        self._ck = next_ck
        self.n += 1
        return envelope

    def to_dist(self) -> ChainDist:
        """The ChainDist for a recipient that joins now: it can read messages from ``n`` on."""
        return ChainDist(
            self.conv_id,
            self.epoch,
            self.chain_id,
            self.n,
            self._ck,
            self.prev_chain_id,
            self.prev_final_n,
        )

    def to_bytes(self) -> bytes:
        """Serialise the secret state (store it encrypted at rest).

        ``u8 1 | u8 version=1 | u16 suite | Addr owner | u8[16] conv_id | u64 epoch
        | u8[16] chain_id | u32 start_n | u32 n | u8[32] CK_n | u8[16] prev_chain_id
        | u32 prev_final_n | u64 created_ms``
        """
        w = Writer().u8(_STATE_SENDING).u8(_STATE_VERSION).u16(self.suite.id)
        self.owner.write(w)
        w.fixed(self.conv_id, CONV_ID_LEN).u64(self.epoch).fixed(self.chain_id, CHAIN_ID_LEN)
        w.u32(self.start_n).u32(self.n).fixed(self._ck, CK_LEN)
        w.fixed(self.prev_chain_id, CHAIN_ID_LEN).u32(self.prev_final_n).u64(self.created_ms)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, allow_test_suites: bool = False) -> SendingChain:
        """Restore :meth:`to_bytes` output; E2EError(reason="state") if corrupt."""
        try:
            r = Reader(data)
            suite = _read_state_prefix(r, _STATE_SENDING, allow_test_suites)
            owner = Addr.read(r)
            conv_id, epoch = r.fixed(CONV_ID_LEN), r.u64()
            chain_id, start_n, n = r.fixed(CHAIN_ID_LEN), r.u32(), r.u32()
            ck, prev_chain_id = r.fixed(CK_LEN), r.fixed(CHAIN_ID_LEN)
            prev_final_n, created_ms = r.u32(), r.u64()
            r.finish("sending chain")
            return cls(
                suite=suite,
                owner=owner,
                conv_id=conv_id,
                epoch=epoch,
                chain_id=chain_id,
                ck=ck,
                created_ms=created_ms,
                n=n,
                start_n=start_n,
                prev_chain_id=prev_chain_id,
                prev_final_n=prev_final_n,
            )
        except (ProtocolError, E2EError, ValueError):
            raise E2EError("corrupt chain state", reason="state") from None


def needs_rotation(chain: SendingChain, now_ms: int) -> bool:
    """True once a sending chain is 7 days old or has sent 1,000 messages."""
    return (
        now_ms - chain.created_ms >= ROTATE_AFTER_MS or chain.messages_sent >= ROTATE_AFTER_MESSAGES
    )


class ReceivingChain:
    """Another device's chain in one conversation, as received in a ChainDist.

    ``n`` is the next index not yet reached and the chain holds CK_n. Message keys of
    skipped indices below ``n`` are kept (index -> (MK, stored_ms)), lowest index first.
    """

    __slots__ = (
        "_ck",
        "_skipped",
        "chain_id",
        "conv_id",
        "epoch",
        "n",
        "owner",
        "prev_chain_id",
        "prev_final_n",
        "suite",
    )

    def __init__(
        self,
        *,
        suite: Suite,
        owner: Addr,
        conv_id: bytes,
        epoch: int,
        chain_id: bytes,
        n: int,
        ck: bytes,
        prev_chain_id: bytes = _NO_CHAIN,
        prev_final_n: int = 0,
        skipped: dict[int, tuple[bytes, int]] | None = None,
    ) -> None:
        self.suite = suite
        self.owner = owner
        self.conv_id = conv_id
        self.epoch = epoch
        self.chain_id = chain_id
        self.n = n
        self._ck = ck
        self.prev_chain_id = prev_chain_id
        self.prev_final_n = prev_final_n
        self._skipped: dict[int, tuple[bytes, int]] = dict(sorted((skipped or {}).items()))

    @classmethod
    def from_dist(
        cls, dist: ChainDist, owner: Addr, suite_id: int, *, allow_test_suites: bool = False
    ) -> ReceivingChain:
        """A receiving chain from a ChainDist that ``owner`` sent in a Seal of ``suite_id``.

        Raises E2EError(reason="suite") for an unknown or disallowed suite.
        """
        suite = find_suite(suite_id, allow_test_suites=allow_test_suites)
        if suite is None:
            raise _fail("suite")
        return cls(
            suite=suite,
            owner=owner,
            conv_id=dist.conv_id,
            epoch=dist.epoch,
            chain_id=dist.chain_id,
            n=dist.n,
            ck=dist.ck,
            prev_chain_id=dist.prev_chain_id,
            prev_final_n=dist.prev_final_n,
        )

    @property
    def skipped_count(self) -> int:
        """Number of message keys kept for skipped indices."""
        return len(self._skipped)

    def skipped_indices(self) -> list[int]:
        """The skipped indices whose keys are still kept, ascending."""
        return list(self._skipped)

    def expire_skipped(self, now_ms: int, ttl_ms: int = SKIPPED_KEY_TTL_MS) -> int:
        """Drop skipped message keys stored more than ``ttl_ms`` before ``now_ms``; return count."""
        old = [i for i, (_, stored) in self._skipped.items() if stored < now_ms - ttl_ms]
        for i in old:
            del self._skipped[i]
        return len(old)

    def decrypt(self, envelope: bytes, sender_dk_public: bytes, now_ms: int) -> OpenedConv:
        """Open, verify and consume one Chain envelope of this chain.

        ``sender_dk_public`` is the raw Ed25519 key of the chain owner's device, from its
        verified device list; ``now_ms`` stamps message keys stored for skipped indices.
        Raises E2EError("cannot open envelope") on any failure, leaving the chain unchanged.
        """
        try:
            r = Reader(envelope)
            magic, version, kind, suite_id = r.u16(), r.u8(), r.u8(), r.u16()
            chain_id, n = r.fixed(CHAIN_ID_LEN), r.u32()
            ciphertext = r.bytes_(MAX_U32, "ciphertext")
            r.finish("chain")
        except ProtocolError:
            raise _fail("malformed") from None
        if magic != MAGIC or version != VERSION or kind != EnvelopeType.CHAIN:
            raise _fail("header")
        if suite_id != self.suite.id:
            raise _fail("suite")
        if chain_id != self.chain_id:
            raise _fail("chain_id")
        if len(ciphertext) < BUCKET + self.suite.tag_size:
            raise _fail("malformed")

        # Find MK_n without touching the chain; `new_*` are committed only on success.
        new_skipped: dict[int, tuple[bytes, int]] = {}
        if n < self.n:
            kept = self._skipped.get(n)
            if kept is None:
                raise _fail("replay")  # already read, before our start, or expired
            mk, new_ck, new_n = kept[0], self._ck, self.n
        else:
            if n - self.n > MAX_SKIPPED or n == MAX_U32:
                raise _fail("too_far")
            ck = self._ck
            for i in range(self.n, n):
                skipped_mk, ck = chain_step(ck)
                new_skipped[i] = (skipped_mk, now_ms)
            mk, new_ck = chain_step(ck)
            new_n = n + 1

        aad = bytes(envelope[:_AAD_LEN])
        key, nonce = message_key_nonce(self.suite, mk, chain_id)
        try:
            payload = self.suite.aead_cipher(key).decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise _fail("decrypt") from None
        opened = self._verify_payload(payload, aad, chain_id, n, sender_dk_public)

        # Commit.
        if n < self.n:
            del self._skipped[n]
        else:
            self._skipped.update(new_skipped)
            while len(self._skipped) > MAX_SKIPPED:  # keys are in ascending index order
                del self._skipped[next(iter(self._skipped))]
            self._ck, self.n = new_ck, new_n
        return opened

    def _verify_payload(
        self, payload: bytes, aad: bytes, chain_id: bytes, n: int, sender_dk_public: bytes
    ) -> OpenedConv:
        f = parse_conv_payload(payload)
        if f.conv_id != self.conv_id:
            raise _fail("conv_id")
        if f.epoch != self.epoch:
            raise _fail("epoch")
        if f.sender != self.owner:
            raise _fail("sender")
        check_conv_payload(f, aad, payload, sender_dk_public)
        return OpenedConv(
            f.conv_id,
            f.epoch,
            f.sender,
            f.ts_ms,
            f.msg_id,
            f.kvd,
            f.content_type,
            f.content,
            chain_id,
            n,
        )

    def to_bytes(self) -> bytes:
        """Serialise the secret state (store it encrypted at rest).

        ``u8 2 | u8 version=1 | u16 suite | Addr owner | u8[16] conv_id | u64 epoch
        | u8[16] chain_id | u32 n | u8[32] CK_n | u8[16] prev_chain_id | u32 prev_final_n
        | list<u32 index | u8[32] MK | u64 stored_ms>`` (skipped keys, ascending index)
        """
        w = Writer().u8(_STATE_RECEIVING).u8(_STATE_VERSION).u16(self.suite.id)
        self.owner.write(w)
        w.fixed(self.conv_id, CONV_ID_LEN).u64(self.epoch).fixed(self.chain_id, CHAIN_ID_LEN)
        w.u32(self.n).fixed(self._ck, CK_LEN)
        w.fixed(self.prev_chain_id, CHAIN_ID_LEN).u32(self.prev_final_n)
        w.u32(len(self._skipped))
        for index, (mk, stored_ms) in self._skipped.items():
            w.u32(index).fixed(mk, CK_LEN).u64(stored_ms)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, allow_test_suites: bool = False) -> ReceivingChain:
        """Restore :meth:`to_bytes` output; E2EError(reason="state") if corrupt."""
        try:
            r = Reader(data)
            suite = _read_state_prefix(r, _STATE_RECEIVING, allow_test_suites)
            owner = Addr.read(r)
            conv_id, epoch = r.fixed(CONV_ID_LEN), r.u64()
            chain_id, n, ck = r.fixed(CHAIN_ID_LEN), r.u32(), r.fixed(CK_LEN)
            prev_chain_id, prev_final_n = r.fixed(CHAIN_ID_LEN), r.u32()
            skipped: dict[int, tuple[bytes, int]] = {}
            for _ in range(r.count(MAX_SKIPPED, 4 + CK_LEN + 8, "skipped")):
                index, mk, stored_ms = r.u32(), r.fixed(CK_LEN), r.u64()
                if index >= n or index in skipped:
                    raise _fail("state")
                skipped[index] = (mk, stored_ms)
            r.finish("receiving chain")
        except (ProtocolError, E2EError):
            raise E2EError("corrupt chain state", reason="state") from None
        return cls(
            suite=suite,
            owner=owner,
            conv_id=conv_id,
            epoch=epoch,
            chain_id=chain_id,
            n=n,
            ck=ck,
            prev_chain_id=prev_chain_id,
            prev_final_n=prev_final_n,
            skipped=skipped,
        )


def _read_state_prefix(r: Reader, kind: int, allow_test_suites: bool) -> Suite:
    if r.u8("kind") != kind or r.u8("version") != _STATE_VERSION:
        raise _fail("state")
    suite = find_suite(r.u16("suite"), allow_test_suites=allow_test_suites)
    if suite is None:
        raise _fail("state")
    return suite
