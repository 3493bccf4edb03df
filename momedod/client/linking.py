"""Device linking and removal (docs/E2E.md, "Device linking").

* :func:`link_new` runs on an existing manager device P: it asks the server for a one-time
  invite of its own user (LINK_INVITE), hands out ``MOMEDO-LINK1:<invite link>:<secret>``,
  waits for the new device's MAC-authenticated LINK_REQUEST, publishes device list
  version + 1 with the new device (signed by the UIK) and sends it a LINK_PROVISION Seal.
* :func:`link_accept` runs on the new device N: it enrolls with the invite, sends the
  LINK_REQUEST to the user's devices, opens the LINK_PROVISION Seal with its one-off link
  key, checks it against the device list on the server, pins its user's identity and the
  contacts, and publishes its prekeys.
* :func:`remove_device` publishes device list version + 1 without a device.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from momedod.client.messenger import (
    Event,
    Messenger,
    MessengerError,
    Notice,
    _split,
    new_state,
    now_ms,
    publish_prekeys,
)
from momedod.client.profile import Profile
from momedod.client.transport import Client, connect_invite
from momedod.client.transport import connect as transport_connect
from momedod.e2e.envelope import Addr, ContentType
from momedod.e2e.errors import E2EError
from momedod.e2e.link import (
    LinkProvision,
    LinkRequest,
    PinnedContact,
    format_link_string,
    is_link_request,
    parse_link_string,
)
from momedod.e2e.records import (
    DeviceEntry,
    DeviceList,
    IdentityRecord,
    sign_device_list,
    verify_device_list_chain,
    verify_identity_history,
)
from momedod.e2e.safety import qr_string
from momedod.e2e.seal import KEY_KIND_LINK, MSG_ID_LEN, open_seal, seal
from momedod.e2e.suites import SUITE_XWING, get_suite, kem_keypair_from_seed
from momedod.e2e.trust import TrustLevel
from momedod.protocol import frames as f
from momedod.protocol.invite import InviteLink, parse_invite_link
from momedod.protocol.records import DEVICE_FLAG_MANAGER
from momedod.protocol.userid import display

LINK_WAIT_S = 300.0
"""How long ``link new`` and ``link accept`` wait for the other side by default."""
LINK_KEY_ID = 0
"""key_id of the LINK Seal (the link key LK is the only one of its kind)."""

OnEvent = Callable[[Event], Awaitable[None] | None]


async def _emit(on_event: OnEvent, event: Event) -> None:
    res = on_event(event)
    if res is not None:
        await res


def _invite_ttl(wait: float) -> int:
    return int(min(3600, max(60, math.ceil(wait) + 60)))


# -- the existing device -----------------------------------------------------------------------


async def _publish_list(msgr: Messenger, entries: list[DeviceEntry]) -> DeviceList:
    """Publish our user's device list version + 1 with ``entries`` (signed by our UIK)."""
    if msgr.uik is None:
        raise MessengerError(
            "this device is not a manager (it holds no identity key): "
            "manage devices from the device you enrolled first"
        )
    own = await msgr.fetch_user(msgr.me.user_id)
    dl = own.device_list
    if own.identity.fp != msgr.uik.fp or dl.signer_fp != msgr.uik.fp:
        raise MessengerError("your user's identity on the server is not this device's key")
    rec = sign_device_list(
        msgr.uik, msgr.me.user_id, dl.version + 1, dl.list_hash, now_ms(), entries
    )
    await msgr.client.key_put(rec)
    new = (await msgr.fetch_user(msgr.me.user_id)).device_list
    if new.version != dl.version + 1:
        raise MessengerError("the server did not take the new device list")
    msgr.save()
    return new


