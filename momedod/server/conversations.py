"""Session handlers for conversations (groups and channels): CONV_SEND, CONV_PUT, CONV_GET,
CONV_LIST (docs/PROTOCOL.md).

The server keeps a membership per conversation for access control and fan-out, and learns it
from the rosters only: a CONV_PUT carries a RosterRecord that the server parses (structure,
not the device signature: clients verify that) and stores together with the new membership
in one transaction, which also enqueues a ConvEvent to every device of the old and the new
members. Organisation-managed conversations change only through the admin socket
(``momedoctl group``), with rosters signed by the organisation key.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING

from momedod.e2e.errors import E2EError
from momedod.e2e.event import EVENT_REMOVED, EVENT_ROSTER_CHANGED, ConvEvent, is_conv_event
from momedod.e2e.roster import (
    ROLE_ADMIN,
    SIGNER_DEVICE,
    Roster,
    RosterRecord,
    check_roster_successor,
    parse_roster_record,
)
from momedod.observability import metrics
from momedod.protocol import frames as f
from momedod.protocol.errors import ErrorCode
from momedod.protocol.userid import display
from momedod.server.clock import now_ms
from momedod.server.presence import Presence
from momedod.store import (
    Conflict,
    EventMessage,
    FanOut,
    Forbidden,
    NotFound,
    Recipient,
    RosterChange,
    UnknownRecipient,
)

if TYPE_CHECKING:
    from momedod.server.session import Session

EVENT_FORGED = "the payload starts like a server event; only the server sends those"
URGENT_FORBIDDEN = (
    "you may not send urgent messages here; the operator allows senders and channels"
    " (momedoctl urgent)"
)

__all__ = ["event_message", "handle", "publish_events", "roster_change"]


def event_message(what: int, conv_id: bytes, epoch: int) -> EventMessage:
    """A ConvEvent to enqueue, under a fresh random message_id."""
    return EventMessage(secrets.token_bytes(16), ConvEvent(what, conv_id, epoch).encode())


def roster_change(rec: RosterRecord, record: bytes) -> RosterChange:
    """The store's view of a parsed RosterRecord."""
    roster = rec.roster
    return RosterChange(roster.conv_id, roster.epoch, roster.kind, roster.members, record)


def publish_events(presence: Presence, events: Iterable[FanOut]) -> None:
    """Offer just-committed events to the online devices they were enqueued for."""
    for event in events:
        n = len(event.result.deliveries)
        metrics.CONV_EVENTS.inc(n)
        metrics.MAILBOX_ENTRIES_ADDED.inc(n)
        metrics.FANOUT_SKIPPED.inc(event.result.skipped_full)
        presence.deliver(event.result, event.message_id, event.payload, [b""] * n)


async def handle(session: Session, frame: f.Frame) -> None:
    """Answer one conversations request of an authenticated session."""
    if isinstance(frame, f.ConvSend):
        await _on_send(session, frame)
    elif isinstance(frame, f.ConvPut):
        await _on_put(session, frame)
    elif isinstance(frame, f.ConvGet):
        await _on_get(session, frame)
    elif isinstance(frame, f.ConvList):
        convs = await session.ctx.store.list_conversations(session.addr[0])
        await session._send(
            f.Convs(
                frame.request_id,
                tuple(f.ConvSummary(c.conv_id, c.kind, c.managed, c.epoch) for c in convs),
            )
        )
    else:  # pragma: no cover - the session dispatches only the four frames above
        raise TypeError(f"not a conversations frame: {type(frame).__name__}")


async def _on_send(session: Session, frame: f.ConvSend) -> None:
    rid, ctx = frame.request_id, session.ctx
    if len({(p.user_id, p.device_id) for p in frame.parts}) != len(frame.parts):
        await session._error(rid, ErrorCode.BAD_REQUEST, "a part names the same device twice")
        return
    if len(set(frame.blob_ids)) != len(frame.blob_ids):
        await session._error(rid, ErrorCode.BAD_REQUEST, "a blob is referenced twice")
        return
    if is_conv_event(frame.payload):
        await session._error(rid, ErrorCode.BAD_REQUEST, EVENT_FORGED)
        return
    urgent = isinstance(frame, f.ConvSendUrgent)
    if urgent and not await ctx.store.may_send_urgent(session.addr[0], frame.conv_id):
        await session._error(rid, ErrorCode.FORBIDDEN, URGENT_FORBIDDEN)
        return
    try:
        result = await ctx.store.enqueue_conv(
            session.addr,
            frame.message_id,
            frame.conv_id,
            frame.payload,
            [Recipient(p.user_id, p.device_id, p.part) for p in frame.parts],
            frame.blob_ids,
            now_ms(),
            ctx.mailbox_max_messages,
            urgent=urgent,
        )
    except NotFound as e:
        await session._error(rid, ErrorCode.NOT_FOUND, str(e))
        return
    except Forbidden as e:
        await session._error(rid, ErrorCode.FORBIDDEN, str(e))
        return
    except UnknownRecipient as e:
        await session._error(
            rid,
            ErrorCode.UNKNOWN_RECIPIENT,
            f"{display(e.user_id)}/{e.device_id} is not a recipient device of this conversation",
        )
        return
    await session._send(f.Accepted(rid, frame.message_id, result.server_ts_ms, result.duplicate))
    if result.duplicate:
        metrics.MESSAGES_DUPLICATE.inc()
        return
    n = len(result.deliveries)
    metrics.CONV_MESSAGES.inc()
    metrics.CONV_FANOUT.observe(n)
    metrics.MAILBOX_ENTRIES_ADDED.inc(n)
    if result.skipped_full:
        metrics.FANOUT_SKIPPED.inc(result.skipped_full)
    parts = {(p.user_id, p.device_id): p.part for p in frame.parts}
    ctx.presence.deliver(
        result,
        frame.message_id,
        frame.payload,
        [parts.get((uid, did), b"") for uid, did, _seq in result.deliveries],
        urgent,
    )
    if not urgent:
        await session.report_held(frame.message_id, result)


