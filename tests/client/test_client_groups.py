"""Groups and channels in the client library against a real (in-process) daemon over TLS:
roster verification (organisation key pin, rotation, forged rosters), who may distribute a
group chain, events and notices, naming, and the server's policy."""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from support import make_config

from momedod.client import groups as g
from momedod.client import messenger as m
from momedod.client.profile import Profile, open_profile
from momedod.client.transport import ServerError, connect
from momedod.config import PolicyConfig
from momedod.e2e.identity import UserIdentityKey
from momedod.e2e.roster import (
    KIND_CHANNEL,
    KIND_GROUP,
    ROLE_ADMIN,
    ROLE_MEMBER,
    Roster,
    make_org_key_record,
    sign_roster_org,
)
from momedod.protocol import frames as f
from momedod.protocol.userid import display, normalize
from momedod.server.daemon import serve
from momedod.store import Recipient


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _enroll(server, tmp_path: Path, name: str) -> tuple[Profile, str]:  # type: ignore[no-untyped-def]
    shown, link = await server.add_user(name)
    prof = open_profile(tmp_path / name, create=True)
    await m.enroll(prof, link, f"{name}-phone")
    return prof, normalize(shown)


async def _recv(prof: Profile) -> list[m.Event]:
    got: list[m.Event] = []
    await m.receive(prof, got.append, wait=0.0)
    return got


def _msgs(events: list[m.Event]) -> list[m.Message]:
    return [e for e in events if isinstance(e, m.Message)]


def _notes(events: list[m.Event], kind: str | None = None) -> list[str]:
    return [e.text for e in events if isinstance(e, m.Notice) and kind in (None, e.kind)]


async def _org(server, key: UserIdentityKey, version: int = 1, prev=None) -> None:  # type: ignore[no-untyped-def]
    rec = make_org_key_record(version, key, prev)
    await server.admin("org.key.put", record=_b64(rec))


async def _channel(server, key, name: str, members: dict[str, int], kind=KIND_CHANNEL) -> Roster:  # type: ignore[no-untyped-def]
    roster = Roster.first(os.urandom(16), kind, members, name)
    await server.admin("group.add", name=name, roster=_b64(sign_roster_org(roster, key)))
    return roster


async def test_org_key_pinned_on_first_use_then_rotation_followed(server, tmp_path):
    # Users enrolled before the organisation had a key: their invite carries no ORGFP.
    anna, a = await _enroll(server, tmp_path, "anna")
    bob, b = await _enroll(server, tmp_path, "bob")
    assert anna.load_state().org_fp is None
    k1 = UserIdentityKey(os.urandom(32))
    await _org(server, k1)
    roster = await _channel(server, k1, "Info", {a: ROLE_ADMIN, b: ROLE_MEMBER})
    got = await _recv(bob)  # the creation event: bob fetches, pins the org key (TOFU)
    assert any("pinned the organisation key" in t for t in _notes(got, "info"))
    assert any('you are a member of the channel "Info"' in t for t in _notes(got))
    st = bob.load_state()
    assert (st.org_fp, st.org_source) == (k1.public.fp, "tofu")

    # Rotation: v2 signed by v1; the next roster is signed by v2 and bob follows the chain.
    k2 = UserIdentityKey(os.urandom(32))
    await _org(server, k2, 2, k1)
    r2 = roster.next(members={a: ROLE_ADMIN, b: ROLE_ADMIN})
    await server.admin(
        "group.update", group=roster.conv_id.hex(), roster=_b64(sign_roster_org(r2, k2))
    )
    got = await _recv(bob)
    assert 'you are now an admin of "Info" (the organisation)' in _notes(got, "info")
    assert bob.load_state().groups[roster.conv_id.hex()].epoch == 2
    assert bob.load_state().org_fp == k1.public.fp  # the pin stays; the chain leads on

    # A newcomer enrolled now pins the current key from the invite link.
    carl, _c = await _enroll(server, tmp_path, "carl")
    assert (carl.load_state().org_fp, carl.load_state().org_source) == (k2.public.fp, "invite")


