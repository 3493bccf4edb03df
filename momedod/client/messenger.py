"""The end-to-end client: ties momedod.e2e to the server (docs/E2E.md, "The client").

:func:`enroll` creates a device and publishes its keys; a :class:`Messenger` (one profile,
one connected :class:`~momedod.client.transport.Client`) fetches and verifies key records,
sends text in 1:1 conversations and opens what arrives. Every state change is saved to the
profile before the server is told (ACK) or before an envelope that depends on it is sent.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from momedod.client.profile import E2EState, Prekey, Profile, SendingState
from momedod.client.transport import (
    DEFAULT_BACKOFF,
    Backoff,
    Client,
    ClientError,
    Credentials,
    PinMismatch,
    ServerError,
    connect_invite,
)
from momedod.client.transport import connect as transport_connect
from momedod.e2e.chain import (
    ChainDist,
    ReceivingChain,
    SendingChain,
    needs_rotation,
    peek_chain,
)
from momedod.e2e.envelope import Addr, ContentType
from momedod.e2e.errors import E2EError
from momedod.e2e.event import is_conv_event
from momedod.e2e.identity import DeviceKey, HybridPublicKey, UserIdentityKey
from momedod.e2e.link import is_link_request
from momedod.e2e.records import (
    PREKEY_OTPK,
    PREKEY_SPK,
    ZERO_HASH,
    DeviceEntry,
    DeviceList,
    DeviceListPin,
    DeviceSelection,
    DeviceTarget,
    IdentityRecord,
    device_list_hash,
    select_devices,
    sign_device_list,
    sign_identity_record,
    sign_prekey,
    verify_device_list,
    verify_device_list_chain,
    verify_identity_history,
    verify_identity_record,
    verify_prekey,
)
from momedod.e2e.rich import RichText
from momedod.e2e.safety import dm_conv_id, format_safety_number, kvd, qr_string, safety_number
from momedod.e2e.seal import MSG_ID_LEN, SealReplayGuard, open_seal, seal
from momedod.e2e.suites import (
    SUITE_MLKEM1024_P384,
    SUITE_XWING,
    get_suite,
    kem_keypair_from_seed,
)
from momedod.e2e.trust import KeyChange, Pinned, RogueDevice, TrustStore
from momedod.protocol import frames as f
from momedod.protocol.errors import ErrorCode, ProtocolError
from momedod.protocol.invite import Address, format_address, parse_invite_link
from momedod.protocol.records import (
    DEVICE_FLAG_MANAGER,
    RECORD_DEVICE_LIST,
    RECORD_IDENTITY,
    RECORD_PREKEY,
    parse_record,
)
from momedod.protocol.userid import display

if TYPE_CHECKING:
    from momedod.client.groups import Groups

DAY_MS = 86_400_000
OTPK_COUNT = 20
"""One-time prekeys per suite published at enrollment and topped up to (design: 100)."""
OTPK_LOW = 10
"""Fewer unused OTPK seeds than this for a suite: publish new ones up to ``OTPK_COUNT``."""
OTPK_LIFETIME_MS = 365 * DAY_MS
"""``not_after`` of a one-time prekey."""
SPK_LIFETIME_MS = 35 * DAY_MS
"""``not_after`` of a signed prekey (E2E.md section 4.2: +35 days)."""
SPK_ROTATE_MS = 7 * DAY_MS
"""Age after which the SPK of a suite is replaced (at the next connect: only while online)."""
SPK_GRACE_MS = 3 * DAY_MS
"""How long an old SPK seed is kept after its successor was created (72 h)."""
MAX_TEXT_BYTES = 16_000
"""Longest text (UTF-8) that ``send`` accepts."""
SEEN_KEEP_MS = 35 * 86_400_000
"""How long processed message IDs are remembered (as the Seal replay guard)."""
SEND_ATTEMPTS = 3
SUPPORTED_SUITES = (SUITE_XWING, SUITE_MLKEM1024_P384)
"""Suites a device of this client can list (``momedo enroll --suites``)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class MessengerError(Exception):
    """Something the user must be told (cannot send, cannot verify keys, ...)."""


class KeyChangedError(MessengerError):
    """Sending is blocked: the contact's identity key changed and was not accepted yet."""

    def __init__(self, user_id: str, old_fp: bytes, new_fp: bytes) -> None:
        super().__init__(key_change_warning(user_id, old_fp, new_fp))
        self.user_id = user_id
        self.old_fp = old_fp
        self.new_fp = new_fp


def key_change_warning(user_id: str, old_fp: bytes, new_fp: bytes) -> str:
    shown = display(user_id)
    return (
        f"WARNING: the identity key of {shown} has CHANGED "
        f"(pinned {old_fp.hex()[:16]}…, now {new_fp.hex()[:16]}…). "
        f"Someone may be impersonating {shown}, or they re-installed momedo. "
        f"Sending to {shown} is blocked. Compare safety numbers (momedo verify {shown}), "
        f"then accept the new key with: momedo trust {shown}"
    )


def suite_downgrade_warning(user_id: str, device_id: int, pinned: int, now: int) -> str:
    shown = display(user_id)
    offered = f"0x{now:04x}" if now else "no suite in common"
    return (
        f"WARNING: device {device_id} of {shown} was pinned at suite 0x{pinned:04x} but its "
        f"signed device list now offers {offered} (a possible downgrade). Sending to that "
        f"device is blocked; accept it with: momedo trust {shown}"
    )


class SuiteDowngradeError(MessengerError):
    """Sending is blocked: no device of the contact is reachable without a suite downgrade."""


