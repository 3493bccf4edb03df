"""Prekey maintenance in the client (docs/E2E.md, "Prekey maintenance"): the SPK is rotated
after 7 days at a connect, the old seed still opens Seals made before and is deleted 72 h after
its successor appeared; the OTPK pool is topped up to 20 when fewer than 10 are left."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from momedod.client import messenger as m
from momedod.client.profile import Profile, open_profile
from momedod.client.transport import connect
from momedod.e2e.envelope import HEADER_LEN
from momedod.e2e.records import PREKEY_OTPK, PREKEY_SPK
from momedod.protocol.records import RECORD_PREKEY, parse_record

DAY = 86_400_000


class Clock:
    """The messenger's clock (``m.now_ms``), moved forward by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0
        real = m.now_ms
        monkeypatch.setattr(m, "now_ms", lambda: real() + self.offset)

    def advance(self, days: float) -> None:
        self.offset += int(days * DAY)


async def _enroll(server, tmp_path: Path, name: str) -> tuple[Profile, str]:  # type: ignore[no-untyped-def]
    _shown, link = await server.add_user(name)
    prof = open_profile(tmp_path / name, create=True)
    creds, _ = await m.enroll(prof, link, f"{name}-phone")
    return prof, creds.user_id


async def _recv(prof: Profile) -> list[m.Event]:
    got: list[m.Event] = []
    await m.receive(prof, got.append, wait=0.0)
    return got


def _texts(events: list[m.Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, m.Message)]


def _seal_key(part: bytes) -> tuple[int, int]:
    """(key_kind, key_id) of a Seal."""
    kind, key_id = struct.unpack(">BI", part[HEADER_LEN : HEADER_LEN + 5])
    return kind, key_id


async def _server_spks(prof: Profile, user_id: str) -> list[int]:
    async with connect(prof.credentials()) as c:
        records = await c.key_get(user_id)
    ids = []
    for rec in records:
        info = parse_record(rec)
        if info.record_type == RECORD_PREKEY and info.prekey_kind == PREKEY_SPK:
            assert info.key_id is not None
            ids.append(info.key_id)
    return ids


async def test_spk_rotates_after_7_days_old_seed_opens_then_is_deleted(
    server, tmp_path, monkeypatch
):
    clock = Clock(monkeypatch)
    alice, _ = await _enroll(server, tmp_path, "alice")
    bob, b_uid = await _enroll(server, tmp_path, "bob")
    old_spk = bob.load_state().spk_id
    assert await _server_spks(alice, b_uid) == [old_spk]

    # Day 0: Bob is offline; Alice's first message is sealed to his SPK (no OTPK: drained).
    async with connect(alice.credentials()) as c:
        for _ in range(m.OTPK_COUNT):
            assert await c.key_claim(b_uid, 1, bob.load_state().suite) is not None
    out, _ = await m.send_text(alice, b_uid, "while you were away")
    (part,) = [r.part for r in out.recipients]
    assert _seal_key(part) == (PREKEY_SPK, old_spk)

    # Day 8: Bob comes online. The connect rotates first, then the queued Seal still opens.
    clock.advance(8)
    assert _texts(await _recv(bob)) == ["while you were away"]
    st = bob.load_state()
    new_spk = st.spk_id
    assert new_spk != old_spk
    assert set(st.spks) == {old_spk, new_spk}
    assert st.spks[new_spk].published
    assert await _server_spks(alice, b_uid) == [new_spk]

    # A new sender now seals to the new SPK; Bob opens it.
    carol, _ = await _enroll(server, tmp_path, "carol")
    async with connect(carol.credentials()) as c:  # drain the OTPKs topped up at day 8
        while await c.key_claim(b_uid, 1, st.suite) is not None:
            pass
    out2, _ = await m.send_text(carol, b_uid, "hello new key")
    assert _seal_key(out2.recipients[0].part) == (PREKEY_SPK, new_spk)
    assert _texts(await _recv(bob)) == ["hello new key"]

    # Day 10 (successor 48 h old): the old seed is still kept.
    clock.advance(2)
    await _recv(bob)
    assert old_spk in bob.load_state().spks

    # Day 12 (successor 96 h old): the old seed is gone, no further rotation yet.
    clock.advance(2)
    await _recv(bob)
    st = bob.load_state()
    assert set(st.spks) == {new_spk}
    assert await _server_spks(alice, b_uid) == [new_spk]


async def test_otpk_pool_is_topped_up_after_first_contacts(server, tmp_path):
    bob, b_uid = await _enroll(server, tmp_path, "bob")
    first = set(bob.load_state().otpks)
    assert len(first) == m.OTPK_COUNT

    used: set[int] = set()
    for i in range(15):
        sender, _ = await _enroll(server, tmp_path, f"s{i}")
        out, _ = await m.send_text(sender, b_uid, f"hi {i}")
        kind, key_id = _seal_key(out.recipients[0].part)
        assert kind == PREKEY_OTPK and key_id in first
        used.add(key_id)
    assert len(used) == 15
    got = await _recv(bob)  # the connect finds 20 unused; then 15 are used and deleted
    assert len(_texts(got)) == 15
    left = bob.load_state().otpks
    assert set(left) == first - used

    await _recv(bob)  # 5 < 10 unused: 15 new ones are generated and published
    pool = bob.load_state().otpks
    assert len(pool) == m.OTPK_COUNT
    new = set(pool) - first
    assert len(new) == 15 and all(pool[k].published for k in new)

    # A further first contact's Seal uses an OTPK; the server's pool matches the local one.
    late, _ = await _enroll(server, tmp_path, "late")
    out, _ = await m.send_text(late, b_uid, "late hello")
    kind, key_id = _seal_key(out.recipients[0].part)
    assert kind == PREKEY_OTPK and key_id in pool
    assert _texts(await _recv(bob)) == ["late hello"]
    assert key_id not in bob.load_state().otpks
    claimed = set()
    async with connect(late.credentials()) as c:
        while (rec := await c.key_claim(b_uid, 1, pool[key_id].suite)) is not None:
            info = parse_record(rec)
            assert info.key_id is not None
            claimed.add(info.key_id)
    assert claimed == set(pool) - {key_id}
    assert new <= claimed | {key_id}


def test_plan_keeps_state_when_nothing_is_due():
    st = m.new_state()
    now = m.now_ms()
    assert not m.plan_prekeys(st, now + 6 * DAY)
    assert m.plan_prekeys(st, now + 8 * DAY)
    assert len(st.spks) == 2 and not st.spks[st.spk_id].published
    # Not deleted before the successor is published, whatever its age.
    assert not m.plan_prekeys(st, now + 30 * DAY)
    assert len(st.spks) == 2
