"""The end-to-end client against a real (in-process) daemon: enroll, send, receive, trust."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from momedod.client import messenger as m
from momedod.client.profile import Profile, ProfileError, open_profile
from momedod.e2e.safety import format_safety_number
from momedod.protocol.userid import normalize


def _profile(tmp_path: Path, name: str) -> Profile:
    return open_profile(tmp_path / name, create=True)


async def _enroll(server, tmp_path: Path, name: str) -> tuple[Profile, str]:  # type: ignore[no-untyped-def]
    shown, link = await server.add_user(name)
    uid = normalize(shown)
    prof = _profile(tmp_path, name)
    creds, _notices = await m.enroll(prof, link, f"{name}-phone")
    assert creds.user_id == uid
    return prof, uid


async def _recv(prof: Profile) -> list[m.Event]:
    got: list[m.Event] = []
    await m.receive(prof, got.append, wait=0.0)
    return got


def _texts(events: list[m.Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, m.Message)]


async def test_two_users_exchange_messages_and_server_never_sees_plaintext(server, tmp_path):
    alice, a_uid = await _enroll(server, tmp_path, "alice")
    bob, b_uid = await _enroll(server, tmp_path, "bob")
    marker = "PLAINTEXT-MARKER-" + secrets.token_hex(8)

    out, notices = await m.send_text(alice, b_uid, f"hello bob {marker}")
    assert any("pinned" in n.text for n in notices)
    await m.send_text(alice, b_uid, f"second {marker}")
    got = await _recv(bob)
    msgs = [e for e in got if isinstance(e, m.Message)]
    assert [x.text for x in msgs] == [f"hello bob {marker}", f"second {marker}"]
    assert msgs[0].sender == a_uid and not msgs[0].outgoing
    assert msgs[0].msg_id == out.message_id.hex()
    assert await _recv(bob) == []  # acked: nothing comes back

    await m.send_text(bob, a_uid, f"hi alice {marker}")
    assert _texts(await _recv(alice)) == [f"hi alice {marker}"]
    await m.send_text(alice, b_uid, "third")  # same chain: no ChainDist this time
    assert _texts(await _recv(bob)) == ["third"]

    for path in server.state_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert marker.encode() not in data, f"plaintext in {path}"
            assert marker.encode("utf-16-le") not in data


async def test_chain_dist_only_with_first_message_of_a_chain(server, tmp_path):
    alice, _ = await _enroll(server, tmp_path, "alice")
    bob, b_uid = await _enroll(server, tmp_path, "bob")
    first, _ = await m.send_text(alice, b_uid, "one")
    second, _ = await m.send_text(alice, b_uid, "two")
    assert all(r.part for r in first.recipients)
    assert all(not r.part for r in second.recipients)
    assert first.chain_id == second.chain_id
    assert _texts(await _recv(bob)) == ["one", "two"]


async def test_undecryptable_envelope_is_reported_and_acked(server, tmp_path):
    alice, _a_uid = await _enroll(server, tmp_path, "alice")
    bob, b_uid = await _enroll(server, tmp_path, "bob")
    creds = alice.credentials()
    from momedod.client.transport import connect
    from momedod.protocol import frames as f

    async with connect(creds) as c:
        await c.send(secrets.token_bytes(16), b"garbage" * 50, [f.Recipient(b_uid, 1, b"")])
    got = await _recv(bob)
    assert len(got) == 1 and isinstance(got[0], m.Notice)
    assert got[0].kind == "undecryptable"
    assert "could not decrypt a message" in got[0].text
    assert await _recv(bob) == []


async def test_key_substitution_blocks_sending_until_trust(server, tmp_path):
    alice, _a_uid = await _enroll(server, tmp_path, "alice")
    bob, b_uid = await _enroll(server, tmp_path, "bob")
    first, _ = await m.send_text(alice, b_uid, "before")
    assert _texts(await _recv(bob)) == ["before"]

    # The operator (or an attacker with the server) issues a new invite for Bob's user; a
    # brand-new profile enrolls with a new identity key.
    link = (await server.admin("user.invite", user_id=b_uid))["invite"]["link"]
    mallory = _profile(tmp_path, "bob2")
    _creds, notices = await m.enroll(mallory, link, "bob-new")
    assert any("already had an identity key" in n.text for n in notices)

    with pytest.raises(m.KeyChangedError) as exc:
        await m.send_text(alice, b_uid, "secret after change")
    assert "CHANGED" in str(exc.value) and "momedo trust" in str(exc.value)
    with pytest.raises(m.KeyChangedError):  # still blocked on the next attempt
        await m.send_text(alice, b_uid, "secret after change")
    assert _texts(await _recv(mallory)) == []

    async def accept(msgr: m.Messenger) -> None:
        msgr.trust.accept(b_uid)
        msgr.save()

    await m.with_messenger(alice, accept)
    out, _ = await m.send_text(alice, b_uid, "after trust")
    assert [r.device_id for r in out.recipients] == [_creds.device_id]
    assert out.chain_id != first.chain_id  # the device set changed: a new chain
    assert _texts(await _recv(mallory)) == ["after trust"]
    # The old device notices that its own user got another identity key (self-monitoring),
    # and it receives nothing of the new conversation.
    got = await _recv(bob)
    assert any(isinstance(e, m.Notice) and e.kind == "alarm" for e in got)
    assert _texts(got) == []


async def test_redelivery_after_lost_ack_is_shown_once(server, tmp_path):
    alice, _ = await _enroll(server, tmp_path, "alice")
    bob, b_uid = await _enroll(server, tmp_path, "bob")
    await m.send_text(alice, b_uid, "once")
    from momedod.client.transport import connect
    from momedod.protocol import frames as f

    # Process (and save) without acknowledging, as if the connection broke before the ACK.
    async with connect(bob.credentials()) as c:
        msgr = m.Messenger(bob, c, bob.load_state())
        ev = await c.receive(5)
        assert isinstance(ev, f.Deliver)
        assert _texts(await msgr.handle(ev)) == ["once"]
        msgr.save()
    assert _texts(await _recv(bob)) == []  # redelivered, recognised, acked
    await m.send_text(alice, b_uid, "next")
    assert _texts(await _recv(bob)) == ["next"]


async def test_tampered_payload_is_reported_and_the_chain_still_works(server, tmp_path):
    alice, a_uid = await _enroll(server, tmp_path, "alice")
    bob, b_uid = await _enroll(server, tmp_path, "bob")
    from momedod.client.transport import connect

    async def tampered_send(msgr: m.Messenger) -> None:
        out, _ = await msgr.prepare_text(b_uid, "tampered")
        bad = bytearray(out.payload)
        bad[60] ^= 1
        await msgr.client.send(out.message_id, bytes(bad), out.recipients)
        msgr.sent(out, "tampered", b_uid)

    await m.with_messenger(alice, tampered_send)
    await m.send_text(alice, b_uid, "fine")
    got = await _recv(bob)
    bad = [e for e in got if isinstance(e, m.Notice) and e.kind != "info"]
    assert [e.kind for e in bad] == ["undecryptable"]
    assert f"from {a_uid[:4]}-{a_uid[4:]} (device 1)" in bad[0].text
    assert _texts(got) == ["fine"]
    del connect


async def test_safety_numbers_and_qr_match_on_both_sides(server, tmp_path):
    alice, a_uid = await _enroll(server, tmp_path, "alice")
    bob, b_uid = await _enroll(server, tmp_path, "bob")

    async def view(prof: Profile, other: str) -> tuple[str, str, str]:
        async def fn(msgr: m.Messenger) -> tuple[str, str, str]:
            v = await msgr.verification(other)
            return v["safety_number"], v["their_qr"], v["my_qr"]

        return await m.with_messenger(prof, fn)  # type: ignore[no-any-return]

    a_num, a_their, a_mine = await view(alice, b_uid)
    b_num, b_their, b_mine = await view(bob, a_uid)
    assert a_num == b_num
    assert len(a_num.replace(" ", "")) == 60
    assert a_num == format_safety_number(a_num.replace(" ", ""))
    assert a_their == b_mine and b_their == a_mine
    assert a_mine.startswith(f"MOMEDO1:{a_uid}:")


def test_profile_readable_by_others_is_refused(tmp_path):
    p = tmp_path / "p"
    p.mkdir(mode=0o755)
    p.chmod(0o755)
    with pytest.raises(ProfileError, match="other users"):
        open_profile(p)


async def test_profile_files_are_private(server, tmp_path):
    alice, _ = await _enroll(server, tmp_path, "alice")
    for path in alice.path.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path


async def test_a_replayed_seal_cannot_reuse_its_one_time_prekey(server, tmp_path):
    """E2E.md §14.3: the server replays the first message (Seal via an OTPK) as a new one."""
    alice, _ = await _enroll(server, tmp_path, "alice")
    bob, b_uid = await _enroll(server, tmp_path, "bob")
    first, _ = await m.send_text(alice, b_uid, "once")
    assert all(r.part for r in first.recipients)
    claimed_before = len(bob.load_state().otpks)
    assert _texts(await _recv(bob)) == ["once"]
    assert len(bob.load_state().otpks) == claimed_before - 1  # the used OTPK is gone
    from momedod.client.transport import connect

    async with connect(alice.credentials()) as c:  # same bytes, fresh wire message id
        await c.send(secrets.token_bytes(16), first.payload, first.recipients)
    got = await _recv(bob)
    assert _texts(got) == []
    assert [e.kind for e in got if isinstance(e, m.Notice) and e.kind != "info"] == [
        "undecryptable"
    ]


async def test_a_differing_key_view_is_reported_to_the_receiver(server, tmp_path, monkeypatch):
    """E2E.md §4.4/§14.5: a sender that was shown other identity keys yields a KVD warning."""
    alice, _ = await _enroll(server, tmp_path, "alice")
    bob, b_uid = await _enroll(server, tmp_path, "bob")
    await m.send_text(alice, b_uid, "same view")
    first = [e for e in await _recv(bob) if isinstance(e, m.Message)]
    assert [(e.text, e.warnings) for e in first] == [("same view", ())]
    # Alice's client computes its key-view digest over keys the server substituted.
    monkeypatch.setattr(m.Messenger, "kvd_for", lambda self, peer, fp: b"\x00" * 16)
    await m.send_text(alice, b_uid, "other view")
    monkeypatch.undo()
    got = [e for e in await _recv(bob) if isinstance(e, m.Message)]
    assert [e.text for e in got] == ["other view"]
    assert any("KVD differs" in w for w in got[0].warnings)