@dataclass(frozen=True)
class Message:
    """A received (or, from our other device, sent) text message."""

    sender: str  # user ID of the sending device
    device_id: int
    peer: str | None  # the other party of the conversation (for our own messages)
    outgoing: bool  # sent by another device of ours
    ts_ms: int
    msg_id: str
    text: str
    warnings: tuple[str, ...] = ()
    group: str | None = None  # conv_id hex of a group or channel message
    group_name: str | None = None
    attachment: dict[str, Any] | None = None  # see momedod.client.attachments
    # The raw ATTACHMENT pointer or RICH_TEXT content when it holds pointers (secret: keys).
    content: bytes = field(default=b"", repr=False)
    content_type: int = ContentType.TEXT
    reply_to: str | None = None  # RICH_TEXT: the msg_id (hex) this message answers
    metadata: dict[str, Any] | None = None  # RICH_TEXT: the sender's metadata object
    attachments: tuple[dict[str, Any], ...] = ()  # every attachment (``attachment`` = first)
    urgent: bool = False  # delivered as DELIVER_URGENT (the server checked the sender may)

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "message",
            "from": display(self.sender),
            "device_id": self.device_id,
            "to": display(self.peer) if self.peer else None,
            "outgoing": self.outgoing,
            "ts_ms": self.ts_ms,
            "msg_id": self.msg_id,
            "text": self.text,
            "warnings": list(self.warnings),
        }
        if self.group is not None:
            out["group"] = self.group
            out["group_name"] = self.group_name
        if self.attachment is not None:
            out["attachment"] = self.attachment
        if len(self.attachments) > 1:
            out["attachments"] = list(self.attachments)
        if self.reply_to is not None:
            out["reply_to"] = self.reply_to
        if self.metadata is not None:
            out["metadata"] = self.metadata
        if self.urgent:
            out["urgent"] = True
        return out

    def line(self) -> str:
        if self.urgent:
            return "URGENT " + dataclasses.replace(self, urgent=False).line()
        who = "me" if self.outgoing else display(self.sender)
        if self.group is not None:
            return f"[{self.group_name}] {who} (device {self.device_id}): {self.shown_text()}"
        to = f" → {display(self.peer)}" if self.outgoing and self.peer else ""
        return f"{who} (device {self.device_id}){to}: {self.shown_text()}"

    def shown_text(self) -> str:
        shown = self.text
        if self.attachments:
            from momedod.client.attachments import attachment_line

            shown = attachment_line(self.text, self.attachments[0])
            for att in self.attachments[1:]:
                shown += " " + attachment_line("", att)
        if self.reply_to is not None:
            shown += f" ↪ reply to {self.reply_to}"
        if self.metadata:
            shown += " " + json.dumps(self.metadata, ensure_ascii=False, sort_keys=True)
        return shown


@dataclass(frozen=True)
class Notice:
    """A line for the user that is not a message: an undecryptable envelope, a warning."""

    kind: str  # "undecryptable", "warning", "info", "alarm"
    text: str

    def json(self) -> dict[str, Any]:
        return {"type": self.kind, "text": self.text}

    def line(self) -> str:
        return self.text if self.kind == "info" else f"{self.kind}: {self.text}"


Event = Message | Notice


def content_fields(content_type: int, content: bytes) -> dict[str, Any]:
    """The :class:`Message` fields for a conversation payload's content: ``text``,
    ``attachment``/``attachments`` (metadata, never keys), ``content`` (kept only when it
    holds attachment pointers), ``content_type``, ``reply_to`` and ``metadata``."""
    from momedod.client.attachments import describe, pointer_json

    out: dict[str, Any] = {"content_type": content_type, "attachment": None}
    atts: tuple[dict[str, Any], ...] = ()
    if content_type == ContentType.TEXT:
        out["text"] = content.decode("utf-8", errors="replace")
    elif content_type == ContentType.ATTACHMENT:
        out["text"], out["attachment"] = describe(content)
    elif content_type == ContentType.RICH_TEXT:
        try:
            rich = RichText.decode(content)
        except E2EError:
            out["text"] = "(a message this client cannot read: invalid rich text)"
            return out
        out["text"] = rich.text
        out["reply_to"] = rich.reply_to.hex() if rich.reply_to else None
        out["metadata"] = rich.metadata
        atts = tuple(pointer_json(p) for p in rich.pointers())
    else:
        out["text"] = f"(content type {content_type}, not shown by this client)"
    if out["attachment"] is not None:
        atts = (out["attachment"],)
    if atts:
        out["content"], out["attachment"], out["attachments"] = content, atts[0], atts
    return out


