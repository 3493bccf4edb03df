"""Issue 8 acceptance 5: requests without the token are refused, and the API matches
docs/bridge-openapi.yaml — every route and method of the app is documented and vice versa,
every response the tests provoke has a documented status and validates against its schema,
and every documented status is provoked (except those listed with a reason)."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import trio
import yaml
from bridge_support import start_bridge
from starlette.routing import Route
from support import FEW_OTPKS, enroll_many

from momedod.client import attachments
from momedod.client import messenger as m
from momedod.client.bridge import api as bridge_api
from momedod.client.bridge import service
from momedod.client.bridge.api import build_app
from momedod.client.profile import open_profile
from momedod.protocol.userid import ALPHABET, check_char

DOC = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs/bridge-openapi.yaml").read_text())
NOT_PROVOKED = {
    ("post", "/v1/messages", "409"): "a contact's identity key change (tests/client covers it)",
    ("post", "/v1/messages", "502"): "the server refusing a SEND the client built correctly",
}


def _operation(method: str, path: str) -> tuple[str, dict[str, Any]]:
    for template, item in DOC["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method in item:
            return template, item[method]
    raise AssertionError(f"{method.upper()} {path} is not in the OpenAPI document")


def _schema(ref_or_inline: dict[str, Any]) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": DOC["components"],
        **ref_or_inline,
    }


class Checker:
    """Validates each response against the document and records what was seen."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str, str]] = set()

    async def __call__(self, resp: httpx.Response) -> None:
        await resp.aread()
        method, path = resp.request.method.lower(), resp.request.url.path
        template, op = _operation(method, path)
        status = str(resp.status_code)
        assert status in op["responses"], f"{method.upper()} {path} answered undocumented {status}"
        self.seen.add((method, template, status))
        spec = op["responses"][status]
        if "$ref" in spec:
            spec = DOC["components"]["responses"][spec["$ref"].rsplit("/", 1)[1]]
        media = spec["content"]
        if "application/json" in media:
            assert resp.headers["content-type"].startswith("application/json")
            jsonschema.validate(resp.json(), _schema(media["application/json"]["schema"]))


def test_every_route_of_the_app_is_documented_and_vice_versa():
    async def pending() -> None:
        return None

    app = build_app(None, "x" * 20, pending)  # type: ignore[arg-type]
    served = {
        (meth.lower(), r.path)
        for r in app.routes
        if isinstance(r, Route)
        for meth in r.methods or ()
        if meth != "HEAD"
    }
    documented = {
        (meth, path)
        for path, item in DOC["paths"].items()
        for meth in item
        if meth in ("get", "post", "put", "patch", "delete")
    }
    assert served == documented
    jsonschema.Draft202012Validator.check_schema(_schema({"$ref": "#/components/schemas/Message"}))
    assert DOC["openapi"].startswith("3.1")


