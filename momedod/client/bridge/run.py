"""Start the bridge: token, inbox, HTTP server, connection and webhook in one nursery."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import structlog
import trio
from hypercorn.config import Config as HttpConfig
from hypercorn.trio import serve as http_serve

from momedod.client.bridge.api import build_app
from momedod.client.bridge.inbox import Inbox
from momedod.client.bridge.service import (
    KEEP_DAYS,
    Bridge,
    BridgeError,
    default_token_file,
    load_token,
)
from momedod.client.bridge.webhook import WebhookSender
from momedod.client.profile import Profile

log = structlog.get_logger("momedo.bridge")

DEFAULT_LISTEN = "127.0.0.1:8480"


@dataclass
class BridgeOptions:
    listen: str = DEFAULT_LISTEN
    webhook: str | None = None
    token_file: Path | None = None
    keep_days: int = KEEP_DAYS


@dataclass
class Running:
    """What :func:`run_bridge` reports once it serves (``task_status.started``)."""

    url: str  # the API's base URL, e.g. http://127.0.0.1:8480
    token_file: Path
    token_created: bool
    bridge: Bridge
    webhook: WebhookSender | None


def _bind(listen: str) -> str:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise BridgeError(f"--listen takes HOST:PORT, e.g. {DEFAULT_LISTEN}; got {listen!r}")
    return listen


async def run_bridge(
    profile: Profile,
    options: BridgeOptions,
    *,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the bridge until cancelled. The caller holds the profile lock."""
    profile.credentials()  # an enrolled profile, or ProfileError now
    if not profile.has_e2e():
        raise BridgeError(f"{profile.path} has no end-to-end keys: enroll the bot first")
    bind = _bind(options.listen)
    if options.webhook is not None and not options.webhook.startswith(("http://", "https://")):
        raise BridgeError(f"--webhook must be an http:// or https:// URL, got {options.webhook!r}")
    token_file = options.token_file or default_token_file(profile)
    token, created = load_token(token_file)
    inbox = await trio.to_thread.run_sync(Inbox, profile.path)
    try:
        bridge = Bridge(profile, inbox)
        webhook: WebhookSender | None = None

        async def pending() -> int | None:
            return None if webhook is None else await webhook.pending()

        app = build_app(bridge, token, pending)
        if options.webhook is not None:
            webhook = WebhookSender(options.webhook, token.encode(), inbox, app.state.render)
            bridge.on_stored.append(webhook.wake)
        cutoff = int(time.time() * 1000) - options.keep_days * 86_400_000
        keep_after = inbox.delivered() if webhook is not None else inbox.last_cursor()
        pruned = await trio.to_thread.run_sync(inbox.prune, cutoff, keep_after)
        if pruned:
            log.info("bridge_pruned", messages=pruned)
        http = HttpConfig()
        http.bind = [bind]
        http.accesslog = None
        http.errorlog = None
        http.keep_alive_timeout = 30
        async with trio.open_nursery() as nursery:
            # Starlette is an ASGI app; hypercorn's typing only knows its own protocol types.
            binds = await nursery.start(partial(http_serve, app, http))  # type: ignore[arg-type]
            app.state.base_url = binds[0]
            log.info("bridge_listening", url=binds[0])
            nursery.start_soon(bridge.run)
            if webhook is not None:
                nursery.start_soon(webhook.run)
            task_status.started(Running(binds[0], token_file, created, bridge, webhook))
    finally:
        inbox.close()