@dataclass
class UserKeys:
    """A user's key records as fetched and verified now."""

    user_id: str
    identities: list[IdentityRecord]
    lists: list[DeviceList]
    spks: list[bytes]
    notices: list[Notice] = field(default_factory=list)
    downgraded: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Devices whose best common suite is now below the pinned one: device -> (pin, now)."""

    @property
    def identity(self) -> IdentityRecord:
        return self.identities[-1]

    @property
    def device_list(self) -> DeviceList:
        return self.lists[-1]

    def uik_for(self, fp: bytes) -> HybridPublicKey | None:
        return next((i.uik for i in self.identities if i.fp == fp), None)


@dataclass(frozen=True)
class Outgoing:
    """One prepared SEND, kept to retry with the same message_id."""

    message_id: bytes
    payload: bytes
    recipients: tuple[f.Recipient, ...]
    new_holders: tuple[str, ...]
    conv: str  # key of state.sending: "CONVIDHEX:SUITEHEX"
    chain_id: bytes
    unreachable: tuple[str, ...]
    suite: int = SUITE_XWING


@dataclass(frozen=True)
class SendBatch:
    """The SENDs of one text: one per suite in use (a chain is per conversation and suite).

    The single-SEND accessors (``message_id``, ``payload``, ``chain_id``) are those of the first
    SEND (the highest suite); ``recipients`` are those of all of them."""

    sends: tuple[Outgoing, ...]

    @property
    def message_id(self) -> bytes:
        return self.sends[0].message_id

    @property
    def payload(self) -> bytes:
        return self.sends[0].payload

    @property
    def chain_id(self) -> bytes:
        return self.sends[0].chain_id

    @property
    def recipients(self) -> tuple[f.Recipient, ...]:
        return tuple(r for o in self.sends for r in o.recipients)

    @property
    def unreachable(self) -> tuple[str, ...]:
        return self.sends[0].unreachable


def _addr_name(user_id: str, device_id: int) -> str:
    return f"{user_id}/{device_id}"


def _split(records: Sequence[bytes]) -> tuple[list[bytes], list[bytes], list[bytes]]:
    ids: list[bytes] = []
    lists: list[bytes] = []
    prekeys: list[bytes] = []
    for rec in records:
        try:
            kind = parse_record(rec).record_type
        except ProtocolError:
            continue
        {RECORD_IDENTITY: ids, RECORD_DEVICE_LIST: lists, RECORD_PREKEY: prekeys}[kind].append(rec)
    return ids, lists, prekeys


# -- enrollment ------------------------------------------------------------------------------


def new_state(suite: int = SUITE_XWING, suites: Sequence[int] = ()) -> E2EState:
    """Fresh seeds for a new device: UIK, DK, one SPK and an OTPK pool per suite.

    ``suites`` (default: ``suite`` only) are the suites the device lists; the identity key's
    suite is the highest of them. Key IDs: SPKs first (1, 2, ...), then the OTPKs.
    """
    listed = sorted(set(suites or (suite,)))
    for s_id in listed:
        if s_id not in SUPPORTED_SUITES:
            raise ValueError(f"unsupported suite 0x{s_id:04x}")
    now = now_ms()
    spks: dict[int, Prekey] = {}
    otpks: dict[int, Prekey] = {}
    next_id = 1
    for s_id in listed:
        spks[next_id] = Prekey(os.urandom(32), s_id, now + SPK_LIFETIME_MS, now)
        next_id += 1
    for s_id in listed:
        for _ in range(OTPK_COUNT):
            otpks[next_id] = Prekey(os.urandom(32), s_id, now + OTPK_LIFETIME_MS, now)
            next_id += 1
    top = max(listed)
    return E2EState(
        suite=top,
        suites=listed,
        uik_seed=os.urandom(32),
        dk_seed=os.urandom(32),
        spk_id=max(k for k, p in spks.items() if p.suite == top),
        spks=spks,
        otpks=otpks,
        next_key_id=next_id,
        trust=TrustStore(),
        guard=SealReplayGuard(),
    )


async def _own_records(client: Client) -> list[bytes]:
    try:
        return await client.key_get(client.user_id)
    except ServerError as e:
        if e.code == ErrorCode.NOT_FOUND:
            return []
        raise


async def publish_keys(client: Client, state: E2EState) -> list[Notice]:
    """Publish this device's IdentityRec, DeviceList, SPK and OTPKs (see docs/E2E.md).

    If the user already has an identity on the server (a re-enrollment: the old device is
    lost), the new identity links to it (``prev_fp``) and the new device list continues the
    chain with this device only: contacts will see an identity key change.
    """
    uid, did = client.user_id, client.device_id
    now = now_ms()
    assert state.uik_seed is not None
    uik = UserIdentityKey(state.uik_seed, state.suite)
    dk_pub = Ed25519PrivateKey.from_private_bytes(state.dk_seed).public_key().public_bytes_raw()
    notices: list[Notice] = []
    ids, lists, _ = _split(await _own_records(client))
    prev_fp, version, prev_hash = ZERO_HASH, 1, ZERO_HASH
    if ids:
        last = verify_identity_record(ids[-1], user_id=uid)
        prev_fp = last.fp
        notices.append(
            Notice(
                "warning",
                f"user {display(uid)} already had an identity key; this device creates a new "
                "one and your contacts will see a key change",
            )
        )
    if lists:
        info = parse_record(lists[-1])
        assert info.version is not None
        version, prev_hash = info.version + 1, device_list_hash(lists[-1])
    id_rec = sign_identity_record(uik, uid, now, prev_fp)
    entry = DeviceEntry(did, dk_pub, tuple(sorted(state.device_suites)), DEVICE_FLAG_MANAGER, now)
    dl_rec = sign_device_list(uik, uid, version, prev_hash, now, [entry])
    await client.key_put(id_rec)
    await client.key_put(dl_rec)
    await publish_prekeys(client, state)
    trust = state.trust
    trust.observe_identity(uid, uik.fp)
    trust.note_own_device_added(did)
    own = trust.contact(uid)
    assert own is not None
    dl = verify_device_list(dl_rec, uik.public, user_id=uid)
    own.device_list = DeviceListPin(dl.version, dl.list_hash)
    own.devices = {did: dk_pub}
    return notices


def current_spks(state: E2EState) -> dict[int, int]:
    """suite -> key ID of its current (newest) SPK."""
    best: dict[int, tuple[int, int]] = {}
    for key_id, pk in state.spks.items():
        if pk.suite not in best or (pk.created_ms, key_id) > best[pk.suite]:
            best[pk.suite] = (pk.created_ms, key_id)
    return {s_id: key_id for s_id, (_c, key_id) in best.items()}


async def _put_prekey(
    client: Client, state: E2EState, kind: int, key_id: int, pk: Prekey, now: int
) -> None:
    """KEY_PUT one prekey signed by the DK and mark it published (the caller saves)."""
    _, pub = kem_keypair_from_seed(get_suite(pk.suite), pk.seed)
    if not pk.not_after_ms:
        pk.not_after_ms = now + (SPK_LIFETIME_MS if kind == PREKEY_SPK else OTPK_LIFETIME_MS)
    rec = sign_prekey(
        DeviceKey(state.dk_seed),
        client.user_id,
        client.device_id,
        pk.suite,
        kind,
        key_id,
        pub,
        pk.not_after_ms,
    )
    try:
        await client.key_put(rec)
    except ServerError as e:
        # An OTPK stored by an earlier, interrupted run: it is published.
        if not (kind == PREKEY_OTPK and e.code == ErrorCode.RECORD_STALE):
            raise
    pk.published = True


async def publish_prekeys(client: Client, state: E2EState) -> None:
    """KEY_PUT the current SPK of each suite and every OTPK of ``state``, signed by the DK."""
    now = now_ms()
    for key_id in sorted(current_spks(state).values()):
        await _put_prekey(client, state, PREKEY_SPK, key_id, state.spks[key_id], now)
    for key_id, pk in sorted(state.otpks.items()):
        await _put_prekey(client, state, PREKEY_OTPK, key_id, pk, now)


def plan_prekeys(state: E2EState, now: int) -> bool:
    """The local half of prekey maintenance (docs/E2E.md, "Prekey maintenance").

    Per suite of the device: a new SPK (new key ID, unpublished) when the current one is
    older than ``SPK_ROTATE_MS``; old SPK seeds dropped once their successor is published
    and older than ``SPK_GRACE_MS``; new OTPK seeds (unpublished) up to ``OTPK_COUNT`` when
    fewer than ``OTPK_LOW`` unused ones are left. Returns whether ``state`` changed.
    """
    changed = False
    for s_id in state.device_suites:
        cur = current_spks(state).get(s_id)
        # An unpublished current SPK (an interrupted run) is published, not replaced.
        spk = state.spks[cur] if cur is not None else None
        if spk is None or (spk.published and now - spk.created_ms > SPK_ROTATE_MS):
            key_id = state.next_key_id
            state.next_key_id += 1
            state.spks[key_id] = Prekey(
                os.urandom(32), s_id, now + SPK_LIFETIME_MS, now, published=False
            )
            if s_id == state.suite:
                state.spk_id = key_id
            changed = True
        ours = sorted((pk.created_ms, k) for k, pk in state.spks.items() if pk.suite == s_id)
        for (_c, old), (_c2, succ) in itertools.pairwise(ours):
            nxt = state.spks[succ]
            if nxt.published and now - nxt.created_ms > SPK_GRACE_MS:
                del state.spks[old]
                changed = True
        unused = sum(1 for pk in state.otpks.values() if pk.suite == s_id)
        if unused < OTPK_LOW:
            for _ in range(OTPK_COUNT - unused):
                state.otpks[state.next_key_id] = Prekey(
                    os.urandom(32), s_id, now + OTPK_LIFETIME_MS, now, published=False
                )
                state.next_key_id += 1
            changed = True
    return changed


async def maintain_prekeys(profile: Profile, client: Client, state: E2EState) -> list[Notice]:
    """Rotate SPKs, drop old SPK seeds and top up OTPKs, then publish what is unpublished.

    The new seeds are saved before any KEY_PUT (nothing is published that we cannot open);
    after the KEY_PUTs the state is saved again with the keys marked published. A KEY_PUT
    the server refuses is reported as a warning and retried at the next connect.
    """
    now = now_ms()
    if plan_prekeys(state, now):
        profile.save_state(state)
    pending = [
        (PREKEY_SPK, k, state.spks[k])
        for k in sorted(current_spks(state).values())
        if not state.spks[k].published
    ] + [(PREKEY_OTPK, k, pk) for k, pk in sorted(state.otpks.items()) if not pk.published]
    if not pending:
        return []
    notices: list[Notice] = []
    try:
        for kind, key_id, pk in pending:
            await _put_prekey(client, state, kind, key_id, pk, now)
    except ServerError as e:
        notices.append(Notice("warning", f"could not publish new prekeys: {e}"))
    profile.save_state(state)
    return notices


async def enroll(
    profile: Profile, link: str, name: str, suites: Sequence[int] = (SUITE_XWING,)
) -> tuple[Credentials, list[Notice]]:
    """Enroll a device from an invite link, create its keys (for ``suites``) and publish them."""
    async with connect_invite(link, name) as (client, creds):
        state = new_state(max(suites), suites)
        org_fp = parse_invite_link(link).org_fp
        if org_fp is not None:  # the organisation key travels in the invite: pin it now
            state.org_fp, state.org_source = org_fp, "invite"
        profile.save_credentials(creds)
        profile.save_state(state)  # seeds first: nothing published that we cannot use
        notices = await publish_keys(client, state)
        profile.save_state(state)
        return creds, notices


# -- the messenger ---------------------------------------------------------------------------


class Messenger:
    """The end-to-end operations of one enrolled device over one connection."""

    def __init__(self, profile: Profile, client: Client, state: E2EState) -> None:
        self.profile = profile
        self.client = client
        self.state = state
        self.me = Addr(client.user_id, client.device_id)
        # The private identity key exists only on a manager device; others hold the public key.
        self.uik = UserIdentityKey(state.uik_seed, state.suite) if state.uik_seed else None
        self.uik_pub: HybridPublicKey = self.uik.public if self.uik else state.uik_public()
        self._dk = Ed25519PrivateKey.from_private_bytes(state.dk_seed)
        self._fetched: dict[str, UserKeys] = {}
        from momedod.client.groups import Groups  # groups.py builds on this module

        self.groups: Groups = Groups(self)
        # Set by the receive loop to save attachments (momedod.client.attachments).
        self.attachment_saver: Callable[[Message], Awaitable[Message]] | None = None

    @property
    def device_key(self) -> Ed25519PrivateKey:
        return self._dk

    @property
    def trust(self) -> TrustStore:
        return self.state.trust

    def save(self) -> None:
        self.profile.save_state(self.state)

    # keys ---------------------------------------------------------------------------------

    async def fetch_user(self, user_id: str) -> UserKeys:
        """KEY_GET ``user_id``, verify identity history and device-list chain against the pins,
        and update the trust store (TOFU on first sight, key change -> blocked)."""
        try:
            records = await self.client.key_get(user_id)
        except ServerError as e:
            if e.code == ErrorCode.NOT_FOUND:
                raise MessengerError(f"no such user {display(user_id)}") from None
            raise
        ids, lists, prekeys = _split(records)
        if not ids or not lists:
            raise MessengerError(f"{display(user_id)} has not published end-to-end keys yet")
        try:
            identities = verify_identity_history(ids, user_id=user_id)
            chain = verify_device_list_chain(
                lists,
                [i.uik for i in identities],
                self.trust.device_list_pin(user_id),
                user_id=user_id,
            )
        except E2EError as e:
            raise MessengerError(
                f"the keys the server shows for {display(user_id)} do not verify "
                f"({e.reason}: {e}); not using them"
            ) from None
        keys = UserKeys(user_id, identities, chain, prekeys)
        own = user_id == self.me.user_id
        first_list = self.trust.device_list_pin(user_id) is None
        event = self.trust.observe_identity(user_id, identities[-1].fp)
        if isinstance(event, Pinned) and not own:
            keys.notices.append(
                Notice("info", f"pinned the identity key of {display(user_id)} (first use)")
            )
        elif isinstance(event, KeyChange):
            kind = "alarm" if own else "warning"
            text = key_change_warning(user_id, event.old_fp, event.new_fp)
            if own:
                text = "ALARM: the identity key of your own user changed on the server: " + text
            keys.notices.append(Notice(kind, text))
        try:
            dev_events = self.trust.observe_device_list(chain[-1])
            for dev_event in [] if isinstance(event, Pinned) or first_list else dev_events:
                what = {"DeviceAdded": "added", "DeviceRemoved": "removed"}.get(
                    type(dev_event).__name__, "CHANGED THE KEY OF"
                )
                keys.notices.append(
                    Notice(
                        "info" if what != "CHANGED THE KEY OF" else "warning",
                        f"{display(user_id)} {what} device {dev_event.device_id}",
                    )
                )
        except ValueError as e:
            raise MessengerError(f"device list of {display(user_id)}: {e}") from None
        self._pin_suites(keys)
        if own:
            if self.uik is None:
                # A linked device holds no UIK: only a manager device of ours can sign a list
                # with our pinned identity key, so the devices on such lists were added by us.
                for dl in chain:
                    if dl.signer_fp == self.uik_pub.fp:
                        for entry in dl.entries:
                            self.trust.note_own_device_added(entry.device_id)
            for alarm in self.trust.check_own_devices(chain):
                keys.notices.append(Notice("alarm", _rogue_text(alarm)))
        self._fetched[user_id] = keys
        return keys

    def _best_suite(self, entry: DeviceEntry) -> int:
        """The highest suite both this device and ``entry`` list (0: none)."""
        return max(set(entry.suites) & set(self.state.device_suites), default=0)

    def _suite_pin(self, user_id: str, device_id: int) -> int:
        """The pinned suite of a device (0: none), at most our own highest suite (a pin above
        what this device supports itself means nothing any more)."""
        pin = self.state.suite_pins.get(_addr_name(user_id, device_id), 0)
        return min(pin, max(self.state.device_suites))

    def _pin_suites(self, keys: UserKeys) -> None:
        """Pin, per device of ``keys``, the highest suite it and we have in common, and note
        (with a warning) every device whose list entry no longer offers its pinned suite."""
        pins = self.state.suite_pins
        for entry in keys.device_list.entries:
            name = _addr_name(keys.user_id, entry.device_id)
            if name == _addr_name(self.me.user_id, self.me.device_id):
                continue
            best, pin = self._best_suite(entry), self._suite_pin(keys.user_id, entry.device_id)
            if best >= pin:
                if best:
                    pins[name] = best
                continue
            keys.downgraded[entry.device_id] = (pin, best)
            keys.notices.append(
                Notice("warning", suite_downgrade_warning(keys.user_id, entry.device_id, pin, best))
            )

    def accept_suites(self, user_id: str) -> list[int]:
        """``momedo trust``: pin the suites the last fetched list of ``user_id`` offers now
        (accepting downgrades). Returns the devices whose pin was lowered."""
        keys = self._fetched.get(user_id)
        if keys is None:
            return []
        for device_id, (_pin, best) in keys.downgraded.items():
            name = _addr_name(user_id, device_id)
            if best:
                self.state.suite_pins[name] = best
            else:
                self.state.suite_pins.pop(name, None)
        lowered = sorted(keys.downgraded)
        keys.downgraded.clear()
        return lowered

    def _check_suite(self, sender: Addr, suite_id: int) -> None:
        """Reject an envelope from ``sender`` below the suite pinned for that device."""
        if suite_id < self._suite_pin(sender.user_id, sender.device_id):
            raise E2EError(reason="suite")

    def _sender_dk(self, sender: Addr) -> bytes | None:
        """The DK of ``sender`` from its device list as fetched and verified during this
        connection (None if not fetched yet or not listed)."""
        keys = self._fetched.get(sender.user_id)
        entry = keys.device_list.device(sender.device_id) if keys else None
        return entry.dk_pub if entry else None

    async def _sender_dk_fetch(self, sender: Addr) -> tuple[bytes | None, list[Notice]]:
        """As :meth:`_sender_dk`, fetching (once per connection) and verifying the user's keys."""
        if sender.user_id in self._fetched:
            return self._sender_dk(sender), []
        keys = await self.fetch_user(sender.user_id)
        return self._sender_dk(sender), keys.notices

    async def self_check(self) -> list[Notice]:
        """Verify our own user's keys (self-monitoring): alarms and warnings only."""
        keys = await self.fetch_user(self.me.user_id)
        self.save()
        return [n for n in keys.notices if n.kind in ("alarm", "warning")]

    def kvd_for(self, peer: str, peer_fp: bytes) -> bytes:
        return kvd([(self.me.user_id, self.uik_pub.fp), (peer, peer_fp)])

    # verification -------------------------------------------------------------------------

    async def verification(self, user_id: str) -> dict[str, Any]:
        """Safety number and QR strings for ``user_id`` (fetched and verified now).

        The number is computed with the key the server shows now; ``matches_pin`` says whether
        that is the pinned key (else a change is pending: see ``momedo trust``)."""
        keys = await self.fetch_user(user_id)
        c = self.trust.contact(user_id)
        assert c is not None
        theirs = keys.identity
        number = safety_number(self.me.user_id, self.uik_pub, user_id, theirs.uik)
        return {
            "user_id": display(user_id),
            "safety_number": format_safety_number(number),
            "their_qr": qr_string(user_id, theirs.fp),
            "my_qr": qr_string(self.me.user_id, self.uik_pub.fp),
            "their_fp": theirs.fp.hex(),
            "matches_pin": theirs.fp == c.fp and not c.blocked,
            "level": c.level.value,
            "notices": [n.line() for n in keys.notices],
        }

    # sending ------------------------------------------------------------------------------

    async def prepare_text(
        self,
        user_id: str,
        text: str,
        *,
        content_type: int = ContentType.TEXT,
        content: bytes | None = None,
    ) -> tuple[SendBatch, list[Notice]]:
        """Encrypt ``text`` to every device of ``user_id`` and our other devices; saves the
        advanced chain states before returning (a chain index is never used twice).

        Each device gets the highest suite that both it (in its signed DeviceEntry.suites, with
        a valid SPK) and this device list; devices are grouped by that suite and each group
        is one SEND on our chain of that suite. A device offering less than its pinned suite
        is skipped (a downgrade: ``momedo trust`` accepts it). ``content_type``/``content``
        send another content than the text (e.g. an ATTACHMENT pointer)."""
        if user_id == self.me.user_id:
            raise MessengerError("sending to your own user is not supported")
        if content is None:
            content = text.encode()
        if len(content) > MAX_TEXT_BYTES:
            raise MessengerError(f"text longer than {MAX_TEXT_BYTES} bytes")
        peer = await self.fetch_user(user_id)
        notices = list(peer.notices)
        if not self.trust.can_send(user_id):
            self.save()  # keep the pending change: it is reported until accepted
            c = self.trust.contact(user_id)
            assert c is not None and c.pending_fp is not None
            raise KeyChangedError(user_id, c.fp, c.pending_fp)
        own = await self.fetch_user(self.me.user_id)
        notices += own.notices
        now = now_ms()
        suites = self.state.device_suites  # our preference: the highest first
        sel = select_devices(peer.device_list, peer.spks, now, suites)
        own_sel = select_devices(
            own.device_list, own.spks, now, suites, exclude={self.me.device_id}
        )
        if own.identity.fp != self.uik_pub.fp:
            own_sel = DeviceSelection((), ())  # our user has another identity now: not ours
        unreachable_l: list[str] = []
        targets: list[tuple[str, DeviceTarget, UserKeys]] = []
        blocked_peer = False
        for u, s, keys in ((user_id, sel, peer), (self.me.user_id, own_sel, own)):
            unreachable_l += [f"{display(u)} device {d}: {why}" for d, why in s.unreachable]
            for t in s.targets:
                dev = t.device.device_id
                pin = self._suite_pin(u, dev)
                if dev in keys.downgraded or t.suite < pin:
                    unreachable_l.append(
                        f"{display(u)} device {dev}: suite downgrade from 0x{pin:04x} "
                        f"(blocked until: momedo trust {display(u)})"
                    )
                    blocked_peer = blocked_peer or u == user_id
                    continue
                targets.append((u, t, keys))
        unreachable = tuple(unreachable_l)
        if not any(u == user_id for u, _, _ in targets):
            why = f" ({'; '.join(unreachable)})" if unreachable else ""
            if blocked_peer:
                self.save()
                raise SuiteDowngradeError(
                    f"sending to {display(user_id)} is blocked: a device offers a lower suite "
                    f"than pinned{why}"
                )
            raise MessengerError(
                f"{display(user_id)} has no device this client can encrypt to{why}"
            )
        conv = dm_conv_id(self.me.user_id, user_id)
        kvd_ = self.kvd_for(user_id, peer.identity.fp)
        outs: list[Outgoing] = []
        for suite_id in sorted({t.suite for _, t, _ in targets}, reverse=True):
            group = [(u, t, k) for u, t, k in targets if t.suite == suite_id]
            outs.append(
                await self._prepare_group(
                    conv, suite_id, group, now, kvd_, content, content_type=content_type
                )
            )
        # Save the advanced chains before anything leaves: an index is never reused. The new
        # holders are recorded only after ACCEPTED (a lost SEND means a later ChainDist again).
        self.save()
        outs = [
            Outgoing(
                o.message_id,
                o.payload,
                o.recipients,
                o.new_holders,
                o.conv,
                o.chain_id,
                unreachable,
                o.suite,
            )
            for o in outs
        ]
        notices += [Notice("warning", f"not delivered to {u}") for u in unreachable]
        return SendBatch(tuple(outs)), notices

    async def _prepare_group(
        self,
        conv: bytes,
        suite_id: int,
        targets: list[tuple[str, DeviceTarget, UserKeys]],
        now: int,
        kvd_: bytes,
        content: bytes,
        *,
        epoch: int = 0,
        content_type: int = ContentType.TEXT,
    ) -> Outgoing:
        """One SEND on our chain of ``suite_id`` in ``conv`` to ``targets`` (all that suite).

        ``epoch`` is 0 in a 1:1 conversation and the roster epoch in a group (a chain of
        another epoch is replaced)."""
        names = {_addr_name(u, t.device.device_id) for u, t, _ in targets}
        key = f"{conv.hex()}:{suite_id:04x}"
        st = self.state.sending.get(key)
        chain = SendingChain.from_bytes(st.chain) if st else None
        holders = set(st.holders) if st else set()
        # A new chain when there is none, when it is old or long, and whenever the set of
        # devices that hold it differs from the devices to send to (a removed device must not
        # read on; an added one would only get the current key anyway). ``holders`` is empty
        # only before the first ACCEPTED of a chain: then its ChainDist simply goes to all.
        if (
            chain is None
            or needs_rotation(chain, now)
            or chain.epoch != epoch
            or (holders and holders != names)
        ):
            chain = SendingChain.new(get_suite(suite_id), self.me, conv, epoch, now, chain)
            holders = set()
        msg_id = os.urandom(MSG_ID_LEN)
        dist = chain.to_dist().encode()
        recipients: list[f.Recipient] = []
        new_holders: list[str] = []
        for uid, target, keys in targets:
            dev = target.device.device_id
            name = _addr_name(uid, dev)
            part = b""
            if name not in holders:
                kind, key_id, pub = await self.prekey_for(uid, target, keys, now)
                part = seal(
                    get_suite(target.suite),
                    self.me,
                    self._dk,
                    Addr(uid, dev),
                    kind,
                    key_id,
                    pub,
                    now,
                    msg_id,
                    ContentType.CHAIN_DIST,
                    dist,
                )
                new_holders.append(name)
            recipients.append(f.Recipient(uid, dev, part))
        payload = chain.encrypt(self._dk, now, msg_id, kvd_, content_type, content)
        self.state.sending[key] = SendingState(chain.to_bytes(), sorted(holders))
        return Outgoing(
            msg_id,
            payload,
            tuple(recipients),
            tuple(new_holders),
            key,
            chain.chain_id,
            (),
            suite_id,
        )

    async def prekey_for(
        self, uid: str, target: DeviceTarget, keys: UserKeys, now: int
    ) -> tuple[int, int, bytes]:
        """``(key_kind, key_id, public)`` to encrypt to ``target``: a claimed OTPK that
        verifies against the device list, else the target's SPK."""
        dev = target.device.device_id
        claimed = await self.client.key_claim(uid, dev, target.suite)
        if claimed:
            try:
                otpk = verify_prekey(claimed, keys.device_list, now, kind=PREKEY_OTPK)
                if otpk.device_id == dev and otpk.suite == target.suite:
                    return PREKEY_OTPK, otpk.key_id, otpk.pub
            except E2EError:
                pass  # a bad OTPK from the server: fall back to the SPK
        return PREKEY_SPK, target.prekey.key_id, target.prekey.pub

    def sent(self, out: SendBatch | Outgoing, text: str, to: str) -> None:
        """Record a successful SEND (all of a batch): the new holders of each chain, and the
        message log."""
        sends = out.sends if isinstance(out, SendBatch) else (out,)
        for o in sends:
            st = self.state.sending.get(o.conv)
            if st is not None and SendingChain.from_bytes(st.chain).chain_id == o.chain_id:
                st.holders = sorted(set(st.holders) | set(o.new_holders))
        self.log_sent(sends[0].message_id, text, to)

    def log_sent(self, message_id: bytes, text: str, to: str) -> None:
        """Add a sent message to the log and save."""
        self.state.log.append(
            {"dir": "out", "to": to, "ts_ms": now_ms(), "msg_id": message_id.hex(), "text": text}
        )
        self.save()

    def log_message(self, msg: Message) -> None:
        """Add a received message to the log (the caller saves)."""
        self.state.log.append({"dir": "in", **{k: v for k, v in msg.json().items() if k != "type"}})

    def render_content(
        self, content_type: int, content: bytes
    ) -> tuple[str, dict[str, Any] | None]:
        """The text to show for a conversation payload, and attachment metadata if any."""
        fields = content_fields(content_type, content)
        return fields["text"], fields["attachment"]

    # receiving ----------------------------------------------------------------------------

    def _kem_private(self, suite_id: int, kind: int, key_id: int) -> Any:
        pool = self.state.spks if kind == PREKEY_SPK else self.state.otpks
        pk = pool.get(key_id)
        if pk is None or pk.suite != suite_id:
            return None
        return kem_keypair_from_seed(get_suite(suite_id), pk.seed)[0]

    async def _open_seal(self, part: bytes) -> tuple[Any, list[Notice]]:
        seen: list[Addr] = []

        def record(sender: Addr) -> bytes | None:
            seen.append(sender)
            return self._sender_dk(sender)

        try:
            return open_seal(part, self.me, self._kem_private, record), []
        except E2EError as e:
            if e.reason != "unknown_sender" or not seen:
                raise
        dk, notices = await self._sender_dk_fetch(seen[0])
        opened = open_seal(part, self.me, self._kem_private, lambda _s: dk)
        return opened, notices

    def _peer_of(self, conv_id: bytes, sender: str) -> str | None:
        if sender != self.me.user_id:
            return sender
        for c in self.trust.contacts:
            if c.user_id != self.me.user_id and dm_conv_id(self.me.user_id, c.user_id) == conv_id:
                return c.user_id
        return None

    async def handle(self, ev: f.Deliver) -> list[Event]:
        """Process one DELIVER (not yet acked). Changes ``self.state``; the caller saves it
        and then acks. An envelope that cannot be opened gives one ``undecryptable`` notice."""
        events = await self._handle(ev)
        if isinstance(ev, f.DeliverUrgent):
            events = [
                dataclasses.replace(e, urgent=True) if isinstance(e, Message) else e for e in events
            ]
        return events

    async def _handle(self, ev: f.Deliver) -> list[Event]:
        mid = ev.message_id.hex()
        if mid in self.state.seen:
            return []  # a redelivery of something already processed
        now = now_ms()
        notices: list[Notice] = []
        sender_hint = "an unknown sender"
        if not ev.part and is_link_request(ev.payload):
            self.state.seen[mid] = now
            return [Notice("info", "ignored a device-link request (no `momedo link new` waiting)")]
        from momedod.client.groups import is_multi

        if not ev.part and is_conv_event(ev.payload):
            self.state.seen[mid] = now
            return await self.groups.on_event(ev.payload)
        if is_multi(ev.payload):
            self.state.seen[mid] = now
            return await self._saved(await self.groups.receive_multi(ev, now))
        try:
            if ev.part:
                opened, more = await self._open_seal(ev.part)
                notices += more
                sender_hint = f"{display(opened.sender.user_id)} (device {opened.sender.device_id})"
                if opened.content_type != ContentType.CHAIN_DIST:
                    raise E2EError(reason="content_type")
                dist = ChainDist.decode(opened.content)
                is_group, more = await self.groups.check_dist(dist, opened.sender, opened.suite)
                notices += more
                if not is_group:
                    # A group's suite is chosen from the members' signed device lists (the
                    # highest all of them list), so the 1:1 suite pins do not apply there.
                    self._check_suite(opened.sender, opened.suite)
                self.state.guard.accept(opened.sender, opened.msg_id, opened.ts_ms, now)
                if opened.key_kind == PREKEY_OTPK:
                    self.state.otpks.pop(opened.key_id, None)
                self._install(dist, opened.sender, opened.suite, group=is_group)
            chain_suite, chain_id, _n = peek_chain(ev.payload)
            raw = self.state.receiving.get(chain_id.hex())
            if raw is None:
                raise E2EError(reason="chain_id")
            rc = ReceivingChain.from_bytes(raw)
            sender_hint = f"{display(rc.owner.user_id)} (device {rc.owner.device_id})"
            dk, more = await self._sender_dk_fetch(rc.owner)
            notices += more
            if dk is None:
                raise E2EError(reason="unknown_sender")
            if self.groups.group(rc.conv_id) is None:
                self._check_suite(rc.owner, chain_suite)
            conv = rc.decrypt(ev.payload, dk, now)
            if conv.msg_id != ev.message_id:
                raise E2EError(reason="malformed")
            self.state.receiving[chain_id.hex()] = rc.to_bytes()
        except (E2EError, MessengerError) as e:
            reason = e.reason if isinstance(e, E2EError) else str(e)
            self.state.seen[mid] = now
            return [
                *notices,
                Notice(
                    "undecryptable",
                    f"could not decrypt a message from {sender_hint} ({reason})",
                ),
            ]
        self.state.seen[mid] = now
        sender = conv.sender
        if self.groups.group(conv.conv_id) is not None:
            # Once per connection: compare the server's membership with the signed roster
            # (an unsigned change is reported), and learn a newer roster.
            try:
                notices += await self.groups.refresh(conv.conv_id)
            except (ServerError, MessengerError) as e:
                notices.append(Notice("warning", f"could not check the group's roster: {e}"))
            key, name, gw = self.groups.context(conv.conv_id, conv.epoch, sender)
            gmsg = Message(
                sender.user_id,
                sender.device_id,
                None,
                sender.user_id == self.me.user_id,
                conv.ts_ms,
                mid,
                warnings=tuple(gw),
                group=key,
                group_name=name,
                **content_fields(conv.content_type, conv.content),
            )
            self.log_message(gmsg)
            return await self._saved([*notices, gmsg])
        peer = self._peer_of(conv.conv_id, sender.user_id)
        warnings: list[str] = []
        if peer is not None:
            c = self.trust.contact(peer)
            if c is not None:
                if c.blocked:
                    warnings.append(f"identity key of {display(peer)} changed: not accepted yet")
                elif conv.kvd != self.kvd_for(peer, c.fp):
                    warnings.append("the sender sees other identity keys than you (KVD differs)")
        msg = Message(
            sender.user_id,
            sender.device_id,
            peer,
            sender.user_id == self.me.user_id,
            conv.ts_ms,
            mid,
            warnings=tuple(warnings),
            **content_fields(conv.content_type, conv.content),
        )
        self.log_message(msg)
        return await self._saved([*notices, msg])

    async def _saved(self, events: list[Event]) -> list[Event]:
        """Let the attachment saver (if any) download and save the attachments of
        ``events``; a failure becomes a warning on the message."""
        if self.attachment_saver is None:
            return events
        out: list[Event] = []
        for e in events:
            if isinstance(e, Message) and e.attachment is not None:
                e = await self.attachment_saver(e)
            out.append(e)
        return out

    def _install(self, dist: ChainDist, owner: Addr, suite_id: int, *, group: bool = False) -> None:
        own = owner.user_id == self.me.user_id
        if not own and not group and dist.conv_id != dm_conv_id(self.me.user_id, owner.user_id):
            raise E2EError(reason="conv_id")
        key = dist.chain_id.hex()
        old = self.state.receiving.get(key)
        if old is not None:
            if ReceivingChain.from_bytes(old).owner != owner:
                raise E2EError(reason="chain_id")
            return  # already have it (a redistribution): keep our position
        rc = ReceivingChain.from_dist(dist, owner, suite_id)
        self.state.receiving[key] = rc.to_bytes()

    def prune(self) -> None:
        now = now_ms()
        self.state.guard.prune(now)
        self.state.seen = {k: v for k, v in self.state.seen.items() if v >= now - SEEN_KEEP_MS}
        for key, raw in list(self.state.receiving.items()):
            rc = ReceivingChain.from_bytes(raw)
            if rc.expire_skipped(now):
                self.state.receiving[key] = rc.to_bytes()

    async def receive(
        self,
        on_event: Callable[[Event], Awaitable[None] | None],
        *,
        wait: float | None = 0.0,
    ) -> int:
        """Process deliveries: each is handled, the state saved, then acked, then reported.

        ``wait`` = seconds to keep listening after DRAINED (None: forever). Returns the number
        of deliveries processed.
        """
        count = 0
        deadline: float | None = None
        for notice in await self.self_check():
            res = on_event(notice)
            if res is not None:
                await res
        while True:
            timeout = None
            if deadline is not None:
                timeout = deadline - trio.current_time()
                if timeout <= 0:
                    break
            try:
                ev = await self.client.receive(timeout)
            except trio.TooSlowError:
                break
            if isinstance(ev, f.Drained):
                if wait is not None:
                    deadline = trio.current_time() + wait
                continue
            events = await self.handle(ev)
            self.save()
            await self.client.ack([ev.seq])
            count += 1
            for event in events:
                res = on_event(event)
                if res is not None:
                    await res
        self.prune()
        self.save()
        return count


