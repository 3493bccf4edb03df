"""Groups and channels in the client (docs/E2E.md, "Groups and channels in the client").

A conversation (group or channel) is known to this device only through its *verified* roster
chain: :class:`Groups` fetches rosters with CONV_GET, checks each one against the previous
(:func:`~momedod.e2e.roster.check_roster_successor`) and its signature (the pinned
organisation key for an organisation-managed conversation, the signing admin's device key
from that user's verified device list for a user group), and keeps the newest one in
``e2e.json`` (:class:`~momedod.client.profile.GroupState`). The server's own membership list
is compared with it and every difference is reported; nothing is ever encrypted to a user the
verified roster does not list.

Sending: the targets are the devices of the verified members (each member's verified device
list, with a valid SPK of the group's suite) and our other devices. Symmetric mode (CHAINS)
reuses the 1:1 chain machinery with ``conv_id`` = the group's ID and ``epoch`` = the roster
epoch; asymmetric mode (MULTI) wraps a fresh content key for every device
(:func:`~momedod.e2e.multi.multi_encrypt`). One CONV_SEND per message.

Receiving: a group ChainDist or Multi is accepted only from a device of a member of the
verified roster (a channel: an admin), for the group's ``conv_id`` and an epoch not above the
verified one (a lower epoch is shown with "sent before the membership change"). A server
EVENT (``ConvEvent``, unauthenticated) is only a hint to fetch and verify again.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import trio

from momedod.client.messenger import (
    Event,
    Message,
    Messenger,
    MessengerError,
    Notice,
    Outgoing,
    UserKeys,
    content_fields,
    maintain_prekeys,
    now_ms,
    text_content,
)
from momedod.client.profile import E2EState, GroupState, Profile
from momedod.client.transport import ClientError, ServerError
from momedod.client.transport import connect as transport_connect
from momedod.e2e.chain import ChainDist
from momedod.e2e.envelope import MAGIC, VERSION, Addr, EnvelopeType
from momedod.e2e.errors import E2EError
from momedod.e2e.event import EVENT_DELETED, EVENT_HELD, parse_conv_event
from momedod.e2e.identity import DeviceKey, HybridPublicKey
from momedod.e2e.multi import multi_encrypt, multi_open
from momedod.e2e.records import DeviceEntry, DeviceTarget, select_devices
from momedod.e2e.roster import (
    KIND_CHANNEL,
    KIND_GROUP,
    MODE_CHAINS,
    MODE_MULTI,
    ROLE_ADMIN,
    ROLE_MEMBER,
    SIGNER_ORG,
    Roster,
    RosterRecord,
    check_roster_successor,
    current_org_key,
    parse_org_key_record,
    parse_roster_record,
    roster_changes,
    sign_roster_device,
    verify_roster_signature,
)
from momedod.e2e.safety import dm_conv_id, kvd
from momedod.e2e.seal import MSG_ID_LEN
from momedod.e2e.suites import get_suite
from momedod.protocol import frames as f
from momedod.protocol.errors import ErrorCode
from momedod.protocol.invite import fingerprint_text
from momedod.protocol.records import PREKEY_OTPK
from momedod.protocol.userid import display

MIN_PREFIX = 6
"""Shortest conv_id hex prefix accepted on the command line."""
MAX_CONTENT_BYTES = 16_000
"""Longest message content (UTF-8 text, or an attachment pointer) sent to a group."""
SEND_ATTEMPTS = 3
KIND_NAMES = {KIND_GROUP: "group", KIND_CHANNEL: "channel"}
MODE_NAMES = {MODE_CHAINS: "chains", MODE_MULTI: "multi"}
OLDER_EPOCH = "sent before the membership change"


def _error(text: str) -> MessengerError:
    return MessengerError(text)


def _notice(kind: str, text: str) -> Notice:
    return Notice(kind, text)


# -- envelopes ---------------------------------------------------------------------------------


def is_multi(payload: bytes) -> bool:
    """True if ``payload`` starts like a Multi envelope (a header of type 0x03)."""
    return (
        len(payload) >= 4
        and int.from_bytes(payload[:2], "big") == MAGIC
        and payload[2] == VERSION
        and payload[3] == EnvelopeType.MULTI
    )


# -- naming ----------------------------------------------------------------------------------


def group_name(g: GroupState, conv_id_hex: str) -> str:
    """What a group is called in output: its title, else the start of its ID."""
    return g.title or conv_id_hex[:12]


def resolve(state: E2EState, text: str) -> bytes:
    """The conv_id a user means by ``text``: the full ID (32 hex chars), a unique prefix of at
    least 6 hex chars, or the unique title among the known groups."""
    t = text.strip()
    low = t.lower()
    if len(low) == 32 and all(c in "0123456789abcdef" for c in low):
        return bytes.fromhex(low)
    by_title = [c for c, g in state.groups.items() if g.title == t]
    if len(by_title) == 1:
        return bytes.fromhex(by_title[0])
    if len(by_title) > 1:
        raise _error(f'several groups are called "{t}"; use the ID: momedo groups')
    if len(low) >= MIN_PREFIX and all(c in "0123456789abcdef" for c in low):
        hits = [c for c in state.groups if c.startswith(low)]
        if len(hits) == 1:
            return bytes.fromhex(hits[0])
        if len(hits) > 1:
            raise _error(f"the ID prefix {low} is not unique; use more characters")
    raise _error(f'no known group "{t}" (list them with: momedo groups)')


def _who(user_id: str, me: str) -> str:
    return "you" if user_id == me else display(user_id)


# -- sending plan ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupSend:
    """One prepared CONV_SEND, kept to retry with the same message_id."""

    conv_id: bytes
    message_id: bytes
    payload: bytes
    parts: tuple[f.Recipient, ...]
    devices: tuple[str, ...]  # every target device "USERID/device"
    unreachable: tuple[str, ...]
    chain: Outgoing | None = None  # CHAINS mode: the chain bookkeeping (new holders)
    blob_ids: tuple[bytes, ...] = ()
    name: str = ""


@dataclass
class _Verified:
    """The result of checking the rosters of one CONV_INFO."""

    adopted: list[tuple[RosterRecord, int]] = field(default_factory=list)  # (record, org ver)
    failure: str | None = None


class Groups:
    """The group operations of one :class:`~momedod.client.messenger.Messenger`."""

    def __init__(self, msgr: Messenger) -> None:
        self.m = msgr
        self._fresh: set[str] = set()  # groups fetched during this connection

    @property
    def state(self) -> E2EState:
        return self.m.state

    @property
    def me(self) -> Addr:
        return self.m.me

    def group(self, conv_id: bytes) -> GroupState | None:
        return self.state.groups.get(conv_id.hex())

    @staticmethod
    def roster(g: GroupState) -> Roster:
        return parse_roster_record(g.record).roster

    # fetching and verifying ---------------------------------------------------------------

    def _org_keys(
        self, records: Sequence[bytes], name: str, notices: list[Notice]
    ) -> dict[int, HybridPublicKey]:
        """Verify the organisation key chain against our pin (TOFU-pin it if there is none):
        version -> key for every key of the chain. Raises E2EError(reason="org_key")."""
        pinned = self.state.org_fp
        newest = current_org_key(records, pinned)
        if pinned is None:
            self.state.org_fp, self.state.org_source = newest.fp, "tofu"
            notices.append(
                _notice(
                    "info",
                    f"pinned the organisation key {fingerprint_text(newest.fp)} (first use, "
                    f'with "{name}"); compare it with the one your organisation gives out '
                    "(momedoctl org key)",
                )
            )
        return {rec.version: rec.org_pub for rec in map(parse_org_key_record, records)}

    async def _signer_dk(self, signer: Addr) -> bytes | None:
        """The DK of a roster-signing device: from its user's verified device lists, the
        newest that lists the device."""
        keys = await self.m.fetch_user(signer.user_id)
        for dl in reversed(keys.lists):
            entry = dl.device(signer.device_id)
            if entry is not None:
                return entry.dk_pub
        return None

    async def _verify_rosters(
        self,
        conv_id: bytes,
        g: GroupState | None,
        info: f.ConvInfo,
        name: str,
        notices: list[Notice],
    ) -> _Verified:
        """Check each roster of ``info`` that follows ``g`` (in order) until one fails."""
        out = _Verified()
        prev: Roster | None = self.roster(g) if g else None
        managed = g.managed if g else None
        org_version = g.org_key_version if g else 0
        org: dict[int, HybridPublicKey] | None = None
        for raw in info.rosters:
            try:
                rec = parse_roster_record(raw)
                if prev is not None and rec.roster.epoch <= prev.epoch:
                    continue  # not newer than what we have
                if rec.roster.conv_id != conv_id:
                    raise E2EError("the roster is for another conversation", reason="conv_id")
                check_roster_successor(prev, rec)
                is_org = rec.signer_kind == SIGNER_ORG
                if managed is not None and is_org != managed:
                    raise E2EError(
                        "the signer kind changed (organisation vs. device)", reason="signer"
                    )
                if is_org:
                    if org is None:
                        org = self._org_keys(info.org_keys, name, notices)
                    # The signing key must be of the pinned chain and not older than the key
                    # that signed the previous roster (a retired key signs nothing new).
                    ver = next(
                        (
                            v
                            for v, key in sorted(org.items(), reverse=True)
                            if v >= org_version and verify_roster_signature(rec, org_key=key)
                        ),
                        0,
                    )
                    if not ver:
                        raise E2EError("not signed by the organisation key", reason="signature")
                    org_version = ver
                else:
                    assert rec.signer is not None
                    try:
                        dk = await self._signer_dk(rec.signer)
                    except MessengerError as e:  # the signer's keys do not verify
                        raise E2EError(f"signer keys: {e}", reason="signer") from None
                    if dk is None or not verify_roster_signature(rec, device_dk_public=dk):
                        raise E2EError("bad device signature", reason="signature")
                    org_version = 0
            except E2EError as e:
                out.failure = f"{e.reason}: {e.message}"
                break
            out.adopted.append((rec, org_version))
            prev, managed = rec.roster, is_org
        return out

    def _change_notices(self, old: Roster | None, rec: RosterRecord, name: str) -> list[Notice]:
        new = rec.roster
        me = self.me.user_id
        if rec.signer_kind == SIGNER_ORG:
            by = "the organisation"
        else:
            assert rec.signer is not None
            by = _who(rec.signer.user_id, me)
        kind = KIND_NAMES[new.kind]
        if old is None:
            role = "an admin" if new.role_of(me) == ROLE_ADMIN else "a member"
            return [
                _notice(
                    "info",
                    f'you are {role} of the {kind} "{name}" ({len(new.members)} members, '
                    f"{MODE_NAMES[new.mode]} mode, roster epoch {new.epoch} signed by {by})",
                )
            ]
        out: list[Notice] = []
        for what, arg in roster_changes(old, new):
            who = _who(arg, me)
            if what == "added":
                text = f'{who} {"were" if arg == me else "was"} added to "{name}" by {by}'
            elif what == "removed":
                text = f'{who} {"were" if arg == me else "was"} removed from "{name}" by {by}'
            elif what == "admin":
                text = f'{who} {"are" if arg == me else "is"} now an admin of "{name}" ({by})'
            elif what == "unadmin":
                text = f'{who} {"are" if arg == me else "is"} no longer an admin of "{name}" ({by})'
            else:
                text = f'"{old.title}" was renamed to "{arg}" by {by}'
            out.append(_notice("info", text))
        return out

    def _membership_warnings(self, roster: Roster, info: f.ConvInfo, name: str) -> list[str]:
        """Differences between the server's membership and the verified roster."""
        me = self.me.user_id
        server = {x.user_id: x.role for x in info.members}
        signed = dict(roster.members)
        out: list[str] = []
        for u in sorted(server.keys() - signed.keys()):
            if u == me:
                out.append(f'the server lists you in "{name}" without a signed roster')
            else:
                out.append(
                    f'the server lists {display(u)} in "{name}" without a signed roster; '
                    f"{display(u)} gets nothing from this client"
                )
        for u in sorted(signed.keys() - server.keys()):
            out.append(
                f'the server does not list {_who(u, me)} in "{name}" although the signed '
                "roster does (they may not receive messages)"
            )
        for u in sorted(signed.keys() & server.keys()):
            if signed[u] != server[u]:
                role = "an admin" if server[u] == ROLE_ADMIN else "a member"
                out.append(
                    f'the server treats {_who(u, me)} as {role} of "{name}", the signed roster '
                    "does not"
                )
        if info.epoch != roster.epoch:
            out.append(
                f'the server is at roster epoch {info.epoch} of "{name}", but only epoch '
                f"{roster.epoch} verifies"
            )
        return out

    async def refresh(self, conv_id: bytes, *, force: bool = False) -> list[Notice]:
        """CONV_GET the conversation since the known epoch, verify and adopt new rosters, and
        compare the server's membership with the verified roster. Returns notices.

        Without ``force`` a group is fetched at most once per connection. An unknown
        conversation whose rosters do not verify is not remembered."""
        key = conv_id.hex()
        if not force and key in self._fresh:
            return []
        g = self.state.groups.get(key)
        name = group_name(g, key) if g else key[:12]
        notices: list[Notice] = []
        try:
            info = await self.m.client.conv_get(conv_id, g.epoch if g else 0)
        except ServerError as e:
            if e.code not in (ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND):
                raise
            self._fresh.add(key)
            if g is not None and not g.left:
                g.left = True
                notices.append(
                    _notice(
                        "warning",
                        f'you are no longer a member of "{name}" (the server refuses it: '
                        f"{e.message})",
                    )
                )
            if g is None:
                raise
            return notices
        self._fresh.add(key)
        if g is not None and info.epoch < g.epoch:
            notices.append(
                _notice(
                    "warning",
                    f'the server shows roster epoch {info.epoch} of "{name}", older than the '
                    f"verified epoch {g.epoch}: keeping ours",
                )
            )
        old_roster = self.roster(g) if g else None
        checked = await self._verify_rosters(conv_id, g, info, name, notices)
        for rec, ver in checked.adopted:
            title = rec.roster.title
            notices += self._change_notices(old_roster, rec, title or name)
            old_roster = rec.roster
            if g is None:
                g = GroupState(
                    rec.encode(),
                    rec.roster.epoch,
                    title,
                    rec.roster.kind,
                    rec.signer_kind == SIGNER_ORG,
                    rec.roster.mode,
                )
                self.state.groups[key] = g
            else:
                g.record, g.epoch, g.title = rec.encode(), rec.roster.epoch, title
                g.mode = rec.roster.mode
            g.org_key_version = ver
            name = group_name(g, key)
        if g is None:
            why = f" ({checked.failure})" if checked.failure else ""
            raise _error(f"conversation {key[:12]}: no roster from the server verifies{why}")
        if checked.failure is not None:
            notices.append(
                _notice(
                    "warning",
                    f'a roster of "{name}" from the server does not verify ({checked.failure}); '
                    f"not adopted: this client stays at epoch {g.epoch}",
                )
            )
        g.left = False
        warnings = self._membership_warnings(self.roster(g), info, name)
        for w in warnings:
            if w not in g.warnings:
                notices.append(_notice("warning", w))
        g.warnings = warnings
        return notices

    async def find(self, text: str, notices: list[Notice]) -> bytes:
        """:func:`resolve` ``text``; if no known group matches, learn the conversations the
        server lists for us (CONV_LIST, verified) and try again."""
        try:
            return resolve(self.state, text)
        except MessengerError:
            notices += await self.discover()
        return resolve(self.state, text)

    async def discover(self) -> list[Notice]:
        """CONV_LIST and refresh every conversation (new ones are adopted if they verify)."""
        notices: list[Notice] = []
        listed = {c.conv_id.hex() for c in await self.m.client.conv_list()}
        for key in sorted(listed | set(self.state.groups)):
            try:
                notices += await self.refresh(bytes.fromhex(key), force=True)
            except ServerError as e:
                notices.append(_notice("warning", f"conversation {key[:12]}: {e}"))
            except MessengerError as e:  # nothing verifies
                notices.append(_notice("warning", str(e)))
        return notices

    # receiving ----------------------------------------------------------------------------

    async def check_dist(
        self, dist: ChainDist, sender: Addr, suite: int
    ) -> tuple[bool, list[Notice]]:
        """Is ``dist`` (from a Seal of ``suite``) a group ChainDist, and may ``sender``
        distribute it? Returns (is_group, notices); raises E2EError if it is for a group but
        not acceptable."""
        key = dist.conv_id.hex()
        own = sender.user_id == self.me.user_id
        notices: list[Notice] = []
        if key not in self.state.groups:
            if not own and dist.conv_id == dm_conv_id(self.me.user_id, sender.user_id):
                return False, []
            if own and any(
                dm_conv_id(self.me.user_id, c.user_id) == dist.conv_id
                for c in self.m.trust.contacts
            ):
                return False, []
            try:
                notices += await self.refresh(dist.conv_id)
            except ServerError:
                if own:
                    return False, notices  # a 1:1 chain of ours with someone not pinned here
                raise E2EError(reason="conv_id") from None
        g = self.state.groups[key]
        await self._accept_sender(g, dist.conv_id, dist.epoch, sender, suite, notices)
        return True, notices

    async def _accept_sender(
        self,
        g: GroupState,
        conv_id: bytes,
        epoch: int,
        sender: Addr,
        suite: int,
        notices: list[Notice],
    ) -> None:
        """A group ChainDist or Multi of ``epoch`` and ``suite`` from ``sender``: the epoch
        is not above the verified roster's (refreshed first if it is), the suite not below
        its ``min_suite``, the sender a member (a channel: an admin). Raises E2EError."""
        if epoch > g.epoch:
            notices += await self.refresh(conv_id, force=True)
        if epoch > g.epoch:
            raise E2EError("epoch above the verified roster", reason="epoch")
        roster = self.roster(g)
        if suite < roster.min_suite:
            raise E2EError("suite below the roster's minimum", reason="suite")
        role = roster.role_of(sender.user_id)
        if role is None:
            raise E2EError("sender not in the signed roster", reason="not_member")
        if g.kind == KIND_CHANNEL and role != ROLE_ADMIN:
            raise E2EError("only admins post to a channel", reason="not_admin")

    def context(self, conv_id: bytes, epoch: int, sender: Addr) -> tuple[str, str, list[str]]:
        """(conv_id hex, group name, warnings) to show a message of a group."""
        key = conv_id.hex()
        g = self.state.groups[key]
        warnings = []
        if epoch < g.epoch:
            warnings.append(OLDER_EPOCH)
            if self.roster(g).role_of(sender.user_id) is None:
                warnings.append(f"{display(sender.user_id)} is no longer a member")
        return key, group_name(g, key), warnings

    async def on_event(self, payload: bytes) -> list[Event]:
        """A server EVENT: fetch and verify (it is only a hint)."""
        try:
            ev = parse_conv_event(payload)
        except E2EError:
            return [_notice("warning", "ignored a malformed conversation event from the server")]
        g = self.group(ev.conv_id)
        key = ev.conv_id.hex()
        name = group_name(g, key) if g else key[:12]
        if ev.what == EVENT_HELD:  # conv_id is the message_id of a message we sent
            when = datetime.fromtimestamp(ev.epoch / 1000).strftime("%a %H:%M")
            return [
                _notice(
                    "info",
                    f"message {ev.conv_id.hex()}: a recipient has quiet hours; "
                    f"delivered to their phone after {when}",
                )
            ]
        if ev.what == EVENT_DELETED:
            if g is not None and not g.left:
                g.left = True
                return [_notice("warning", f'the server says "{name}" was deleted')]
            return []
        try:
            return list(await self.refresh(ev.conv_id, force=True))
        except ServerError as e:
            if g is None:
                return []  # a conversation we never knew and cannot read: nothing to say
            return [_notice("warning", f'"{name}": {e}')]
        except MessengerError as e:  # nothing verifies
            return [_notice("warning", str(e))]

    async def receive_multi(self, ev: f.Deliver, now: int) -> list[Event]:
        """Open a Multi envelope with our Wrap (the DELIVER part) and check the sender."""
        notices: list[Notice] = []
        seen: list[Addr] = []
        sender_hint = "an unknown sender"

        def record(sender: Addr) -> bytes | None:
            seen.append(sender)
            return self.m._sender_dk(sender)

        try:
            if not ev.part:
                raise E2EError(reason="no_wrap")
            try:
                conv = multi_open(ev.payload, ev.part, self.me, self.m._kem_private, record)
            except E2EError as e:
                if e.reason != "unknown_sender" or not seen:
                    raise
                dk, more = await self.m._sender_dk_fetch(seen[0])
                notices += more
                conv = multi_open(ev.payload, ev.part, self.me, self.m._kem_private, lambda _s: dk)
            sender_hint = f"{display(conv.sender.user_id)} (device {conv.sender.device_id})"
            if conv.msg_id != ev.message_id:
                raise E2EError(reason="malformed")
            g = self.group(conv.conv_id)
            if g is None:
                try:
                    notices += await self.refresh(conv.conv_id)
                except ServerError:
                    raise E2EError(reason="conv_id") from None
                g = self.group(conv.conv_id)
                assert g is not None
            suite = int.from_bytes(ev.payload[4:6], "big")  # checked by multi_open
            await self._accept_sender(g, conv.conv_id, conv.epoch, conv.sender, suite, notices)
            self.state.guard.accept(conv.sender, conv.msg_id, conv.ts_ms, now)
            if ev.part[12] == PREKEY_OTPK:  # Wrap = Addr | u8 key_kind | u32 key_id | ...
                self.state.otpks.pop(int.from_bytes(ev.part[13:17], "big"), None)
        except (E2EError, MessengerError) as e:
            reason = e.reason if isinstance(e, E2EError) else str(e)
            return [
                *notices,
                Notice(
                    "undecryptable", f"could not decrypt a message from {sender_hint} ({reason})"
                ),
            ]
        key, name, warnings = self.context(conv.conv_id, conv.epoch, conv.sender)
        msg = Message(
            conv.sender.user_id,
            conv.sender.device_id,
            None,
            conv.sender.user_id == self.me.user_id,
            conv.ts_ms,
            ev.message_id.hex(),
            warnings=tuple(warnings),
            group=key,
            group_name=name,
            **content_fields(conv.content_type, conv.content),
        )
        self.m.log_message(msg)
        return [*notices, msg]

    # changing rosters ---------------------------------------------------------------------

    async def _put(self, conv_id: bytes, roster: Roster) -> list[Notice]:
        record = sign_roster_device(
            roster, self.me, DeviceKey(self.state.dk_seed), suite=SUITE_FOR_ROSTERS
        )
        await self.m.client.conv_put(conv_id, record)
        return await self.refresh(conv_id, force=True)

    async def create(
        self, title: str, kind: int, mode: int, members: Sequence[str]
    ) -> tuple[bytes, list[Notice]]:
        """Create a user group: epoch 1 signed by this device, us as the (only) admin."""
        notices: list[Notice] = []
        if len(title.encode()) > 256 or not title.strip():
            raise _error("a group name is 1 to 256 bytes of UTF-8")
        others = sorted(set(members) - {self.me.user_id})
        for u in others:  # every member must exist and have keys (clear errors first)
            notices += [n for n in (await self.m.fetch_user(u)).notices if n.kind != "info"]
        roles = {u: ROLE_MEMBER for u in others}
        roles[self.me.user_id] = ROLE_ADMIN
        conv_id = os.urandom(16)
        roster = Roster.first(conv_id, kind, roles, title, mode=mode)
        try:
            notices += await self._put(conv_id, roster)
        except ServerError as e:
            raise _error(f"the server refused to create the group: {e}") from None
        return conv_id, notices

    async def change(
        self, conv_id: bytes, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> list[Notice]:
        """Add or remove members of a user group (we must be an admin): a new roster,
        epoch + 1, signed by this device. A CONFLICT (someone else changed it meanwhile) is
        retried once on the newest verified roster."""
        notices: list[Notice] = []
        for attempt in range(2):
            notices += await self.refresh(conv_id, force=True)
            g = self.group(conv_id)
            assert g is not None
            name = group_name(g, conv_id.hex())
            if g.managed:
                raise _error(
                    f'"{name}" is managed by the organisation; ask an operator (momedoctl group '
                    "members)"
                )
            if g.left:
                raise _error(f'you are no longer a member of "{name}"')
            roster = self.roster(g)
            if roster.role_of(self.me.user_id) != ROLE_ADMIN:
                raise _error(f'only an admin of "{name}" can change its members')
            roles = dict(roster.members)
            for u in add:
                if u not in roles:
                    notices += [n for n in (await self.m.fetch_user(u)).notices if n.kind != "info"]
                    roles[u] = ROLE_MEMBER
            for u in remove:
                if u == self.me.user_id:
                    raise _error("you cannot remove yourself (not supported yet)")
                if u not in roles:
                    raise _error(f'{display(u)} is not a member of "{name}"')
                del roles[u]
            if roles == dict(roster.members):
                return notices
            try:
                notices += await self._put(conv_id, roster.next(members=roles))
                return notices
            except ServerError as e:
                if e.code == ErrorCode.CONFLICT and attempt == 0:
                    continue
                raise _error(f'the server refused the change of "{name}": {e}') from None
        return notices

    # sending ------------------------------------------------------------------------------

    async def prepare(
        self,
        conv_id: bytes,
        content_type: int,
        content: bytes,
        blob_ids: Sequence[bytes] = (),
    ) -> tuple[GroupSend, list[Notice]]:
        """Encrypt one message to the verified roster of a group (refreshed first)."""
        if len(content) > MAX_CONTENT_BYTES:
            raise _error(f"message longer than {MAX_CONTENT_BYTES} bytes")
        notices = await self.refresh(conv_id, force=True)
        key = conv_id.hex()
        g = self.state.groups[key]
        name = group_name(g, key)
        if g.left:
            raise _error(f'you are no longer a member of "{name}"')
        roster = self.roster(g)
        role = roster.role_of(self.me.user_id)
        if role is None:
            raise _error(f'you are not a member of "{name}" (signed roster)')
        if g.kind == KIND_CHANNEL and role != ROLE_ADMIN:
            raise _error(f'only admins may post to the channel "{name}"; you are a reader')
        now = now_ms()
        unreachable: list[str] = []
        fetched: list[tuple[str, UserKeys]] = []
        pinned = 0
        for uid in sorted(roster.user_ids()):
            try:
                keys = await self.m.fetch_user(uid)
            except MessengerError as e:  # no keys, keys do not verify
                unreachable.append(f"{display(uid)}: {e}")
                continue
            for n in keys.notices:
                if n.kind == "info" and n.text.startswith("pinned the identity key"):
                    pinned += 1
                else:
                    notices.append(n)
            own = uid == self.me.user_id
            if own and keys.identity.fp != self.m.uik_pub.fp:
                continue  # our user has another identity now: those devices are not ours
            if not own and not self.m.trust.can_send(uid):
                unreachable.append(
                    f"{display(uid)}: identity key changed, not accepted (momedo trust "
                    f"{display(uid)})"
                )
                continue
            fetched.append((uid, keys))
        if pinned:
            notices.append(
                _notice(
                    "info",
                    f"pinned the identity keys of {pinned} member{'' if pinned == 1 else 's'}",
                )
            )
        suite, candidates = self._group_suite(fetched, roster, unreachable, name)
        targets: list[tuple[str, DeviceTarget, UserKeys]] = []
        for uid, keys in fetched:
            wanted = candidates.get(uid, set())
            if not wanted:
                continue
            sel = select_devices(keys.device_list, keys.spks, now, (suite,))
            for t in sel.targets:
                if t.device.device_id in wanted:
                    targets.append((uid, t, keys))
            unreachable += [
                f"{display(uid)} device {d}: {why}" for d, why in sel.unreachable if d in wanted
            ]
        if not targets:
            why = f" ({'; '.join(unreachable)})" if unreachable else ""
            raise _error(f'nobody else in "{name}" can receive it{why}')
        kvd_ = kvd([(u, k.identity.fp) for u, k in fetched])
        devices = tuple(f"{u}/{t.device.device_id}" for u, t, _ in targets)
        if g.mode == MODE_MULTI:
            msg_id = os.urandom(MSG_ID_LEN)
            rcpts = []
            for uid, t, keys in targets:
                kind, key_id, pub = await self.m.prekey_for(uid, t, keys, now)
                rcpts.append((Addr(uid, t.device.device_id), kind, key_id, pub))
            payload, wraps = multi_encrypt(
                get_suite(suite),
                self.me,
                self.m.device_key,
                conv_id,
                roster.epoch,
                now,
                msg_id,
                kvd_,
                content_type,
                content,
                rcpts,
            )
            parts = tuple(f.Recipient(a.user_id, a.device_id, w) for a, w in wraps.items())
            out = GroupSend(
                conv_id,
                msg_id,
                payload,
                parts,
                devices,
                tuple(unreachable),
                None,
                tuple(blob_ids),
                name,
            )
        else:
            chain = await self.m._prepare_group(
                conv_id,
                suite,
                targets,
                now,
                kvd_,
                content,
                epoch=roster.epoch,
                content_type=content_type,
            )
            self.m.save()  # the advanced chain before anything leaves
            parts = tuple(r for r in chain.recipients if r.part)
            out = GroupSend(
                conv_id,
                chain.message_id,
                chain.payload,
                parts,
                devices,
                tuple(unreachable),
                chain,
                tuple(blob_ids),
                name,
            )
        notices += [_notice("warning", f'not delivered in "{name}" to {u}') for u in unreachable]
        return out, notices

    def _group_suite(
        self,
        fetched: list[tuple[str, UserKeys]],
        roster: Roster,
        unreachable: list[str],
        name: str,
    ) -> tuple[int, dict[str, set[int]]]:
        """The group's suite: the highest suite that this device and every candidate device
        list (from the signed device lists, at least the roster's min_suite), and the
        candidate devices per user. A device with no suite in common is left out."""
        ours = set(self.state.device_suites)
        candidates: dict[str, set[int]] = {}
        listed: list[tuple[str, DeviceEntry, set[int]]] = []
        for uid, keys in fetched:
            for entry in keys.device_list.entries:
                if uid == self.me.user_id and entry.device_id == self.me.device_id:
                    continue
                if entry.device_id in keys.downgraded:
                    unreachable.append(
                        f"{display(uid)} device {entry.device_id}: suite downgrade (blocked "
                        f"until: momedo trust {display(uid)})"
                    )
                    continue
                common = {s for s in entry.suites if s in ours and s >= roster.min_suite}
                if not common:
                    unreachable.append(f"{display(uid)} device {entry.device_id}: no common suite")
                    continue
                listed.append((uid, entry, common))
                candidates.setdefault(uid, set()).add(entry.device_id)
        if not listed:
            why = f" ({'; '.join(unreachable)})" if unreachable else ""
            raise _error(f'nobody else in "{name}" can receive it{why}')
        shared = set.intersection(*(c for _, _, c in listed))
        if not shared:
            devs = "; ".join(
                f"{display(u)} device {e.device_id}: " + ",".join(f"0x{s:04x}" for s in sorted(c))
                for u, e, c in listed
            )
            raise _error(f'no suite that every device in "{name}" supports ({devs})')
        return max(shared), candidates


SUITE_FOR_ROSTERS = 0x0002
"""Header suite of the RosterRecords this client signs (a DEVICE signature is Ed25519)."""


# -- whole operations with a connection (used by the CLI) ------------------------------------


async def _with(profile: Profile, fn: Callable[[Messenger], Awaitable[Any]]) -> Any:
    creds = profile.credentials()
    state = profile.load_state()
    async with transport_connect(creds) as client:
        msgr = Messenger(profile, client, state)
        try:
            return await fn(msgr)
        finally:
            msgr.save()


async def create_group(
    profile: Profile, title: str, members: Sequence[str], *, channel: bool, multi: bool
) -> tuple[bytes, list[Notice]]:
    kind = KIND_CHANNEL if channel else KIND_GROUP
    mode = MODE_MULTI if multi else MODE_CHAINS

    async def run(msgr: Messenger) -> tuple[bytes, list[Notice]]:
        return await msgr.groups.create(title, kind, mode, members)

    result: tuple[bytes, list[Notice]] = await _with(profile, run)
    return result


async def change_group(
    profile: Profile, group: str, add: Sequence[str] = (), remove: Sequence[str] = ()
) -> tuple[bytes, list[Notice]]:
    async def run(msgr: Messenger) -> tuple[bytes, list[Notice]]:
        notices: list[Notice] = []
        conv_id = await msgr.groups.find(group, notices)
        return conv_id, notices + await msgr.groups.change(conv_id, add, remove)

    result: tuple[bytes, list[Notice]] = await _with(profile, run)
    return result


def group_rows(state: E2EState) -> list[dict[str, Any]]:
    """The known groups for ``momedo groups``."""
    rows = []
    for key, g in sorted(state.groups.items(), key=lambda kv: (kv[1].title, kv[0])):
        roster = parse_roster_record(g.record).roster
        rows.append(
            {
                "id": key,
                "title": g.title,
                "kind": KIND_NAMES[g.kind],
                "managed": g.managed,
                "mode": MODE_NAMES[g.mode],
                "members": len(roster.members),
                "admins": sorted(display(u) for u in roster.admins()),
                "epoch": g.epoch,
                "left": g.left,
                "warnings": list(g.warnings),
            }
        )
    return rows


async def list_groups(profile: Profile) -> tuple[list[dict[str, Any]], list[Notice]]:
    async def run(msgr: Messenger) -> tuple[list[dict[str, Any]], list[Notice]]:
        notices = await msgr.groups.discover()
        return group_rows(msgr.state), notices

    result: tuple[list[dict[str, Any]], list[Notice]] = await _with(profile, run)
    return result


async def send_to_group(
    profile: Profile,
    group: str | bytes,
    content_type: int,
    content: bytes,
    log_text: str,
    blob_ids: Sequence[bytes] = (),
    *,
    urgent: bool = False,
) -> tuple[GroupSend, list[Notice]]:
    """Connect, refresh and verify the roster, encrypt and CONV_SEND (CONV_SEND_URGENT if
    ``urgent``); on a lost connection retry with the same message_id (the server
    de-duplicates)."""
    creds = profile.credentials()
    state = profile.load_state()
    conv_id = group if isinstance(group, bytes) else None
    out: GroupSend | None = None
    notices: list[Notice] = []
    last: ClientError | None = None
    for _attempt in range(SEND_ATTEMPTS):
        try:
            async with transport_connect(creds) as client:
                msgr = Messenger(profile, client, state)
                if out is None:
                    notices = await maintain_prekeys(profile, client, state)
                    if conv_id is None:
                        assert isinstance(group, str)
                        conv_id = await msgr.groups.find(group, notices)
                    try:
                        out, more = await msgr.groups.prepare(
                            conv_id, content_type, content, blob_ids
                        )
                    finally:
                        msgr.save()
                    notices += more
                try:
                    await client.conv_send(
                        out.message_id,
                        out.conv_id,
                        out.payload,
                        out.parts,
                        out.blob_ids,
                        urgent=urgent,
                    )
                except ServerError as e:
                    raise _error(f'the server refused the message to "{out.name}": {e}') from None
                if out.chain is not None:
                    msgr.sent(out.chain, log_text, f"group:{out.conv_id.hex()}")
                else:
                    msgr.log_sent(out.message_id, log_text, f"group:{out.conv_id.hex()}")
                return out, notices
        except ClientError as e:
            if out is None:
                raise
            last = e
            await trio.sleep(0.5)
    assert last is not None
    raise last


async def send_group_text(
    profile: Profile, group: str | bytes, text: str, *, reply_to: bytes = b"", urgent: bool = False
) -> tuple[GroupSend, list[Notice]]:
    content_type, content = text_content(text, reply_to)
    return await send_to_group(profile, group, content_type, content, text, urgent=urgent)