async def link_new(
    profile: Profile,
    on_code: Callable[[str], Awaitable[None] | None],
    on_event: OnEvent,
    *,
    wait: float = LINK_WAIT_S,
) -> dict[str, Any]:
    """Link a new device to our user (run on a manager device; see the module doc).

    ``on_code`` gets the link string to hand to the new device. Messages that arrive while
    waiting are processed normally and reported to ``on_event``. A LINK_REQUEST whose MAC
    does not verify ends the attempt: nothing is published.
    """
    creds = profile.credentials()
    state = profile.load_state()
    if state.uik_seed is None:
        raise MessengerError(
            "this device is not a manager (it holds no identity key): "
            "link new devices from the device you enrolled first"
        )
    async with transport_connect(creds) as client:
        msgr = Messenger(profile, client, state)
        for notice in await msgr.self_check():
            await _emit(on_event, notice)
        secret = os.urandom(16)
        code, expires_ms = await client.link_invite(_invite_ttl(wait))
        # Our pinned organisation key goes along, so the new device pins the same one.
        # Every server address and pin goes along too (a server with several nodes).
        link = InviteLink.of(creds.addresses, code, creds.fingerprints, state.org_fp).format()
        res = on_code(format_link_string(link, secret))
        if res is not None:
            await res
        deadline = trio.current_time() + wait
        while True:
            timeout = deadline - trio.current_time()
            if timeout <= 0:
                raise MessengerError(f"no link request within {wait:g} s; nothing was linked")
            try:
                ev = await client.receive(timeout)
            except trio.TooSlowError:
                continue
            if isinstance(ev, f.Drained):
                continue
            if ev.part or not is_link_request(ev.payload):
                for event in await msgr.handle(ev):
                    await _emit(on_event, event)
                msgr.save()
                await client.ack([ev.seq])
                continue
            state.seen[ev.message_id.hex()] = now_ms()
            try:
                req = LinkRequest.decode(ev.payload, secret)
            except E2EError as e:
                msgr.save()
                await client.ack([ev.seq])
                raise MessengerError(
                    f"REFUSED a link request that does not carry the link secret ({e.reason}); "
                    "nothing was published. Someone else may have used the link code: ask "
                    "the operator to check your user's devices on the server"
                ) from None
            result = await _accept_request(msgr, req, secret)
            await client.ack([ev.seq])
            result["invite_expired_ms"] = expires_ms
            return result


async def _accept_request(msgr: Messenger, req: LinkRequest, secret: bytes) -> dict[str, Any]:
    me = msgr.me
    new = req.new_device
    own = await msgr.fetch_user(me.user_id)
    listed = {e.device_id for e in own.device_list.entries}
    if new.user_id != me.user_id or new.device_id in listed or new.device_id == me.device_id:
        raise MessengerError(f"REFUSED a link request for {new}: not a new device of our user")
    if req.suite not in msgr.state.device_suites:
        raise MessengerError(f"REFUSED a link request with suite 0x{req.suite:04x}")
    now = now_ms()
    entry = DeviceEntry(new.device_id, req.dk_pub, (req.suite,), 0, now)
    msgr.trust.note_own_device_added(new.device_id)
    msgr.save()  # before publishing: our own self-check must never alarm on it
    dl = await _publish_list(msgr, [*own.device_list.entries, entry])
    contacts = tuple(
        PinnedContact(c.user_id, c.fp, c.level == TrustLevel.VERIFIED)
        for c in msgr.trust.contacts
        if c.user_id != me.user_id
    )
    content = LinkProvision(msgr.uik_pub, contacts).encode(new, secret)
    msg_id = os.urandom(MSG_ID_LEN)
    envelope = seal(
        get_suite(req.suite),
        me,
        msgr.device_key,
        new,
        KEY_KIND_LINK,
        LINK_KEY_ID,
        req.lk_pub,
        now,
        msg_id,
        ContentType.LINK_PROVISION,
        content,
    )
    await msgr.client.send(msg_id, envelope, [f.Recipient(new.user_id, new.device_id, b"")])
    return {
        "linked_device_id": new.device_id,
        "device_list_version": dl.version,
        "contacts_sent": len(contacts),
    }


async def remove_device(msgr: Messenger, device_id: int) -> dict[str, Any]:
    """Publish our device list version + 1 without ``device_id`` (manager devices only)."""
    if device_id == msgr.me.device_id:
        raise MessengerError("this device cannot remove itself")
    own = await msgr.fetch_user(msgr.me.user_id)
    entries = [e for e in own.device_list.entries if e.device_id != device_id]
    if len(entries) == len(own.device_list.entries):
        raise MessengerError(f"device {device_id} is not on your device list")
    dl = await _publish_list(msgr, entries)
    return {
        "removed_device_id": device_id,
        "device_list_version": dl.version,
        "hint": (
            f"ask the operator to also revoke the device on the server: "
            f"momedoctl device revoke {display(msgr.me.user_id)} {device_id}"
        ),
    }


# -- the new device ----------------------------------------------------------------------------


async def _own_view(client: Client) -> tuple[list[IdentityRecord], list[DeviceList]]:
    """Our user's identity history and device-list chain from the server, verified (TOFU)."""
    uid = client.user_id
    ids, lists, _ = _split(await client.key_get(uid))
    if not ids or not lists:
        raise MessengerError(f"{display(uid)} has no end-to-end keys: nothing to link to")
    try:
        identities = verify_identity_history(ids, user_id=uid)
        chain = verify_device_list_chain(lists, [i.uik for i in identities], None, user_id=uid)
    except E2EError as e:
        raise MessengerError(f"the keys of your user do not verify ({e.reason})") from None
    return identities, chain