def _rogue_text(alarm: RogueDevice) -> str:
    why = "was not added by any of your devices"
    if alarm.reason != "not added by me":
        why = alarm.reason
    return f"ALARM: device {alarm.device_id} on your device list (version {alarm.version}) {why}"


# -- whole operations with a connection (used by the CLI) ------------------------------------


def text_content(text: str, reply_to: bytes = b"") -> tuple[int, bytes]:
    """(content type, content) of a text: TEXT, or RICH_TEXT when it answers ``reply_to``."""
    if not reply_to:
        return ContentType.TEXT, text.encode()
    try:
        return ContentType.RICH_TEXT, RichText(text, reply_to).encode()
    except ValueError as e:
        raise MessengerError(str(e)) from None


async def send_text(
    profile: Profile, user_id: str, text: str, *, reply_to: bytes = b"", urgent: bool = False
) -> tuple[SendBatch, list[Notice]]:
    """Connect, prepare and SEND (one SEND per suite); on a lost connection retry each with
    the same message_id (the server de-duplicates an already accepted one). ``reply_to``
    (a message ID) makes it a RICH_TEXT reply; ``urgent`` sends SEND_URGENT (the server
    refuses it unless the operator allowed this user)."""
    content_type, content = text_content(text, reply_to)
    creds = profile.credentials()
    state = profile.load_state()
    out: SendBatch | None = None
    notices: list[Notice] = []
    last: ClientError | None = None
    for _attempt in range(SEND_ATTEMPTS):
        try:
            async with transport_connect(creds) as client:
                m = Messenger(profile, client, state)
                if out is None:
                    notices = await maintain_prekeys(profile, client, state)
                    out, more = await m.prepare_text(
                        user_id, text, content_type=content_type, content=content
                    )
                    notices += more
                for one in out.sends:
                    await client.send(one.message_id, one.payload, one.recipients, urgent=urgent)
                m.sent(out, text, user_id)
                return out, notices
        except ServerError:
            raise
        except ClientError as e:
            if out is None:
                raise
            last = e
            await trio.sleep(0.5)
    assert last is not None
    raise last