async def test_roster_signed_by_another_key_is_not_adopted(server, tmp_path):
    _anna, a = await _enroll(server, tmp_path, "anna")
    k1 = UserIdentityKey(os.urandom(32))
    await _org(server, k1)
    bob, b = await _enroll(server, tmp_path, "bob")  # pins k1 from the invite
    # The server's operator replaces the organisation key with one the client never saw
    # (a fresh chain would need the daemon's store: simulate with a client pinned elsewhere).
    st = bob.load_state()
    st.org_fp = secrets.token_bytes(32)
    bob.save_state(st)
    await _channel(server, k1, "Info", {a: ROLE_ADMIN, b: ROLE_MEMBER})
    got = await _recv(bob)
    assert any(
        "no roster from the server verifies" in t and "org_key" in t for t in _notes(got, "warning")
    )
    assert bob.load_state().groups == {}
    # Nothing it sends or accepts depends on an unverified roster.
    with pytest.raises(m.MessengerError, match="no known group"):
        await g.send_group_text(bob, "Info", "hi")


async def test_chain_dist_from_a_non_member_and_a_non_admin_is_refused(server, tmp_path):
    k = UserIdentityKey(os.urandom(32))
    await _org(server, k)
    teacher, t = await _enroll(server, tmp_path, "teacher")
    pupil, p = await _enroll(server, tmp_path, "pupil")
    other, _o = await _enroll(server, tmp_path, "other")
    roster = await _channel(server, k, "7b", {t: ROLE_ADMIN, p: ROLE_MEMBER})
    await _recv(pupil)
    await _recv(teacher)

    async def forge(prof: Profile, target: str) -> None:
        # A client that ignores the rules: its own chain for the channel, ChainDist sealed to
        # ``target``, sent as an ordinary SEND (the server does not look inside).
        async with connect(prof.credentials()) as client:
            msgr = m.Messenger(prof, client, prof.load_state())
            keys = await msgr.fetch_user(target)
            sel = m.select_devices(keys.device_list, keys.spks, m.now_ms(), (0x0002,))
            kvd_ = msgr.kvd_for(target, keys.identity.fp)
            out = await msgr._prepare_group(
                roster.conv_id,
                0x0002,
                [(target, sel.targets[0], keys)],
                m.now_ms(),
                kvd_,
                b"forged",
                epoch=1,
            )
            await client.send(out.message_id, out.payload, out.recipients)

    await forge(other, p)  # not a member at all
    got = await _recv(pupil)
    assert _msgs(got) == []
    assert any("(not_member)" in x for x in _notes(got, "undecryptable"))
    await forge(pupil, t)  # a member, but a channel's reader
    got = await _recv(teacher)
    assert _msgs(got) == []
    assert any("(not_admin)" in x for x in _notes(got, "undecryptable"))


async def test_user_group_changes_give_notices_and_only_admins_change(server, tmp_path):
    anna, a = await _enroll(server, tmp_path, "anna")
    bob, b = await _enroll(server, tmp_path, "bob")
    carl, c = await _enroll(server, tmp_path, "carl")
    conv_id, notices = await g.create_group(anna, "Team", [b], channel=False, multi=False)
    assert notices[-1].text.startswith('you are an admin of the group "Team"')
    await _recv(bob)
    with pytest.raises(m.MessengerError, match='only an admin of "Team"'):
        await g.change_group(bob, "Team", add=[c])
    await g.change_group(anna, conv_id.hex()[:6], add=[c])
    got = await _recv(bob)
    assert f'{display(c)} was added to "Team" by {display(a)}' in _notes(got, "info")
    got = await _recv(carl)
    assert any('you are a member of the group "Team"' in t for t in _notes(got))
    await g.change_group(anna, "Team", remove=[b])
    got = await _recv(bob)
    assert any("no longer a member" in t for t in _notes(got, "warning"))
    rows = g.group_rows(bob.load_state())
    assert rows[0]["left"] is True
    got = await _recv(carl)
    assert f'{display(b)} was removed from "Team" by {display(a)}' in _notes(got, "info")


