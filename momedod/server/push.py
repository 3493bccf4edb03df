"""Content-free wake-ups for devices that are not connected (docs/PROTOCOL.md "Push wake-ups").

Theory of operation: presence calls :meth:`Pusher.notify` for every recipient device of a
just-committed message that has no session. ``notify`` never waits and never touches the
store: it looks the device up in an in-memory set of devices with a target, coalesces (at
most one wake-up per device per ``coalesce_seconds``) and puts the address into a bounded
channel; a full channel drops the wake-up and counts it, so message acceptance never waits
on push. A few sender tasks take addresses from the channel, read the device's target from
the store (the truth: revoked devices and dropped targets have none) and POST a body that
holds nothing but a fresh random id. 5xx, 429, timeouts and connection failures are retried
with exponential back-off and jitter; 404/410 (and a gateway's ``rejected`` list) drop the
target, and the device learns it at its next login (PUSH_DROPPED). Redirects are never
followed, and the URL is checked against ``[push] allowed_hosts`` before every request.

Quiet hours: a non-urgent wake-up for a user in quiet hours is not queued but held (one per
device) until the user's policies open again; a task looks at the held ones every
``HOLD_TICK`` seconds and queues those that are due.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import structlog
import trio

from momedod.config import PushConfig
from momedod.observability import metrics
from momedod.protocol.frames import DEVICE_DESKTOP, PUSH_GATEWAY
from momedod.pushurl import AllowedHosts
from momedod.server.quiethours import QuietHours
from momedod.store import PushTarget, Store, StoreError

log = structlog.get_logger("momedod.push")

Addr = tuple[str, int]

_GONE = frozenset({404, 410})
HOLD_TICK = 0.5  # seconds between looks at held wake-ups
_HEADERS = {"Content-Type": "application/json"}


def wakeup_body(target: PushTarget, wake_id: str) -> bytes:
    """The whole request body: a random id (and, for a gateway, the device's token)."""
    if target.kind == PUSH_GATEWAY:
        doc: object = {
            "notification": {
                "event_id": wake_id,
                "prio": "high",
                "devices": [{"app_id": "momedo", "pushkey": target.target}],
            }
        }
    else:
        doc = {"momedo": wake_id}
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class _Outcome:
    sent: bool
    retry: bool
    reason: str
    status: int = 0


class Pusher:
    """The wake-up queue and its sender tasks; :meth:`run` owns them."""

    def __init__(
        self,
        store: Store,
        config: PushConfig,
        *,
        quiet: QuietHours | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.quiet = quiet
        self.wall_clock = wall_clock
        self._targets: dict[Addr, tuple[int, int]] = {}  # device -> (kind, device_kind)
        self._held: dict[Addr, float] = {}  # device -> wall time its user's quiet hours end
        self.dropped: set[Addr] = set()  # devices with a PUSH_DROPPED report waiting
        self._last: dict[Addr, float] = {}  # device -> trio time of its last wake-up
        self.configure(config)
        self._send, self._recv = trio.open_memory_channel[Addr](config.queue_size)

    def configure(self, config: PushConfig) -> None:
        """Apply a (re)loaded ``[push]``; the queue size keeps its start-up value."""
        self.config = config
        self.allowed = AllowedHosts.from_config(config.gateway_url, config.allowed_hosts)

    # --- what sessions and presence call ------------------------------------------------

    def check_target(self, kind: int, target: str) -> str | None:
        """Why ``target`` may not be registered (a sentence for the ERROR), None if it may."""
        if not self.config.enabled:
            return "push wake-ups are disabled on this server"
        if kind == PUSH_GATEWAY:
            if not self.config.gateway_url:
                return "this server has no push gateway configured; register a UnifiedPush URL"
            return None
        try:
            self.allowed.check(target)
        except ValueError as e:
            return str(e)
        return None

    def registered(self, addr: Addr, kind: int | None, device_kind: int = DEVICE_DESKTOP) -> None:
        """A device set (kind) or cleared (None) its target."""
        self.dropped.discard(addr)
        self._last.pop(addr, None)
        if kind is None:
            self._targets.pop(addr, None)
            self._held.pop(addr, None)
        else:
            self._targets[addr] = (kind, device_kind)

    def device_kind(self, addr: Addr) -> int:
        """What the device declared with its push target (desktop if it has none)."""
        return self._targets.get(addr, (0, DEVICE_DESKTOP))[1]

    def notify(self, addr: Addr, urgent: bool = False) -> None:
        """A message was queued for ``addr``, which is not connected. Never blocks."""
        if addr not in self._targets or not self.config.enabled:
            return
        if not urgent and self.quiet is not None:
            state = self.quiet.state(addr[0])
            if state.quiet:
                if addr not in self._held:
                    self._held[addr] = state.opens_at
                    metrics.PUSH_HELD.set(len(self._held))
                return
        now = trio.current_time()
        last = self._last.get(addr)
        if last is not None and now - last < self.config.coalesce_seconds:
            metrics.PUSH_COALESCED.inc()
            return
        self._queue(addr, now)

    def _queue(self, addr: Addr, now: float) -> None:
        try:
            self._send.send_nowait(addr)
        except trio.WouldBlock:
            metrics.PUSH_FAILED.labels("queue_full").inc()
            return
        self._last[addr] = now
        metrics.PUSH_QUEUE.inc()

    # --- tasks --------------------------------------------------------------------------

    async def load(self) -> None:
        targets, dropped = await self.store.list_push_targets()
        self._targets = {(t.user_id, t.device_id): (t.kind, t.device_kind) for t in targets}
        self.dropped = set(dropped)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.load()
        # No redirects (a redirect could point anywhere), no proxies from the environment.
        async with (
            httpx.AsyncClient(follow_redirects=False, trust_env=False) as client,
            trio.open_nursery() as nursery,
        ):
            for _ in range(self.config.senders):
                nursery.start_soon(self._sender, client)
            nursery.start_soon(self._release_held)
            task_status.started()

    async def _release_held(self) -> None:
        while True:
            await trio.sleep(HOLD_TICK)
            if not self._held:
                continue
            now = self.wall_clock() if self.quiet is None else self.quiet.clock()
            for addr in [a for a, at in self._held.items() if at <= now]:
                state = self.quiet.state(addr[0]) if self.quiet is not None else None
                if state is not None and state.quiet:  # a policy changed meanwhile
                    self._held[addr] = state.opens_at
                    continue
                del self._held[addr]
                if addr in self._targets:
                    self._queue(addr, trio.current_time())
            metrics.PUSH_HELD.set(len(self._held))

    async def _sender(self, client: httpx.AsyncClient) -> None:
        async for addr in self._recv:
            metrics.PUSH_QUEUE.dec()
            try:
                await self._wake(client, addr)
            except StoreError as e:
                log.warning("push.store_failed", error=str(e))

    async def _wake(self, client: httpx.AsyncClient, addr: Addr) -> None:
        target = await self.store.get_push_target(*addr)
        if target is None:  # revoked, cleared or dropped meanwhile
            self._targets.pop(addr, None)
            return
        body = wakeup_body(target, secrets.token_hex(16))
        cfg = self.config
        for attempt in range(cfg.max_attempts):
            if attempt:
                metrics.PUSH_RETRIES.inc()
                delay = min(cfg.retry_max_seconds, cfg.retry_seconds * 2 ** (attempt - 1))
                await trio.sleep(delay * random.uniform(0.5, 1.0))
            outcome = await self._post(client, target, body)
            if outcome.sent:
                metrics.PUSH_SENT.inc()
                return
            if not outcome.retry:
                break
        metrics.PUSH_FAILED.labels(outcome.reason).inc()
        log.info("push.failed", device=addr[1], reason=outcome.reason, status=outcome.status)
        if outcome.reason == "gone":
            await self._drop(target, outcome.status)

    async def _post(self, client: httpx.AsyncClient, target: PushTarget, body: bytes) -> _Outcome:
        cfg = self.config
        url = cfg.gateway_url if target.kind == PUSH_GATEWAY else target.target
        try:
            if not url:
                raise ValueError("no gateway configured")
            self.allowed.check(url)
        except ValueError:
            return _Outcome(False, False, "not_allowed")
        try:
            response = await client.post(url, content=body, headers=_HEADERS, timeout=cfg.timeout)
        except httpx.TimeoutException:
            return _Outcome(False, True, "exhausted")
        except httpx.HTTPError:  # refused, reset, DNS, TLS: maybe transient
            return _Outcome(False, True, "exhausted")
        status = response.status_code
        if 200 <= status < 300:
            if target.kind == PUSH_GATEWAY and _gateway_rejected(response, target.target):
                return _Outcome(False, False, "gone", status)
            return _Outcome(True, False, "", status)
        if status in _GONE:
            return _Outcome(False, False, "gone", status)
        if status == 429 or status >= 500:
            return _Outcome(False, True, "exhausted", status)
        if 300 <= status < 400:
            return _Outcome(False, False, "redirect", status)
        return _Outcome(False, False, "rejected", status)

    async def _drop(self, target: PushTarget, status: int) -> None:
        addr = (target.user_id, target.device_id)
        now_ms = int(self.wall_clock() * 1000)
        if await self.store.drop_push_target(*addr, target.target, status, now_ms):
            self._targets.pop(addr, None)
            self.dropped.add(addr)
            log.info("push.target_dropped", device=addr[1], status=status)


def _gateway_rejected(response: httpx.Response, token: str) -> bool:
    """A Matrix-style gateway answers 200 with ``{"rejected": [pushkey, ...]}`` for dead tokens."""
    try:
        doc = response.json()
    except ValueError:
        return False
    rejected = doc.get("rejected") if isinstance(doc, dict) else None
    return isinstance(rejected, list) and token in rejected