RECONNECT_AFTER = frozenset(
    {ErrorCode.SERVER_BUSY, ErrorCode.SHUTTING_DOWN, ErrorCode.TIMEOUT, ErrorCode.INTERNAL}
)
"""Server errors after which ``receive(wait=None)`` reconnects; any other one ends it."""
RECONNECT_RESET_S = 60.0
"""A connection that lasted this long starts the back-off from the beginning again."""


async def receive(
    profile: Profile,
    on_event: Callable[[Event], Awaitable[None] | None],
    *,
    wait: float | None = 0.0,
    save_dir: Path | None = None,
    backoff: Backoff = DEFAULT_BACKOFF,
) -> int:
    """Connect and process deliveries (see :meth:`Messenger.receive`); with ``save_dir``,
    received attachments are downloaded, checked, decrypted and saved there.

    ``wait=None`` (``momedo listen``) runs until cancelled: once connected, a lost
    connection (or a node shutting down) is reported as a notice and the client reconnects
    through ``connect`` — every address, the one that last worked first — after a
    jittered, doubling ``backoff``. Each connection starts from the state as saved, so a
    delivery that was processed but not acknowledged is recognised when it comes again.
    A first connection that fails, a pin mismatch on every address and a final server
    error (disabled user, revoked device, ...) end it with the error.
    """
    if wait is not None:
        return await _receive_once(profile, on_event, wait, save_dir, None)
    count = 0
    failures = 0
    connected: list[Address] = []  # the address of the last connection, once there was one
    while True:
        started = trio.current_time()
        try:
            count += await _receive_once(profile, on_event, None, save_dir, connected)
        except PinMismatch:
            raise
        except ServerError as e:
            if not connected or e.code not in RECONNECT_AFTER:
                raise
            error: ClientError = e
        except ClientError as e:
            if not connected:
                raise
            error = e
        if trio.current_time() - started > RECONNECT_RESET_S:
            failures = 0
        delay = backoff.delay(failures)
        failures += 1
        await _emit_event(
            on_event,
            Notice("warning", f"connection lost ({error}); reconnecting in {delay:.1f} s"),
        )
        await trio.sleep(delay)


