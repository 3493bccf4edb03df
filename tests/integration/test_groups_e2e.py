"""Issue 4 acceptance for groups and channels: the real daemon over TLS on loopback and the
real client library (plus the real ``momedo`` processes for the command line).

1. A channel "Klasse 7b" (one teacher, 30 pupils): the teacher's post reaches every pupil,
   online and offline; a pupil's post is refused (by the client, and by the server).
2. A group of 50 in each mode: everyone reads; a removed member cannot decrypt what follows.
3. A member inserted into an organisation channel directly in the store (no signature) gets
   nothing it can decrypt, and the members' clients report the unsigned change.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sqlite3
from pathlib import Path

import pytest
import trio
from support import FEW_OTPKS, VENV_BIN, enroll_many

from momedod.client import attachments
from momedod.client import groups as g
from momedod.client import messenger as m
from momedod.client.profile import Profile
from momedod.client.transport import ServerError, connect
from momedod.e2e.identity import UserIdentityKey
from momedod.e2e.roster import (
    KIND_CHANNEL,
    MODE_CHAINS,
    MODE_MULTI,
    ROLE_ADMIN,
    ROLE_MEMBER,
    Roster,
    make_org_key_record,
    sign_roster_org,
)
from momedod.protocol import frames as f
from momedod.protocol.errors import ErrorCode
from momedod.protocol.invite import fingerprint_text
from momedod.protocol.userid import display
from momedod.store.sqlite import DB_FILENAME


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Org:
    """The operator's side: the organisation key and org-signed rosters via the admin socket
    (what ``momedoctl org key`` / ``group add`` / ``group members`` do)."""

    def __init__(self, server) -> None:  # type: ignore[no-untyped-def]
        self.server = server
        self.key = UserIdentityKey(os.urandom(32))

    async def publish(self) -> None:
        await self.server.admin("org.key.put", record=_b64(make_org_key_record(1, self.key, None)))

    async def add(
        self, name: str, members: dict[str, int], *, kind: int = KIND_CHANNEL, mode: int = 1
    ) -> Roster:
        roster = Roster.first(os.urandom(16), kind, members, name, mode=mode)
        await self.server.admin(
            "group.add", name=name, roster=_b64(sign_roster_org(roster, self.key))
        )
        return roster

    async def update(self, prev: Roster, members: dict[str, int]) -> Roster:
        roster = prev.next(members=members)
        await self.server.admin(
            "group.update", group=prev.conv_id.hex(), roster=_b64(sign_roster_org(roster, self.key))
        )
        return roster


async def recv(prof: Profile) -> list[m.Event]:
    got: list[m.Event] = []
    await m.receive(prof, got.append, wait=0.0)
    return got


async def recv_all(profs: list[Profile]) -> list[list[m.Event]]:
    results: dict[int, list[m.Event]] = {}

    async def one(i: int, p: Profile) -> None:
        results[i] = await recv(p)

    async with trio.open_nursery() as nursery:
        for i, p in enumerate(profs):
            nursery.start_soon(one, i, p)
    return [results[i] for i in range(len(profs))]


def messages(events: list[m.Event]) -> list[m.Message]:
    return [e for e in events if isinstance(e, m.Message)]


def notice_texts(events: list[m.Event], kind: str | None = None) -> list[str]:
    return [e.text for e in events if isinstance(e, m.Notice) and kind in (None, e.kind)]


def _db(state_dir: Path) -> Path:
    return state_dir / DB_FILENAME


# -- 1 --------------------------------------------------------------------------------------


async def _momedoctl(server, tmp_path: Path, *args: str) -> str:  # type: ignore[no-untyped-def]
    """The real ``momedoctl`` against the in-process daemon's admin socket."""
    cfg = tmp_path / "ctl.toml"
    if not cfg.exists():
        cfg.write_text(
            f'[server]\nstate_dir = "{server.state_dir}"\n[admin]\nsocket = "{server.socket}"\n'
        )
    res = await trio.run_process(
        [
            str(VENV_BIN / "momedoctl"),
            "-c",
            str(cfg),
            "--org-key",
            str(tmp_path / "org.key"),
            *args,
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode()


async def test_channel_klasse_7b_teacher_reaches_30_pupils_online_and_offline(
    server, tmp_path, monkeypatch
):
    monkeypatch.setattr(m, "OTPK_COUNT", FEW_OTPKS)
    # created, published: invites carry it
    org = json.loads(await _momedoctl(server, tmp_path, "--json", "org", "key"))
    people = await enroll_many(server, tmp_path, ["teacher"] + [f"pupil{i:02d}" for i in range(30)])
    (teacher, t_uid), pupils = people[0], people[1:]
    state = teacher.load_state()
    assert state.org_source == "invite"  # pinned from the invite link: the operator's key
    assert state.org_fp is not None and fingerprint_text(state.org_fp) == org["fingerprint"]
    await _momedoctl(server, tmp_path, "group", "add", "--channel", "Klasse 7b")
    await _momedoctl(
        server, tmp_path, "group", "members", "Klasse 7b", "add", t_uid, *[u for _p, u in pupils]
    )
    await _momedoctl(server, tmp_path, "group", "admins", "Klasse 7b", "add", t_uid)
    shown = json.loads(await _momedoctl(server, tmp_path, "--json", "group", "show", "Klasse 7b"))
    conv_id = bytes.fromhex(shown["group"]["conv_id"])

    online, offline = pupils[:10], pupils[10:]
    text = "Die erste Stunde fällt morgen aus."
    got: dict[str, list[m.Event]] = {uid: [] for _p, uid in online}
    arrived = trio.Event()

    def collector(uid: str):  # type: ignore[no-untyped-def]
        def on(ev: m.Event) -> None:
            got[uid].append(ev)
            if all(any(isinstance(e, m.Message) for e in evs) for evs in got.values()):
                arrived.set()

        return on

    async with trio.open_nursery() as nursery:
        for prof, uid in online:
            nursery.start_soon(lambda p=prof, u=uid: m.receive(p, collector(u), wait=None))
        await trio.sleep(0.5)  # they are connected (and have seen the creation event)
        out, notices = await g.send_group_text(teacher, "Klasse 7b", text)
        assert len(out.devices) == 30
        assert not notice_texts(notices, "warning")
        with trio.fail_after(30):
            await arrived.wait()
        nursery.cancel_scope.cancel()

    results = list(got.values()) + await recv_all([p for p, _ in offline])
    for evs in results:
        msgs = messages(evs)
        assert len(msgs) == 1, evs
        assert msgs[0].text == text and msgs[0].group == conv_id.hex()
        assert msgs[0].line() == f"[Klasse 7b] {display(t_uid)} (device 1): {text}"
        assert msgs[0].json()["group_name"] == "Klasse 7b"
        assert not notice_texts(evs, "undecryptable")

    # A pupil cannot post: the client refuses before sending ...
    pupil, _p_uid = pupils[0]
    with pytest.raises(m.MessengerError, match='only admins may post to the channel "Klasse 7b"'):
        await g.send_group_text(pupil, "Klasse 7b", "Juhu!")
    # ... and so does the server for a hand-made CONV_SEND.
    async with connect(pupil.credentials()) as client:
        with pytest.raises(ServerError) as exc:
            await client.conv_send(secrets.token_bytes(16), conv_id, b"x" * 300, [])
    assert exc.value.code == ErrorCode.FORBIDDEN
    assert all(messages(evs) == [] for evs in await recv_all([p for p, _ in pupils[1:4]]))


# -- 3 --------------------------------------------------------------------------------------


async def test_member_inserted_in_the_store_gets_nothing_and_members_report_it(
    server, tmp_path, monkeypatch
):
    monkeypatch.setattr(m, "OTPK_COUNT", FEW_OTPKS)
    org = Org(server)
    await org.publish()
    people = await enroll_many(server, tmp_path, ["teacher", "anna", "ben", "mallory"])
    (teacher, t_uid), (anna, a_uid), (ben, b_uid), (mallory, x_uid) = people
    roster = await org.add("Klasse 7b", {t_uid: ROLE_ADMIN, a_uid: ROLE_MEMBER, b_uid: ROLE_MEMBER})
    await g.send_group_text(teacher, "Klasse 7b", "before")
    for evs in await recv_all([anna, ben]):
        assert [x.text for x in messages(evs)] == ["before"]

    # The attacker (with the server's database) adds Mallory without the organisation's
    # signature.
    with sqlite3.connect(_db(server.state_dir)) as db:
        db.execute(
            "INSERT INTO conv_members (conv_id, user_id, role) VALUES (?, ?, 0)",
            (roster.conv_id, x_uid),
        )
    secret = "SECRET-" + secrets.token_hex(6)
    out, notices = await g.send_group_text(teacher, "Klasse 7b", secret)
    warning = (
        f'the server lists {display(x_uid)} in "Klasse 7b" without a signed roster; '
        f"{display(x_uid)} gets nothing from this client"
    )
    assert warning in notice_texts(notices, "warning")
    assert not any(d.startswith(x_uid) for d in out.devices)
    assert all(r.user_id != x_uid for r in out.parts)

    got_x = await recv(mallory)
    assert messages(got_x) == []
    assert any("could not decrypt" in t for t in notice_texts(got_x, "undecryptable"))
    for evs in await recv_all([anna, ben]):
        assert [x.text for x in messages(evs)] == [secret]
        assert warning in notice_texts(evs, "warning")
    rows, _ = await g.list_groups(anna)
    assert rows[0]["warnings"] == [warning]
    # Mallory's own client sees no roster that lists it.
    rows_x, notes_x = await g.list_groups(mallory)
    assert any("without a signed roster" in w for r in rows_x for w in r["warnings"]) or any(
        "without a signed roster" in n.text for n in notes_x
    )


# -- 2 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [MODE_CHAINS, MODE_MULTI], ids=["chains", "multi"])
async def test_group_of_50_everyone_reads_and_a_removed_member_cannot(
    server, tmp_path, monkeypatch, mode
):
    monkeypatch.setattr(m, "OTPK_COUNT", FEW_OTPKS)
    people = await enroll_many(server, tmp_path, [f"m{i:02d}" for i in range(50)])
    (admin, _admin_uid), rest = people[0], people[1:]
    conv_id, _ = await g.create_group(
        admin, "Fünfzig", [u for _p, u in rest], channel=False, multi=mode == MODE_MULTI
    )
    out, _ = await g.send_group_text(admin, conv_id, "hallo alle")
    assert len(out.devices) == 49
    results = await recv_all([p for p, _ in rest])
    for evs in results:
        assert [x.text for x in messages(evs)] == ["hallo alle"], evs
    # A member posts too (every member of a group may).
    poster, poster_uid = rest[5]
    await g.send_group_text(poster, conv_id, "antwort")
    got_admin = await recv(admin)
    assert [(x.sender, x.text) for x in messages(got_admin)] == [(poster_uid, "antwort")]

    gone, gone_uid = rest[0]
    notices = (await g.change_group(admin, conv_id.hex()[:8], remove=[gone_uid]))[1]
    assert f'{display(gone_uid)} was removed from "Fünfzig" by you' in notice_texts(notices)
    later, _ = await g.send_group_text(admin, conv_id, "nach dem Entfernen")
    assert len(later.devices) == 48 and not any(d.startswith(gone_uid) for d in later.devices)
    stayers = [p for p, _ in rest[1:]]
    for evs in await recv_all(stayers[:20]):  # (a sample; all 48 read the first message)
        assert [x.text for x in messages(evs)][-1:] == ["nach dem Entfernen"]
        assert any("was removed" in t for t in notice_texts(evs))

    # The removed member gets nothing from the server now ...
    evs = await recv(gone)
    assert [x.text for x in messages(evs)] == ["antwort"]  # sent before the removal
    assert any("no longer a member" in t for t in notice_texts(evs, "warning"))
    # ... and cannot decrypt the later message even when handed the envelope directly,
    # with any of the parts that were made (none was made for it).
    candidates = [b"", *[r.part for r in later.parts][:3]]
    async with connect(gone.credentials()) as client:
        msgr = m.Messenger(gone, client, gone.load_state())
        for part in candidates:
            ev = f.Deliver(0, 1, later.message_id, 0, later.payload, part)
            msgr.state.seen.pop(later.message_id.hex(), None)
            res = await msgr.handle(ev)
            assert messages(res) == [], res
            assert any("could not decrypt" in t for t in notice_texts(res, "undecryptable"))


# -- the command line --------------------------------------------------------------------------


async def _momedo(profile: Path, *args: str) -> tuple[int, str, str]:
    res = await trio.run_process(
        [str(VENV_BIN / "momedo"), "--profile", str(profile), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return res.returncode, res.stdout.decode(), res.stderr.decode()


async def test_cli_group_create_send_recv_and_groups(server, tmp_path, monkeypatch):
    monkeypatch.setattr(m, "OTPK_COUNT", FEW_OTPKS)
    people = await enroll_many(server, tmp_path, ["anna", "bob", "carl"])
    (anna, a_uid), (bob, b_uid), (carl, c_uid) = people
    rc, out, err = await _momedo(
        anna.path, "--json", "group", "create", "Reparatur", display(b_uid), display(c_uid)
    )
    assert rc == 0, err
    created = json.loads(out)
    assert created["members"] == 3 and created["epoch"] == 1
    rc, out, err = await _momedo(anna.path, "send", "--group", "Reparatur", "Wasserschaden")
    assert rc == 0, err
    assert 'sent to "Reparatur" (2 device(s))' in out
    rc, out, err = await _momedo(bob.path, "recv")
    assert rc == 0, err
    assert out.splitlines() == [f"[Reparatur] {display(a_uid)} (device 1): Wasserschaden"]
    rc, out, err = await _momedo(carl.path, "--json", "recv")
    lines = [json.loads(x) for x in out.splitlines()]
    msg = [x for x in lines if x["type"] == "message"]
    assert msg[0]["group"] == created["group"] and msg[0]["group_name"] == "Reparatur"
    rc, out, err = await _momedo(bob.path, "--json", "groups")
    rows = json.loads(out)["groups"]
    assert [(r["title"], r["kind"], r["mode"], r["members"]) for r in rows] == [
        ("Reparatur", "group", "chains", 3)
    ]
    # Only an admin changes a user group; a prefix of the ID names it too.
    rc, out, err = await _momedo(bob.path, "group", "remove", created["group"][:6], display(c_uid))
    assert rc == 1 and "only an admin" in err
    rc, out, err = await _momedo(anna.path, "group", "remove", "Reparatur", display(c_uid))
    assert rc == 0, err
    assert "epoch 2  2 members" in out
    rc, out, err = await _momedo(anna.path, "groups")
    assert "Reparatur" in out and "epoch 2" in out
    rc, out, err = await _momedo(carl.path, "send", "--group", "Reparatur", "hallo?")
    assert rc == 1 and "no longer a member" in err


# -- 4 --------------------------------------------------------------------------------------


def _photo(size: int) -> bytes:
    """A JPEG-looking file of ``size`` bytes: SOI, an SOF0 of 4000x3000, random data."""
    head = b"\xff\xd8" + b"\xff\xc0\x00\x11\x08" + (3000).to_bytes(2, "big")
    head += (4000).to_bytes(2, "big") + b"\x03" + bytes(9)
    return head + os.urandom(size - len(head))


async def test_photo_of_20_mib_with_location_to_a_user_and_a_group(server, tmp_path, monkeypatch):
    monkeypatch.setattr(m, "OTPK_COUNT", FEW_OTPKS)
    people = await enroll_many(server, tmp_path, ["officer", "backoffice", "chief"])
    (officer, _o_uid), (back, b_uid), (chief, c_uid) = people
    photo = tmp_path / "schaden.jpg"
    data = _photo(20 * 1024 * 1024)
    photo.write_bytes(data)
    where = (52.5200066, 13.404954)

    # Interrupted half-way: the re-run continues the same upload.
    with trio.CancelScope() as scope:

        def stop_half_way(received: int, total: int) -> None:
            if received > total // 2:
                scope.cancel()

        await attachments.send_file(
            officer,
            photo,
            to=b_uid,
            caption="Wasserschaden",
            location=where,
            progress=stop_half_way,
        )
    assert scope.cancelled_caught
    partial = list((server.state_dir / "blobs").rglob("*"))
    assert any(p.is_file() and p.stat().st_size > 0 for p in partial)
    sent = await attachments.send_file(
        officer, photo, to=b_uid, caption="Wasserschaden", location=where
    )
    assert sent.resumed_at > len(data) // 2  # it did not start over
    assert not any((officer.path / "outbox").iterdir())  # done: the outbox is empty

    save_b = tmp_path / "saved-b"
    got: list[m.Event] = []
    await m.receive(back, got.append, wait=0.0, save_dir=save_b)
    (msg,) = messages(got)
    att = msg.attachment
    assert att is not None and att["path"] == str(save_b / "schaden.jpg")
    assert Path(att["path"]).read_bytes() == data
    assert (att["mime"], att["size"], att["width"], att["height"]) == (
        "image/jpeg",
        len(data),
        4000,
        3000,
    )
    assert att["location"]["lat"] == pytest.approx(where[0], abs=1e-7)
    assert att["location"]["lon"] == pytest.approx(where[1], abs=1e-7)
    assert msg.text == "Wasserschaden"
    assert "location 52.5200066,13.4049540" in msg.line()

    # To a group: same file again; the second save does not overwrite the first.
    conv_id, _ = await g.create_group(
        officer, "Leitstelle", [b_uid, c_uid], channel=False, multi=False
    )
    gsent = await attachments.send_file(officer, photo, group="Leitstelle", location=where)
    assert gsent.devices == 2
    for prof, directory in ((back, save_b), (chief, tmp_path / "saved-c")):
        got = []
        await m.receive(prof, got.append, wait=0.0, save_dir=directory)
        (gmsg,) = messages(got)
        assert gmsg.group == conv_id.hex() and gmsg.attachment is not None
        path = Path(gmsg.attachment["path"])
        assert path.read_bytes() == data and gmsg.attachment["location"] is not None
    assert sorted(p.name for p in save_b.iterdir()) == ["schaden-1.jpg", "schaden.jpg"]

    # The server holds ciphertext only: no piece of the photo is in any file of its state.
    samples = [data[i : i + 32] for i in range(4096, len(data), len(data) // 7)]
    blob_files = [p for p in (server.state_dir / "blobs").rglob("*") if p.is_file()]
    assert blob_files
    for path in server.state_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not any(s in content for s in samples), f"plaintext in {path}"
