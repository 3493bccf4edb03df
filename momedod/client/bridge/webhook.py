"""Webhook delivery: every inbox message, in cursor order, POSTed as signed JSON.

Signature (docs/INTEGRATIONS.md, "Verifying a webhook"): the key is the bridge's API token
(the token file's content, stripped), and::

    X-Momedo-Timestamp: <unix seconds>
    X-Momedo-Signature: sha256=<hex HMAC-SHA256(key, timestamp + "." + raw body)>

The timestamp is inside the MAC so a captured request cannot be replayed later with a fresh
one; receivers reject timestamps older than a few minutes. ``X-Momedo-Delivery`` is the
message's cursor (the same on every retry: receivers that must be exactly-once de-duplicate
on it). The pointer in the inbox moves only after a 2xx: a receiver that is down gets
everything later, in order; the one window where a message can come twice is a crash between
the 2xx and the pointer's commit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
import structlog
import trio

from momedod.client.bridge.inbox import Inbox

log = structlog.get_logger("momedo.bridge.webhook")

SIGNATURE_HEADER = "X-Momedo-Signature"
TIMESTAMP_HEADER = "X-Momedo-Timestamp"
DELIVERY_HEADER = "X-Momedo-Delivery"
TIMEOUT_S = 10.0
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 300.0


def signature(key: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Momedo-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(key: bytes, timestamp: str, body: bytes, header: str, *, max_age_s: float = 300) -> bool:
    """What a receiver does: the MAC (constant time) and the timestamp's age."""
    try:
        age = abs(time.time() - int(timestamp))
    except ValueError:
        return False
    return age <= max_age_s and hmac.compare_digest(signature(key, timestamp, body), header)


def payload(message: dict[str, Any]) -> bytes:
    """The webhook body for one inbox message."""
    return json.dumps(
        {"type": "message", "message": message}, ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")


class WebhookSender:
    """Delivers the inbox to ``url``; :meth:`wake` after a message was stored."""

    def __init__(
        self,
        url: str,
        key: bytes,
        inbox: Inbox,
        render: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        backoff_min: float | None = None,
        backoff_max: float | None = None,
    ) -> None:
        self.url = url
        self._key = key
        self._inbox = inbox
        self._render = render  # adds absolute attachment URLs
        self._wake = trio.Event()
        self.backoff_min = BACKOFF_MIN_S if backoff_min is None else backoff_min
        self.backoff_max = BACKOFF_MAX_S if backoff_max is None else backoff_max
        self.failures = 0

    def wake(self) -> None:
        self._wake.set()

    async def pending(self) -> int:
        last = await trio.to_thread.run_sync(self._inbox.last_cursor)
        done = await trio.to_thread.run_sync(self._inbox.delivered)
        return max(0, last - done)

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False) as http:
            delay = self.backoff_min
            while True:
                done = await trio.to_thread.run_sync(self._inbox.delivered)
                rows = await trio.to_thread.run_sync(self._inbox.after, done, 1)
                if not rows:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                msg = rows[0]
                if await self._post(http, msg):
                    await trio.to_thread.run_sync(self._inbox.set_delivered, msg["cursor"])
                    self.failures, delay = 0, self.backoff_min
                    continue
                self.failures += 1
                await trio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.backoff_max)

    async def _post(self, http: httpx.AsyncClient, msg: dict[str, Any]) -> bool:
        body = payload(self._render(msg))
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: signature(self._key, ts, body),
            DELIVERY_HEADER: str(msg["cursor"]),
            "User-Agent": "momedo-bridge/0.1",
        }
        try:
            resp = await http.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as e:
            log.warning("webhook_failed", cursor=msg["cursor"], error=type(e).__name__)
            return False
        if 200 <= resp.status_code < 300:
            log.info("webhook_delivered", cursor=msg["cursor"], status=resp.status_code)
            return True
        log.warning("webhook_refused", cursor=msg["cursor"], status=resp.status_code)
        return False