async def _emit_event(on_event: Callable[[Event], Awaitable[None] | None], event: Event) -> None:
    res = on_event(event)
    if res is not None:
        await res


async def _receive_once(
    profile: Profile,
    on_event: Callable[[Event], Awaitable[None] | None],
    wait: float | None,
    save_dir: Path | None,
    connected: list[Address] | None,
) -> int:
    creds = profile.credentials()
    state = profile.load_state()
    async with transport_connect(creds) as client:
        if connected is not None:
            if connected and len(creds.addresses) > 1:
                where = format_address(*client.address)
                await _emit_event(on_event, Notice("info", f"reconnected to {where}"))
            elif connected:
                await _emit_event(on_event, Notice("info", "reconnected"))
            connected[:] = [client.address]
        for notice in await maintain_prekeys(profile, client, state):
            res = on_event(notice)
            if res is not None:
                await res
        msgr = Messenger(profile, client, state)
        if save_dir is not None:
            from momedod.client.attachments import saver

            msgr.attachment_saver = saver(msgr, save_dir)
        return await msgr.receive(on_event, wait=wait)


async def with_messenger(profile: Profile, fn: Callable[[Messenger], Awaitable[Any]]) -> Any:
    creds = profile.credentials()
    state = profile.load_state()
    async with transport_connect(creds) as client:
        return await fn(Messenger(profile, client, state))
