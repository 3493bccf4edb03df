"""Issue 8 acceptance 1-4: the real daemon over TLS on loopback, the real bridge (HTTP API,
webhooks), the example scripts in examples/, and real end-to-end clients for the people."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import trio
from bridge_support import (
    EXAMPLES,
    Receiver,
    recv,
    run_example,
    start_bridge,
)
from support import FEW_OTPKS, enroll_many

from momedod.client import attachments
from momedod.client import groups as g
from momedod.client import messenger as m
from momedod.client.bridge import service
from momedod.client.bridge import webhook as wh
from momedod.store.sqlite import DB_FILENAME

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x02\x00\x00\x00\x03\x08\x02\x00\x00\x00"
    + bytes(range(256)) * 40
)


async def test_case1_timetable_script_reaches_a_channel_of_30(
    server, tmp_path, nursery, monkeypatch
):
    monkeypatch.setattr(m, "OTPK_COUNT", FEW_OTPKS)
    people = await enroll_many(server, tmp_path, ["timetable"] + [f"s{i:02d}" for i in range(30)])
    (bot, _bot_uid), pupils = people[0], people[1:]
    conv_id, _ = await g.create_group(
        bot, "Klasse 7b", [u for _p, u in pupils], channel=True, multi=False
    )
    rb = await start_bridge(nursery, bot, tmp_path)
    text = "Die erste Stunde fällt morgen aus."
    out = await run_example(rb, "timetable_cancellation.py", "--group", "Klasse 7b", "--text", text)
    msg_id = out.strip()
    assert len(msg_id) == 32

    async def one(prof, results):  # type: ignore[no-untyped-def]
        results.append(await recv(prof))

    results: list[list[m.Message]] = []
    async with trio.open_nursery() as n:
        for prof, _uid in pupils:
            n.start_soon(one, prof, results)
    assert len(results) == 30
    for msgs in results:
        assert [(x.msg_id, x.text, x.group) for x in msgs] == [(msg_id, text, conv_id.hex())]
    # End-to-end: the server's database never saw the text.
    stored = b"".join(
        p.read_bytes() for p in server.state_dir.iterdir() if p.name.startswith(DB_FILENAME)
    )
    assert text.encode() not in stored and b"erste Stunde" not in stored


async def test_case2_work_order_reply_erledigt_updates_the_ticket(
    server, tmp_path, nursery, monkeypatch
):
    monkeypatch.setattr(m, "OTPK_COUNT", FEW_OTPKS)
    (bot, bot_uid), (janitor, j_uid) = await enroll_many(server, tmp_path, ["fm", "janitor"])
    tickets = tmp_path / "tickets.json"
    # The bridge's token (the webhook key) exists before the receiver starts.
    token, _ = service.load_token(tmp_path / f"token-{bot.path.name}")
    env = {**os.environ, "MOMEDO_BRIDGE_TOKEN": token}

    async def receiver(task_status=trio.TASK_STATUS_IGNORED):  # type: ignore[no-untyped-def]
        # The example's webhook receiver (stdlib http.server) on a free port.
        proc = await trio.lowlevel.open_process(
            [
                sys.executable,
                str(EXAMPLES / "work_order.py"),
                "webhook",
                "--port",
                "0",
                "--tickets",
                str(tickets),
            ],
            env=env,
            stdout=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            buf = b""
            while b"\n" not in buf:
                buf += await proc.stdout.receive_some(1024)
            task_status.started(buf.split()[-1].decode().rstrip("/"))
            while await proc.stdout.receive_some(1024):
                pass
        finally:
            proc.kill()
            await proc.wait()

    hook_url = await nursery.start(receiver)
    rb = await start_bridge(nursery, bot, tmp_path, webhook=hook_url + "/momedo")

    order_text = "Heizung Raum 204 entlüften"
    order_id = (
        await run_example(
            rb, "work_order.py", "send", "--to", j_uid, "--ticket", "FM-4711", "--text", order_text
        )
    ).strip()
    got = await recv(janitor)
    assert [(x.msg_id, x.text, x.metadata) for x in got] == [
        (order_id, order_text, {"ticket": "FM-4711"})
    ]
    await m.send_text(janitor, bot_uid, "erledigt", reply_to=bytes.fromhex(order_id))
    with trio.fail_after(20):
        while not tickets.exists():
            await trio.sleep(0.05)
    ticket = json.loads(tickets.read_text())["FM-4711"]
    assert ticket["status"] == "done"
    assert ticket["work_order_message"] == order_id
    assert ticket["by"] == m.display(j_uid)
    # The receiver accepted it only because the signature verified; a forged one is refused.
    async with httpx.AsyncClient() as http:
        body = b'{"type":"message","message":{}}'
        forged = {"X-Momedo-Timestamp": "1", "X-Momedo-Signature": "sha256=00"}
        assert (
            await http.post(hook_url + "/momedo", content=body, headers=forged)
        ).status_code == 401
    # The same reply through the polling API carries the original id and metadata too.
    async with rb.client() as http:
        page = (await http.get("/v1/messages")).json()
    [reply] = page["messages"]
    assert reply["reply_to"] == order_id
    assert reply["in_reply_to"]["metadata"] == {"ticket": "FM-4711"}
    assert reply["text"] == "erledigt" and reply["from"]["user_id"] == m.display(j_uid)


async def test_case3_photo_with_location_reaches_the_back_office(
    server, tmp_path, nursery, monkeypatch
):
    monkeypatch.setattr(m, "OTPK_COUNT", FEW_OTPKS)
    (bot, bot_uid), (officer, o_uid) = await enroll_many(server, tmp_path, ["office", "officer"])
    hook = Receiver()
    await hook.start(nursery)
    rb = await start_bridge(nursery, bot, tmp_path, webhook=hook.url)
    photo = tmp_path / "sperrmuell.png"
    photo.write_bytes(PNG)
    await attachments.send_file(
        officer,
        photo,
        to=bot_uid,
        caption="Sperrmüll Hauptstraße 5",
        location=(52.5200066, 13.404954),
    )
    [h] = await hook.wait_for(1)
    assert wh.verify(
        rb.token.encode(), h.headers["x-momedo-timestamp"], h.body, h.headers["x-momedo-signature"]
    )
    msg = h.json["message"]
    assert msg["from"]["user_id"] == m.display(o_uid)
    assert msg["text"] == "Sperrmüll Hauptstraße 5"
    assert msg["location"] == {"lat": 52.5200066, "lon": 13.404954, "accuracy_m": 0.0}
    [att] = msg["attachments"]
    assert (att["name"], att["mime"], att["size"]) == ("sperrmuell.png", "image/png", len(PNG))
    assert (att["width"], att["height"]) == (2, 3)
    async with rb.client() as http:
        r = await http.get(att["url"])
    assert r.status_code == 200 and r.content == PNG
    assert r.headers["content-type"] == "image/png"
    # The back office's poller (examples/photo_inbox.py) saves image and coordinates.
    out = tmp_path / "inbox"
    await run_example(rb, "photo_inbox.py", "--out", str(out), "--once")
    name = f"{msg['id']}-sperrmuell.png"
    assert (out / name).read_bytes() == PNG
    record = json.loads((out / f"{name}.json").read_text())
    assert record["location"] == {"lat": 52.5200066, "lon": 13.404954, "accuracy_m": 0.0}


async def test_case4_webhook_down_queues_on_disk_in_order_across_a_restart(
    server, tmp_path, nursery, monkeypatch
):
    monkeypatch.setattr(m, "OTPK_COUNT", FEW_OTPKS)
    monkeypatch.setattr(wh, "BACKOFF_MIN_S", 0.05)
    monkeypatch.setattr(wh, "BACKOFF_MAX_S", 0.2)
    (bot, bot_uid), (anna, _a) = await enroll_many(server, tmp_path, ["bot4", "anna"])
    hook = Receiver()
    await hook.start(nursery)
    rb = await start_bridge(nursery, bot, tmp_path, webhook=hook.url)

    async def inbox_size() -> int:
        async with rb.client() as http:
            return len((await http.get("/v1/messages")).json()["messages"])

    async def wait_inbox(n: int) -> None:
        with trio.fail_after(20):
            while await inbox_size() < n:
                await trio.sleep(0.05)

    await m.send_text(anna, bot_uid, "Nachricht 1")
    await hook.wait_for(1)
    hook.up = False
    for i in (2, 3):
        await m.send_text(anna, bot_uid, f"Nachricht {i}")
    await wait_inbox(3)
    tries = hook.attempts
    with trio.fail_after(10):
        while hook.attempts < tries + 2:  # it keeps retrying, with back-off
            await trio.sleep(0.05)
    assert len(hook.accepted) == 1
    await rb.stop()  # the bridge goes away with two undelivered messages
    for i in (4, 5):
        await m.send_text(anna, bot_uid, f"Nachricht {i}")
    rb = await start_bridge(nursery, bot, tmp_path, webhook=hook.url)
    await wait_inbox(5)
    async with rb.client() as http:
        health = (await http.get("/v1/health")).json()
    assert health["webhook_pending"] == 4
    hook.up = True
    hooks = await hook.wait_for(5)
    await trio.sleep(0.5)  # nothing more comes
    assert [h.json["message"]["text"] for h in hook.accepted] == [
        f"Nachricht {i}" for i in range(1, 6)
    ]
    assert [h.headers["x-momedo-delivery"] for h in hooks] == ["1", "2", "3", "4", "5"]
    assert len({h.json["message"]["id"] for h in hooks}) == 5
    for h in hooks:
        assert wh.verify(
            rb.token.encode(),
            h.headers["x-momedo-timestamp"],
            h.body,
            h.headers["x-momedo-signature"],
        )