_CONFLICT_REASONS = frozenset({"epoch", "prev_hash"})


async def _on_put(session: Session, frame: f.ConvPut) -> None:
    rid, ctx, (uid, did) = frame.request_id, session.ctx, session.addr
    try:
        rec = parse_roster_record(frame.roster_record)
    except E2EError as e:
        await session._error(rid, ErrorCode.RECORD_INVALID, str(e))
        return
    roster = rec.roster
    if roster.conv_id != frame.conv_id:
        await session._error(
            rid, ErrorCode.RECORD_INVALID, "the roster is for another conversation"
        )
        return
    signer = rec.signer
    signed_here = signer is not None and (signer.user_id, signer.device_id) == (uid, did)
    if rec.signer_kind != SIGNER_DEVICE or not signed_here:
        await session._error(
            rid, ErrorCode.RECORD_INVALID, "a roster you send must be signed by this device"
        )
        return
    if len(roster.members) > ctx.max_group_size:
        await session._error(
            rid,
            ErrorCode.TOO_LARGE,
            f"{len(roster.members)} members; this server allows at most {ctx.max_group_size}",
        )
        return
    conv = await ctx.store.get_conversation(frame.conv_id)
    prev: Roster | None = None
    if conv is None:
        if not ctx.users_create_groups:
            await session._error(
                rid, ErrorCode.FORBIDDEN, "users may not create groups on this server"
            )
            return
    else:
        if conv.managed:
            await session._error(
                rid,
                ErrorCode.FORBIDDEN,
                "this conversation is managed by the organisation; operators change it",
            )
            return
        if dict(conv.members).get(uid) != ROLE_ADMIN:
            await session._error(
                rid, ErrorCode.FORBIDDEN, "only an admin of the group changes its members"
            )
            return
        stored = await ctx.store.get_rosters(frame.conv_id, conv.epoch - 1)
        if not stored:  # deleted meanwhile
            await session._error(rid, ErrorCode.NOT_FOUND, "no such conversation")
            return
        prev = parse_roster_record(stored[-1]).roster
    try:
        check_roster_successor(prev, rec)
    except E2EError as e:
        code = ErrorCode.CONFLICT if e.reason in _CONFLICT_REASONS else ErrorCode.RECORD_INVALID
        await session._error(rid, code, str(e))
        return
    epoch = roster.epoch
    try:
        applied = await ctx.store.put_roster(
            roster_change(rec, frame.roster_record),
            expected_epoch=None if conv is None else conv.epoch,
            managed=False,
            name=None,
            actor=session.addr,
            changed=event_message(EVENT_ROSTER_CHANGED, frame.conv_id, epoch),
            removed=event_message(EVENT_REMOVED, frame.conv_id, epoch),
            now_ms=now_ms(),
            max_per_device=ctx.mailbox_max_messages,
        )
    except Conflict as e:
        await session._error(rid, ErrorCode.CONFLICT, str(e))
        return
    except NotFound as e:
        await session._error(rid, ErrorCode.NOT_FOUND, str(e))
        return
    await session._send(f.Ok(rid))
    metrics.CONV_CHANGES.labels("user").inc()
    session._log.info(
        "conversation.roster",
        conv=frame.conv_id.hex(),
        epoch=epoch,
        members=len(roster.members),
    )
    publish_events(ctx.presence, applied.events)


async def _on_get(session: Session, frame: f.ConvGet) -> None:
    rid, ctx = frame.request_id, session.ctx
    conv = await ctx.store.get_conversation(frame.conv_id)
    if conv is None:
        await session._error(rid, ErrorCode.NOT_FOUND, "no such conversation")
        return
    if session.addr[0] not in dict(conv.members):
        await session._error(rid, ErrorCode.FORBIDDEN, "you are not a member of this conversation")
        return
    rosters = await ctx.store.get_rosters(frame.conv_id, frame.since_epoch)
    org_keys = await ctx.store.list_org_keys()
    members = tuple(f.ConvMember(u, r) for u, r in conv.members)

    def info(count: int) -> f.ConvInfo:
        return f.ConvInfo(
            rid,
            conv.conv_id,
            conv.kind,
            conv.managed,
            conv.epoch,
            members,
            tuple(rosters[:count]),
            tuple(org_keys),
        )

    # A long history may not fit one frame: send the oldest rosters that fit; the client
    # sees epoch > its newest roster and asks again from there.
    limit = ctx.max_frame_bytes + 4
    size = len(f.encode_frame(info(0)))
    count = 0
    for record in rosters:
        if size + 4 + len(record) > limit and count > 0:
            break
        size += 4 + len(record)
        count += 1
    await session._send(info(count))
