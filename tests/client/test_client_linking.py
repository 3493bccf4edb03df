"""Device linking against an in-process daemon: a tablet joins Alice, then is removed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from momedod.client import linking
from momedod.client import messenger as m
from momedod.client.profile import Profile, open_profile
from momedod.client.transport import connect, connect_invite
from momedod.e2e.link import format_link_string, parse_link_string
from momedod.protocol.userid import normalize


async def _enroll(server, tmp_path: Path, name: str) -> tuple[Profile, str]:  # type: ignore[no-untyped-def]
    shown, link = await server.add_user(name)
    prof = open_profile(tmp_path / name, create=True)
    creds, _ = await m.enroll(prof, link, f"{name}-phone")
    assert creds.user_id == normalize(shown)
    return prof, creds.user_id


async def _recv(prof: Profile) -> list[m.Event]:
    got: list[m.Event] = []
    await m.receive(prof, got.append, wait=0.0)
    return got


def _msgs(events: list[m.Event]) -> list[m.Message]:
    return [e for e in events if isinstance(e, m.Message)]


async def _link(
    phone: Profile, tablet: Profile, *, tamper: bool = False, wait: float = 20.0
) -> tuple[dict[str, Any] | BaseException, dict[str, Any] | BaseException]:
    """Run ``link new`` on ``phone`` and ``link accept`` on ``tablet`` concurrently."""
    send, recv = trio.open_memory_channel[str](1)
    results: dict[str, Any] = {}
    p_events: list[m.Event] = []
    t_events: list[m.Event] = []

    async def new() -> None:
        try:
            results["new"] = await linking.link_new(phone, send.send, p_events.append, wait=wait)
        except m.MessengerError as e:
            results["new"] = e

    async def accept() -> None:
        code = await recv.receive()
        if tamper:
            invite, _secret = parse_link_string(code)
            code = format_link_string(invite, bytes(16))
        try:
            results["accept"] = await linking.link_accept(
                tablet, code, "tablet", t_events.append, wait=wait
            )
        except m.MessengerError as e:
            results["accept"] = e

    async with trio.open_nursery() as n:
        n.start_soon(new)
        n.start_soon(accept)
    return results["new"], results["accept"]


async def _device_list_version(prof: Profile) -> int:
    async def fn(msgr: m.Messenger) -> int:
        return (await msgr.fetch_user(msgr.me.user_id)).device_list.version

    return await m.with_messenger(prof, fn)  # type: ignore[no-any-return]


async def test_link_tablet_receive_send_and_remove(server, tmp_path):
    alice, a_uid = await _enroll(server, tmp_path, "alice")
    bob, b_uid = await _enroll(server, tmp_path, "bob")
    # Some history first: Bob and Alice know each other, Bob holds a chain to Alice's phone.
    await m.send_text(bob, a_uid, "before the tablet")
    assert [x.text for x in _msgs(await _recv(alice))] == ["before the tablet"]

    tablet = open_profile(tmp_path / "tablet", create=True)
    new, acc = await _link(alice, tablet)
    assert isinstance(new, dict) and isinstance(acc, dict), (new, acc)
    assert new["linked_device_id"] == acc["device_id"] == 2
    assert new["device_list_version"] == 2
    assert acc["user_id"].replace("-", "") == a_uid
    assert acc["contacts_pinned"] == 1  # Bob
    t_state = tablet.load_state()
    assert t_state.uik_seed is None
    assert t_state.uik_public().fp == alice.load_state().uik_public().fp
    c = t_state.trust.contact(b_uid)
    assert c is not None and c.fp == bob.load_state().uik_public().fp

    # Bob's next message reaches both of Alice's devices (a new chain: the device set changed).
    out, notices = await m.send_text(bob, a_uid, "hello both")
    assert sorted((r.user_id, r.device_id) for r in out.recipients) == [(a_uid, 1), (a_uid, 2)]
    assert any("added device 2" in n.text for n in notices)
    for prof in (alice, tablet):
        got = _msgs(await _recv(prof))
        assert [(x.sender, x.text, x.outgoing) for x in got] == [(b_uid, "hello both", False)]

    # What Alice sends from the phone reaches Bob and appears on the tablet as sent by her.
    out, _ = await m.send_text(alice, b_uid, "from the phone")
    assert sorted((r.user_id, r.device_id) for r in out.recipients) == sorted(
        [(b_uid, 1), (a_uid, 2)]
    )
    assert [x.text for x in _msgs(await _recv(bob))] == ["from the phone"]
    got = _msgs(await _recv(tablet))
    assert len(got) == 1
    assert (got[0].sender, got[0].device_id, got[0].outgoing, got[0].peer) == (
        a_uid,
        1,
        True,
        b_uid,
    )
    assert got[0].line() == f"me (device 1) → {b_uid[:4]}-{b_uid[4:]}: from the phone"

    # And the tablet can write too; the phone sees it as its own outgoing message.
    await m.send_text(tablet, b_uid, "from the tablet")
    assert [x.text for x in _msgs(await _recv(bob))] == ["from the tablet"]
    got = _msgs(await _recv(alice))
    assert [(x.device_id, x.outgoing, x.text) for x in got] == [(2, True, "from the tablet")]

    # No self-monitoring alarm on either device.
    for prof in (alice, tablet):
        assert not [e for e in await _recv(prof) if isinstance(e, m.Notice) and e.kind == "alarm"]

    # Removing the tablet: a device list without it; Bob's next message skips it.
    async def remove(msgr: m.Messenger) -> dict[str, Any]:
        return await linking.remove_device(msgr, 2)

    res = await m.with_messenger(alice, remove)
    assert res["device_list_version"] == 3
    out, notices = await m.send_text(bob, a_uid, "after removal")
    assert [(r.user_id, r.device_id) for r in out.recipients] == [(a_uid, 1)]
    assert any("removed device 2" in n.text for n in notices)
    assert [x.text for x in _msgs(await _recv(alice))] == ["after removal"]
    assert _msgs(await _recv(tablet)) == []
    # Alice's own messages no longer go to the tablet either.
    out, _ = await m.send_text(alice, b_uid, "phone only")
    assert [(r.user_id, r.device_id) for r in out.recipients] == [(b_uid, 1)]
    assert _msgs(await _recv(tablet)) == []
    # A linked (non-manager) device cannot manage devices.
    with pytest.raises(m.MessengerError, match="not a manager"):
        await linking.link_new(tablet, lambda _c: None, lambda _e: None, wait=1)


async def test_wrong_link_secret_is_refused_and_nothing_published(server, tmp_path):
    alice, _a_uid = await _enroll(server, tmp_path, "alice")
    tablet = open_profile(tmp_path / "tablet", create=True)
    new, acc = await _link(alice, tablet, tamper=True, wait=5.0)
    assert isinstance(new, m.MessengerError) and "REFUSED" in str(new)
    assert isinstance(acc, m.MessengerError) and "not linked" in str(acc)
    assert await _device_list_version(alice) == 1
    assert not tablet.has_e2e()


async def test_bad_link_string_is_rejected(tmp_path):
    tablet = open_profile(tmp_path / "tablet", create=True)
    for bad in ("MOMEDO1:x", "MOMEDO-LINK1:momedo://h:1/invite/X#Y", "MOMEDO-LINK1:a:b"):
        with pytest.raises(m.MessengerError, match="not a momedo link string"):
            await linking.link_accept(tablet, bad, "t", lambda _e: None, wait=1)


async def test_device_on_no_signed_list_gets_no_chain_keys(server, tmp_path):
    alice, a_uid = await _enroll(server, tmp_path, "alice")
    bob, _b_uid = await _enroll(server, tmp_path, "bob")
    # The server side adds a device to Alice's user (an operator invite), which is on no
    # device list signed by Alice's identity key.
    link = (await server.admin("user.invite", user_id=a_uid))["invite"]["link"]
    async with connect_invite(link, "rogue") as (_client, rogue):
        pass
    assert rogue.device_id == 2
    out, _ = await m.send_text(bob, a_uid, "for alice only")
    assert [(r.user_id, r.device_id) for r in out.recipients] == [(a_uid, 1)]
    async with connect(rogue) as c:
        ev = await c.receive(5)
        assert type(ev).__name__ == "Drained"  # nothing was addressed to the rogue device
    assert [x.text for x in _msgs(await _recv(alice))] == ["for alice only"]


async def test_second_linked_device_raises_no_alarm_on_the_first(server, tmp_path):
    alice, _a_uid = await _enroll(server, tmp_path, "alice")
    tablet = open_profile(tmp_path / "tablet", create=True)
    laptop = open_profile(tmp_path / "laptop", create=True)
    for prof in (tablet, laptop):
        new, acc = await _link(alice, prof)
        assert isinstance(new, dict) and isinstance(acc, dict), (new, acc)
    assert laptop.credentials().device_id == 3
    for prof in (alice, tablet, laptop):
        got = await _recv(prof)
        assert not [e for e in got if isinstance(e, m.Notice) and e.kind == "alarm"], got