async def link_accept(
    profile: Profile,
    text: str,
    name: str,
    on_event: OnEvent,
    *,
    wait: float = LINK_WAIT_S,
    suite: int = SUITE_XWING,
) -> dict[str, Any]:
    """Become a further device of a user from a link string (see the module doc)."""
    try:
        invite, secret = parse_link_string(text)
    except ValueError as e:
        raise MessengerError(f"not a momedo link string: {e}") from None
    async with connect_invite(invite, name) as (client, creds):
        profile.save_credentials(creds)
        me = Addr(creds.user_id, creds.device_id)
        state = new_state(suite)
        state.uik_seed = None
        org_fp = parse_invite_link(invite).org_fp
        if org_fp is not None:
            state.org_fp, state.org_source = org_fp, "invite"
        lk_seed = os.urandom(32)
        lk_private, lk_pub = kem_keypair_from_seed(get_suite(suite), lk_seed)
        dk_pub = _dk_pub(state.dk_seed)
        _identities, chain = await _own_view(client)
        targets = [e.device_id for e in chain[-1].entries]
        request = LinkRequest(suite, me, dk_pub, lk_pub).encode(secret)
        await client.send(
            os.urandom(16), request, [f.Recipient(me.user_id, d, b"") for d in targets]
        )
        await _emit(on_event, Notice("info", f"link request sent to device(s) {targets}"))

        deadline = trio.current_time() + wait
        while True:
            timeout = deadline - trio.current_time()
            if timeout <= 0:
                raise MessengerError(
                    f"no answer from your other device within {wait:g} s; this device "
                    f"({display(me.user_id)} device {me.device_id}) is enrolled on the "
                    "server but not linked: ask the operator to revoke it"
                )
            try:
                ev = await client.receive(timeout)
            except trio.TooSlowError:
                continue
            if isinstance(ev, f.Drained) or ev.part:
                continue  # not for now: it is delivered again later
            try:
                identities, chain = await _own_view(client)
                newest = chain[-1]

                def sender_dk(sender: Addr, newest: DeviceList = newest) -> bytes | None:
                    e = newest.device(sender.device_id) if sender.user_id == me.user_id else None
                    return e.dk_pub if e and e.flags & DEVICE_FLAG_MANAGER else None

                opened = open_seal(
                    ev.payload,
                    me,
                    lambda s, k, i: lk_private if (s, k, i) == (suite, KEY_KIND_LINK, 0) else None,
                    sender_dk,
                    key_kinds=(KEY_KIND_LINK,),
                )
                if opened.content_type != ContentType.LINK_PROVISION:
                    raise E2EError(reason="content_type")
                prov = LinkProvision.decode(opened.content, me, secret)
                mine = newest.device(me.device_id)
                if (
                    prov.uik.fp != identities[-1].fp
                    or newest.signer_fp != prov.uik.fp
                    or mine is None
                    or mine.dk_pub != dk_pub
                ):
                    raise E2EError(reason="device_list")
                state.guard.accept(opened.sender, opened.msg_id, opened.ts_ms, now_ms())
            except (E2EError, MessengerError) as e:
                reason = e.reason if isinstance(e, E2EError) else str(e)
                await client.ack([ev.seq])
                await _emit(
                    on_event, Notice("warning", f"ignored an invalid link provisioning ({reason})")
                )
                continue
            state.seen[ev.message_id.hex()] = now_ms()
            break

        state.uik_pub = prov.uik.encode()
        trust = state.trust
        trust.observe_identity(me.user_id, prov.uik.fp)
        for entry in newest.entries:
            trust.note_own_device_added(entry.device_id)
        trust.observe_device_list(newest)
        for c in prov.contacts:
            if c.user_id == me.user_id:
                continue
            trust.observe_identity(c.user_id, c.uik_fp)
            if c.verified:
                trust.mark_verified(c.user_id)
        profile.save_state(state)  # seeds first, then publish what depends on them
        await client.ack([ev.seq])
        await publish_prekeys(client, state)
        profile.save_state(state)
        return {
            "user_id": display(me.user_id),
            "device_id": me.device_id,
            "linked_by_device": opened.sender.device_id,
            "identity_fingerprint": prov.uik.fp.hex(),
            "qr": qr_string(me.user_id, prov.uik.fp),
            "contacts_pinned": len(prov.contacts),
            "device_list_version": newest.version,
        }


def _dk_pub(seed: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