async def test_managed_channel_cannot_be_changed_from_the_client(server, tmp_path):
    k = UserIdentityKey(os.urandom(32))
    await _org(server, k)
    anna, a = await _enroll(server, tmp_path, "anna")
    _bob, b = await _enroll(server, tmp_path, "bob")
    await _channel(server, k, "News", {a: ROLE_ADMIN, b: ROLE_MEMBER}, kind=KIND_GROUP)
    with pytest.raises(m.MessengerError, match="managed by the organisation"):
        await g.change_group(anna, "News", add=[b])


async def test_resolve_by_id_prefix_and_title(server, tmp_path):
    anna, _a = await _enroll(server, tmp_path, "anna")
    _bob, b = await _enroll(server, tmp_path, "bob")
    c1, _ = await g.create_group(anna, "Eins", [b], channel=False, multi=False)
    c2, _ = await g.create_group(anna, "Zwei", [b], channel=True, multi=True)
    st = anna.load_state()
    assert g.resolve(st, c1.hex()) == c1
    assert g.resolve(st, c2.hex()[:6].upper()) == c2
    assert g.resolve(st, "Zwei") == c2
    with pytest.raises(m.MessengerError, match="no known group"):
        g.resolve(st, c1.hex()[:5])
    with pytest.raises(m.MessengerError, match="no known group"):
        g.resolve(st, "Drei")
    rows = g.group_rows(st)
    assert [(r["title"], r["kind"], r["mode"]) for r in rows] == [
        ("Eins", "group", "chains"),
        ("Zwei", "channel", "multi"),
    ]


async def test_group_creation_forbidden_by_policy_shows_the_servers_error(tmp_path, nursery):
    config = make_config(tmp_path / "state")
    config = replace(config, policy=PolicyConfig(users_create_groups=False))
    daemon = await nursery.start(serve, config)
    from support import Server

    server = Server(daemon, config.server.state_dir)
    anna, _a = await _enroll(server, tmp_path, "anna")
    _bob, b = await _enroll(server, tmp_path, "bob")
    with pytest.raises(m.MessengerError, match="the server refused to create the group: FORBIDDEN"):
        await g.create_group(anna, "Team", [b], channel=False, multi=False)


async def test_event_is_only_a_hint_and_a_garbage_event_is_ignored(server, tmp_path):
    anna, _a = await _enroll(server, tmp_path, "anna")
    bob, b = await _enroll(server, tmp_path, "bob")
    conv_id, _ = await g.create_group(anna, "Team", [b], channel=False, multi=False)
    await _recv(bob)
    from momedod.e2e.event import EVENT_REMOVED, ConvEvent

    # The server refuses SENDs that look like its own events ...
    fake = ConvEvent(EVENT_REMOVED, conv_id, 7).encode()
    async with connect(anna.credentials()) as client:
        for payload in (fake, fake[:-3]):
            with pytest.raises(ServerError, match="starts like a server event"):
                await client.send(secrets.token_bytes(16), payload, [f.Recipient(b, 1, b"")])
    # ... and a client treats one from the server only as a hint (here the store injects a
    # forged and a malformed event, as a malicious server could).
    for payload in (fake, fake[:-3]):
        await server.daemon.store.enqueue(
            ("", 0), secrets.token_bytes(16), payload, [Recipient(b, 1, b"")], m.now_ms(), 100
        )
    got = await _recv(bob)
    assert _msgs(got) == []
    assert "ignored a malformed conversation event from the server" in _notes(got, "warning")
    assert bob.load_state().groups[conv_id.hex()].left is False
    out, _ = await g.send_group_text(anna, "Team", "still here")
    assert [x.text for x in _msgs(await _recv(bob))] == ["still here"]
    assert out.conv_id == conv_id


