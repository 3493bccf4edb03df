"""POST /v1/messages with an Idempotency-Key: a retry gets the first answer and sends nothing."""

from __future__ import annotations

import pytest
import trio
from bridge_support import recv, start_bridge
from support import FEW_OTPKS, enroll_many

from momedod.client import messenger as m


async def test_a_retry_with_the_same_key_sends_nothing_and_returns_the_first_answer(
    server, tmp_path, nursery, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(m, "OTPK_COUNT", FEW_OTPKS)
    (bot, _bot_uid), (anna, a_uid) = await enroll_many(server, tmp_path, ["idembot", "anna"])
    rb = await start_bridge(nursery, bot, tmp_path)
    order = {"to": a_uid, "text": "Auftrag FM-4711", "metadata": {"ticket": "FM-4711"}}
    async with rb.client() as http:
        first = await http.post("/v1/messages", json=order, headers={"Idempotency-Key": "FM-4711"})
        assert first.status_code == 201, first.text
        assert "idempotent-replayed" not in first.headers
        again = await http.post("/v1/messages", json=order, headers={"Idempotency-Key": "FM-4711"})
        assert again.status_code == 201 and again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
        other = {**order, "text": "Auftrag FM-4712"}
        reused = await http.post("/v1/messages", json=other, headers={"Idempotency-Key": "FM-4711"})
        assert reused.status_code == 422 and "different request" in reused.json()["error"]
        bad = await http.post("/v1/messages", json=other, headers={"Idempotency-Key": "a b"})
        assert bad.status_code == 400

        # Two tries racing with one key: one message, both get its id.
        answers: list[dict[str, object]] = []

        async def post() -> None:
            r = await http.post(
                "/v1/messages",
                json={"to": a_uid, "text": "Auftrag FM-4713"},
                headers={"Idempotency-Key": "FM-4713"},
            )
            assert r.status_code == 201, r.text
            answers.append(r.json())

        async with trio.open_nursery() as both:
            both.start_soon(post)
            both.start_soon(post)
        assert len(answers) == 2 and answers[0]["id"] == answers[1]["id"]

    texts = [msg.text for msg in await recv(anna)]
    assert texts == ["Auftrag FM-4711", "Auftrag FM-4713"]
    assert first.json()["id"] != answers[0]["id"]
    await rb.stop()
