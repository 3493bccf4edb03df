"""The bridge's HTTP API (docs/bridge-openapi.yaml): a Starlette app served by hypercorn.

Every route but ``GET /v1/health`` requires ``Authorization: Bearer TOKEN`` (compared in
constant time). Errors are JSON ``{"error": TEXT}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from momedod.client.bridge.service import Bridge, OutAttachment, OutMessage, RequestError
from momedod.e2e.attachment import MAX_MIME, MAX_NAME
from momedod.e2e.rich import MAX_ATTACHMENTS, MAX_METADATA
from momedod.protocol.userid import InvalidUserId, normalize

MAX_BODY = 48 * 1024 * 1024
"""Largest request body (base64 of the largest attachments the server takes, and then some)."""
MAX_PAGE = 1000
Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, text: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": text}, status_code=status, headers=headers)


def _bad(text: str) -> HTTPException:
    return HTTPException(400, text)


def _location(value: Any) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not {"lat", "lon"} <= value.keys():
        raise _bad("location must be an object with lat and lon")
    try:
        lat, lon = float(value["lat"]), float(value["lon"])
        acc = float(value.get("accuracy_m", 0.0))
    except (TypeError, ValueError):
        raise _bad("location: lat, lon and accuracy_m are numbers") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180 and 0 <= acc < 4e7):
        raise _bad("location out of range (lat -90..90, lon -180..180, accuracy_m >= 0)")
    return lat, lon, acc


def _attachment(name: Any, mime: Any, data: bytes, location: Any) -> OutAttachment:
    if not isinstance(name, str) or not name or len(name.encode()) > MAX_NAME or "/" in name:
        raise _bad("attachment name: a bare file name is required")
    if not isinstance(mime, str) or not mime or len(mime) > MAX_MIME or " " in mime:
        raise _bad("attachment mime: a MIME type such as image/jpeg is required")
    return OutAttachment(name, mime, data, _location(location))


def _message(doc: Any, attachments: list[OutAttachment]) -> OutMessage:
    """Check the JSON fields of a send request."""
    if not isinstance(doc, dict):
        raise _bad("the request body must be a JSON object")
    unknown = set(doc) - {"to", "group", "text", "attachments", "metadata", "reply_to"}
    if unknown:
        raise _bad(f"unknown field(s): {', '.join(sorted(unknown))}")
    to, group = doc.get("to"), doc.get("group")
    if (to is None) == (group is None):
        raise _bad('give exactly one of "to" (a user ID) and "group" (a group ID or name)')
    if to is not None:
        try:
            to = normalize(str(to))
        except InvalidUserId as e:
            raise _bad(f'"to" is not a user ID: {e}') from None
    if group is not None and (not isinstance(group, str) or not group.strip()):
        raise _bad('"group" must be a group ID or name')
    text = doc.get("text", "")
    if not isinstance(text, str):
        raise _bad('"text" must be a string')
    metadata = doc.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _bad('"metadata" must be a JSON object')
        size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode())
        if size > MAX_METADATA:
            raise _bad(f'"metadata" is {size} bytes as JSON, at most {MAX_METADATA}')
    reply_to = doc.get("reply_to")
    raw_reply = b""
    if reply_to is not None:
        try:
            raw_reply = bytes.fromhex(reply_to) if isinstance(reply_to, str) else b""
        except ValueError:
            raw_reply = b""
        if len(raw_reply) != 16:
            raise _bad('"reply_to" must be a message ID (32 hex characters)')
    for item in doc.get("attachments") or []:
        if not isinstance(item, dict) or not isinstance(item.get("data"), str):
            raise _bad("each attachment is an object with name, mime and data (base64)")
        try:
            data = base64.b64decode(item["data"], validate=True)
        except (binascii.Error, ValueError):
            raise _bad("attachment data is not valid base64") from None
        attachments.append(
            _attachment(item.get("name"), item.get("mime"), data, item.get("location"))
        )
    if len(attachments) > MAX_ATTACHMENTS:
        raise _bad(f"at most {MAX_ATTACHMENTS} attachments")
    if not text and not attachments:
        raise _bad("nothing to send: give a text or attachments")
    return OutMessage(to, group, text, attachments, metadata, raw_reply)


_IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,100}")


def _fingerprint(out: OutMessage) -> str:
    """What a send asks for, as a digest: a key reused for another request is refused."""
    doc = {
        "to": out.to,
        "group": out.group,
        "text": out.text,
        "metadata": out.metadata,
        "reply_to": out.reply_to.hex(),
        "attachments": [
            [a.name, a.mime, hashlib.sha256(a.data).hexdigest(), a.location]
            for a in out.attachments
        ],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


async def _parse_send(request: Request) -> OutMessage:
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=MAX_ATTACHMENTS, max_fields=10)
        try:
            raw = form.get("message")
            if not isinstance(raw, str):
                raise _bad('multipart: a "message" field with the JSON object is required')
            try:
                doc = json.loads(raw)
            except ValueError:
                raise _bad('multipart: "message" is not JSON') from None
            atts: list[OutAttachment] = []
            for part in form.getlist("file"):
                if not isinstance(part, UploadFile):
                    raise _bad('multipart: "file" parts must be files')
                data = await part.read()
                mime = (part.content_type or "application/octet-stream").split(";")[0].strip()
                atts.append(_attachment(part.filename, mime, data, None))
            if isinstance(doc, dict) and "attachments" in doc:
                raise _bad('multipart: send files as "file" parts, not "attachments"')
            return _message(doc, atts)
        finally:
            await form.close()
    if not ctype.startswith("application/json"):
        raise HTTPException(415, "send application/json or multipart/form-data")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # bounded even without a Content-Length
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPException(413, f"request body larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    try:
        doc = json.loads(b"".join(chunks))
    except ValueError:
        raise _bad("the request body is not JSON") from None
    return _message(doc, [])


def build_app(
    bridge: Bridge, token: str, pending: Callable[[], Awaitable[int | None]]
) -> Starlette:
    """The ASGI app. ``app.state.base_url`` (set once bound) makes attachment links
    absolute and ``app.state.render(message)`` adds them; ``pending`` counts the messages the
    webhook has still to deliver (None without a webhook)."""
    expected = token.encode()

    def authorized(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)

    def guarded(fn: Handler) -> Handler:
        async def run(request: Request) -> Response:
            if not authorized(request):
                return _error(401, "missing or wrong bearer token")
            try:
                return await fn(request)
            except RequestError as e:
                return _error(e.status, str(e))

        return run

    def render(msg: dict[str, Any]) -> dict[str, Any]:
        atts = [
            {**a, "url": f"{app.state.base_url}/v1/attachments/{a['id']}" if a.get("id") else None}
            for a in msg.get("attachments", [])
        ]
        return {**msg, "attachments": atts}

    async def health(request: Request) -> Response:
        ok = bridge.connected
        body = {
            "status": "ok" if ok else "connecting",
            "connected": ok,
            "webhook_pending": await pending(),
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    sending: dict[str, trio.Lock] = {}  # Idempotency-Key -> the send running with it

    async def post_message(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            return _error(413, f"request body larger than {MAX_BODY} bytes")
        key = request.headers.get("idempotency-key")
        if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
            return _error(400, "Idempotency-Key: 1 to 100 visible ASCII characters")
        out = await _parse_send(request)
        if key is None:
            return JSONResponse(await bridge.send(out), status_code=201)
        # A retry with the same key (e.g. after the answer was lost) gets the first answer
        # and sends nothing; a retry arriving while the first still runs waits for it.
        fingerprint = _fingerprint(out)
        lock = sending.setdefault(key, trio.Lock())
        try:
            async with lock:
                found = await trio.to_thread.run_sync(bridge.inbox.idempotent, key)
                if found is not None:
                    if found[0] != fingerprint:
                        return _error(422, "Idempotency-Key was used for a different request")
                    return JSONResponse(
                        found[1], status_code=201, headers={"Idempotent-Replayed": "true"}
                    )
                result = await bridge.send(out)
                await trio.to_thread.run_sync(
                    bridge.inbox.remember, key, fingerprint, result, int(time.time() * 1000)
                )
                return JSONResponse(result, status_code=201)
        finally:
            if sending.get(key) is lock and lock.statistics().tasks_waiting == 0:
                del sending[key]

    async def list_messages(request: Request) -> Response:
        try:
            after = int(request.query_params.get("after", "0"))
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            raise _bad("after and limit are integers") from None
        if after < 0 or not 1 <= limit <= MAX_PAGE:
            raise _bad(f"after >= 0, limit 1..{MAX_PAGE}")
        rows = await trio.to_thread.run_sync(bridge.inbox.after, after, limit)
        nxt = rows[-1]["cursor"] if rows else after
        return JSONResponse({"messages": [render(r) for r in rows], "next": nxt})

    async def get_attachment(request: Request) -> Response:
        ident = request.path_params["id"]
        att = await trio.to_thread.run_sync(bridge.inbox.attachment, ident)
        if att is None:
            return _error(404, "no such attachment")
        return FileResponse(
            att.path,
            media_type=att.mime or "application/octet-stream",
            filename=att.name or ident,
            content_disposition_type="attachment",
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail))

    app = Starlette(
        routes=[
            Route("/v1/health", health, methods=["GET"]),
            Route("/v1/messages", guarded(post_message), methods=["POST"]),
            Route("/v1/messages", guarded(list_messages), methods=["GET"]),
            Route("/v1/attachments/{id}", guarded(get_attachment), methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
    )
    app.state.render = render
    app.state.base_url = ""
    return app