async def test_asymmetric_group_wraps_per_device_and_each_message_has_its_own_key(server, tmp_path):
    anna, _a = await _enroll(server, tmp_path, "anna")
    bob, b = await _enroll(server, tmp_path, "bob")
    carl, c = await _enroll(server, tmp_path, "carl")
    await g.create_group(anna, "Vertraulich", [b, c], channel=False, multi=True)
    one, _ = await g.send_group_text(anna, "Vertraulich", "eins")
    two, _ = await g.send_group_text(anna, "Vertraulich", "zwei")
    assert one.chain is None and one.payload[3] == 0x03  # a Multi envelope
    assert {r.user_id for r in one.parts} == {b, c} and all(r.part for r in one.parts)
    assert one.payload[6:38] != two.payload[6:38]  # cek_commit: a fresh key per message
    for prof in (bob, carl):
        got = await _recv(prof)
        assert [(x.text, x.group_name) for x in _msgs(got)] == [
            ("eins", "Vertraulich"),
            ("zwei", "Vertraulich"),
        ]
    # A replayed Multi (same message, delivered again) is shown once.
    async with connect(anna.credentials()) as client:
        await client.conv_send(one.message_id, one.conv_id, one.payload, one.parts)
    assert _msgs(await _recv(bob)) == []


async def test_send_to_a_group_with_trio_nursery_of_listeners(server, tmp_path):
    anna, a = await _enroll(server, tmp_path, "anna")
    bob, b = await _enroll(server, tmp_path, "bob")
    await g.create_group(anna, "Live", [b], channel=False, multi=False)
    got: list[m.Event] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: m.receive(bob, got.append, wait=None))
        await trio.sleep(0.3)
        await g.send_group_text(anna, "Live", "jetzt")
        with trio.fail_after(10):
            while not _msgs(got):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert _msgs(got)[0].line() == f"[Live] {display(a)} (device 1): jetzt"


async def test_forged_roster_in_the_store_is_not_adopted(server, tmp_path):
    import sqlite3

    from momedod.e2e.envelope import Addr
    from momedod.e2e.identity import DeviceKey
    from momedod.e2e.roster import parse_roster_record, sign_roster_device
    from momedod.store.sqlite import DB_FILENAME

    anna, a = await _enroll(server, tmp_path, "anna")
    bob, b = await _enroll(server, tmp_path, "bob")
    mallory, x = await _enroll(server, tmp_path, "mallory")
    conv_id, _ = await g.create_group(anna, "Team", [b], channel=False, multi=False)
    await _recv(bob)
    # Bob (not an admin) signs epoch 2 adding Mallory; the attacker puts it in the store.
    roster = parse_roster_record(bob.load_state().groups[conv_id.hex()].record).roster
    forged = sign_roster_device(
        roster.next(members={a: ROLE_ADMIN, b: ROLE_MEMBER, x: ROLE_MEMBER}),
        Addr(b, 1),
        DeviceKey(bob.load_state().dk_seed),
    )
    with sqlite3.connect(server.state_dir / DB_FILENAME) as db:
        db.execute(
            "INSERT INTO conv_rosters (conv_id, epoch, record, created_ms) VALUES (?, 2, ?, 0)",
            (conv_id, forged),
        )
        db.execute("UPDATE conversations SET epoch = 2 WHERE conv_id = ?", (conv_id,))
        db.execute(
            "INSERT INTO conv_members (conv_id, user_id, role) VALUES (?, ?, 0)", (conv_id, x)
        )
    out, notices = await g.send_group_text(anna, "Team", "nur fuer uns")
    texts = _notes(notices, "warning")
    assert any("does not verify (signer:" in t and "stays at epoch 1" in t for t in texts)
    assert any(f"server lists {display(x)}" in t for t in texts)
    assert anna.load_state().groups[conv_id.hex()].epoch == 1
    assert {d.split("/")[0] for d in out.devices} == {b}
    got = await _recv(mallory)
    assert _msgs(got) == []
