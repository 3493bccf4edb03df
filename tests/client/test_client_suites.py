"""Suites in the client (E2E.md sections 11 and 14.4): a suite-3-only device and a device with
both suites talk at 0x0003, devices without a common suite are not sent to, a rewritten suite
in a delivered Chain header is rejected, and a suite downgrade blocks sending until trust."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from momedod.client import cli, linking
from momedod.client import messenger as m
from momedod.client.profile import Profile, open_profile
from momedod.protocol import frames as f

S2, S3 = 0x0002, 0x0003


async def _enroll(  # type: ignore[no-untyped-def]
    server, tmp_path: Path, name: str, suites: Sequence[int]
) -> tuple[Profile, str]:
    _shown, link = await server.add_user(name)
    prof = open_profile(tmp_path / name, create=True)
    creds, _ = await m.enroll(prof, link, f"{name}-phone", suites)
    return prof, creds.user_id


async def _recv(
    prof: Profile, monkeypatch: pytest.MonkeyPatch, rewrite: bytes | None = None
) -> tuple[list[m.Event], list[bytes]]:
    """Receive everything; return the events and the delivered payloads (before opening).
    ``rewrite``: replace bytes 4..6 (the suite) of each Chain header before opening."""
    payloads: list[bytes] = []
    orig = m.Messenger.handle

    async def spy(self: m.Messenger, ev: f.Deliver) -> list[m.Event]:
        payloads.append(ev.payload)
        if rewrite is not None:
            ev = dataclasses.replace(ev, payload=ev.payload[:4] + rewrite + ev.payload[6:])
        return await orig(self, ev)

    got: list[m.Event] = []
    with monkeypatch.context() as mp:
        mp.setattr(m.Messenger, "handle", spy)
        await m.receive(prof, got.append, wait=0.0)
    return got, payloads


async def _link(phone: Profile, tablet: Profile) -> None:
    """``link new`` on ``phone`` and ``link accept`` on ``tablet`` (default suite 2)."""
    send, recv = trio.open_memory_channel[str](1)

    async def accept() -> None:
        code = await recv.receive()
        await linking.link_accept(tablet, code, "tablet", lambda _e: None, wait=20.0)

    async with trio.open_nursery() as n:
        n.start_soon(lambda: linking.link_new(phone, send.send, lambda _e: None, wait=20.0))
        n.start_soon(accept)


def _texts(events: list[m.Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, m.Message)]


def _suite_of(payload: bytes) -> int:
    return int.from_bytes(payload[4:6], "big")


async def test_suite3_only_and_both_suites_talk_at_suite3(server, tmp_path, monkeypatch):
    both, b_uid = await _enroll(server, tmp_path, "both", (S2, S3))
    only3, o_uid = await _enroll(server, tmp_path, "only3", (S3,))
    assert both.load_state().suite == S3 and both.load_state().device_suites == (S3, S2)

    out, _ = await m.send_text(both, o_uid, "to the suite-3 device")
    assert [o.suite for o in out.sends] == [S3]
    got, payloads = await _recv(only3, monkeypatch)
    assert _texts(got) == ["to the suite-3 device"]
    assert [_suite_of(p) for p in payloads] == [S3]

    out, _ = await m.send_text(only3, b_uid, "back from suite 3")
    assert [o.suite for o in out.sends] == [S3]
    got, payloads = await _recv(both, monkeypatch)
    assert _texts(got) == ["back from suite 3"]
    assert [_suite_of(p) for p in payloads] == [S3]
    # the pins: the highest common suite of each contact device
    assert both.load_state().suite_pins[f"{o_uid}/1"] == S3
    assert only3.load_state().suite_pins[f"{b_uid}/1"] == S3


async def test_both_suites_and_suite2_only_talk_at_suite2(server, tmp_path, monkeypatch):
    both, b_uid = await _enroll(server, tmp_path, "both", (S2, S3))
    only2, o_uid = await _enroll(server, tmp_path, "only2", (S2,))
    await m.send_text(both, o_uid, "down to two")
    got, payloads = await _recv(only2, monkeypatch)
    assert _texts(got) == ["down to two"] and [_suite_of(p) for p in payloads] == [S2]
    await m.send_text(only2, b_uid, "two back")
    got, payloads = await _recv(both, monkeypatch)
    assert _texts(got) == ["two back"] and [_suite_of(p) for p in payloads] == [S2]


async def test_no_common_suite_sends_nothing(server, tmp_path, monkeypatch):
    only2, t_uid = await _enroll(server, tmp_path, "only2", (S2,))
    only3, h_uid = await _enroll(server, tmp_path, "only3", (S3,))
    with pytest.raises(m.MessengerError, match="no common suite"):
        await m.send_text(only2, h_uid, "cannot")
    with pytest.raises(m.MessengerError, match="no common suite"):
        await m.send_text(only3, t_uid, "cannot either")
    assert (await _recv(only3, monkeypatch))[1] == []
    assert (await _recv(only2, monkeypatch))[1] == []


async def test_rewritten_suite_in_chain_header_is_rejected(server, tmp_path, monkeypatch):
    both, _b_uid = await _enroll(server, tmp_path, "both", (S2, S3))
    only3, o_uid = await _enroll(server, tmp_path, "only3", (S3,))
    await m.send_text(both, o_uid, "rewritten")
    got, payloads = await _recv(only3, monkeypatch, rewrite=S2.to_bytes(2, "big"))
    assert _texts(got) == []
    assert [e.kind for e in got if isinstance(e, m.Notice)][-1] == "undecryptable"
    assert [_suite_of(p) for p in payloads] == [S3]
    await m.send_text(both, o_uid, "intact")  # the chain itself did not advance on failure
    got, _ = await _recv(only3, monkeypatch)
    assert _texts(got) == ["intact"]


async def test_one_send_per_suite_group(server, tmp_path, monkeypatch):
    """A both-suites phone with a suite-2 tablet sends to a suite-3-only contact: two SENDs,
    one chain per suite; each device gets its own suite."""
    phone, a_uid = await _enroll(server, tmp_path, "alice", (S2, S3))
    only3, o_uid = await _enroll(server, tmp_path, "only3", (S3,))
    tablet = open_profile(tmp_path / "tablet", create=True)
    await _link(phone, tablet)
    out, _ = await m.send_text(phone, o_uid, "grouped")
    by_suite = {o.suite: sorted((r.user_id, r.device_id) for r in o.recipients) for o in out.sends}
    assert by_suite == {S3: [(o_uid, 1)], S2: [(a_uid, 2)]}
    assert len({o.chain_id for o in out.sends}) == 2
    got, payloads = await _recv(only3, monkeypatch)
    assert _texts(got) == ["grouped"] and [_suite_of(p) for p in payloads] == [S3]
    got, payloads = await _recv(tablet, monkeypatch)
    assert _texts(got) == ["grouped"] and [_suite_of(p) for p in payloads] == [S2]


async def _drop_suite3(prof: Profile) -> None:
    """The contact's own manager device publishes a validly signed list without suite 3 (and
    stops supporting it)."""

    async def fn(msgr: m.Messenger) -> None:
        own = await msgr.fetch_user(msgr.me.user_id)
        entries = [dataclasses.replace(e, suites=(S2,)) for e in own.device_list.entries]
        await linking._publish_list(msgr, entries)
        msgr.state.suites = [S2]
        msgr.save()

    await m.with_messenger(prof, fn)


async def test_suite_downgrade_blocks_sending_until_trust(server, tmp_path, monkeypatch):
    alice, _a_uid = await _enroll(server, tmp_path, "alice", (S2, S3))
    bob, b_uid = await _enroll(server, tmp_path, "bob", (S2, S3))
    await m.send_text(alice, b_uid, "at suite 3")
    got, payloads = await _recv(bob, monkeypatch)
    assert _texts(got) == ["at suite 3"] and [_suite_of(p) for p in payloads] == [S3]
    assert alice.load_state().suite_pins[f"{b_uid}/1"] == S3

    await _drop_suite3(bob)
    with pytest.raises(m.SuiteDowngradeError, match="momedo trust"):
        await m.send_text(alice, b_uid, "must not go")
    with pytest.raises(m.SuiteDowngradeError):  # still blocked on the next attempt
        await m.send_text(alice, b_uid, "must not go either")
    assert (await _recv(bob, monkeypatch))[1] == []

    async def trust(msgr: m.Messenger) -> dict[str, Any]:
        return await cli._trust(msgr, b_uid, None)

    out = await m.with_messenger(alice, trust)
    assert "lower suite of device 1" in out["action"]
    assert out["level"] != "verified"  # accepting a downgrade does not mark verified
    sent, _ = await m.send_text(alice, b_uid, "after trust")
    assert [o.suite for o in sent.sends] == [S2]
    got, payloads = await _recv(bob, monkeypatch)
    assert _texts(got) == ["after trust"] and [_suite_of(p) for p in payloads] == [S2]


async def test_receiver_rejects_a_seal_below_the_pinned_suite(server, tmp_path, monkeypatch):
    """Bob pinned Alice's device at suite 3; an envelope from it at suite 2 is rejected."""
    alice, a_uid = await _enroll(server, tmp_path, "alice", (S2, S3))
    bob, b_uid = await _enroll(server, tmp_path, "bob", (S2, S3))
    await m.send_text(alice, b_uid, "pin me")
    assert _texts((await _recv(bob, monkeypatch))[0]) == ["pin me"]
    assert bob.load_state().suite_pins[f"{a_uid}/1"] == S3
    # Alice's client is made to use suite 2 only (her list still offers 3): a downgrade
    state = alice.load_state()
    state.suites = [S2]
    alice.save_state(state)
    out, _ = await m.send_text(alice, b_uid, "at suite 2")
    assert [o.suite for o in out.sends] == [S2]
    got, _ = await _recv(bob, monkeypatch)
    assert _texts(got) == []
    assert any(isinstance(e, m.Notice) and "(suite)" in e.text for e in got)


def test_enroll_suites_argument() -> None:
    assert cli._suites_arg("2,3") == (S2, S3)
    assert cli._suites_arg("3") == (S3,)
    for bad in ("1", "4", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            cli._suites_arg(bad)