async def test_without_the_token_everything_but_health_is_refused_and_the_api_matches_its_document(
    server, tmp_path, nursery, monkeypatch
):
    monkeypatch.setattr(m, "OTPK_COUNT", FEW_OTPKS)
    monkeypatch.setattr(service, "CONNECT_WAIT_S", 0.2)
    monkeypatch.setattr(bridge_api, "MAX_BODY", 1 << 20)
    (bot, bot_uid), (anna, a_uid) = await enroll_many(server, tmp_path, ["apibot", "anna"])
    # A copy of the bot's profile pointing at a closed port: a bridge that cannot connect.
    offline = tmp_path / "p-offline"
    shutil.copytree(bot.path, offline)
    creds = json.loads((offline / "transport.json").read_text())
    creds["port"] = 1
    (offline / "transport.json").write_text(json.dumps(creds))
    rb = await start_bridge(nursery, bot, tmp_path)
    rb_off = await start_bridge(nursery, open_profile(offline), tmp_path, connected=False)
    checker = Checker()
    hooks = {"response": [checker]}
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"\xff\xd8" + bytes(300))
    await attachments.send_file(anna, photo, to=bot_uid, caption="Foto")

    async with (
        httpx.AsyncClient(base_url=rb.url, event_hooks=hooks, timeout=30) as anon,
        httpx.AsyncClient(
            base_url=rb.url,
            event_hooks=hooks,
            headers={"Authorization": "Bearer " + "x" * len(rb.token)},
            timeout=30,
        ) as wrong,
        rb.client() as http,
        httpx.AsyncClient(
            base_url=rb_off.url,
            event_hooks=hooks,
            headers={"Authorization": f"Bearer {rb_off.token}"},
            timeout=30,
        ) as off,
    ):
        http.event_hooks = hooks
        # Acceptance 5: no token, a wrong token, another scheme: 401 everywhere but health.
        for client in (anon, wrong):
            assert (await client.get("/v1/health")).status_code == 200
            assert (await client.get("/v1/messages")).status_code == 401
            r = await client.post("/v1/messages", json={"to": a_uid, "text": "x"})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert (await client.get("/v1/attachments/abc")).status_code == 401
        r = await anon.get("/v1/messages", headers={"Authorization": f"Basic {rb.token}"})
        assert r.status_code == 401
        # The polled inbox, with the attachment.
        with trio.fail_after(20):
            while not (page := (await http.get("/v1/messages")).json())["messages"]:
                await trio.sleep(0.05)
        [msg] = page["messages"]
        assert msg["text"] == "Foto" and page["next"] == msg["cursor"]
        assert (await http.get(f"/v1/messages?after={page['next']}")).json()["messages"] == []
        r = await http.get(msg["attachments"][0]["url"])
        assert r.status_code == 200 and r.content == photo.read_bytes()
        assert "p.jpg" in r.headers["content-disposition"]
        assert (await http.get("/v1/attachments/nope")).status_code == 404
        # Sending: JSON, with attachments in base64, and multipart.
        r = await http.post("/v1/messages", json={"to": a_uid, "text": "Hallo"})
        assert r.status_code == 201
        data = base64.b64encode(b"%PDF-1.4 test").decode()
        r = await http.post(
            "/v1/messages",
            json={
                "to": a_uid,
                "text": "Anhang",
                "reply_to": msg["id"],
                "metadata": {"vorgang": 17},
                "attachments": [
                    {
                        "name": "a.pdf",
                        "mime": "application/pdf",
                        "data": data,
                        "location": {"lat": 48.1, "lon": 11.5},
                    }
                ],
            },
        )
        assert r.status_code == 201, r.text
        r = await http.post(
            "/v1/messages",
            data={"message": json.dumps({"to": a_uid, "text": "multipart"})},
            files=[("file", ("b.txt", b"hello", "text/plain"))],
        )
        assert r.status_code == 201, r.text
        got = [x for x in await _recv(anna)]
        assert [x.text for x in got] == ["Hallo", "Anhang", "multipart"]
        assert got[1].reply_to == msg["id"] and got[1].metadata == {"vorgang": 17}
        assert got[1].attachments[0]["location"]["lat"] == 48.1
        assert got[2].attachments[0]["name"] == "b.txt"
        # Refusals.
        bad: list[dict[str, Any]] = [
            {"text": "no recipient"},
            {"to": a_uid, "group": "x", "text": "both"},
            {"to": "not-an-id", "text": "x"},
            {"to": a_uid},
            {"to": a_uid, "text": "x", "reply_to": "abc"},
            {"to": a_uid, "text": "x", "metadata": [1]},
            {"to": a_uid, "text": "x", "metadata": {"k": "v" * 5000}},
            {"to": a_uid, "text": "x", "extra": 1},
            {"to": a_uid, "attachments": [{"name": "a", "mime": "x/y", "data": "!!"}]},
            {"to": a_uid, "attachments": [{"name": "a\\b", "mime": "x/y", "data": ""}]},
            {"to": a_uid, "attachments": [{"name": "a", "mime": "x/\u00e4", "data": ""}]},
        ]
        for body in bad:
            r = await http.post("/v1/messages", json=body)
            assert r.status_code == 400, (body, r.text)
        assert (
            await http.post(
                "/v1/messages", content=b"{", headers={"Content-Type": "application/json"}
            )
        ).status_code == 400
        r = await http.post("/v1/messages", content=b"hi", headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
        r = await http.post(
            "/v1/messages", content=b"x" * (2 << 20), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413
        r = await http.post("/v1/messages", json={"to": "ZZZZ-ZZZZ", "text": "x"})
        assert r.status_code in (400, 422)
        r = await http.post("/v1/messages", json={"to": _unknown_uid(a_uid), "text": "x"})
        assert r.status_code == 422, r.text
        assert (await http.get("/v1/messages?after=-1")).status_code == 400
        assert (await http.get("/v1/messages?limit=abc")).status_code == 400
        # Not connected: health says so, a send is refused with 503 (nothing sent).
        assert (await off.get("/v1/health")).status_code == 503
        assert (await off.post("/v1/messages", json={"to": a_uid, "text": "x"})).status_code == 503

    documented = {
        (meth, path, status)
        for path, item in DOC["paths"].items()
        for meth, op in item.items()
        for status in op["responses"]
    }
    assert documented - checker.seen == set(NOT_PROVOKED)


async def _recv(prof: Any) -> list[m.Message]:
    got: list[m.Event] = []
    await m.receive(prof, got.append, wait=0.0)
    return [e for e in got if isinstance(e, m.Message)]


def _unknown_uid(existing: str) -> str:
    """A well-formed user ID that no user has (another check character)."""
    body = "".join(ALPHABET[(ALPHABET.index(c) + 1) % len(ALPHABET)] for c in existing[:7])
    return body + check_char(body)


@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_a_token_file_others_can_read_is_refused(tmp_path, mode):
    path = tmp_path / "token"
    path.write_text("a" * 32)
    path.chmod(mode)
    with pytest.raises(service.BridgeError, match="chmod 600"):
        service.load_token(path)


def test_a_missing_token_file_is_created_private(tmp_path):
    path = tmp_path / "token"
    token, created = service.load_token(path)
    assert created and len(token) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert service.load_token(path) == (token, False)
